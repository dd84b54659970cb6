"""Conversation -> token ids + labels, with the tokenizer's own Gemma 4 chat template.

Each trained assistant turn is one sample: *the generation prompt the template renders for inference, given the
conversation before that turn* + the turn + `<turn|>`. A whole conversation is never rendered once: Gemma 4's
template strips thought channels from assistant turns in the history, and (thinking off) puts an empty thought
channel in the generation prompt but not in the history, so no single sequence holds every turn as inference sees
it. A conversation of k trained turns thus costs k samples whose prompts repeat the history (`train_on: last`
trains its last turn only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from medqlora.data.sources import THOUGHT_CLOSE, THOUGHT_OPEN, Conversation, Message

IGNORE_INDEX = -100
END_OF_TURN = "<turn|>"

Truncation = Literal["drop", "truncate"]


@dataclass(frozen=True)
class Encoded:
    """Token ids and labels of one sample (labels are -100 on prompt tokens)."""

    input_ids: list[int]
    labels: list[int]


@dataclass(frozen=True)
class EncodedConversation:
    """A conversation's samples, one per trained assistant turn that fits in `max_length`, in order. A turn that does
    not fit cuts the conversation there (`turns_cut` counts the trained turns left out); with no sample at all,
    `dropped` says why (`too_long`, `no_supervised_tokens`). `full_length`: tokens of its longest trained turn
    (prompt and answer) before any cut, the `max_length` that would keep all of it."""

    samples: list[Encoded]
    turns_cut: int = 0
    dropped: str | None = None
    full_length: int = 0


def template_message(message: Message) -> dict[str, str]:
    """A message as chat templates take it; an assistant turn's reasoning rides in its thought channel, which
    Gemma 4's template strips from the history."""
    thought = f"{THOUGHT_OPEN}{message.reasoning}{THOUGHT_CLOSE}" if message.reasoning is not None else ""
    return {"role": message.role, "content": f"{thought}{message.content}"}


def messages_of(conv: Conversation, turn: int | None = None) -> list[dict[str, str]]:
    """The messages before assistant turn `turn` (default: the last one), as a user would send them."""
    end = conv.supervised_turns()[-1] if turn is None else turn
    return [template_message(m) for m in conv.messages[:end]]


def generation_prompt(messages: list[dict[str, str]], tokenizer, thinking: bool) -> str:
    """The template's prompt for the model's next turn (with Gemma 4's empty thought channel when thinking is
    off): what training puts before every target and what evaluation and generation send."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=thinking)


def render_prompt(conv: Conversation, tokenizer, turn: int | None = None) -> str:
    """The exact inference prompt before assistant turn `turn` (default: the last): thinking on iff it reasons."""
    end = conv.supervised_turns()[-1] if turn is None else turn
    return generation_prompt(messages_of(conv, end), tokenizer, thinking=conv.messages[end].reasoning is not None)


def render_target(message: Message) -> str:
    """What the model must produce for an assistant turn: [thought channel] answer, closed by the end-of-turn
    token."""
    return f"{template_message(message)['content']}{END_OF_TURN}"


def encode(conv: Conversation, tokenizer, max_length: int, truncation: Truncation = "drop") -> Encoded:
    """The sample of a conversation's last trained turn (a single-turn row's only one); raises
    ValueError('too_long' / 'no_supervised_tokens') to filter it."""
    encoded = encode_many([Conversation(conv.messages, "last")], tokenizer, max_length, truncation)[0]
    if encoded.dropped:
        raise ValueError(encoded.dropped)
    return encoded.samples[0]


def encode_many(
    convs: list[Conversation], tokenizer, max_length: int, truncation: Truncation = "drop"
) -> list[EncodedConversation]:
    """Tokenise conversations, every trained turn of every one in two batched tokenizer calls."""
    turns = [(c, turn) for c, conv in enumerate(convs) for turn in conv.supervised_turns()]
    prompts = tokenizer([render_prompt(convs[c], tokenizer, t) for c, t in turns], add_special_tokens=False)
    targets = tokenizer([render_target(convs[c].messages[t]) for c, t in turns], add_special_tokens=False)
    samples: list[list[Encoded]] = [[] for _ in convs]
    cut, reasons, longest = [0] * len(convs), [None] * len(convs), [0] * len(convs)
    for (c, _), prompt, target in zip(turns, prompts["input_ids"], targets["input_ids"]):
        longest[c] = max(longest[c], len(prompt) + len(target))
        sample = None if cut[c] else _join(prompt, target, max_length, truncation)
        if isinstance(sample, Encoded):
            samples[c].append(sample)
            continue
        cut[c] += 1  # later turns' prompts are longer still: the conversation ends at the turn before
        reasons[c] = reasons[c] or sample
    return [
        EncodedConversation(
            own, cut[c] if own else 0, None if own else reasons[c] or "no_supervised_tokens", longest[c]
        )
        for c, own in enumerate(samples)
    ]


def _join(prompt: list[int], target: list[int], max_length: int, truncation: Truncation) -> Encoded | str:
    if len(prompt) + len(target) > max_length:
        if truncation == "drop":
            return "too_long"
        target = target[: max(0, max_length - len(prompt))]  # never cuts the prompt: inference sees all of it
    if not target:
        return "no_supervised_tokens"
    return Encoded(input_ids=prompt + target, labels=[IGNORE_INDEX] * len(prompt) + target)


def show_supervision(tokenizer, input_ids: list[int], labels: list[int], mark: tuple[str, str] = ("«", "»")) -> str:
    """The sample as text with its supervised spans wrapped in `mark`: what the loss sees, made visible."""
    parts, current, supervised = [], [], False
    for token, label in zip(input_ids, labels):
        if (label != IGNORE_INDEX) != supervised and current:
            text = tokenizer.decode(current)
            parts.append(f"{mark[0]}{text}{mark[1]}" if supervised else text)
            current = []
        supervised = label != IGNORE_INDEX
        current.append(token)
    if current:
        text = tokenizer.decode(current)
        parts.append(f"{mark[0]}{text}{mark[1]}" if supervised else text)
    return "".join(parts)
