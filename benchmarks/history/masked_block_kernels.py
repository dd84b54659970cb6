# ruff: noqa: B023  (each closure is timed inside the loop iteration that defines it)
"""One-off: skipping masked blocks on the full-attention layers (E2B: 8 query heads, 1 K/V head, head_dim 512,
2 x 2048) on the mix's real packed micro-batches. `model.attention.row_attention` with 1 query slice (every block
computed) and with 4 and 8 slices (the blocks above the causal diagonal skipped), compiled; against
FlexAttention with a per-sample block mask (every masked block skipped, causal and between samples) and tiles small
enough for head_dim 512. Forward + backward time, peak memory above the inputs, each route's relative error (norm)
against fp32 per-sample SDPA, and the share of the row's attention matrix a perfect block skipper would compute."""

import json
import os
import time

import torch
import torch.nn.functional as F

from medqlora.model.attention import row_attention

torch._dynamo.config.cache_size_limit = 64
dev, B, T, H, D = "cuda", 2, 2048, 8, 512
LENGTHS = json.load(open(os.path.join(os.path.dirname(__file__), "varlen_kernels_lengths.json")))
res = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name()}
FLEX_OPTIONS = {  # tile sizes under the SM's 227 KiB of shared memory at head_dim 512
    "flex_32x16_bwd16": {
        "fwd_BLOCK_M": 32, "fwd_BLOCK_N": 16, "fwd_num_stages": 1, "fwd_num_warps": 4,
        "bwd_BLOCK_M1": 16, "bwd_BLOCK_N1": 16, "bwd_BLOCK_M2": 16, "bwd_BLOCK_N2": 16,
        "bwd_num_stages": 1, "bwd_num_warps": 4,
    },
    "flex_64x32_bwd32_w8": {
        "fwd_BLOCK_M": 64, "fwd_BLOCK_N": 32, "fwd_num_stages": 1, "fwd_num_warps": 8,
        "bwd_BLOCK_M1": 32, "bwd_BLOCK_N1": 32, "bwd_BLOCK_M2": 32, "bwd_BLOCK_N2": 32,
        "bwd_num_stages": 1, "bwd_num_warps": 8,
    },
}  # fmt: skip


def timeit(fn, n=10):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return round((time.perf_counter() - t0) / n * 1e3, 3), round((torch.cuda.max_memory_allocated() - base) / 2**20)


def reference(q, k, v, bounds):
    out = torch.empty(B * T, H, D, device=dev)
    qf, kf, vf = (t.float().transpose(1, 2).reshape(B * T, t.shape[1], D) for t in (q, k, v))
    edges = bounds.tolist()
    for s, e in zip(edges[:-1], edges[1:]):
        if e > s:
            sl = [t[s:e].transpose(0, 1) for t in (qf, kf, vf)]
            out[s:e] = F.scaled_dot_product_attention(*sl, is_causal=True, scale=1.0, enable_gqa=True).transpose(0, 1)
    return out.view(B, T, H, D)


def sample_mask(bounds, block):
    from torch.nn.attention.flex_attention import create_block_mask

    tokens = torch.arange(B * T, device=dev, dtype=bounds.dtype)
    segments = torch.searchsorted(bounds, tokens, right=True).view(B, T)

    def same_sample_causal(b, h, q, kv):
        return (segments[b, q] == segments[b, kv]) & (kv <= q)

    return create_block_mask(same_sample_causal, B, None, T, T, device=dev, BLOCK_SIZE=block)


compiled_rows = torch.compile(row_attention, dynamic=False)
try:
    from torch.nn.attention.flex_attention import flex_attention

    compiled_flex = torch.compile(flex_attention, dynamic=False)
except Exception as e:  # noqa: BLE001
    compiled_flex, res["flex_import"] = None, repr(e)
for bi, rows in enumerate(LENGTHS):
    starts = [0]
    for r in rows:
        for n in r:
            starts.append(starts[-1] + n)
    bounds = torch.full((21,), B * T, dtype=torch.int32)
    bounds[: len(starts)] = torch.tensor(starts, dtype=torch.int32)
    bounds = bounds.to(dev)
    torch.manual_seed(bi)
    leaves = [(torch.randn(B, h, T, D, device=dev) * 0.25).bfloat16().requires_grad_() for h in (H, 1, 1)]
    g = torch.randn(B, T, H, D, device=dev).bfloat16()
    ref_leaves = [t.detach().float().requires_grad_() for t in leaves]
    ref_out = reference(*ref_leaves, bounds)
    ref_grads = torch.autograd.grad(ref_out, ref_leaves, g.float())
    needed = sum(n * (n + 1) / 2 for r in rows for n in r) / (B * T * T)
    row = {"samples": len(starts) - 1, "needed_share": round(needed, 4)}
    routes = [(f"rows_c{c}", lambda q, k, v, b, c=c: compiled_rows(q, k, v, b, 1.0, c)) for c in (1, 4, 8)]
    if compiled_flex is not None:
        for block in (128,):
            try:
                mask = sample_mask(bounds, block)
                row[f"block_mask{block}_share"] = round(1 - float(mask.sparsity()) / 100, 4)
                row[f"block_mask{block}_build_ms"] = timeit(lambda: sample_mask(bounds, block))[0]
            except Exception as e:  # noqa: BLE001
                row[f"block_mask{block}"] = f"{type(e).__name__}: {str(e)[:300]}"
                continue
            for name, opts in FLEX_OPTIONS.items():
                routes.append(
                    (
                        f"{name}_mask{block}",
                        lambda q, k, v, b, m=mask, o=opts: compiled_flex(
                            q, k, v, block_mask=m, scale=1.0, enable_gqa=True, kernel_options=o
                        ).transpose(1, 2),
                    )
                )
    for name, fn in routes:
        try:
            out = fn(*leaves, bounds)
            grads = torch.autograd.grad(out, leaves, g)
            row[f"{name}_rel_err"] = [
                round(float((a.float() - b).norm() / b.norm()), 5) for a, b in zip((out, *grads), (ref_out, *ref_grads))
            ]
            row[f"{name}_ms"], row[f"{name}_peak_mib"] = timeit(
                lambda: torch.autograd.grad(fn(*leaves, bounds), leaves, g)
            )
        except Exception as e:  # a route that fails is a result too
            row[name] = f"{type(e).__name__}: {str(e)[:300]}"
        print(bi, name, {k: v for k, v in row.items() if k.startswith(name)}, flush=True)
    res[f"batch{bi}"] = row
    json.dump(res, open(os.path.join(os.environ.get("OUT", "/tmp"), "masked-block-kernels.json"), "w"), indent=1)
