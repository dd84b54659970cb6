# ruff: noqa: B023  (each closure is timed inside the loop iteration that defines it)
"""One-off: per-layer attention fwd+bwd on the mix's real packed micro-batches: dense masked SDPA (today) against
varlen kernels, and the memory-efficient backward's key splits."""

import json
import os
import time
from functools import partial

import torch
import torch.nn.functional as F

dev, B, T, H, W = "cuda", 2, 2048, 8, 512
LENGTHS = json.load(open(os.path.join(os.path.dirname(__file__), "varlen_kernels_lengths.json")))
res = {"torch": torch.__version__}


def timeit(fn, n=10):
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return round((time.perf_counter() - t0) / n * 1e3, 3)


for bi, rows in enumerate(LENGTHS):
    pos = torch.stack([torch.cat([torch.arange(n) for n in r]) for r in rows]).to(dev)
    starts = [0]
    for r in rows:
        for n in r:
            starts.append(starts[-1] + n)
    count = len(starts) - 1
    cu = torch.full((21,), B * T, dtype=torch.int32)
    cu[: count + 1] = torch.tensor(starts, dtype=torch.int32)
    cu = cu.to(dev)
    cu_exact = torch.tensor(starts, dtype=torch.int32, device=dev)
    q_ = torch.arange(T, device=dev)
    causal = q_[None] <= q_[:, None]
    ids = (torch.diff(pos, prepend=pos[:, :1] - 1, dim=-1) != 1).cumsum(-1)
    full = ((ids[:, :, None] == ids[:, None, :]) & causal)[:, None]
    sliding = full & (q_[None] > q_[:, None] - W)
    row = {"samples": count}
    for kind, d, mask in (("full", 512, full), ("sliding", 256, sliding)):
        q = (torch.randn(B, H, T, d, device=dev) * 0.05).bfloat16().requires_grad_()
        k = (torch.randn(B, 1, T, d, device=dev) * 0.05).bfloat16().requires_grad_()
        v = torch.randn(B, 1, T, d, device=dev).bfloat16().requires_grad_()
        g = torch.randn(B, T, H, d, device=dev).bfloat16()

        def dense():
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0, enable_gqa=True).transpose(
                1, 2
            ).backward(g)

        row[f"{kind}_dense_ms"] = timeit(dense)
        qf = q.detach().transpose(1, 2).reshape(1, B * T, H, d).contiguous()
        kf = k.detach().transpose(1, 2).reshape(1, B * T, 1, d).expand(1, B * T, H, d).contiguous()
        vf = v.detach().transpose(1, 2).reshape(1, B * T, 1, d).expand(1, B * T, H, d).contiguous()
        gf = g.reshape(1, B * T, H, d).contiguous()
        if kind == "full":
            for name, bounds in (("exact", cu_exact), ("slots20", cu)):
                out, lse, seed, off, *_ = torch.ops.aten._efficient_attention_forward(
                    qf, kf, vf, None, bounds, bounds, T, T, 0.0, 1, True, scale=1.0
                )
                row[f"eff_fwd_{name}_ms"] = timeit(
                    lambda: torch.ops.aten._efficient_attention_forward(
                        qf, kf, vf, None, bounds, bounds, T, T, 0.0, 1, True, scale=1.0
                    )
                )
                ref = None
                for splits in (None, 1, 2, 4, 8, 16, 32):
                    try:
                        bw = partial(
                            torch.ops.aten._efficient_attention_backward,
                            gf,
                            qf,
                            kf,
                            vf,
                            None,
                            out,
                            bounds,
                            bounds,
                            T,
                            T,
                            lse,
                            0.0,
                            seed,
                            off,
                            1,
                            False,
                            scale=1.0,
                            num_splits_key=splits,
                        )
                        dq = bw()[0]
                        if ref is None:
                            ref = dq
                        row[f"eff_bwd_{name}_splits{splits}_ms"] = timeit(bw)
                        row[f"eff_bwd_{name}_splits{splits}_dq_diff"] = float((dq.float() - ref.float()).abs().max())
                    except Exception as e:
                        row[f"eff_bwd_{name}_splits{splits}"] = str(e)[:200]
        else:
            qf3, kf3, vf3 = (
                qf[0],
                k.detach().transpose(1, 2).reshape(B * T, 1, d).contiguous(),
                v.detach().transpose(1, 2).reshape(B * T, 1, d).contiguous(),
            )
            for name, bounds in (("exact", cu_exact), ("slots20", cu)):
                qq, kk, vv = (t.clone().requires_grad_() for t in (qf3, kf3, vf3))

                def fl():
                    torch.ops.aten._flash_attention_forward(
                        qq,
                        kk,
                        vv,
                        bounds,
                        bounds,
                        T,
                        T,
                        0.0,
                        True,
                        False,
                        scale=1.0,
                        window_size_left=W - 1,
                        window_size_right=0,
                    )[0].backward(gf[0])

                row[f"flash_{name}_ms"] = timeit(fl)
        print(bi, row, flush=True)
    res[f"batch{bi}"] = row
json.dump(res, open(os.path.join(os.environ.get("OUT", "/tmp"), "varlen-kernels.json"), "w"), indent=1)
