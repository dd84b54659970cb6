"""Gemma 4's attention masks for a training micro-batch, built on the GPU from the position ids alone.

transformers builds the same masks (`create_causal_mask`, `create_sliding_window_causal_mask`) but decides on the host
whether a batch is packed and whether a mask is needed at all, reading GPU values to do so: a CUDA graph cannot
capture that. Here the masks are always tensors and nothing leaves the GPU, so a graph captured on one micro-batch is
right for any other of its shape. The text model takes them as its `attention_mask` dict, one mask per layer type.
"""

from __future__ import annotations

import torch


def sample_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Which packed sample each position belongs to: a new sample starts wherever the position does not follow
    on from the one before (transformers' `find_packed_sequence_indices`)."""
    first = position_ids[:, :1] - 1
    return (torch.diff(position_ids, prepend=first, dim=-1) != 1).cumsum(-1)


def packed_attention_masks(position_ids: torch.Tensor, sliding_window: int | None) -> dict[str, torch.Tensor]:
    """Boolean [batch, 1, T, T] masks (True: attend) for full and sliding-window attention over packed rows.

    A query sees keys of its own sample at or before it; sliding-window layers only the last `sliding_window` of
    those. Rows of one sample each get the plain causal mask, which is what SDPA's is_causal computes."""
    length = position_ids.shape[1]
    q = torch.arange(length, device=position_ids.device)
    causal = q[None, :] <= q[:, None]  # [query, key]
    ids = sample_ids(position_ids)
    full = (ids[:, :, None] == ids[:, None, :]) & causal
    masks = {"full_attention": full[:, None]}
    if sliding_window is not None:
        masks["sliding_attention"] = (full & (q[None, :] > q[:, None] - sliding_window))[:, None]
    return masks
