"""Load the sources, turn rows into conversations, clean, decontaminate, filter, dedupe, sample and split.

Every filter runs before sampling, so a source's `target` counts usable rows: conversion errors, evaluation
questions, the caller's tokenising stage (rows over `max_length`) and duplicates are all removed first. Everything
is seeded and order-preserving, so the same sources and seed give byte-identical train/validation rows on any
machine. Every row removed is counted under a reason for the data card.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from datasets import Dataset, Features, Value, concatenate_datasets

from medqlora.data.benchmarks import BENCHMARK_LOCATIONS
from medqlora.data.location import Location, column, diagnose_file, load_rows
from medqlora.data.sources import (
    ReasoningMode,
    RowError,
    SourceSpec,
    normalise_question,
    to_conversation,
)

SamplePolicy = Literal["all", "upsample"]
# every column a map writes is typed: a type inferred from the first written batch (all None: null) breaks on a
# later batch that has a value (datasets 4: "Couldn't cast array of type string to null"; 5: "Couldn't write column")
MESSAGES = [{"role": Value("string"), "content": Value("string"), "reasoning": Value("string")}]
CONVERSATION_FEATURES = Features(
    {
        "row_id": Value("string"),
        "source": Value("string"),
        "messages": MESSAGES,
        "qkey": Value("string"),
        "contaminated": Value("bool"),
        "drop_reason": Value("string"),
    }
)
PARALLEL_ROWS = 20_000  # a source at least this long is mapped in several processes (below, starting them costs more)
Stage = Callable[[Dataset, SourceSpec], Dataset]
"""The caller's filtering stage (tokenising): a source's candidate conversation rows -> its rows, one per candidate
in order, each with a `drop_reason` (None to keep), optionally `turns_cut` (trained turns a kept row left out,
counted in the statistics), and whatever columns it adds."""


@dataclass(kw_only=True)
class EvalQuestions(Location):
    """An evaluation set whose questions must never be trained on (decontamination); where its rows are is a
    `Location` (hub_id or path, config, split).

    Args:
        name: short name for the data card.
        column: the column holding the question text.
    """

    name: str
    column: str = "question"
    split: str = "test"
    label: ClassVar[str] = "eval set"


def num_proc_for(rows: int) -> int | None:
    """Processes for mapping `rows` rows: every core for a large source, one (None) for a small one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores if rows >= PARALLEL_ROWS and cores > 1 else None


def benchmark_questions() -> list[EvalQuestions]:
    """The questions `medqlora eval` scores (`data.benchmarks`), as decontamination sets (`benchmarks`)."""
    return [EvalQuestions(name=name, column="question", **where) for name, where in BENCHMARK_LOCATIONS.items()]


@dataclass
class MixResult:
    """The mixed splits (conversation columns, or the stage's) and what happened to every source's rows."""

    train: Dataset
    val: Dataset
    stats: dict[str, dict] = field(default_factory=dict)
    test: Dataset | None = None


def load_source(spec: SourceSpec) -> Dataset:
    """Load a source's rows and check that the columns its format needs are there."""
    rows = load_rows(spec, f"source {spec.name!r}")
    missing = [col for col in spec.row_columns() if col not in rows.column_names]
    problem = diagnose_file(Path(spec.path)) if missing and spec.path and Path(spec.path).is_file() else None
    if problem:  # e.g. a ';'-separated CSV reads as one column
        raise ValueError(f"source {spec.name!r}: {problem}")
    if missing:
        raise ValueError(
            f"source {spec.name!r} ({spec.location}): missing column(s) {missing}; it has "
            f"{rows.column_names}. Fix: map them with `columns:` in the source's YAML entry"
        )
    return rows


