"""The prepared mix: sources -> tokenised, filtered, sampled train/validation splits, built once and reused.

`prepare_mix` runs the whole data path (mix.py, with chat.py's tokenising as its filtering stage) and saves the two
splits and their statistics under the datasets cache, keyed by a fingerprint of everything the result depends on:
each source's entry and rows (datasets' fingerprint of the loaded files or hub revision), the evaluation sets, the
tokenizer (vocabulary, special tokens, chat template), the data settings and the data code itself. Any change builds
anew; an identical run reads the saved splits, memory-mapped, in about a second. Written by hand because datasets
caches each `map` on its own, and the mix's Python steps (dedupe, sampling) around them cost minutes at the
recipe's size.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, Features, Sequence, Value
from datasets.fingerprint import Hasher
from datasets.table import InMemoryTable

from medqlora.data import chat, location, mix, sources
from medqlora.data.chat import IGNORE_INDEX, Truncation, encode_many
from medqlora.data.mix import EvalQuestions, SamplePolicy, Stage, build_mix, load_source, num_proc_for
from medqlora.data.sources import Conversation, Message, ReasoningMode, SourceSpec, TrainOn

TOKENISED_FEATURES = Features(
    {
        "row_id": Value("string"),
        "source": Value("string"),
        "input_ids": Sequence(Sequence(Value("int32"))),  # one list per sample: a trained assistant turn
        "labels": Sequence(Sequence(Value("int32"))),
        "length": Sequence(Value("int32")),
        "supervised": Sequence(Value("int32")),  # tokens with a label: the card's supervised share without labels
        "turns_cut": Value("int32"),
        "drop_reason": Value("string"),
        "full_length": Value("int32"),  # the longest trained turn before any cut: the card's rows per max_length
    }
)
SAMPLE_COLUMNS = ("row_id", "source", "input_ids", "labels", "length", "supervised")
DATA_CODE = (sources, location, mix, chat)  # with this file: a change to any of them builds the mix anew


@dataclass(frozen=True)
class MixSettings:
    """Every data setting the prepared rows depend on (the batch layout is not one: packing reads the splits)."""

    max_length: int
    truncation: Truncation = "drop"
    reasoning: ReasoningMode = "thinking"
    system_prompt: str | None = None
    sample_policy: SamplePolicy = "all"
    val_fraction: float = 0.05
    test_fraction: float = 0.0
    seed: int = 42


@dataclass
class PreparedMix:
    """The tokenised splits, one row per sample (`SAMPLE_COLUMNS`; `test` is empty unless `test_fraction` > 0), what
    happened to every source's rows, and whether they were read from an earlier identical preparation."""

    train: Dataset
    val: Dataset
    test: Dataset
    stats: dict[str, dict]
    reused: bool = False


SPLITS = ("train", "val", "test")


def tokenising_stage(tokenizer, max_length: int, truncation: Truncation, key: str) -> Stage:
    """Conversation rows -> each trained turn's token ids, labels, length and supervised count, with a `drop_reason`
    (too_long, no_supervised_tokens) for a row left with no sample, in batches through the fast tokenizer. `key` (the
    tokenizer's and settings' fingerprint) names the map's cache."""

    def tokenise(batch: dict[str, list], train_on: TrainOn) -> dict[str, list]:
        convs = [Conversation(tuple(Message(**m) for m in messages), train_on) for messages in batch["messages"]]
        out: dict[str, list] = {name: [] for name in TOKENISED_FEATURES if name not in ("row_id", "source")}
        for encoded in encode_many(convs, tokenizer, max_length, truncation):
            samples = encoded.samples
            out["input_ids"].append([s.input_ids for s in samples])
            out["labels"].append([s.labels for s in samples])
            out["length"].append([len(s.input_ids) for s in samples])
            out["supervised"].append([len(s.labels) - s.labels.count(IGNORE_INDEX) for s in samples])
            out["turns_cut"].append(encoded.turns_cut)
            out["drop_reason"].append(encoded.dropped)
            out["full_length"].append(encoded.full_length)
        return out

    def stage(rows: Dataset, spec: SourceSpec) -> Dataset:
        if len(rows) == 0:  # `map` adds no columns to an empty dataset
            return Dataset.from_dict({column: [] for column in TOKENISED_FEATURES}, features=TOKENISED_FEATURES)
        return rows.map(
            tokenise,
            batched=True,
            fn_kwargs={"train_on": spec.train_on},
            remove_columns=[c for c in rows.column_names if c not in ("row_id", "source")],
            features=TOKENISED_FEATURES,
            num_proc=num_proc_for(len(rows)),
            # hashing the closure would pickle the tokenizer for every source
            new_fingerprint=Hasher.hash([rows._fingerprint, key, spec.train_on]),
            desc=f"{spec.name}: conversations -> tokens",
        )

    return stage


