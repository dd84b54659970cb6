"""Batched greedy generation with the Gemma 4 chat template (thinking on or off), through `eval.decode`."""

from __future__ import annotations

from medqlora.data.chat import END_OF_TURN, THOUGHT_CLOSE
from medqlora.eval import MAX_NEW_TOKENS
from medqlora.eval.decode import GreedyDecoder
from medqlora.eval.scoring import prompt_ids

"""Longest generated answer, by default (`medqlora generate`, the key-point prompts)."""


def strip_thoughts(text: str) -> str:
    """The answer without a thought channel (what a reader of the answer sees)."""
    return text.rsplit(THOUGHT_CLOSE, 1)[-1].strip()


def check_fits(prompts: list[list[int]], max_new_tokens: int, positions: int) -> None:
    """Refuse a prompt that, with the answer's room, exceeds the model's positions (it would be answered
    from garbage positions, not cut)."""
    for number, ids in enumerate(prompts, 1):
        if len(ids) + max_new_tokens > positions:
            raise ValueError(
                f"prompt {number} is {len(ids):,} tokens; with --max-new-tokens {max_new_tokens} that "
                f"exceeds the model's {positions:,} positions: shorten the prompt or lower "
                "--max-new-tokens"
            )


def stop_ids(tokenizer) -> set[int]:
    """Token ids that end an answer: the end of the model's turn, end of sequence, padding."""
    ids = {tokenizer.convert_tokens_to_ids(END_OF_TURN), tokenizer.eos_token_id, tokenizer.pad_token_id}
    return {i for i in ids if i is not None and i != tokenizer.unk_token_id}


def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    thinking: bool = False,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int | None = None,
    desc: str = "generating",
) -> list[str]:
    """Greedy answers to user `prompts`, one per prompt, special tokens and thought channel removed.

    batch_size: prompts decoded together (default: all of them)."""
    encoded = [prompt_ids(tokenizer, p, thinking) for p in prompts]
    check_fits(encoded, max_new_tokens, model.config.get_text_config().max_position_embeddings)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    decoder = GreedyDecoder(model, stop_ids(tokenizer), pad)
    size = batch_size or max(len(encoded), 1)
    answers = []
    for start in range(0, len(encoded), size):
        for ids in decoder(encoded[start : start + size], max_new_tokens, desc):
            answers.append(strip_thoughts(tokenizer.decode(ids, skip_special_tokens=False)))
    return answers
