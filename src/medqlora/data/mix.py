"""Load the sources, turn rows into conversations, clean, dedupe, decontaminate, sample and split.

Everything here is seeded and order-preserving, so the same sources and seed give byte-identical
train/validation rows on any machine. Every row removed is counted under a reason for the data card.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from datasets import Dataset, concatenate_datasets, load_dataset

from medqlora.data.sources import (
    LOCAL_BUILDERS,
    ReasoningMode,
    RowError,
    SourceSpec,
    normalise_question,
    to_conversation,
)

SamplePolicy = Literal["all", "upsample"]
CONVERSATION_COLUMNS = ["row_id", "source", "system", "user", "reasoning", "answer", "qkey", "drop_reason"]


@dataclass
class EvalQuestions:
    """An evaluation set whose questions must never be trained on (decontamination).

    Args:
        name: short name for the data card.
        hub_id: hub dataset id, or leave empty and give `path`.
        path: local file with the same columns.
        config: hub configuration.
        split: split to read.
        column: the column holding the question text.
    """

    name: str
    column: str = "question"
    hub_id: str | None = None
    path: str | None = None
    config: str | None = None
    split: str = "test"

    def __post_init__(self) -> None:
        if bool(self.hub_id) == bool(self.path):
            raise ValueError(f"eval set {self.name!r}: give exactly one of hub_id or path")


@dataclass
class MixResult:
    """The mixed splits (conversation columns) and what happened to every row, per source."""

    train: Dataset
    val: Dataset
    stats: dict[str, dict] = field(default_factory=dict)


def load_rows(hub_id: str | None, path: str | None, config: str | None, split: str, name: str) -> Dataset:
    """One code path for hub ids and local files: `datasets.load_dataset`."""
    try:
        if path:
            suffix = path[path.rfind("."):] if "." in path.rsplit("/", 1)[-1] else ".json"
            return load_dataset(LOCAL_BUILDERS.get(suffix, "json"), data_files=path, split="train")
        return load_dataset(hub_id, config, split=split)
    except Exception as err:  # the library's own errors are long; say which source and how to fix it
        raise RuntimeError(f"source {name!r}: could not read {path or hub_id!r} "
                           f"({type(err).__name__}: {err}); check the path/hub id, or set "
                           "HF_HUB_OFFLINE=0 and log in if the dataset is gated") from err


def load_source(spec: SourceSpec) -> Dataset:
    """Load a source's rows and check that the columns its format needs are there."""
    rows = load_rows(spec.hub_id, spec.path, spec.config, spec.split, spec.name)
    missing = [col for col in spec.columns.values() if col not in rows.column_names]
    if missing:
        raise ValueError(f"source {spec.name!r} ({spec.location}): missing column(s) {missing}; it has "
                         f"{rows.column_names}. Fix: map them with `columns:` in the source's YAML entry")
    return rows


def conversations(rows: Dataset, spec: SourceSpec, reasoning: ReasoningMode,
                  system_prompt: str | None) -> Dataset:
    """Rows -> conversation columns; rows that cannot convert keep a `drop_reason`."""

    def convert(row: dict, index: int) -> dict:
        out = dict.fromkeys(CONVERSATION_COLUMNS, None)
        out.update(row_id=f"{spec.name}:{index}", source=spec.name)
        try:
            conv = to_conversation(row, spec, reasoning, system_prompt)
        except RowError as err:
            return {**out, "drop_reason": err.reason}
        return {**out, "system": conv.system, "user": conv.user, "reasoning": conv.reasoning,
                "answer": conv.answer, "qkey": normalise_question(conv.user)}

    return rows.map(convert, with_indices=True, remove_columns=rows.column_names,
                    desc=f"{spec.name}: rows -> conversations")


def eval_question_keys(sets: list[EvalQuestions]) -> set[str]:
    """Normalised questions of every evaluation set (for decontamination)."""
    keys: set[str] = set()
    for s in sets:
        rows = load_rows(s.hub_id, s.path, s.config, s.split, s.name)
        if s.column not in rows.column_names:
            raise ValueError(f"eval set {s.name!r}: no column {s.column!r} (has {rows.column_names}); "
                             "fix `column:` in its YAML entry")
        keys.update(normalise_question(str(q)) for q in rows[s.column])
    return keys


PREFIX_WORDS = 8


def _prefix_index(eval_keys: set[str]) -> dict[str, list[str]]:
    """Eval questions by their first words, so a row is checked in O(words) rather than O(eval set)."""
    index: dict[str, list[str]] = {}
    for key in eval_keys:
        if key:
            index.setdefault(" ".join(key.split()[:PREFIX_WORDS]), []).append(key)
    return index


def _contains_eval_question(qkey: str, index: dict[str, list[str]]) -> bool:
    """True if an evaluation question appears inside this row's question text."""
    words = qkey.split()
    for start in range(len(words)):
        for key in index.get(" ".join(words[start:start + PREFIX_WORDS]), ()):
            if key in qkey:
                return True
    return False


def build_mix(sources: list[SourceSpec], *, seed: int, val_fraction: float, reasoning: ReasoningMode,
              system_prompt: str | None = None, policy: SamplePolicy = "all",
              decontaminate: list[EvalQuestions] | None = None) -> MixResult:
    """The whole mix: per source load -> convert -> filter -> dedupe (across sources) -> sample -> split.

    `target` counts training rows; validation rows are drawn on top at `val_fraction` of the total, and
    only training rows are ever repeated (`policy="upsample"`), so no validation row is trained on.
    """
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"data.sources: names must be unique, got {names}")
    eval_index = _prefix_index(eval_question_keys(decontaminate or []))
    seen: set[str] = set()
    train_parts, val_parts, stats = [], [], {}
    for spec in sources:
        convs = conversations(load_source(spec), spec, reasoning, system_prompt)
        reasons = Counter(r for r in convs["drop_reason"] if r)
        keep: list[int] = []
        for i, (reason, qkey) in enumerate(zip(convs["drop_reason"], convs["qkey"])):
            if reason:
                continue
            if qkey in seen:
                reasons["duplicate"] += 1
            elif _contains_eval_question(qkey, eval_index):
                reasons["eval_contamination"] += 1
            else:
                seen.add(qkey)
                keep.append(i)
        rng = random.Random(f"{seed}:{spec.name}")
        rng.shuffle(keep)
        n_train_avail = len(keep) - round(len(keep) * val_fraction)
        n_train = n_train_avail if spec.target is None else min(spec.target, n_train_avail)
        n_val = min(len(keep) - n_train, round(n_train * val_fraction / (1 - val_fraction)))
        val_idx, train_idx = keep[:n_val], keep[n_val:n_val + n_train]
        if policy == "upsample" and spec.target and spec.target > len(train_idx) and train_idx:
            train_idx = train_idx + [rng.choice(train_idx) for _ in range(spec.target - len(train_idx))]
        train_parts.append(convs.select(train_idx))
        val_parts.append(convs.select(val_idx))
        stats[spec.name] = {
            "location": spec.location, "license": spec.license, "target": spec.target,
            "loaded": len(convs), "removed": dict(sorted(reasons.items())), "available": len(keep),
            "train": len(train_idx), "val": len(val_idx), "upsampled": max(0, len(train_idx) - n_train),
        }
    return MixResult(concatenate_datasets(train_parts), concatenate_datasets(val_parts), stats)
