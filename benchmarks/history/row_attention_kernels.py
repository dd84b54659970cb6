# ruff: noqa: B023  (each closure is timed inside the loop iteration that defines it)
"""One-off: the full-attention layers' kernels on the mix's real packed micro-batches (E2B: 8 query heads, 1 K/V
head, head_dim 512, 2 x 2048): the memory-efficient varlen kernel with 8 key splits (issue #28's first route)
against `model.attention.row_attention` (dense GEMMs masked to the samples), eager and compiled. Forward + backward
time, the peak memory above the inputs, and each route's largest error against fp32 per-sample SDPA."""

import json
import os
import time

import torch
import torch.nn.functional as F

from medqlora import compat
from medqlora.model.attention import row_attention

dev, B, T, H, D = "cuda", 2, 2048, 8, 512
LENGTHS = json.load(open(os.path.join(os.path.dirname(__file__), "varlen_kernels_lengths.json")))
res = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name()}


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


def efficient(q, k, v, bounds):
    qf, kf, vf = (t.transpose(1, 2).reshape(1, B * T, t.shape[1], D) for t in (q, k, v))
    kf, vf = (t.repeat_interleave(H, dim=2) for t in (kf, vf))
    return compat.efficient_varlen(qf, kf, vf, bounds, T, 1.0).view(B, T, H, D)


def reference(q, k, v, bounds):
    out = torch.empty(B * T, H, D, device=dev)
    qf, kf, vf = (t.float().transpose(1, 2).reshape(B * T, t.shape[1], D) for t in (q, k, v))
    edges = bounds.tolist()
    for s, e in zip(edges[:-1], edges[1:]):
        if e > s:
            sl = [t[s:e].transpose(0, 1) for t in (qf, kf, vf)]
            out[s:e] = F.scaled_dot_product_attention(*sl, is_causal=True, scale=1.0, enable_gqa=True).transpose(0, 1)
    return out.view(B, T, H, D)


compiled_rows = torch.compile(row_attention, dynamic=False)
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
    row = {"samples": len(starts) - 1}
    for name, fn in (
        ("efficient8", efficient),
        ("rows_eager", lambda q, k, v, b: row_attention(q, k, v, b, 1.0)),
        ("rows_compiled", lambda q, k, v, b: compiled_rows(q, k, v, b, 1.0)),
    ):
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
    print(bi, row, flush=True)
    res[f"batch{bi}"] = row
json.dump(res, open(os.path.join(os.environ.get("OUT", "/tmp"), "row-attention-kernels.json"), "w"), indent=1)
