"""Today's evaluation path before issue #25, kept as the benchmark's baseline (the code of 9846cff, unchanged in
substance): one left-padded sequence per (question, choice), 8 sequences a forward, transformers' `generate` for
answers, the 4-bit base with PEFT's unmerged LoRA.
"""

from __future__ import annotations

import torch

from medqlora.eval.generate import stop_ids
from medqlora.eval.items import Item
from medqlora.eval.scoring import prompt_ids


def left_pad(seqs: list[list[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, seqs))
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
    return ids, mask


@torch.no_grad()
def choice_logprobs(model, tokenizer, items: list[Item], batch_size: int = 8) -> list[list[float]]:
    """log p(choice | prompt), batches of same-length choices, only the choice positions' logits."""
    device = next(p for p in model.parameters()).device
    pad = tokenizer.pad_token_id or 0
    scores = [[0.0] * len(item.choices) for item in items]
    pairs = []
    for i, item in enumerate(items):
        prompt = prompt_ids(tokenizer, item.user)
        for c, choice in enumerate(item.choices):
            pairs.append((i, c, prompt, tokenizer(choice, add_special_tokens=False)["input_ids"]))
    by_length: dict[int, list] = {}
    for pair in pairs:
        by_length.setdefault(len(pair[3]), []).append(pair)
    for group in by_length.values():
        for start in range(0, len(group), batch_size):
            batch = group[start : start + batch_size]
            ids, mask = left_pad([p + c for _, _, p, c in batch], pad, device)
            k = len(batch[0][3])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            kwargs = {"attention_mask": mask, "position_ids": positions, "logits_to_keep": k + 1, "use_cache": False}
            logp = torch.log_softmax(model(input_ids=ids, **kwargs).logits[:, :-1].float(), -1)
            logp = logp.gather(-1, ids[:, -k:, None]).squeeze(-1).sum(-1)
            for (i, c, _, _), value in zip(batch, logp.tolist(), strict=True):
                scores[i][c] = value
    return scores


@torch.no_grad()
def generate_ids(model, tokenizer, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy continuations through `model.generate`, left-padded, one batch."""
    device = next(p for p in model.parameters()).device
    pad = tokenizer.pad_token_id or 0
    ids, mask = left_pad(prompts, pad, device)
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=pad,
        eos_token_id=sorted(stop_ids(tokenizer)),
    )
    return out[:, ids.shape[1] :].tolist()
