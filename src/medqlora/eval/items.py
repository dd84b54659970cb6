"""Benchmark rows -> multiple-choice items (prompt, choices, gold), through the training data's loading code.

MedQA 4-option (`GBaker/MedQA-USMLE-4-options`, test split: 1,273 rows; columns question, options {A..D},
answer_idx) and PubMedQA (`qiaojin/PubMedQA`, `pqa_labeled`, its only split `train`: 1,000 expert-labelled rows;
columns pubid, question, context {contexts: [...]}, final_decision yes/no/maybe). All rows are scored unless
`limit` is set, which takes the first `limit` rows in the file's order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["medqa", "pubmedqa"]
REQUIRED = {"medqa": ("question", "options", "answer_idx"), "pubmedqa": ("question", "context", "final_decision")}


@dataclass
class BenchmarkSpec:
    """One benchmark: where its rows are and how to read them.

    Args:
        name: short name used in results and the model card.
        kind: `medqa` (lettered options) or `pubmedqa` (yes/no/maybe over an abstract).
        hub_id: dataset id on the hub; or leave empty and give `path` (a local file with the same columns).
        path: local .json/.jsonl/.parquet/.csv file.
        config: hub configuration.
        split: split to read.
        limit: score only the first `limit` rows (None: all).
    """

    name: str
    kind: Kind
    hub_id: str | None = None
    path: str | None = None
    config: str | None = None
    split: str = "test"
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("medqa", "pubmedqa"):
            raise ValueError(f"benchmark {self.name!r}: kind={self.kind!r}; use 'medqa' or 'pubmedqa'")
        if not (self.hub_id or self.path):
            raise ValueError(f"benchmark {self.name!r}: give hub_id or path")


DEFAULT_BENCHMARKS = [
    BenchmarkSpec("medqa", "medqa", hub_id="GBaker/MedQA-USMLE-4-options", split="test"),
    BenchmarkSpec("pubmedqa", "pubmedqa", hub_id="qiaojin/PubMedQA", config="pqa_labeled", split="train"),
]


@dataclass(frozen=True)
class Item:
    """One question: the user turn, the answer strings to score, and the index of the right one."""

    id: str
    user: str
    choices: tuple[str, ...]
    gold: int


def _medqa(row: dict, index: int) -> Item:
    options = row["options"]
    letters = sorted(options)
    lines = "\n".join(f"{letter}. {options[letter]}" for letter in letters)
    user = f"{row['question']}\n{lines}\nAnswer with the letter of the correct option."
    return Item(f"medqa-{index}", user, tuple(letters), letters.index(row["answer_idx"]))


def _pubmedqa(row: dict, index: int) -> Item:
    context = row["context"]["contexts"] if isinstance(row["context"], dict) else row["context"]
    abstract = "\n".join(context) if isinstance(context, list) else str(context)
    user = f"{abstract}\n\nQuestion: {row['question']}\nAnswer yes, no or maybe."
    choices = ("yes", "no", "maybe")
    return Item(f"pubmedqa-{row.get('pubid', index)}", user, choices, choices.index(row["final_decision"]))


def load_items(spec: BenchmarkSpec) -> list[Item]:
    """The benchmark's items; a row missing a column fails naming the benchmark, row and column."""
    from medqlora.data.mix import load_rows  # datasets is imported only when rows are read

    rows = load_rows(spec.hub_id, spec.path, spec.config, spec.split, spec.name)
    if spec.limit is not None:
        rows = rows.select(range(min(spec.limit, len(rows))))
    convert = _medqa if spec.kind == "medqa" else _pubmedqa
    items = []
    for index, row in enumerate(rows):
        missing = [column for column in REQUIRED[spec.kind] if row.get(column) is None]
        if missing:
            raise ValueError(f"benchmark {spec.name!r} row {index}: column {missing[0]!r} is missing or empty; "
                             f"expected the columns of {spec.hub_id or 'the ' + spec.kind + ' dataset'}: "
                             f"{', '.join(REQUIRED[spec.kind])}")
        try:
            items.append(convert(row, index))
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"benchmark {spec.name!r} row {index}: {type(err).__name__} {err}; expected the "
                             f"columns of {spec.hub_id or 'the ' + spec.kind + ' dataset'}") from err
    return items
