"""Causal-LM loss without materialising [batch, seq, vocab] logits.

Gemma 4's vocabulary is 262,144: full logits for 2 x 2048 tokens are 4 GiB in fp32 and soft-capping
keeps more copies for backward. Here only label positions are projected, a chunk at a time, in fp32,
with Gemma's final-logit soft-capping, and each chunk is recomputed in backward (activation checkpoint),
so the peak is one chunk's logits. Hand-written because transformers computes full logits.

With `grad_in_forward` each chunk's gradient with respect to its hidden states is computed right after its loss,
while its logits exist, and kept (as small as the hidden states themselves); backward only scales it. That saves
recomputing every chunk's [chunk x vocab] logits in backward (a third of the LM head's work, 4-5% of a step's FLOPs
on E2B). It needs the head's weight frozen, as it is in QLoRA (the tied token embedding).

With `fixed_shape` every position is projected and unsupervised ones weigh zero, instead of selecting the supervised
ones: the selection's size is data, which a CUDA graph cannot capture (model/step.py). It costs the LM head's work
on the unsupervised positions, and `preds`/`targets` then cover every position (targets -100 where unsupervised).
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


class _LossGradInForward(torch.autograd.Function):
    """Summed loss of all chunks, their argmax, and d(loss)/d(hidden) computed in forward (see module docstring).
    Positions whose target is -100 add nothing to either."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, softcap, chunk_size):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden)
        preds = []
        keep = targets != IGNORE_INDEX
        safe_targets = targets.masked_fill(~keep, 0)
        keep = keep.to(torch.float32)
        for start in range(0, targets.numel(), chunk_size):
            part = slice(start, start + chunk_size)
            # in place throughout: two [chunk x vocab] fp32 buffers at a time, not the five a plain version holds
            logits = (hidden[part] @ weight.t()).float()
            if softcap:
                logits.div_(softcap).tanh_().mul_(softcap)
            preds.append(logits.argmax(-1))
            d_logits = torch.log_softmax(logits, dim=-1)
            total += -(d_logits.gather(1, safe_targets[part, None]).squeeze(1) * keep[part]).sum()
            d_logits.exp_()  # softmax - one_hot(target): d(summed cross-entropy)/d(capped logits)
            d_logits[torch.arange(d_logits.shape[0], device=d_logits.device), safe_targets[part]] -= keep[part]
            if softcap:  # d(softcap * tanh(x / softcap))/dx = 1 - tanh^2
                d_logits.mul_(logits.div_(softcap).square_().neg_().add_(1))
            del logits
            grad[part] = (d_logits.to(weight.dtype) @ weight).mul_(keep[part, None].to(weight.dtype))
        ctx.save_for_backward(grad)
        pred = torch.cat(preds) if preds else targets.new_empty(0)
        ctx.mark_non_differentiable(pred)
        return total, pred

    @staticmethod
    def backward(ctx, grad_total, grad_pred):
        (grad,) = ctx.saved_tensors
        return grad * grad_total.to(grad.dtype), None, None, None, None


def chunked_lm_loss(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    softcap: float | None,
    chunk_size: int = 256,
    grad_in_forward: bool = False,
    fixed_shape: bool = False,
) -> LossOutput:
    """Next-token cross-entropy over positions whose label is not -100 (shifted as in transformers).

    `fixed_shape`: weigh unsupervised positions zero instead of selecting supervised ones (see module docstring)."""
    targets = labels[:, 1:].reshape(-1)
    hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    if fixed_shape:
        n = (targets != IGNORE_INDEX).sum().clamp(min=1)  # on the device: nothing waits for the GPU
    else:
        keep = targets != IGNORE_INDEX
        hidden, targets = hidden[keep], targets[keep]
        n = max(targets.numel(), 1)
    if grad_in_forward and hidden.requires_grad and torch.is_grad_enabled():
        if lm_head_weight.requires_grad:
            raise ValueError("model.lean.loss_grad_in_forward needs a frozen LM head; set it to false")
        total, pred = _LossGradInForward.apply(hidden, lm_head_weight, targets, softcap, chunk_size)
        return LossOutput(loss=total / n, preds=pred, targets=targets)
    total = hidden.new_zeros((), dtype=torch.float32)
    preds = []
    for start in range(0, targets.numel(), chunk_size):
        part = slice(start, start + chunk_size)
        loss, pred = checkpoint(_chunk_loss, hidden[part], lm_head_weight, targets[part], softcap, use_reentrant=False)
        total = total + loss
        preds.append(pred)
    pred = torch.cat(preds) if preds else targets.new_empty(0)
    return LossOutput(loss=total / n, preds=pred, targets=targets)


def full_logits_loss(logits: torch.Tensor, labels: torch.Tensor) -> LossOutput:
    """The same loss from full (already soft-capped) logits: the plain path, kept for comparison."""
    targets = labels[:, 1:].reshape(-1)
    keep = targets != IGNORE_INDEX
    flat = logits[:, :-1].reshape(-1, logits.shape[-1])[keep].float()
    loss = F.cross_entropy(flat, targets[keep], reduction="mean") if keep.any() else flat.sum() * 0
    return LossOutput(loss=loss, preds=flat.argmax(-1), targets=targets[keep])