def conversations(
    rows: Dataset,
    spec: SourceSpec,
    reasoning: ReasoningMode,
    system_prompt: str | None,
    eval_index: QuestionIndex | None = None,
    num_proc: int | None = None,
) -> Dataset:
    """Rows -> conversation columns; a row that cannot convert keeps a `drop_reason`, and one that holds a whole
    question of `eval_index` anywhere in its text is marked `contaminated`."""
    check_contamination = eval_index is not None and bool(eval_index.lengths)

    def convert(row: dict, index: int) -> dict:
        out = {**dict.fromkeys(CONVERSATION_FEATURES), "row_id": f"{spec.name}:{index}", "source": spec.name}
        try:
            conv = to_conversation(row, spec, reasoning, system_prompt)
        except RowError as err:
            return {**out, "messages": [], "contaminated": False, "drop_reason": err.reason}
        text = " ".join(f"{m.reasoning or ''} {m.content}" for m in conv.messages)
        return {
            **out,
            "messages": [asdict(m) for m in conv.messages],
            "qkey": normalise_question(conv.user),
            "contaminated": check_contamination and eval_index.contains(normalise_question(text)),
        }

    try:
        return rows.map(
            convert,
            with_indices=True,
            remove_columns=rows.column_names,
            features=CONVERSATION_FEATURES,
            num_proc=num_proc,
            desc=f"{spec.name}: rows -> conversations",
        )
    except Exception as err:  # e.g. a byte that is not UTF-8, met only when the text is read
        problem = diagnose_file(Path(spec.path)) if spec.path and Path(spec.path).is_file() else None
        raise ValueError(f"source {spec.name!r}: {problem or f'{type(err).__name__}: {err}'}") from err


def eval_question_keys(sets: list[EvalQuestions]) -> set[str]:
    """Normalised questions of every evaluation set (for decontamination)."""
    keys: set[str] = set()
    for s in sets:
        rows = load_rows(s, f"eval set {s.name!r}")
        if s.column not in rows.column_names:
            raise ValueError(
                f"eval set {s.name!r}: no column {s.column!r} (has {rows.column_names}); "
                "fix `column:` in its YAML entry"
            )
        keys.update(key for key in (normalise_question(str(q)) for q in column(rows, s.column)) if key)
    return keys


class QuestionIndex:
    """Finds any evaluation question, of any length, inside a text: questions are indexed by their first
    `PREFIX_WORDS` words (fewer for a shorter question), and each word position of the text is looked up once
    per prefix length in use, so a check costs O(words), not O(evaluation set)."""

    PREFIX_WORDS = 4  # measured: ~6 s per 25 M words of training text (8 words: ~17 s)

    def __init__(self, keys: set[str]):
        self.by_prefix: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
        for key in sorted(keys):  # one order in every process: the conversion map's cache key hashes this index
            words = tuple(key.split())
            self.by_prefix.setdefault(words[: self.PREFIX_WORDS], []).append(words)
        self.lengths = sorted({len(prefix) for prefix in self.by_prefix})

    def contains(self, text_key: str) -> bool:
        """True if a whole evaluation question appears, word for word, in this normalised text."""
        words = tuple(text_key.split())
        for start in range(len(words)):
            for length in self.lengths:
                for question in self.by_prefix.get(words[start : start + length], ()):
                    if words[start : start + len(question)] == question:
                        return True
        return False


MAX_LENGTHS_SHOWN = (1024, 2048, 4096, 8192, 16384)  # the data card's rows kept whole at each data.max_length


