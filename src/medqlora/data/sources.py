"""Where a source lives and how one of its rows becomes a conversation.

A source is data (`SourceSpec`); a row format is one small pure function. A new source with a known
format is one YAML entry; a new format is one function added to `FORMATS`. A conversation is a list of messages
(system, user, assistant; an assistant turn may carry reasoning): the single-turn formats make one user and one
assistant turn, `chat` reads any number of turns.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal

from medqlora.data.location import Location

Format = Literal["medqa_options", "instruction", "reasoning", "chat"]
ReasoningMode = Literal["thinking", "inline", "drop"]
Role = Literal["system", "user", "assistant"]
TrainOn = Literal["all", "last"]

THOUGHT_OPEN, THOUGHT_CLOSE = "<|channel>thought\n", "<channel|>"
"""Gemma 4's thought channel around an assistant turn's reasoning."""

MEDQA_INSTRUCTION = "Please answer with one of the option in the bracket"
"""medalpaca's instruction on every MedQA row (medical_meadow_medqa); evaluation asks MedQA with it too."""

PLACEHOLDER_INPUTS = frozenset({"", "<noinput>", "<no input>", "none", "n/a", "noinput"})
"""`input` values that mean "no input" (AlpaCare writes `<noinput>` in ~35% of rows)."""

REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "medqa_options": ("instruction", "input", "output"),
    "instruction": ("instruction", "input", "output"),
    "reasoning": ("question", "reasoning", "response"),
    "chat": ("messages", "role", "content", "reasoning"),
}
MESSAGE_KEYS = ("role", "content", "reasoning")
"""`chat` fields that name keys inside each message, not columns of the row."""
DEFAULT_ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "model": "assistant",
    "gpt": "assistant",
}
"""Role names a `chat` source may use (ShareGPT's human/gpt included); `roles:` adds or overrides."""
DEFAULT_COLUMNS: dict[str, dict[str, str]] = {
    "medqa_options": {"instruction": "instruction", "input": "input", "output": "output"},
    "instruction": {"instruction": "instruction", "input": "input", "output": "output"},
    "reasoning": {"question": "Question", "reasoning": "Complex_CoT", "response": "Response"},
    "chat": {"messages": "messages", "role": "role", "content": "content", "reasoning": "reasoning"},
}


class RowError(ValueError):
    """A row that cannot become a conversation; `reason` is the filter it is counted under."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class Message:
    """One turn: who speaks, what they say, and (an assistant turn) the reasoning before it."""

    role: Role
    content: str
    reasoning: str | None = None


@dataclass(frozen=True)
class Conversation:
    """One training example: its messages in order, and which assistant turns are trained (`all`, or the `last`)."""

    messages: tuple[Message, ...]
    train_on: TrainOn = "all"

    @classmethod
    def single(cls, user: str, answer: str, reasoning: str | None = None, system: str | None = None) -> Conversation:
        """A question and its answer (reasoning optional), after an optional system message."""
        system_turn = (Message("system", system),) if system else ()
        return cls((*system_turn, Message("user", user), Message("assistant", answer, reasoning)))

    @property
    def system(self) -> str | None:
        """The system message, if the conversation opens with one."""
        return self.messages[0].content if self.messages and self.messages[0].role == "system" else None

    @property
    def user(self) -> str:
        """The user turns' text, joined: what deduplication keys on (a single-turn row's question)."""
        return "\n\n".join(m.content for m in self.messages if m.role == "user")

    @property
    def answer(self) -> str:
        """The last assistant turn's text."""
        return next((m.content for m in reversed(self.messages) if m.role == "assistant"), "")

    @property
    def reasoning(self) -> str | None:
        """The last assistant turn's reasoning."""
        return next((m.reasoning for m in reversed(self.messages) if m.role == "assistant"), None)

    def supervised_turns(self) -> list[int]:
        """Indices of the assistant turns that are trained: every one, or the last (`train_on`)."""
        turns = [i for i, m in enumerate(self.messages) if m.role == "assistant"]
        return turns[-1:] if self.train_on == "last" else turns


@dataclass(kw_only=True)
class SourceSpec(Location):
    """One data source of the mix: where its rows are (`Location`: hub_id or path, config, split) and how a row
    becomes a conversation.

    Args:
        name: short unique name (used in the data card and in row ids).
        format: how a row becomes a conversation: one of `medqa_options`, `instruction`, `reasoning`, `chat`.
        columns: map from the format's fields to this source's column names (defaults per format); for `chat`, the
            `messages` column and the `role`, `content` and `reasoning` keys inside each message.
        roles: `chat` only: this source's role names -> system, user or assistant (added to human/gpt and the three).
        train_on: `chat` only: train `all` assistant turns, or the `last` one.
        target: rows (conversations) to draw for the mix (None = all usable rows).
        license: licence string written to the data card.
        required: a source that ends with no training row is an error (set false to allow it).
    """

    name: str
    format: Format
    columns: dict[str, str] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    train_on: TrainOn = "all"
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
        bad_roles = {k: v for k, v in self.roles.items() if v not in ("system", "user", "assistant")}
        if bad_roles:
            raise ValueError(
                f"source {self.name!r}: roles={bad_roles}: each role must map to system, user or assistant"
            )
        if self.train_on not in ("all", "last"):
            raise ValueError(f"source {self.name!r}: train_on={self.train_on!r}; use all or last")

    def row_columns(self) -> list[str]:
        """The columns a row of this source must have (a `chat` source's message keys are not columns)."""
        keys = MESSAGE_KEYS if self.format == "chat" else ()
        return [column for fieldname, column in self.columns.items() if fieldname not in keys]


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
    return Conversation.single(medqa_prompt(instruction, match["question"], options), clean_text(output))


