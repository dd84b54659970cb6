"""Conversation -> token ids + labels, with the tokenizer's own Gemma 4 chat template.

A row is built as *the generation prompt the template renders for inference* + target + `<turn|>`,
never by rendering a whole conversation: Gemma 4's template strips thought channels from assistant
turns and (thinking off) puts an empty thought channel in the generation prompt, so a rendered
conversation would both lose o1's reasoning and differ from what the model sees at inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from medqlora.data.sources import Conversation

IGNORE_INDEX = -100
END_OF_TURN = "<turn|>"
THOUGHT_OPEN, THOUGHT_CLOSE = "<|channel>thought\n", "<channel|>"

Truncation = Literal["drop", "truncate"]


@dataclass(frozen=True)
class Encoded:
    """Token ids and labels of one row (labels are -100 on prompt tokens)."""

    input_ids: list[int]
    labels: list[int]


def messages_of(conv: Conversation) -> list[dict[str, str]]:
    """The chat messages a user would send: optional system turn, then the user turn."""
    system = [{"role": "system", "content": conv.system}] if conv.system else []
    return [*system, {"role": "user", "content": conv.user}]


def generation_prompt(messages: list[dict[str, str]], tokenizer, thinking: bool) -> str:
    """The template's prompt for the model's next turn (with Gemma 4's empty thought channel when thinking is
    off): what training puts before every target and what evaluation and generation send."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=thinking)


def render_prompt(conv: Conversation, tokenizer) -> str:
    """The exact inference prompt of a row: thinking on iff the row reasons."""
    return generation_prompt(messages_of(conv), tokenizer, thinking=conv.reasoning is not None)


def render_target(conv: Conversation) -> str:
    """What the model must produce: [thought channel] answer, closed by the end-of-turn token."""
    thought = f"{THOUGHT_OPEN}{conv.reasoning}{THOUGHT_CLOSE}" if conv.reasoning is not None else ""
    return f"{thought}{conv.answer}{END_OF_TURN}"


def encode(conv: Conversation, tokenizer, max_length: int, truncation: Truncation = "drop") -> Encoded:
    """Tokenise one conversation; raises ValueError('too_long' / 'no_supervised_tokens') to filter it."""
    result = encode_many([conv], tokenizer, max_length, truncation)[0]
    if isinstance(result, str):
        raise ValueError(result)
    return result


def encode_many(
    convs: list[Conversation], tokenizer, max_length: int, truncation: Truncation = "drop"
) -> list[Encoded | str]:
    """Tokenise conversations in one batched tokenizer call; each is its `Encoded` row or the reason it is dropped
    (`too_long`, `no_supervised_tokens`)."""
    prompts = tokenizer([render_prompt(c, tokenizer) for c in convs], add_special_tokens=False)["input_ids"]
    targets = tokenizer([render_target(c) for c in convs], add_special_tokens=False)["input_ids"]
    return [_join(prompt, target, max_length, truncation) for prompt, target in zip(prompts, targets)]


def _join(prompt: list[int], target: list[int], max_length: int, truncation: Truncation) -> Encoded | str:
    if len(prompt) + len(target) > max_length:
        if truncation == "drop":
            return "too_long"
        target = target[: max_length - len(prompt)]  # never cuts the prompt: inference sees all of it
    if not target:
        return "no_supervised_tokens"
    return Encoded(input_ids=prompt + target, labels=[IGNORE_INDEX] * len(prompt) + target)


def show_supervision(tokenizer, input_ids: list[int], labels: list[int], mark: tuple[str, str] = ("«", "»")) -> str:
    """The row as text with its supervised spans wrapped in `mark`: what the loss sees, made visible."""
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
