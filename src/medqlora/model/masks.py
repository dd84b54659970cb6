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


def shared_prompt_masks(
    group_ids: torch.Tensor, branch_ids: torch.Tensor, position_ids: torch.Tensor, sliding_window: int | None
) -> dict[str, torch.Tensor]:
    """Boolean [batch, 1, T, T] masks for rows that pack several prompts, each followed by its continuations.

    A query sees the keys at or before it of its own group (one prompt and its continuations) that are in the prompt
    (branch 0) or in its own continuation, so every continuation is scored as if it alone followed the prompt.
    Sliding-window layers see only keys fewer than `sliding_window` positions back (positions, not columns:
    continuations of one prompt share positions)."""
    length = group_ids.shape[1]
    q = torch.arange(length, device=group_ids.device)
    causal = q[None, :] <= q[:, None]
    same_group = group_ids[:, :, None] == group_ids[:, None, :]
    visible = (branch_ids[:, None, :] == 0) | (branch_ids[:, :, None] == branch_ids[:, None, :])
    full = causal & same_group & visible
    masks = {"full_attention": full[:, None]}
    if sliding_window is not None:
        near = position_ids[:, :, None] - position_ids[:, None, :] < sliding_window
        masks["sliding_attention"] = (full & near)[:, None]
    return masks


def cache_masks(
    query_slots: torch.Tensor, first_slot: torch.Tensor, length: int, sliding_window: int | None
) -> dict[str, torch.Tensor]:
    """Boolean [batch, 1, T, length] masks for queries at cache slots `query_slots` [T] over a KV cache of `length`
    slots, in which row r's tokens start at slot `first_slot[r]` (left padding before it).

    A query sees the row's keys at or before its slot; sliding-window layers only those fewer than `sliding_window`
    slots back. A padding query sees itself, so no row of the attention is empty (an empty row is NaN, and NaN keys
    would reach real queries through the zero weights of a masked softmax)."""
    k = torch.arange(length, device=query_slots.device)[None, None, :]
    q = query_slots[None, :, None]
    full = ((k <= q) & (k >= first_slot[:, None, None])) | (k == q)
    masks = {"full_attention": full[:, None]}
    if sliding_window is not None:
        masks["sliding_attention"] = (full & (q - k < sliding_window))[:, None]
    return masks
