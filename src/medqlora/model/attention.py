"""Attention that follows the samples of a packed row, not the row (`model.lean.attention: varlen` or `flex`).

A packed row of 2048 tokens holds about five samples of the mix. SDPA with the row's block-diagonal boolean mask runs
the memory-efficient kernel over every block of the row's attention matrix, masked or not. Here:
- sliding-window layers (head_dim 256): FlashAttention-2's varlen kernel, each sample its own sequence, with the
  window and K/V heads shared natively: masked blocks are never computed;
- full-attention layers (head_dim 512, past every flash kernel's limit), with `varlen`: `_RowAttention`, each row's
  attention matrix through cuBLAS GEMMs masked to its samples, one head at a time, recomputed in backward (its
  docstring says why); with `flex`: FlexAttention with a per-sample causal block mask, which skips every masked
  block and holds no score matrix, at tiles small enough for head_dim 512 (training 5% slower on an H100 at the same
  peak: docs/benchmarks.md).
The samples arrive as cumulative starts, `cu_seq_lens_q` (transformers' padding-free keyword, passed down to every
attention call), in a fixed number of slots (`data.collate.sample_bounds`), so compiled layers and the CUDA graph
keep one shape; unused slots are empty samples. Without them (generation, padded rows) the call is transformers'
SDPA. On a CPU each sample of a sliding-window layer goes through SDPA on its own (the reference), and full layers
take the GPU's route (FlexAttention has no backward there: `flex` trains on a GPU only).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from medqlora import compat

NAMES = {"varlen": "medqlora_varlen", "flex": "medqlora_flex"}  # what transformers' registries know each choice by
FLASH_MAX_HEAD_DIM = 256  # FlashAttention-2's largest head size
# FlexAttention's tiles for head_dim 512 (its defaults overflow an SM's 227 KiB of shared memory); the fastest of
# three on an H200 and of two on an H100 (benchmarks/history/masked_block_kernels.py)
FLEX_TILES = {
    "fwd_BLOCK_M": 64, "fwd_BLOCK_N": 32, "fwd_num_stages": 1, "fwd_num_warps": 8,
    "bwd_BLOCK_M1": 32, "bwd_BLOCK_N1": 32, "bwd_BLOCK_M2": 32, "bwd_BLOCK_N2": 32,
    "bwd_num_stages": 1, "bwd_num_warps": 8,
}  # fmt: skip


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


def _wide_bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b at least in fp32: from half-precision inputs an fp32 result, not one rounded to bf16."""
    if a.dtype.itemsize >= 4:
        return a @ b
    if a.is_cuda:
        return torch.bmm(a, b, out_dtype=torch.float32)
    return a.float() @ b.float()  # bmm's out_dtype is CUDA-only; bf16 values are exact in fp32


def _scores(rows: torch.Tensor, columns: torch.Tensor, allowed: torch.Tensor, scale: float) -> torch.Tensor:
    """Masked fp32 scores, rows @ columns^T: [batch, query, key] from (query, key), transposed from (key, query)."""
    return (_wide_bmm(rows, columns.mT) * scale).masked_fill(~allowed, float("-inf"))