def one_row_per_sample(rows: Dataset) -> Dataset:
    """Tokenised conversations -> one row per sample (a conversation of k trained turns gives k, their ids
    `<row_id>/<n>`), columns `SAMPLE_COLUMNS`. In Arrow: no Python loop over tokens."""
    table = rows.with_format("arrow")[:]
    counts = pc.list_value_length(table["length"]).to_numpy(zero_copy_only=False)
    parents = np.repeat(np.arange(len(counts)), counts)
    turn = np.arange(len(parents)) - np.repeat(np.cumsum(counts) - counts, counts)
    ids = table["row_id"].to_pylist()
    row_ids = [ids[p] if counts[p] == 1 else f"{ids[p]}/{n}" for p, n in zip(parents.tolist(), turn.tolist())]
    samples = pa.table(
        {
            "row_id": pa.array(row_ids, pa.string()),
            "source": table["source"].take(pa.array(parents, pa.int64())),
            **{name: pc.list_flatten(table[name]) for name in ("input_ids", "labels", "length", "supervised")},
        }
    )
    return Dataset(InMemoryTable(samples), fingerprint=Hasher.hash([rows._fingerprint, "one row per sample"]))


def fingerprint(
    sources: dict[str, Dataset],
    specs: list[SourceSpec],
    decontaminate: list[EvalQuestions],
    tokenizer,
    settings: MixSettings,
) -> tuple[str, str]:
    """(the prepared mix's key: everything the splits depend on; the tokenising key: what token ids depend on, so
    another seed or target reuses the tokenised rows). `sources`: each source's loaded rows by name, whose datasets
    fingerprint changes with an edited file or another hub revision."""
    files = [Path(m.__file__) for m in DATA_CODE] + [Path(__file__)]
    code = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    tokens = Hasher.hash([Hasher.hash(tokenizer), settings.max_length, settings.truncation, code])

    eval_sets = [
        {**asdict(e), "rows": location.load_rows(e, f"eval set {e.name!r}")._fingerprint} for e in decontaminate
    ]
    sets = [{**asdict(s), "rows": sources[s.name]._fingerprint} for s in specs] + eval_sets
    return Hasher.hash([tokens, asdict(settings), json.dumps(sets, sort_keys=True, default=str)]), tokens


def prepare_mix(
    sources: list[SourceSpec],
    decontaminate: list[EvalQuestions],
    tokenizer,
    settings: MixSettings,
    cache_root: Path | None = None,
) -> PreparedMix:
    """The mix's tokenised splits and statistics: read from `cache_root` (default: the datasets cache's `medqlora/`
    folder) when an identical preparation saved them, else built and saved there (atomically: a second process
    preparing the same mix at the same time only makes its own copy)."""
    from datasets import config

    loaded = {spec.name: load_source(spec) for spec in sources}  # once: the key and the build both read them
    key, tokens_key = fingerprint(loaded, sources, decontaminate, tokenizer, settings)
    root = Path(cache_root or Path(config.HF_DATASETS_CACHE) / "medqlora")
    saved = root / f"mix-{key}"
    if (saved / "stats.json").is_file():
        stats = json.loads((saved / "stats.json").read_text())
        return PreparedMix(*(Dataset.load_from_disk(saved / split) for split in SPLITS), stats, reused=True)
    result = build_mix(
        sources,
        seed=settings.seed,
        val_fraction=settings.val_fraction,
        test_fraction=settings.test_fraction,
        reasoning=settings.reasoning,
        system_prompt=settings.system_prompt,
        policy=settings.sample_policy,
        decontaminate=decontaminate,
        stage=tokenising_stage(tokenizer, settings.max_length, settings.truncation, tokens_key),
        loaded=loaded,
    )
    partial = root / f".{saved.name}.{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    for split, conversations in zip(SPLITS, (result.train, result.val, result.test)):
        rows = one_row_per_sample(conversations)
        rows.save_to_disk(partial / split, num_shards=1 if len(rows) == 0 else None)  # 0 shards would not load
    (partial / "stats.json").write_text(json.dumps(result.stats, indent=1))
    try:
        partial.rename(saved)
    except OSError:  # another process saved the same preparation first
        shutil.rmtree(partial, ignore_errors=True)
    if not saved.is_dir():
        raise OSError(f"could not save the prepared mix in {saved}")
    splits = (Dataset.load_from_disk(saved / split) for split in SPLITS)
    return PreparedMix(*splits, json.loads((saved / "stats.json").read_text()))
