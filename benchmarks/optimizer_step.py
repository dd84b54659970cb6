"""One 8-bit AdamW step over E2B's LoRA tensors: bitsandbytes' own step against medqlora's (no device sync per
tensor), on one GPU in one process, same tensors and gradients. Writes one case JSON:

    python benchmarks/optimizer_step.py --json out.json [--steps 20]

The recipe's LoRA (r 16 on q/k/v/o/gate/up/down) on E2B's 35 layers: the 20 KV-shared layers have no k/v projection
and a double-wide MLP, so 410 tensors; their shapes come from the model built on the meta device from the config.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import bitsandbytes as bnb
import torch
from bench_train import device_name, package_versions
from flops import lora_target_linears, meta_text_model
from workload import LORA, LR

from medqlora.model.optimizer import build_optimizer

CONFIG = Path(__file__).with_name("gemma4-e2b-config.json")


def lora_shapes(config_file: Path, r: int, targets: list[str]) -> list[tuple[int, int]]:
    """(rows, cols) of every LoRA A and B matrix of the recipe's adapter on the model of `config_file`."""
    from transformers import Gemma4Config

    config = Gemma4Config(**{k: v for k, v in json.loads(config_file.read_text()).items() if k != "model_type"})
    linears = lora_target_linears(meta_text_model(config.get_text_config()), targets)
    return [shape for m in linears for shape in ((r, m.in_features), (m.out_features, r))]  # A, B


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
    shapes = lora_shapes(CONFIG, LORA["r"], LORA["targets"])
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