def build_mix(
    sources: list[SourceSpec],
    *,
    seed: int,
    val_fraction: float,
    reasoning: ReasoningMode,
    test_fraction: float = 0.0,
    system_prompt: str | None = None,
    policy: SamplePolicy = "all",
    decontaminate: list[EvalQuestions] | None = None,
    stage: Stage | None = None,
    loaded: dict[str, Dataset] | None = None,
) -> MixResult:
    """The whole mix: per source load -> convert -> decontaminate -> `stage` (tokenising: rows over max_length)
    -> dedupe (across sources) -> sample -> split.

    `target` counts usable training rows: every filter runs first, so a source with at least `target` usable rows
    gives exactly `target`. Validation (and test) rows are drawn on top at `val_fraction` (`test_fraction`) of the
    total, and only training rows are ever repeated (`policy="upsample"`), so no held-out row is trained on.
    `loaded`: sources already read by `load_source`, by name (read here otherwise).
    """
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"data.sources: names must be unique, got {names}")
    eval_index = QuestionIndex(eval_question_keys(decontaminate or []))
    seen: set[str] = set()
    train_parts, val_parts, test_parts, stats = [], [], [], {}
    held_out = val_fraction + test_fraction
    for spec in sources:
        rows = loaded[spec.name] if loaded else load_source(spec)
        convs = conversations(rows, spec, reasoning, system_prompt, eval_index, num_proc_for(len(rows)))
        drop_reasons = column(convs, "drop_reason")
        reasons = Counter(r for r in drop_reasons if r)
        flags = zip(drop_reasons, column(convs, "contaminated"))
        candidates = [i for i, (reason, contaminated) in enumerate(flags) if not reason and not contaminated]
        reasons["eval_contamination"] = len(convs) - sum(reasons.values()) - len(candidates)
        rows = convs.select(candidates)
        qkeys = column(rows, "qkey")
        if stage is not None:
            rows = stage(rows, spec)
        usable: list[int] = []
        for i, (reason, qkey) in enumerate(zip(column(rows, "drop_reason"), qkeys)):
            if reason:
                reasons[reason] += 1
            elif qkey in seen:
                reasons["duplicate"] += 1
            else:
                seen.add(qkey)
                usable.append(i)
        rng = random.Random(f"{seed}:{spec.name}")
        rng.shuffle(usable)
        n_train_avail = len(usable) - round(len(usable) * held_out)
        n_train = n_train_avail if spec.target is None else min(spec.target, n_train_avail)
        n_val = min(len(usable) - n_train, round(n_train * val_fraction / (1 - held_out)))
        n_test = min(len(usable) - n_train - n_val, round(n_train * test_fraction / (1 - held_out)))
        val_idx, test_idx = usable[:n_val], usable[n_val : n_val + n_test]
        train_idx = usable[n_val + n_test : n_val + n_test + n_train]
        if policy == "upsample" and spec.target and spec.target > len(train_idx) and train_idx:
            train_idx = train_idx + [rng.choice(train_idx) for _ in range(spec.target - len(train_idx))]
        train_parts.append(rows.select(train_idx))
        val_parts.append(rows.select(val_idx))
        test_parts.append(rows.select(test_idx))
        stats[spec.name] = {
            "location": spec.location,
            "license": spec.license,
            "target": spec.target,
            "available": len(convs),
            "removed": {reason: n for reason, n in sorted(reasons.items()) if n},
            "usable": len(usable),
            "train": len(train_idx),
            "val": len(val_idx),
            "test": len(test_idx),
            "upsampled": max(0, len(train_idx) - n_train),
        }
        if "full_length" in rows.column_names:  # how many rows each max_length would keep whole (before dedupe)
            fit = [
                n for n, r in zip(column(rows, "full_length"), column(rows, "drop_reason")) if r in (None, "too_long")
            ]
            stats[spec.name]["rows_within"] = {str(n): sum(1 for f in fit if f <= n) for n in MAX_LENGTHS_SHOWN}
        if "turns_cut" in rows.column_names:  # conversations cut at a turn boundary to fit max_length
            turns_cut = column(rows, "turns_cut")
            cut = [turns_cut[i] for i in usable]
            stats[spec.name]["cut_at_turn"] = {"rows": sum(1 for n in cut if n), "turns": sum(cut)}
    internal = ("qkey", "contaminated", "drop_reason", "turns_cut", "full_length")
    internal = [c for c in internal if c in train_parts[0].column_names]
    train, val, test = (
        concatenate_datasets(parts).remove_columns(internal) for parts in (train_parts, val_parts, test_parts)
    )
    return MixResult(train, val, stats, test)
