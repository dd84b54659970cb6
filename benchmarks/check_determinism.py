"""Are GPU runs of the recipe's default repeatable? `medqlora fit` as a user runs it (the recipe YAML, the real E2B
architecture with random weights, rows of the mix's lengths), one GPU, in one device call:

    python benchmarks/check_determinism.py --ckpt /tmp/e2b-random --work /tmp/det --json $OUT/determinism.json
    python benchmarks/check_determinism.py --ckpt tiny --work /tmp/det --json /tmp/det.json --rows 60   # CPU smoke

Runs, each `python -m medqlora fit --config configs/gemma4-e2b-medical.yaml --config OVERLAY` for `--steps` optimizer
steps: the default twice, `--trainer.deterministic true` twice, and a deterministic run stopped by SIGTERM half way
and resumed from its `interrupted.ckpt`. The overlay only points the sources at local files and sets a shorter
accumulation (`--accumulate`) so that a short run has several optimizer steps; every switch is the recipe's.
Reported: per pair of adapters, how many values are bit-identical, the largest difference, and LoRA B's difference
relative to its norm; per run, supervised tokens/s over the optimizer steps after the first two (compilation and
graph capture) and the peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import yaml
from workload import MIX, copy_tiny_tokenizer  # MIX: (prompt, answer) median tokens per source, sigma 0.5

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "gemma4-e2b-medical.yaml"
CPU: list[str] = []  # the CPU smoke's overrides
RUN_TIMEOUT = int(os.environ.get("RUN_TIMEOUT", 300))  # seconds one fit may take


class StepTimes(L.Callback):
    """Appends `time.perf_counter()` and the micro-batch's supervised tokens per trained micro-batch to `path`."""

    def __init__(self, path: str = "steps.jsonl"):
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        supervised = int((batch["labels"] != -100).sum())
        with open(self.path, "a") as f:
            f.write(
                json.dumps({"t": time.perf_counter(), "step": trainer.global_step, "supervised": supervised}) + "\n"
            )


class TermAtBatch(L.Callback):
    """SIGTERMs this process after micro-batch `batch` (0-based) trains: an operator's or a scheduler's stop."""

    def __init__(self, batch: int):
        self.batch, self.seen = batch, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.seen == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)
        self.seen += 1


def _words(rng: random.Random, n: int) -> str:
    vocab = ["patient", "fever", "renal", "dose", "acute", "chronic", "therapy", "cardiac", "lesion", "serum"]
    return " ".join(rng.choice(vocab) + str(rng.randrange(100)) for _ in range(max(1, n)))


def _length(rng: random.Random, median: int) -> int:
    return round(rng.lognormvariate(math.log(median), 0.5))


def write_sources(work: Path, rows: int, scale: float) -> dict[str, Path]:
    """Made-up rows with each source's exact columns and the mix's length profile (`scale`: words per token)."""
    rng, paths = random.Random(0), {}
    for name, (prompt, answer, _) in MIX.items():
        out = []
        for i in range(rows):
            question = f"case {i}: " + _words(rng, _length(rng, prompt * scale))
            reply = _words(rng, _length(rng, answer * scale))
            if name == "medqa":
                options = {k: _words(rng, 3) for k in "ABCD"}
                out.append({"instruction": "Answer the question.", "input": f"Q: {question} \n{options},",
                            "output": f"A: {options['A']}"})  # fmt: skip
            elif name == "o1":
                out.append({"Question": question, "Complex_CoT": reply, "Response": _words(rng, round(40 * scale))})
            else:
                out.append({"instruction": question, "input": "<noinput>", "output": reply})
        paths[name] = work / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in out))
    return paths


def write_overlay(work: Path, sources: dict[str, Path], accumulate: int) -> Path:
    """The recipe's sources on the local files (each drawn once), no decontamination set, no validation, and the
    recipe's callbacks with a shorter accumulation."""
    recipe = yaml.safe_load(RECIPE.read_text())
    formats = {s["name"]: s["format"] for s in recipe["data"]["sources"]}
    callbacks = recipe["trainer"]["callbacks"]
    for c in callbacks:
        if c["class_path"].endswith("GradientAccumulation"):
            c["init_args"]["accumulate"] = accumulate
    overlay = {
        "data": {
            "sources": [{"name": n, "format": formats[n], "path": str(p)} for n, p in sources.items()],
            "decontaminate": None,
            "sample_policy": "all",
        },
        "trainer": {"callbacks": callbacks, "limit_val_batches": 0, "log_every_n_steps": 1},
    }
    path = work / "overlay.yaml"
    path.write_text(yaml.safe_dump(overlay, sort_keys=False))
    return path