class _RowAttention(torch.autograd.Function):
    """Causal attention within each sample of packed rows, as dense GEMMs over each row masked to its samples.

    Hand-written because no fused kernel trains head_dim 512 well on Hopper (FlashAttention and cuDNN stop at 256):
    the memory-efficient varlen kernel took 5.0-7.4 ms a layer forward and backward at 2 x 2048 on an H200, these
    GEMMs 2.1-2.6 ms in a compiled layer (5.4-7.0 eager), though they also compute the masked blocks: faster than
    skipping them by FlexAttention (3.7-5.4 ms on an H100 where these took 1.8-2.0) or by query slices against the
    keys up to their end (4.7-14.9 ms; benchmarks/history/masked_block_kernels.py). One head at a time keeps the fp32
    scores at [batch, T, T]; backward recomputes them from the saved log-sum-exp (FlashAttention's backward, unfused;
    docs/benchmarks.md).
    Query [batch, heads, T, dim], key/value [batch, kv_heads, T, dim] in; [batch, T, heads, dim] out."""

    @staticmethod
    def forward(ctx, query, key, value, segments, scale):
        allowed = _allowed(segments)
        group = query.shape[1] // key.shape[1]
        outs, lses = [], []
        for h in range(query.shape[1]):
            scores = _scores(query[:, h], key[:, h // group], allowed, scale)
            lse = torch.logsumexp(scores, dim=-1)
            outs.append(torch.exp(scores - lse[..., None]).to(value.dtype) @ value[:, h // group])
            lses.append(lse)
        out, lse = torch.stack(outs, dim=2), torch.stack(lses, dim=1)
        ctx.save_for_backward(query, key, value, segments, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad):
        # In [key, query] layout: the scores recomputed here are then not the forward's expression, which the
        # compiler's common-subexpression pass would otherwise merge with the forward's and keep alive (every head's
        # fp32 scores, saved across the two), and the transposed products are the GEMMs K/V's gradients need.
        query, key, value, segments, out, lse = ctx.saved_tensors
        allowed, scale, dtype = _allowed(segments).mT, ctx.scale, query.dtype
        wide = torch.promote_types(dtype, torch.float32)
        group = query.shape[1] // key.shape[1]
        delta = (grad.to(wide) * out.to(wide)).sum(-1)  # [batch, T, heads]: rowsum(dO * O), softmax's backward
        dq = []
        dk = torch.zeros(key.shape, dtype=wide, device=key.device)
        dv = torch.zeros(value.shape, dtype=wide, device=value.device)
        for h in range(query.shape[1]):
            g, k, v, q = grad[:, :, h], key[:, h // group], value[:, h // group], query[:, h]
            probs = torch.exp(_scores(k, q, allowed, scale) - lse[:, h, None, :])  # [batch, key, query]
            dv[:, h // group] += _wide_bmm(probs.to(dtype), g)
            dscores = (probs * (_wide_bmm(v, g.mT) - delta[:, None, :, h]) * scale).to(dtype)
            dq.append(dscores.mT @ k)
            dk[:, h // group] += _wide_bmm(dscores, q)
        return torch.stack(dq, dim=1), dk.to(dtype), dv.to(dtype), None, None


def _allowed(segments: torch.Tensor) -> torch.Tensor:
    """[batch, T, T]: query i sees key j when both are in one sample and j <= i."""
    i = torch.arange(segments.shape[-1], device=segments.device)
    return (segments[:, :, None] == segments[:, None, :]) & (i[None, :] <= i[:, None])


def row_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bounds: torch.Tensor, scale: float
) -> torch.Tensor:
    """Causal attention within the samples `bounds` (cumulative starts over the flattened rows) of [batch, heads, T,
    dim] queries and [batch, kv_heads, T, dim] keys and values; [batch, T, heads, dim] out."""
    segments = _segments(bounds, query.shape[0], query.shape[2])
    return _RowAttention.apply(query, key, value, segments, scale)


def _segments(bounds: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """[batch, length]: each position's sample number, from the cumulative starts over the flattened rows."""
    tokens = torch.arange(batch * length, device=bounds.device, dtype=bounds.dtype)
    return torch.searchsorted(bounds, tokens, right=True).view(batch, length)


@functools.cache
def _compiled_flex() -> Callable:
    """FlexAttention compiled once, for calls outside compiled layers (uncompiled it materialises every score)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_row_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bounds: torch.Tensor, scale: float
) -> torch.Tensor:
    """`row_attention` through FlexAttention: a block mask of each row's samples (causal within each), so no masked
    block is computed. Its backward needs a GPU; on a CPU it runs forward only, uncompiled (the tests' reference)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    batch, _, length, _ = query.shape
    segments = _segments(bounds, batch, length)

    def same_sample_causal(b, h, q, kv):
        return (segments[b, q] == segments[b, kv]) & (kv <= q)

    mask = create_block_mask(same_sample_causal, batch, None, length, length, device=query.device)
    if query.is_cuda:  # inside a compiled layer the layer's compilation fuses it
        flex = flex_attention if torch.compiler.is_compiling() else _compiled_flex()
        out = flex(query, key, value, block_mask=mask, scale=scale, enable_gqa=True, kernel_options=FLEX_TILES)
    else:
        out = flex_attention(query, key, value, block_mask=mask, scale=scale, enable_gqa=True)
    return out.transpose(1, 2)


def varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    choice: str = "varlen",
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function interface: [batch, heads, T, dim] queries, keys and values in,
    [batch, T, heads, dim] out. Per sample when `cu_seq_lens_q` is given, else transformers' SDPA; the full-attention
    layers by `choice`'s route (`varlen`: `row_attention`, `flex`: `flex_row_attention`)."""
    bounds = kwargs.pop("cu_seq_lens_q", None)
    if bounds is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout, scaling, sliding_window=sliding_window, **kwargs
        )
    if dropout:
        raise ValueError(
            f"attention dropout {dropout} is not supported by model.lean.attention varlen or flex (Gemma 4's is 0)"
        )
    batch, heads, length, dim = query.shape
    scale = dim**-0.5 if scaling is None else scaling
    if sliding_window is None and (query.device.type != "cuda" or dim > FLASH_MAX_HEAD_DIM):
        full_layers = flex_row_attention if choice == "flex" else row_attention
        return full_layers(query, key, value, bounds, scale), None
    q, k, v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], dim) for t in (query, key, value))
    if query.device.type != "cuda":
        out = _per_sample(q, k, v, bounds, scale, sliding_window)
    elif dim <= FLASH_MAX_HEAD_DIM:
        out = compat.flash_varlen(q, k, v, bounds, length, scale, sliding_window)
    else:
        raise ValueError(
            f"model.lean.attention varlen and flex have no kernel for sliding-window layers of head_dim {dim} > 256"
        )
    return out.view(batch, length, heads, dim), None


def register(choice: str = "varlen") -> str:
    """Make `varlen_attention` with the full layers of `choice` (`varlen`: row attention, `flex`: FlexAttention)
    known to transformers (idempotent); returns its name for `set_attn_implementation`. Its masks, where
    transformers builds any (generation), are SDPA's."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAMES[choice], functools.partial(varlen_attention, choice=choice))
    AttentionMaskInterface.register(NAMES[choice], sdpa_mask)
    return NAMES[choice]
