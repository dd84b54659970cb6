"""Benchmark rows -> multiple-choice items (prompt, choices, gold), through the training data's loading code.

MedQA 4-option (test split: 1,273 rows; columns question, options {A..D}, answer_idx) and PubMedQA (the labelled
subset, its only split `train`: 1,000 expert-labelled rows; hub ids in `data/benchmarks.py`;
columns pubid, question, context {contexts: [...]}, final_decision yes/no/maybe). All rows are scored unless
`limit` is set, which takes the first `limit` rows in the file's order. MedQA is asked, by default, exactly as
the training rows render medalpaca's MedQA (`data.sources.medqa_prompt`, the same `clean_text`), so a base-vs-adapter
delta measures what was learnt, not a change of format.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, Literal

from medqlora.data.benchmarks import BENCHMARK_LOCATIONS
from medqlora.data.location import Location, load_rows
from medqlora.data.sources import MEDQA_INSTRUCTION, clean_text, medqa_prompt

Kind = Literal["medqa", "pubmedqa"]
PromptStyle = Literal["training", "letter"]
REQUIRED = {"medqa": ("question", "options", "answer_idx"), "pubmedqa": ("question", "context", "final_decision")}


@dataclass(kw_only=True)
class BenchmarkSpec(Location):
    """One benchmark: where its rows are (`Location`: hub_id or path, config, split) and how to ask them.

    Args:
        name: short name used in results and the model card.
        kind: `medqa` (lettered options) or `pubmedqa` (yes/no/maybe over an abstract).
        prompt: MedQA only. `training` (default) asks as the training rows do (medalpaca's instruction, the
            question, `X. option` lines) and scores how the trained answer (`X: option`) opens, `A:` to `D:` (the
            same length for every option, so no option wins by being short); `letter` asks for "the letter of the
            correct option" and scores the letters A-D.
        limit: score only the first `limit` rows (None: all).
    """

    name: str
    kind: Kind
    split: str = "test"
    prompt: PromptStyle = "training"
    limit: int | None = None
    label: ClassVar[str] = "benchmark"

    def __post_init__(self) -> None:
        if self.kind not in ("medqa", "pubmedqa"):
            raise ValueError(f"benchmark {self.name!r}: kind={self.kind!r}; use 'medqa' or 'pubmedqa'")
        if self.prompt not in ("training", "letter"):
            raise ValueError(f"benchmark {self.name!r}: prompt={self.prompt!r}; use 'training' or 'letter'")
        super().__post_init__()


def with_source(spec: BenchmarkSpec, value: str | None) -> BenchmarkSpec:
    """`spec` read from `value` instead: an existing file is a local path, anything else a hub id (None: unchanged)."""
    if value is None:
        return spec
    if Path(value).exists():
        return replace(spec, hub_id=None, path=value)
    return replace(spec, hub_id=value, path=None)


DEFAULT_BENCHMARKS = [BenchmarkSpec(name=kind, kind=kind, **where) for kind, where in BENCHMARK_LOCATIONS.items()]


@dataclass(frozen=True)
class Item:
    """One question: the user turn, the answer strings to score, and the index of the right one."""

    id: str
    user: str
    choices: tuple[str, ...]
    gold: int


def _medqa(row: dict, index: int, prompt: PromptStyle) -> Item:
    options = {letter: clean_text(str(text)) for letter, text in sorted(row["options"].items())}
    letters = list(options)
    gold = letters.index(row["answer_idx"])
    if prompt == "training":
        user = medqa_prompt(MEDQA_INSTRUCTION, row["question"], options)
        return Item(f"medqa-{index}", user, tuple(f"{letter}:" for letter in letters), gold)
    lines = "\n".join(f"{letter}. {text}" for letter, text in options.items())
    user = f"{clean_text(row['question'])}\n{lines}\nAnswer with the letter of the correct option."
    return Item(f"medqa-{index}", user, tuple(letters), gold)


def _pubmedqa(row: dict, index: int, prompt: PromptStyle) -> Item:
    context = row["context"]["contexts"] if isinstance(row["context"], dict) else row["context"]
    abstract = "\n".join(context) if isinstance(context, list) else str(context)
    user = f"{abstract}\n\nQuestion: {row['question']}\nAnswer yes, no or maybe."
    choices = ("yes", "no", "maybe")
    return Item(f"pubmedqa-{row.get('pubid', index)}", user, choices, choices.index(row["final_decision"]))


def load_items(spec: BenchmarkSpec) -> list[Item]:
    """The benchmark's items; a row missing a column fails naming the benchmark, row and column."""
    try:
        rows = load_rows(spec, f"benchmark {spec.name!r}")
    except ValueError as err:
        if spec.path:
            raise
        raise ValueError(  # offline, the way out is a local file: say which flag takes it and what it holds
            f"{err}. Offline, pass a local copy: medqlora eval ... --{spec.kind} FILE (.jsonl/.json/.csv/.parquet "
            f"with the columns {', '.join(REQUIRED[spec.kind])}; docs/evaluation.md)"
        ) from err
    if spec.limit is not None:
        rows = rows.select(range(min(spec.limit, len(rows))))
    convert = _medqa if spec.kind == "medqa" else _pubmedqa
    items = []
    for index, row in enumerate(rows):
        missing = [column for column in REQUIRED[spec.kind] if row.get(column) is None]
        if missing:
            raise ValueError(
                f"benchmark {spec.name!r} row {index}: column {missing[0]!r} is missing or empty; "
                f"expected the columns of {spec.hub_id or 'the ' + spec.kind + ' dataset'}: "
                f"{', '.join(REQUIRED[spec.kind])}"
            )
        try:
            items.append(convert(row, index, spec.prompt))
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(
                f"benchmark {spec.name!r} row {index}: {type(err).__name__} {err}; expected the "
                f"columns of {spec.hub_id or 'the ' + spec.kind + ' dataset'}"
            ) from err
    return items