def fit(
    work: Path, name: str, ckpt: str, overlay: Path, steps: int, *extra: str, expect: int = 0, folder: str | None = None
) -> dict:
    """One `python -m medqlora fit` in `work/folder` (default: `name`); its wall time, rate, memory and log tail."""
    run = work / (folder or name)
    run.mkdir(parents=True, exist_ok=True)
    log = run / f"{name}-steps.jsonl"
    cmd = [sys.executable, "-m", "medqlora", "fit", "--config", str(RECIPE), "--config", str(overlay),
           "--model.name_or_path", ckpt, "--trainer.max_steps", str(steps),
           "--trainer.callbacks+=check_determinism.StepTimes", f"--trainer.callbacks.path={log}",
           *CPU, *extra]  # fmt: skip
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=run, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as late:
        stderr = late.stderr.decode() if isinstance(late.stderr, bytes) else late.stderr or ""
        done = subprocess.CompletedProcess(cmd, "timeout", "", stderr)
    wall = time.perf_counter() - start
    (run / "stderr.log").write_text(done.stderr)
    print(f"== {name}: rc {done.returncode} in {wall:.0f} s", flush=True)
    if done.returncode != expect:
        print(done.stderr[-4000:], flush=True)
    ticks = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    timed = [t for t in ticks if t["step"] > 2]  # after two optimizer steps: compiled, captured, warm
    rate = None
    if len(timed) > 1:
        rate = sum(t["supervised"] for t in timed[1:]) / (timed[-1]["t"] - timed[0]["t"])
    memory = sorted(run.glob("runs/*/*/memory.json"))
    return {
        "name": name,
        "rc": done.returncode,
        "wall_s": round(wall, 1),
        "supervised_tok_s": round(rate) if rate else None,
        "timed_micro_batches": max(len(timed) - 1, 0),
        "memory": json.loads(memory[-1].read_text()) if memory else None,
        "adapters": [str(p) for p in sorted(run.glob("runs/*/*/adapter/adapter_model.safetensors"))],
        "tail": done.stderr.strip().splitlines()[-3:],
    }


def compare(a: str, b: str) -> dict:
    """How far two adapters are apart."""
    from safetensors.torch import load_file

    x, y = load_file(a), load_file(b)
    same = sum(int((x[k] == y[k]).sum()) for k in x)
    total = sum(v.numel() for v in x.values())
    b_keys = [k for k in x if "lora_B" in k]
    b_rel = max(float((x[k].float() - y[k].float()).norm() / y[k].float().norm().clamp_min(1e-30)) for k in b_keys)
    return {
        "identical": same == total,
        "equal_values": same,
        "values": total,
        "max_abs_diff": max(float((x[k].float() - y[k].float()).abs().max()) for k in x),
        "lora_b_worst_relative_diff": b_rel,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--accumulate", type=int, default=4)
    parser.add_argument("--rows", type=int, default=150, help="rows per source")
    parser.add_argument("--only", nargs="*", default=None, help="run only these runs (default, deterministic, resume)")
    args = parser.parse_args()

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    if args.ckpt == "tiny":  # the CPU smoke: the tiny model (its tokenizer spends a token per few characters)
        CPU.extend(["--trainer.accelerator", "cpu", "--data.max_length", "256"])
    else:
        copy_tiny_tokenizer(Path(args.ckpt))
    from medqlora.hub import load_tokenizer

    per_word = (
        len(load_tokenizer(args.ckpt)(_words(random.Random(1), 2000), add_special_tokens=False)["input_ids"]) / 2000
    )
    scale = (1 / 8 if args.ckpt == "tiny" else 1) / per_word  # the smoke's rows are 256 tokens, not 2048
    overlay = write_overlay(args.work, write_sources(args.work, args.rows, scale), args.accumulate)
    det = ["--trainer.deterministic", "true"]
    only = set(args.only or ["default", "deterministic", "resume"])
    runs = {}
    if "default" in only:
        for n in (1, 2):
            runs[f"default-{n}"] = fit(args.work, f"default-{n}", args.ckpt, overlay, args.steps)
    if "deterministic" in only or "resume" in only:
        for n in (1, 2) if "deterministic" in only else (1,):
            runs[f"deterministic-{n}"] = fit(args.work, f"deterministic-{n}", args.ckpt, overlay, args.steps, *det)
    if "resume" in only:
        half = args.steps // 2 * args.accumulate - 1  # the last micro-batch of optimizer step steps/2
        stop = ["--trainer.callbacks+=check_determinism.TermAtBatch", f"--trainer.callbacks.batch={half}"]
        runs["interrupted"] = fit(
            args.work, "interrupted", args.ckpt, overlay, args.steps, *det, *stop, expect=143, folder="resumed"
        )
        saved = sorted((args.work / "resumed").glob("runs/*/*/checkpoints/interrupted.ckpt"))
        if saved:
            resume = ["--ckpt_path", str(saved[-1])]
            runs["resumed"] = fit(args.work, "resumed", args.ckpt, overlay, args.steps, *det, *resume)
    pairs = [("default-1", "default-2"), ("deterministic-1", "deterministic-2"), ("deterministic-1", "resumed"),
             ("default-1", "deterministic-1")]  # fmt: skip
    comparisons = {}
    for a, b in pairs:
        if a in runs and b in runs and runs[a]["adapters"] and runs[b]["adapters"]:
            comparisons[f"{a} vs {b}"] = compare(runs[a]["adapters"][-1], runs[b]["adapters"][-1])
    rates = {n: r["supervised_tok_s"] for n, r in runs.items() if r["supervised_tok_s"]}
    cost = None
    if rates.get("default-1") and rates.get("deterministic-1"):
        cost = {"deterministic_over_default_speed": round(rates["deterministic-1"] / rates["default-1"], 3)}
    import torch

    result = {
        "what": "GPU repeatability of the recipe's default through `medqlora fit` (issue #26 item 3)",
        "command": " ".join(sys.argv),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "versions": {
            m: __import__(m).__version__ for m in ("torch", "transformers", "peft", "lightning", "bitsandbytes")
        },
        "steps": args.steps,
        "accumulate": args.accumulate,
        "runs": runs,
        "comparisons": comparisons,
        "cost": cost,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps({"comparisons": comparisons, "rates": rates, "cost": cost}, indent=2))


if __name__ == "__main__":
    main()
