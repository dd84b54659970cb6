"""Attention that follows the samples of a packed row, not the row (`model.lean.attention: varlen`).

A packed row of 2048 tokens holds about five samples of the mix. SDPA with the row's block-diagonal mask computes
every block of the row's attention matrix, masked or not; here each sample is its own sequence of one
variable-length kernel call, so masked blocks are never computed:
- sliding-window layers (head_dim 256): FlashAttention-2's varlen kernel with the window, K/V heads shared natively;
- full-attention layers (head_dim 512, past every flash kernel's limit): the memory-efficient (cutlass) kernel over
  the same samples, causal within each, K/V expanded to the query heads (it has no grouped heads).
The samples arrive as cumulative starts, `cu_seq_lens_q` (transformers' padding-free keyword, passed down to every
attention call), in a fixed number of slots (`data.collate.sample_bounds`), so compiled layers and the CUDA graph
keep one shape; unused slots are empty samples. Without them (generation, padded rows) the call is transformers'
SDPA. On a CPU each sample goes through SDPA on its own: the same result, also without the masked blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medqlora import compat

VARLEN = "medqlora_varlen"  # the name transformers' attention and mask registries know this function by
FLASH_MAX_HEAD_DIM = 256  # FlashAttention-2's largest head size


def _per_sample(query, key, value, bounds, scale, window) -> torch.Tensor:
    """Each sample through SDPA on its own ([tokens, heads, dim] in and out): the CPU's route, and the reference."""
    out = torch.empty_like(query)
    edges = bounds.tolist()
    for start, end in zip(edges[:-1], edges[1:]):
        if end == start:
            continue
        q, k, v = (t[start:end].transpose(0, 1) for t in (query, key, value))
        mask = None
        if window is not None:
            i = torch.arange(end - start, device=query.device)
            mask = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=True
        )
        out[start:end] = attended.transpose(0, 1)
    return out


def varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function interface: [batch, heads, T, dim] queries, keys and values in,
    [batch, T, heads, dim] out. Per sample when `cu_seq_lens_q` is given, else transformers' SDPA."""
    bounds = kwargs.pop("cu_seq_lens_q", None)
    if bounds is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout, scaling, sliding_window=sliding_window, **kwargs
        )
    if dropout:
        raise ValueError(
            f"attention dropout {dropout} is not supported by model.lean.attention=varlen (Gemma 4's is 0)"
        )
    batch, heads, length, dim = query.shape
    scale = dim**-0.5 if scaling is None else scaling
    q, k, v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], dim) for t in (query, key, value))
    if query.device.type != "cuda":
        out = _per_sample(q, k, v, bounds, scale, sliding_window)
    elif dim <= FLASH_MAX_HEAD_DIM:
        out = compat.flash_varlen(q, k, v, bounds, length, scale, sliding_window)
    elif sliding_window is not None:
        raise ValueError(f"model.lean.attention=varlen has no kernel for sliding-window layers of head_dim {dim} > 256")
    else:
        k, v = (t.repeat_interleave(heads // t.shape[1], dim=1) for t in (k, v))
        out = compat.efficient_varlen(q[None], k[None], v[None], bounds, length, scale)[0]
    return out.view(batch, length, heads, dim), None


def register() -> str:
    """Make `varlen_attention` known to transformers (idempotent); returns its name for `set_attn_implementation`.
    Its masks, where transformers builds any (generation), are SDPA's."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(VARLEN, varlen_attention)
    AttentionMaskInterface.register(VARLEN, sdpa_mask)
    return VARLEN
