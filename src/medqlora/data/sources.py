"""Where a source lives and how one of its rows becomes a conversation.

A source is data (`SourceSpec`); a row format is one small pure function. A new source with a known
format is one YAML entry; a new format is one function added to `FORMATS`.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from medqlora.data.location import Location

Format = Literal["medqa_options", "instruction", "reasoning"]
ReasoningMode = Literal["thinking", "inline", "drop"]

MEDQA_INSTRUCTION = "Please answer with one of the option in the bracket"
"""medalpaca's instruction on every MedQA row (medical_meadow_medqa); evaluation asks MedQA with it too."""

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


@dataclass(kw_only=True)
class SourceSpec(Location):
    """One data source of the mix: where its rows are (`Location`: hub_id or path, config, split) and how a row
    becomes a conversation.

    Args:
        name: short unique name (used in the data card and in row ids).
        format: how a row becomes a conversation: one of `medqa_options`, `instruction`, `reasoning`.
        columns: map from the format's fields to this source's column names (defaults per format).
        target: rows to draw for the mix (None = all rows).
        license: licence string written to the data card.
        required: a source that ends with no training row is an error (set false to allow it).
    """

    name: str
    format: Format
    columns: dict[str, str] = field(default_factory=dict)
    target: int | None = None
    license: str = "unknown"
    required: bool = True
    label: ClassVar[str] = "source"

    def __post_init__(self) -> None:
        if self.format not in REQUIRED_FIELDS:
            raise ValueError(
                f"source {self.name!r}: format={self.format!r} is unknown; use one of {sorted(REQUIRED_FIELDS)}"
            )
        super().__post_init__()
        if self.target is not None and self.target <= 0:
            raise ValueError(f"source {self.name!r}: target={self.target} must be a positive row count or null")
        self.columns = {**DEFAULT_COLUMNS[self.format], **self.columns}
        unknown = set(self.columns) - set(REQUIRED_FIELDS[self.format])
        if unknown:
            raise ValueError(
                f"source {self.name!r}: columns has unknown field(s) {sorted(unknown)} for "
                f"format {self.format!r}; fields are {list(REQUIRED_FIELDS[self.format])}"
            )


_DOUBLED_QUESTION_MARKS = re.compile(r"\?{2,}")


def clean_text(text: str) -> str:
    """Source artefacts out of MedQA text, for training rows and benchmark items alike: medalpaca's doubled "??",
    stray line breaks and quote marks around a value (38 of the 1,273 MedQA test options), runs of spaces."""
    text = _DOUBLED_QUESTION_MARKS.sub("?", text.replace('\n"', " ").replace("\n", " "))
    return " ".join(text.split()).strip(' "')


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
    return Conversation(user=medqa_prompt(instruction, match["question"], options), answer=clean_text(output))


def medqa_prompt(instruction: str, question: str, options: dict) -> str:
    """A MedQA question as training renders it: instruction, the question, then one `X. option` line each."""
    lines = "\n".join(f"{key}. {clean_text(str(value))}" for key, value in options.items())
    return _join_instruction(instruction, f"{clean_text(question)}\n{lines}")


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


def to_conversation(
    row: dict, spec: SourceSpec, reasoning: ReasoningMode, system_prompt: str | None = None
) -> Conversation:
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
