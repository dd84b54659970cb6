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
            yield group[start:start + batch_size]


@torch.no_grad()
def choice_logprobs(model, tokenizer, items: list[Item], batch_size: int = 8,
                    desc: str = "scoring") -> list[list[float]]:
    """log p(choice | prompt) for every choice of every item, with a progress bar."""
    device = next(p for p in model.parameters()).device
    scores = [[0.0] * len(item.choices) for item in items]
    pairs = _pairs(items, tokenizer)
    for batch in tqdm(list(_batches(pairs, batch_size)), desc=desc, unit="batch"):
        ids, mask = left_pad([prompt + choice for _, _, prompt, choice in batch], tokenizer, device)
        k = len(batch[0][3])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=k + 1,
                       use_cache=False).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, -k:, None]).squeeze(-1).sum(-1)
        for (i, c, _, _), value in zip(batch, logp.tolist(), strict=True):
            scores[i][c] = value
    return scores


def bootstrap_delta_pp(base_correct: list[bool], adapter_correct: list[bool], resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """95% paired-bootstrap interval of (adapter - base) accuracy, in percentage points."""
    diff = torch.tensor(adapter_correct, dtype=torch.float64) - torch.tensor(base_correct, dtype=torch.float64)
    if diff.numel() == 0:
        return (0.0, 0.0)
    index = torch.randint(diff.numel(), (resamples, diff.numel()), generator=torch.Generator().manual_seed(seed))
    means = diff[index].mean(1) * 100
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return (low, high)


def compare(model, tokenizer, items: list[Item], name: str, batch_size: int = 8) -> tuple[dict, list[dict]]:
    """Score `items` with the adapter off (the base) and on, in the same process and load.

    Returns a summary (accuracies, delta and its 95% interval in percentage points) and one record per item."""
    with model.disable_adapter():
        base = choice_logprobs(model, tokenizer, items, batch_size, f"{name} base")
    tuned = choice_logprobs(model, tokenizer, items, batch_size, f"{name} adapter")
    records, base_ok, tuned_ok = [], [], []
    for item, b, t in zip(items, base, tuned, strict=True):
        b_pred, t_pred = max(range(len(b)), key=b.__getitem__), max(range(len(t)), key=t.__getitem__)
        base_ok.append(b_pred == item.gold)
        tuned_ok.append(t_pred == item.gold)
        records.append({"benchmark": name, "id": item.id, "gold": item.choices[item.gold],
                        "base_pred": item.choices[b_pred], "adapter_pred": item.choices[t_pred],
                        "base_logprobs": b, "adapter_logprobs": t})
    n = max(len(items), 1)
    base_acc, tuned_acc = 100 * sum(base_ok) / n, 100 * sum(tuned_ok) / n
    low, high = bootstrap_delta_pp(base_ok, tuned_ok)
    summary = {"benchmark": name, "items": len(items), "base_accuracy": base_acc, "adapter_accuracy": tuned_acc,
               "delta_pp": tuned_acc - base_acc, "delta_ci95_pp": [low, high]}
    return summary, records
