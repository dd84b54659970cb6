"""Gemma 4's KV-shared layers computed only at the positions whose output is read.

E2B's last 20 of 35 decoder layers reuse the keys and values of earlier layers and write none of their own, so a
position's state in them matters only if its output is read; they hold 70% of the model's linear work (their MLPs
are double-wide). Scoring reads a few positions of each row (those that predict a choice's tokens), so inside
`only_at` those layers see just those queries, over every key: the outputs at the kept positions are unchanged.
transformers 5.2x does the same inside the text model for an integer `logits_to_keep` (the last N positions); 5.17
does not, and scoring keeps positions spread through a row, so here forward pre-hooks (a public PyTorch API) slice
each KV-shared layer's inputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def _take(tensor: torch.Tensor, keep: torch.Tensor, dim: int) -> torch.Tensor:
    """`tensor`'s entries at the row-wise indices `keep` [batch, K] along `dim` (batch is dim 0)."""
    index = keep.view(keep.shape[0], *[1] * (dim - 1), keep.shape[1], *[1] * (tensor.dim() - dim - 1))
    sizes = list(tensor.shape)
    sizes[0], sizes[dim] = keep.shape
    return torch.gather(tensor.expand(keep.shape[0], *tensor.shape[1:]), dim, index.expand(sizes))


@contextmanager
def only_at(text_model: nn.Module, keep: torch.Tensor) -> Iterator[bool]:
    """Inside the block the text model's KV-shared layers compute only the positions `keep` [batch, K] (column
    indices per row; repeat one to pad a row), so its `last_hidden_state` is [batch, K, hidden], row-wise in `keep`'s
    order. Yields whether it does: a model without KV-shared layers is unchanged (as is a batch of width 1). The
    forward must be given tensor masks (`model.masks`)."""
    config = text_model.config
    shared = getattr(config, "num_kv_shared_layers", 0) or 0
    first = config.num_hidden_layers - shared
    layers = list(text_model.layers[first : config.num_hidden_layers]) if shared else []

    def slice_inputs(module: nn.Module, args: tuple, kwargs: dict):
        hidden, per_layer, *rest = args
        cos, sin = kwargs["position_embeddings"]  # full width at every layer: the model computes them once
        if cos.shape[1] == 1:
            return None
        if module is layers[0]:  # later layers get the already sliced states from the one before
            hidden = _take(hidden, keep, 1)
        if per_layer is not None:
            per_layer = _take(per_layer, keep, 1)
        kwargs["position_embeddings"] = (_take(cos, keep, 1), _take(sin, keep, 1))
        mask = kwargs.get("attention_mask")
        if not isinstance(mask, torch.Tensor):  # SDPA's is_causal would align K queries with the first K keys
            raise ValueError(
                "only_at needs tensor attention masks (model.masks), not transformers' implicit causal one"
            )
        kwargs["attention_mask"] = _take(mask, keep, 2)  # [batch, 1, queries, keys]: keep the query rows
        if isinstance(kwargs.get("position_ids"), torch.Tensor):
            kwargs["position_ids"] = _take(kwargs["position_ids"].expand(keep.shape[0], -1), keep, 1)
        return (hidden, per_layer, *rest), kwargs

    handles = [layer.register_forward_pre_hook(slice_inputs, with_kwargs=True) for layer in layers]
    try:
        yield bool(layers)
    finally:
        for handle in handles:
            handle.remove()