def medqa_prompt(instruction: str, question: str, options: dict) -> str:
    """A MedQA question as training renders it: instruction, the question, then one `X. option` line each."""
    lines = "\n".join(f"{key}. {clean_text(str(value))}" for key, value in options.items())
    return _join_instruction(instruction, f"{clean_text(question)}\n{lines}")


def instruction(row: dict, spec: SourceSpec, reasoning: ReasoningMode) -> Conversation:
    """Instruction / input / output rows (AlpaCare); placeholder inputs are dropped."""
    instr, extra, output = (_text(row, spec, f) for f in ("instruction", "input", "output"))
    return Conversation.single(_join_instruction(instr, extra), output)


def reasoning_row(row: dict, spec: SourceSpec, reasoning: ReasoningMode) -> Conversation:
    """Question / reasoning / response rows (medical-o1): reasoning goes to thinking, inline or nowhere."""
    question, cot, response = (_text(row, spec, f) for f in ("question", "reasoning", "response"))
    answer, thought = with_reasoning(response, cot, reasoning)
    return Conversation.single(question, answer, thought)


def with_reasoning(answer: str, reasoning: str | None, mode: ReasoningMode) -> tuple[str, str | None]:
    """(answer, reasoning) as `data.reasoning` places it: in the thought channel, inline before the answer, or
    dropped."""
    if not reasoning or mode == "drop":
        return answer, None
    return (f"{reasoning}\n\n{answer}", None) if mode == "inline" else (answer, reasoning)


_THOUGHT = re.compile(re.escape(THOUGHT_OPEN) + r"(?P<thought>.*?)" + re.escape(THOUGHT_CLOSE), re.DOTALL)


def chat(row: dict, spec: SourceSpec, reasoning: ReasoningMode) -> Conversation:
    """A list of messages (system first if any, then user and assistant turns); an assistant turn's reasoning comes
    from its `reasoning` key or a thought channel opening its content."""
    messages = row.get(spec.columns["messages"])
    if not isinstance(messages, list) or not messages:
        raise RowError("bad_messages", f"column {spec.columns['messages']!r} is not a non-empty list of messages")
    roles = {**DEFAULT_ROLES, **spec.roles}
    turns = []
    for position, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RowError("bad_messages", f"message {position} is {type(message).__name__}, not a mapping")
        role = roles.get(str(message.get(spec.columns["role"])))
        if role is None:
            raise RowError("unknown_role", f"message {position}: role {message.get(spec.columns['role'])!r}")
        content, thought = message.get(spec.columns["content"]) or "", message.get(spec.columns["reasoning"])
        if not isinstance(content, str) or not isinstance(thought, str | None):
            raise RowError("wrong_type", f"message {position}: content or reasoning is not text")
        channel = _THOUGHT.match(content.lstrip()) if role == "assistant" else None
        if channel:
            content, thought = content.lstrip()[channel.end() :], thought or channel["thought"]
        if role == "system" and position > 0:
            raise RowError("bad_messages", f"message {position}: a system message after the first")
        if role == "assistant":
            content, thought = with_reasoning(content.strip(), (thought or "").strip() or None, reasoning)
        turns.append(Message(role, content.strip(), thought))
    spoken = [m for m in turns if m.role != "system"]
    if not spoken or spoken[0].role != "user":
        raise RowError("bad_messages", "the first message after the system one is not the user's")
    if any(not m.content for m in spoken if m.role == "user"):
        raise RowError("empty_question", "a user turn is empty")
    if not any(m.role == "assistant" for m in turns):
        raise RowError("no_assistant_turn", "no assistant turn to train on")
    if any(not m.content for m in spoken if m.role == "assistant"):
        raise RowError("empty_answer", "an assistant turn is empty")
    return Conversation(tuple(turns), spec.train_on)


FORMATS: dict[str, Callable[[dict, SourceSpec, ReasoningMode], Conversation]] = {
    "medqa_options": medqa_options,
    "instruction": instruction,
    "reasoning": reasoning_row,
    "chat": chat,
}


def to_conversation(
    row: dict, spec: SourceSpec, reasoning: ReasoningMode, system_prompt: str | None = None
) -> Conversation:
    """Row -> Conversation, or RowError naming the filter (empty_question, empty_answer, ...). `system_prompt`
    opens a conversation that has no system message of its own."""
    conv = FORMATS[spec.format](row, spec, reasoning)
    if not conv.user:
        raise RowError("empty_question", "the question/instruction is empty")
    if not conv.answer:
        raise RowError("empty_answer", "the answer/output is empty")
    if system_prompt and conv.system is None:
        return replace(conv, messages=(Message("system", system_prompt), *conv.messages))
    return conv


def normalise_question(text: str) -> str:
    """Key for dedupe and decontamination: lower case, letters and digits only, single spaces."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())
