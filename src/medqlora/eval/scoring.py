"""Multiple-choice scoring by log-likelihood, base vs adapter in one load, with a paired bootstrap interval.

Each choice is scored by the summed log-probability of its tokens right after the Gemma 4 chat prompt (the
generation prompt the model was trained to answer after; thinking off), so scoring is deterministic and needs
one forward pass per (question, choice). Rows are left-padded with mask-aware position ids, and only the last
positions' logits are computed (`logits_to_keep`): never [batch, seq, 262k] logits.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from tqdm.auto import tqdm

from medqlora.data.chat import generation_prompt
from medqlora.eval.items import Item

BATCH_SIZE = 8
"""Sequences per forward pass when scoring and generating, by default."""


def prompt_ids(tokenizer, user: str, thinking: bool = False) -> list[int]:
    """Token ids of the chat prompt that asks `user` and opens the model's turn."""
    text = generation_prompt([{"role": "user", "content": user}], tokenizer, thinking)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def left_pad(seqs: list[list[int]], tokenizer, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask) of `seqs` left-padded to the longest, so every row ends at the last column."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(map(len, seqs))
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
    return ids, mask


def _pairs(items: list[Item], tokenizer) -> list[tuple[int, int, list[int], list[int]]]:
    """(item index, choice index, prompt ids, choice ids) for every choice of every item."""
    out = []
    for i, item in enumerate(items):
        prompt = prompt_ids(tokenizer, item.user)
        for c, choice in enumerate(item.choices):
            out.append((i, c, prompt, tokenizer(choice, add_special_tokens=False)["input_ids"]))
    return out


def _batches(pairs: list, batch_size: int) -> Iterator[list]:
    """Batches of pairs whose choices have the same token count (so one `logits_to_keep` serves them)."""
    by_length: dict[int, list] = {}
    for pair in pairs:
        by_length.setdefault(len(pair[3]), []).append(pair)
    for group in by_length.values():
        for start in range(0, len(group), batch_size):
            yield group[start : start + batch_size]


@torch.no_grad()
def choice_logprobs(
    model, tokenizer, items: list[Item], batch_size: int = BATCH_SIZE, desc: str = "scoring"
) -> list[list[float]]:
    """log p(choice | prompt) for every choice of every item, with a progress bar."""
    device = next(p for p in model.parameters()).device
    scores = [[0.0] * len(item.choices) for item in items]
    pairs = _pairs(items, tokenizer)
    for batch in tqdm(list(_batches(pairs, batch_size)), desc=desc, unit="batch"):
        ids, mask = left_pad([prompt + choice for _, _, prompt, choice in batch], tokenizer, device)
        k = len(batch[0][3])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = (
            model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=k + 1, use_cache=False)
            .logits[:, :-1]
            .float()
        )
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, -k:, None]).squeeze(-1).sum(-1)
        for (i, c, _, _), value in zip(batch, logp.tolist(), strict=True):
            scores[i][c] = value
    return scores


def bootstrap_delta_pp(
    base_correct: list[bool], adapter_correct: list[bool], resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95% paired-bootstrap interval of (adapter - base) accuracy, in percentage points."""
    diff = torch.tensor(adapter_correct, dtype=torch.float64) - torch.tensor(base_correct, dtype=torch.float64)
    if diff.numel() == 0:
        return (0.0, 0.0)
    index = torch.randint(diff.numel(), (resamples, diff.numel()), generator=torch.Generator().manual_seed(seed))
    means = diff[index].mean(1) * 100
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return (low, high)


def predictions(logprobs: list[float], choices: tuple[str, ...]) -> tuple[int, int]:
    """(raw, normalised) choice: the highest summed log-probability, and the highest per character of the choice
    (lm-evaluation-harness's `acc_norm`), which a one-token answer cannot win by being short."""
    raw = max(range(len(logprobs)), key=logprobs.__getitem__)
    norm = max(range(len(logprobs)), key=lambda c: logprobs[c] / max(len(choices[c]), 1))
    return raw, norm


DELTA_METRIC = "accuracy_norm"
"""The accuracy the delta and its interval are taken on (the card says so)."""


def compare(model, tokenizer, items: list[Item], name: str, batch_size: int = BATCH_SIZE) -> tuple[dict, list[dict]]:
    """Score `items` with the adapter off (the base) and on, in the same process and load.

    Returns a summary (raw and length-normalised accuracies; the delta on the normalised one, with its 95%
    interval, in percentage points) and one record per item."""
    with model.disable_adapter():
        base = choice_logprobs(model, tokenizer, items, batch_size, f"{name} base")
    tuned = choice_logprobs(model, tokenizer, items, batch_size, f"{name} adapter")
    records = []
    correct: dict[str, list[bool]] = {key: [] for key in ("base", "adapter", "base_norm", "adapter_norm")}
    for item, b, t in zip(items, base, tuned, strict=True):
        (b_raw, b_norm), (t_raw, t_norm) = predictions(b, item.choices), predictions(t, item.choices)
        for key, pick in (("base", b_raw), ("adapter", t_raw), ("base_norm", b_norm), ("adapter_norm", t_norm)):
            correct[key].append(pick == item.gold)
        records.append(
            {
                "benchmark": name,
                "id": item.id,
                "gold": item.choices[item.gold],
                "base_pred": item.choices[b_raw],
                "adapter_pred": item.choices[t_raw],
                "base_pred_norm": item.choices[b_norm],
                "adapter_pred_norm": item.choices[t_norm],
                "base_logprobs": b,
                "adapter_logprobs": t,
            }
        )
    n = max(len(items), 1)
    accuracy = {key: 100 * sum(values) / n for key, values in correct.items()}
    low, high = bootstrap_delta_pp(correct["base_norm"], correct["adapter_norm"])
    summary = {
        "benchmark": name,
        "items": len(items),
        "base_accuracy": accuracy["base"],
        "adapter_accuracy": accuracy["adapter"],
        "base_accuracy_norm": accuracy["base_norm"],
        "adapter_accuracy_norm": accuracy["adapter_norm"],
        "delta_metric": DELTA_METRIC,
        "delta_pp": accuracy["adapter_norm"] - accuracy["base_norm"],
        "delta_ci95_pp": [low, high],
    }
    return summary, records
