"""Attention that follows the samples of a packed row, not the row (`model.lean.attention: varlen`).

A packed row of 2048 tokens holds about five samples of the mix. SDPA with the row's block-diagonal boolean mask runs
the memory-efficient kernel over every block of the row's attention matrix, masked or not. Here:
- sliding-window layers (head_dim 256): FlashAttention-2's varlen kernel, each sample its own sequence, with the
  window and K/V heads shared natively: masked blocks are never computed;
- full-attention layers (head_dim 512, past every flash kernel's limit): `_RowAttention`, each row's attention matrix
  through cuBLAS GEMMs masked to its samples, one head at a time, recomputed in backward (its docstring says why).
The samples arrive as cumulative starts, `cu_seq_lens_q` (transformers' padding-free keyword, passed down to every
attention call), in a fixed number of slots (`data.collate.sample_bounds`), so compiled layers and the CUDA graph
keep one shape; unused slots are empty samples. Without them (generation, padded rows) the call is transformers'
SDPA. On a CPU each sample of a sliding-window layer goes through SDPA on its own (the reference), and full layers
take the GPU's route.
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
    GEMMs 2.1-2.6 ms in a compiled layer (5.4-7.0 eager). With `chunks` > 1 the queries go in static slices, each
    against the keys up to its own end, so the blocks above the causal diagonal are skipped (8 slices compute 56% of
    the matrix; benchmarks/history/masked_block_kernels.py measures whether that pays); blocks masked between samples
    are still computed.
    One head at a time keeps the fp32 scores at [batch, T / chunks, T]; backward recomputes them from the saved
    log-sum-exp (FlashAttention's backward, unfused; docs/benchmarks.md).
    Query [batch, heads, T, dim], key/value [batch, kv_heads, T, dim] in; [batch, T, heads, dim] out."""

    @staticmethod
    def forward(ctx, query, key, value, segments, scale, chunks):
        allowed, edges = _allowed(segments), _edges(query.shape[2], chunks)
        group = query.shape[1] // key.shape[1]
        outs, lses = [], []
        for h in range(query.shape[1]):
            k, v = key[:, h // group], value[:, h // group]
            for start, end in edges:
                scores = _scores(query[:, h, start:end], k[:, :end], allowed[:, start:end, :end], scale)
                lse = torch.logsumexp(scores, dim=-1)
                outs.append(torch.exp(scores - lse[..., None]).to(value.dtype) @ v[:, :end])
                lses.append(lse)
        heads = query.shape[1]
        out = torch.stack([torch.cat(outs[h * len(edges) : (h + 1) * len(edges)], 1) for h in range(heads)], dim=2)
        lse = torch.stack([torch.cat(lses[h * len(edges) : (h + 1) * len(edges)], 1) for h in range(heads)], dim=1)
        ctx.save_for_backward(query, key, value, segments, out, lse)
        ctx.scale, ctx.chunks = scale, chunks
        return out

    @staticmethod
    def backward(ctx, grad):
        # In [key, query] layout: the scores recomputed here are then not the forward's expression, which the
        # compiler's common-subexpression pass would otherwise merge with the forward's and keep alive (every head's
        # fp32 scores, saved across the two), and the transposed products are the GEMMs K/V's gradients need.
        query, key, value, segments, out, lse = ctx.saved_tensors
        allowed, scale, dtype = _allowed(segments).mT, ctx.scale, query.dtype
        edges = _edges(query.shape[2], ctx.chunks)
        wide = torch.promote_types(dtype, torch.float32)
        group = query.shape[1] // key.shape[1]
        delta = (grad.to(wide) * out.to(wide)).sum(-1)  # [batch, T, heads]: rowsum(dO * O), softmax's backward
        dq = []
        dk = torch.zeros(key.shape, dtype=wide, device=key.device)
        dv = torch.zeros(value.shape, dtype=wide, device=value.device)
        for h in range(query.shape[1]):
            k, v, pieces = key[:, h // group], value[:, h // group], []
            for start, end in edges:
                g, q = grad[:, start:end, h], query[:, h, start:end]
                scores = _scores(k[:, :end], q, allowed[:, :end, start:end], scale)
                probs = torch.exp(scores - lse[:, h, None, start:end])  # [batch, key, query]
                dv[:, h // group, :end] += _wide_bmm(probs.to(dtype), g)
                dscores = (probs * (_wide_bmm(v[:, :end], g.mT) - delta[:, None, start:end, h]) * scale).to(dtype)
                pieces.append(dscores.mT @ k[:, :end])
                dk[:, h // group, :end] += _wide_bmm(dscores, q)
            dq.append(torch.cat(pieces, dim=1))
        return torch.stack(dq, dim=1), dk.to(dtype), dv.to(dtype), None, None, None


def _edges(length: int, chunks: int) -> list[tuple[int, int]]:
    """`chunks` contiguous (start, end) slices of `length` positions, as even as integers allow, none empty."""
    n = max(1, min(chunks, length))
    cuts = [i * length // n for i in range(n + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def _allowed(segments: torch.Tensor) -> torch.Tensor:
    """[batch, T, T]: query i sees key j when both are in one sample and j <= i."""
    i = torch.arange(segments.shape[-1], device=segments.device)
    return (segments[:, :, None] == segments[:, None, :]) & (i[None, :] <= i[:, None])


def row_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bounds: torch.Tensor,
    scale: float,
    chunks: int = 1,
) -> torch.Tensor:
    """Causal attention within the samples `bounds` (cumulative starts over the flattened rows) of [batch, heads, T,
    dim] queries and [batch, kv_heads, T, dim] keys and values, queries in `chunks` slices; [batch, T, heads, dim]
    out."""
    batch, _, length, _ = query.shape
    tokens = torch.arange(batch * length, device=bounds.device, dtype=bounds.dtype)
    segments = torch.searchsorted(bounds, tokens, right=True).view(batch, length)
    return _RowAttention.apply(query, key, value, segments, scale, chunks)


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
    if sliding_window is None and (query.device.type != "cuda" or dim > FLASH_MAX_HEAD_DIM):
        return row_attention(query, key, value, bounds, scale), None
    q, k, v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], dim) for t in (query, key, value))
    if query.device.type != "cuda":
        out = _per_sample(q, k, v, bounds, scale, sliding_window)
    elif dim <= FLASH_MAX_HEAD_DIM:
        out = compat.flash_varlen(q, k, v, bounds, length, scale, sliding_window)
    else:
        raise ValueError(f"model.lean.attention=varlen has no kernel for sliding-window layers of head_dim {dim} > 256")
    return out.view(batch, length, heads, dim), None


def register() -> str:
    """Make `varlen_attention` known to transformers (idempotent); returns its name for `set_attn_implementation`.
    Its masks, where transformers builds any (generation), are SDPA's."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(VARLEN, varlen_attention)
    AttentionMaskInterface.register(VARLEN, sdpa_mask)
    return VARLEN
