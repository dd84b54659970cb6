"""Where a source lives and how one of its rows becomes a conversation.

A source is data (`SourceSpec`); a row format is one small pure function. A new source with a known
format is one YAML entry; a new format is one function added to `FORMATS`.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Format = Literal["medqa_options", "instruction", "reasoning"]
ReasoningMode = Literal["thinking", "inline", "drop"]

PLACEHOLDER_INPUTS = frozenset({"", "<noinput>", "<no input>", "none", "n/a", "noinput"})
"""`input` values that mean "no input" (AlpaCare writes `<noinput>` in ~35% of rows)."""

REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "medqa_options": ("instruction", "input", "output"),
    "instruction": ("instruction", "input", "output"),
    "reasoning": ("question", "reasoning", "response"),
}
DEFAULT_COLUMNS: dict[str, dict[str, str]] = {
    "medqa_options": {"instruction": "instruction", "input": "input", "output": "output"},
    "instruction": {"instruction": "instruction", "input": "input", "output": "output"},
    "reasoning": {"question": "Question", "reasoning": "Complex_CoT", "response": "Response"},
}
LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


class RowError(ValueError):
    """A row that cannot become a conversation; `reason` is the filter it is counted under."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class Conversation:
    """One training example: what the user asks and what the model answers (reasoning optional)."""

    user: str
    answer: str
    reasoning: str | None = None
    system: str | None = None


@dataclass
class SourceSpec:
    """One data source of the mix.

    Args:
        name: short unique name (used in the data card and in row ids).
        hub_id: dataset id on the Hugging Face hub; or leave empty and give `path`.
        path: a local .json/.jsonl/.parquet/.csv file (or a directory of them) with the same columns.
        config: hub dataset configuration name.
        split: split to read.
        format: how a row becomes a conversation: one of `medqa_options`, `instruction`, `reasoning`.
        columns: map from the format's fields to this source's column names (defaults per format).
        target: rows to draw for the mix (None = all rows).
        license: licence string written to the data card.
    """

    name: str
    format: Format
    hub_id: str | None = None
    path: str | None = None
    config: str | None = None
    split: str = "train"
    columns: dict[str, str] = field(default_factory=dict)
    target: int | None = None
    license: str = "unknown"

    def __post_init__(self) -> None:
        if self.format not in REQUIRED_FIELDS:
            raise ValueError(f"source {self.name!r}: format={self.format!r} is unknown; "
                             f"use one of {sorted(REQUIRED_FIELDS)}")
        if bool(self.hub_id) == bool(self.path):
            raise ValueError(f"source {self.name!r}: give exactly one of hub_id or path "
                             f"(got hub_id={self.hub_id!r}, path={self.path!r})")
        if self.target is not None and self.target <= 0:
            raise ValueError(f"source {self.name!r}: target={self.target} must be a positive row count or null")
        self.columns = {**DEFAULT_COLUMNS[self.format], **self.columns}
        unknown = set(self.columns) - set(REQUIRED_FIELDS[self.format])
        if unknown:
            raise ValueError(f"source {self.name!r}: columns has unknown field(s) {sorted(unknown)} for "
                             f"format {self.format!r}; fields are {list(REQUIRED_FIELDS[self.format])}")
        if self.path:
            resolved = Path(self.path).expanduser().resolve()
            if not resolved.exists():
                raise FileNotFoundError(f"source {self.name!r}: path={self.path!r} does not exist "
                                        f"(resolved to {resolved}); fix the path or use hub_id")
            suffix = resolved.suffix if resolved.is_file() else next(
                (p.suffix for p in sorted(resolved.iterdir()) if p.suffix in LOCAL_BUILDERS), "")
            if suffix not in LOCAL_BUILDERS:
                raise ValueError(f"source {self.name!r}: path={self.path!r} is not one of "
                                 f"{sorted(LOCAL_BUILDERS)}; convert it or point hub_id at it")
            self.path = str(resolved)

    @property
    def location(self) -> str:
        """Human-readable origin (hub id with config/split, or the file path)."""
        return self.path or f"{self.hub_id}:{self.config or 'default'}/{self.split}"


def _text(row: dict, spec: SourceSpec, fieldname: str) -> str:
    value = row.get(spec.columns[fieldname])
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RowError("wrong_type", f"column {spec.columns[fieldname]!r} holds {type(value).__name__}, not text")
    return value.strip()


def _join_instruction(instruction: str, extra: str) -> str:
    if extra.lower() in PLACEHOLDER_INPUTS:
        return instruction
    return f"{instruction}\n\n{extra}" if instruction else extra


_MEDQA_INPUT = re.compile(r"^\s*Q:\s*(?P<question>.*?)\s*(?P<options>\{.*\})\s*,?\s*$", re.DOTALL)


def medqa_options(row: dict, spec: SourceSpec, reasoning: ReasoningMode) -> Conversation:
    """MedQA (medical_meadow_medqa): `input` = 'Q: question? {dict of options},', output 'E: answer'."""
    instruction, raw, output = (_text(row, spec, f) for f in ("instruction", "input", "output"))
    match = _MEDQA_INPUT.match(raw)
    if not match:
        raise RowError("bad_options", "input is not 'Q: <question> {options}'")
    try:
        options = ast.literal_eval(match["options"])  # never eval(): the column is untrusted text
    except (ValueError, SyntaxError) as err:
        raise RowError("bad_options", f"options are not a literal dict: {err}") from None
    if not isinstance(options, dict) or not options:
        raise RowError("bad_options", "options are not a non-empty dict")
    lines = "\n".join(f"{key}. {value}" for key, value in options.items())
    return Conversation(user=_join_instruction(instruction, f"{match['question']}\n{lines}"), answer=output)


def instruction(row: dict, spec: SourceSpec, reasoning: ReasoningMode) -> Conversation:
    """Instruction / input / output rows (AlpaCare); placeholder inputs are dropped."""
    instr, extra, output = (_text(row, spec, f) for f in ("instruction", "input", "output"))
    return Conversation(user=_join_instruction(instr, extra), answer=output)


def reasoning_row(row: dict, spec: SourceSpec, reasoning: ReasoningMode) -> Conversation:
    """Question / reasoning / response rows (medical-o1): reasoning goes to thinking, inline or nowhere."""
    question, cot, response = (_text(row, spec, f) for f in ("question", "reasoning", "response"))
    if reasoning == "inline" and cot:
        return Conversation(user=question, answer=f"{cot}\n\n{response}")
    return Conversation(user=question, answer=response, reasoning=cot if reasoning == "thinking" and cot else None)


FORMATS: dict[str, Callable[[dict, SourceSpec, ReasoningMode], Conversation]] = {
    "medqa_options": medqa_options,
    "instruction": instruction,
    "reasoning": reasoning_row,
}


def to_conversation(row: dict, spec: SourceSpec, reasoning: ReasoningMode,
                    system_prompt: str | None = None) -> Conversation:
    """Row -> Conversation, or RowError naming the filter (empty_question, empty_answer, ...)."""
    conv = FORMATS[spec.format](row, spec, reasoning)
    if not conv.user:
        raise RowError("empty_question", "the question/instruction is empty")
    if not conv.answer:
        raise RowError("empty_answer", "the answer/output is empty")
    return Conversation(conv.user, conv.answer, conv.reasoning, system_prompt or None)


def normalise_question(text: str) -> str:
    """Key for dedupe and decontamination: lower case, letters and digits only, single spaces."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())
