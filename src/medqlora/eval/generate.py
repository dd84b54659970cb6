"""Batched greedy generation with the Gemma 4 chat template (thinking on or off)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from medqlora.data.chat import END_OF_TURN, THOUGHT_CLOSE
from medqlora.eval.scoring import BATCH_SIZE, left_pad, prompt_ids

MAX_NEW_TOKENS = 512
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


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    thinking: bool = False,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = BATCH_SIZE,
    desc: str = "generating",
) -> list[str]:
    """Greedy answers to user `prompts`, one per prompt, special tokens and thought channel removed."""
    device = next(p for p in model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = [prompt_ids(tokenizer, p, thinking) for p in prompts]
    check_fits(encoded, max_new_tokens, model.config.get_text_config().max_position_embeddings)
    answers = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch"):
        ids, mask = left_pad(encoded[start : start + batch_size], tokenizer, device)
        width = ids.shape[1]
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
        )
        for row in out[:, width:]:
            text = tokenizer.decode(row, skip_special_tokens=False).split(END_OF_TURN)[0]
            for stop in {tokenizer.eos_token, tokenizer.pad_token} - {None}:
                text = text.split(stop)[0]
            answers.append(strip_thoughts(text))
    return answers
