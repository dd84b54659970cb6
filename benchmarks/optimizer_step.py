"""One 8-bit AdamW step over E2B's LoRA tensors: bitsandbytes' own step against medqlora's (no device sync per
tensor), on one GPU in one process, same tensors and gradients. Writes one case JSON:

    python benchmarks/optimizer_step.py --json out.json [--steps 20]

The recipe's LoRA (r 16 on q/k/v/o/gate/up/down) on E2B's 35 layers: the 20 KV-shared layers have no k/v projection
and a double-wide MLP, so 410 tensors; their shapes come from the config, not from a loaded model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import bitsandbytes as bnb
import torch
from bench_train import device_name, package_versions
from workload import LORA, LR

from medqlora.model.optimizer import build_optimizer

CONFIG = Path(__file__).with_name("gemma4-e2b-config.json")


def lora_shapes(text: dict, r: int) -> list[tuple[int, int]]:
    """(rows, cols) of every LoRA A and B matrix of the recipe's targets on a Gemma 4 text config."""
    d, heads, kv_heads = text["hidden_size"], text["num_attention_heads"], text["num_key_value_heads"]
    first_shared = text["num_hidden_layers"] - text["num_kv_shared_layers"]
    shapes = []
    for i, kind in enumerate(text["layer_types"]):
        head_dim = text["global_head_dim"] if kind == "full_attention" else text["head_dim"]
        shared = i >= first_shared
        mlp = text["intermediate_size"] * (2 if shared and text["use_double_wide_mlp"] else 1)
        outs_ins = {"q_proj": (heads * head_dim, d), "o_proj": (d, heads * head_dim)}
        if not shared:
            outs_ins |= {"k_proj": (kv_heads * head_dim, d), "v_proj": (kv_heads * head_dim, d)}
        outs_ins |= {"gate_proj": (mlp, d), "up_proj": (mlp, d), "down_proj": (d, mlp)}
        for out_features, in_features in outs_ins.values():
            shapes += [(r, in_features), (out_features, r)]  # A, B
    return shapes


def time_steps(optimizer: torch.optim.Optimizer, params: list, grads: list, steps: int) -> float:
    """Seconds per step, the device drained before and after (what a training step waits for)."""
    for p, g in zip(params, grads):
        p.grad = g
    optimizer.step()  # state allocation happens here, not in the timed steps
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    device = torch.device("cuda")
    shapes = lora_shapes(json.loads(CONFIG.read_text())["text_config"], LORA["r"])
    generator = torch.Generator(device).manual_seed(0)
    initial = [torch.randn(s, device=device, generator=generator) * 0.02 for s in shapes]
    grads = [torch.randn(s, device=device, generator=generator) * 1e-3 for s in shapes]
    kwargs = {"lr": LR, "betas": (0.9, 0.999), "weight_decay": 0.0}
    results, finals = {}, {}
    for name, make in (
        ("bitsandbytes", lambda ps: bnb.optim.AdamW8bit(ps, **kwargs)),
        ("medqlora", lambda ps: build_optimizer(ps, "adamw_8bit", **kwargs)),
    ):
        params = [torch.nn.Parameter(t.clone()) for t in initial]
        results[name] = time_steps(make(params), params, grads, args.steps)
        finals[name] = params
    equal = all(torch.equal(a, b) for a, b in zip(finals["bitsandbytes"], finals["medqlora"]))
    case = {
        "system": "optimizer-step",
        "rows": "e2b-lora-shapes",
        "tensors": len(shapes),
        "elements": sum(a * b for a, b in shapes),
        "steps_timed": args.steps,
        "step_ms_bitsandbytes": results["bitsandbytes"] * 1e3,
        "step_ms_medqlora": results["medqlora"] * 1e3,
        "speedup": results["bitsandbytes"] / results["medqlora"],
        "same_weights_after_steps": equal,
        "gpu": device_name(device),
        "versions": package_versions(),
    }
    Path(args.json).write_text(json.dumps(case, indent=2))
    print(json.dumps(case), flush=True)


if __name__ == "__main__":
    main()
