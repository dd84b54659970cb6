"""Causal-LM loss without materialising [batch, seq, vocab] logits.

Gemma 4's vocabulary is 262,144: full logits for 2 x 2048 tokens are 4 GiB in fp32 and soft-capping
keeps more copies for backward. Here only label positions are projected, a chunk at a time, in fp32,
with Gemma's final-logit soft-capping, and each chunk is recomputed in backward (activation checkpoint),
so the peak is one chunk's logits. Hand-written because transformers computes full logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from medqlora.data.chat import IGNORE_INDEX


@dataclass
class LossOutput:
    """Mean loss over supervised tokens, the predicted token per supervised position and its target."""

    loss: torch.Tensor
    preds: torch.Tensor
    targets: torch.Tensor


def _chunk_loss(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = (hidden @ weight.t()).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="sum"), logits.argmax(-1)


def chunked_lm_loss(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    softcap: float | None,
    chunk_size: int = 256,
) -> LossOutput:
    """Next-token cross-entropy over positions whose label is not -100 (shifted as in transformers)."""
    targets = labels[:, 1:].reshape(-1)
    keep = targets != IGNORE_INDEX
    hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])[keep]
    targets = targets[keep]
    total = hidden.new_zeros((), dtype=torch.float32)
    preds = []
    for start in range(0, targets.numel(), chunk_size):
        part = slice(start, start + chunk_size)
        loss, pred = checkpoint(_chunk_loss, hidden[part], lm_head_weight, targets[part], softcap, use_reentrant=False)
        total = total + loss
        preds.append(pred)
    n = max(targets.numel(), 1)
    pred = torch.cat(preds) if preds else targets.new_empty(0)
    return LossOutput(loss=total / n, preds=pred, targets=targets)


def full_logits_loss(logits: torch.Tensor, labels: torch.Tensor) -> LossOutput:
    """The same loss from full (already soft-capped) logits: the plain path, kept for comparison."""
    targets = labels[:, 1:].reshape(-1)
    keep = targets != IGNORE_INDEX
    flat = logits[:, :-1].reshape(-1, logits.shape[-1])[keep].float()
    loss = F.cross_entropy(flat, targets[keep], reduction="mean") if keep.any() else flat.sum() * 0
    return LossOutput(loss=loss, preds=flat.argmax(-1), targets=targets[keep])
