"""Training speed and memory: the model card's plain recipe vs medqlora's default path, same GPU, same run.

    python benchmarks/bench_train.py build --out .bench/e2b           # random E2B weights, saved once
    python benchmarks/bench_train.py case --system plain-recipe --rows full-2x2048 --model .bench/e2b --json a.json
    python benchmarks/bench_train.py case --system medqlora --rows real-lengths --model .bench/e2b --json b.json
    python benchmarks/bench_train.py merge a.json b.json ... --out benchmarks/results/<name>.json

Each case runs in its own process so one system's allocations never colour the other's peak.
`benchmarks/run_gpu.sh` runs the whole set in one device call. `--model tiny` smoke-tests on the CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import medqlora_run
import torch
import workload
from flops import FlopModel
from medqlora_run import run_medqlora
from plain_loop import run_plain
from workload import (
    ACCUMULATE,
    GIB,
    LORA,
    MAX_LEN,
    MICRO_BATCH,
    TIMED_BATCHES,
    WARMUP_BATCHES,
    build,
    host_memory,
    summarise,
    synthetic_rows,
)


def case(args: argparse.Namespace) -> None:
    """Run one (system, rows) case and write its figures as JSON."""
    from medqlora.hub import load_config, resolve_name_or_path

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model_path = resolve_name_or_path(args.model)
    vocab = load_config(model_path).get_text_config().vocab_size
    scale = max(1, args.pack_tokens * args.micro_batch // (MICRO_BATCH * MAX_LEN))
    n_rows = (
        MICRO_BATCH
        * (WARMUP_BATCHES + TIMED_BATCHES)
        * (8 if args.rows != "full-2x2048" else 1)
        * scale
        * max(args.devices, args.same_rows_as)
    )
    rows = synthetic_rows(args.rows, n_rows, vocab, seed=0, max_len=args.pack_tokens)
    if args.rows == "full-2x2048" and args.model == "tiny":
        rows = [{k: v[:256] for k, v in r.items()} for r in rows]  # CPU smoke test
    workload.FLOP_MODEL = FlopModel.from_config(load_config(model_path), LORA["r"], LORA["targets"])
    if args.sdpa_math:  # every path's attention through SDPA's math backend: rules a fused kernel in or out
        for backend in ("flash", "mem_efficient", "cudnn"):
            getattr(torch.backends.cuda, f"enable_{backend}_sdp")(False)
    if device.type == "cuda" and args.memory_cap_gib:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(args.memory_cap_gib * GIB / total, device.index or 0)
    if args.system in ("plain-recipe", "plain-careful"):
        window = MICRO_BATCH * ACCUMULATE  # rows of one optimizer step: one warm-up window, then whole windows
        warm, timed = medqlora_rows(rows, args.pack_tokens, args.micro_batch, window)
        trained = warm + timed[: len(timed) // window * window]
        clock = run_plain(model_path, trained, device, careful=args.system == "plain-careful")
        result = summarise(args.system, args.rows, clock, device, warmup=ACCUMULATE)
        result["rows_as_medqlora"] = True
    elif args.system == "trl":
        from trl_peer import run_trl

        clock = run_trl(model_path, rows, device)
        result = summarise(args.system, args.rows, clock, device, warmup=1)
    else:
        clock, memory, world = run_medqlora(model_path, rows, device, args)
        if world < 0:
            return  # not rank 0: rank 0 writes the case
        variant = {
            "strategy": args.strategy,
            "devices": world,
            "layout": args.layout,
            "micro_batch": args.micro_batch,
            "accumulate": args.accumulate,
            "pack_tokens": args.pack_tokens if args.layout == "packed" else None,
            "ple_on_host": not args.ple_on_gpu,
            "ple_shared": not args.ple_private,
            "same_rows_as": args.same_rows_as,
            "loss_chunk": args.loss_chunk,
            "checkpoint_share": args.checkpoint_share,
            "offload_checkpoints": args.offload_checkpoints,
            **medqlora_run.lean_switches(args),
            "lean_from_recipe": args.recipe_lean,
            "sdpa_math": args.sdpa_math,
            "skip_guards": args.skip_guards,
            "compute_dtype": args.compute_dtype or workload.RECIPE["model"]["quantization"]["compute_dtype"],
        }
        result = {
            **summarise(args.system, args.rows, clock, device, WARMUP_BATCHES * args.same_rows_as),
            **variant,
            "memory_split": memory,
            **host_memory(),
        }
        if "peak_gib" in memory and device.type == "cuda":
            # PeakMemory resets the CUDA peak every interval: its running maximum is the training peak
            result["peak_alloc_gib"] = memory["peak_gib"]
            result["peak_reserved_gib"] = memory["peak_reserved_gib"]
        if world > 1:  # the clock holds every rank's tokens over rank 0's time: throughput of all GPUs together
            result["tokens_per_s_per_gpu"] = result["tokens_per_s"] / world
            if result["mfu"] is not None:
                result["mfu"] /= world  # of each GPU's peak
    if args.memory_cap_gib:
        result["memory_cap_gib"] = args.memory_cap_gib
    if medqlora_run.PROFILE:
        result.update(medqlora_run.PROFILE)
    if medqlora_run.CHECKS:
        result["vs_today"] = medqlora_run.CHECKS  # loss and LoRA gradients against eager layers, recomputing loss
    if args.label:
        result["label"] = args.label
    result["gpu"] = device_name(device)
    result["versions"] = package_versions()  # merge takes both from the cases: it may run on another machine
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result), flush=True)


def medqlora_rows(
    rows: list[dict], pack_tokens: int, micro_batch: int, warmup_rows: int
) -> tuple[list[dict], list[dict]]:
    """`warmup_rows` rows to warm up on (medqlora's warm-up rows, then rows it never trains) and the rows medqlora's
    packed case trains in its timed micro-batches, in its order (its sampler's batches for epoch 0, seed 0, as its
    loader draws them), so a baseline times the very same rows."""
    from medqlora.data.collate import PackingBatchSampler

    sampler = PackingBatchSampler([len(r["input_ids"]) for r in rows], pack_tokens, 0, True, 0, 1, micro_batch)
    plan = list(sampler)  # the plan's micro-batches, shuffled as the loader gets them
    timed = [i for b in plan[WARMUP_BATCHES : WARMUP_BATCHES + TIMED_BATCHES] for i, _ in b]
    warm = [i for b in plan[:WARMUP_BATCHES] for i, _ in b]
    used = set(warm) | set(timed)
    warm += [i for i in range(len(rows)) if i not in used]
    return [rows[i] for i in warm[:warmup_rows]], [rows[i] for i in timed]


def device_name(device: torch.device) -> str:
    """The GPU's name, or this machine's processor."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def package_versions() -> dict[str, str | None]:
    """Versions of the packages a result depends on."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "transformers", "peft", "bitsandbytes", "lightning"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return versions


def merge(args: argparse.Namespace) -> None:
    """Combine case files into one result file with the GPU, versions (the first case's) and command."""
    cases = [json.loads(Path(p).read_text()) for p in args.cases if Path(p).is_file()]
    measured = [(c.pop("gpu", None), c.pop("versions", None)) for c in cases]  # one machine made them all
    here = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # case files of before they recorded it
    gpu, versions = measured[0] if measured and measured[0][0] else (device_name(here), package_versions())
    for rows in {c["rows"] for c in cases}:
        baselines = (  # (system, speedup key, memory key) for each plain baseline
            ("plain-recipe", "speedup_supervised_tokens_per_s", "memory_ratio_vs_plain"),
            ("plain-careful", "speedup_supervised_tokens_per_s_vs_careful", "memory_ratio_vs_careful"),
            ("trl", "speedup_supervised_tokens_per_s_vs_trl", "memory_ratio_vs_trl"),
        )
        for system, speedup_key, memory_key in baselines:
            base = next((c for c in cases if c["rows"] == rows and c["system"] == system), None)
            for c in cases:
                if base and c["rows"] == rows and c["system"] == "medqlora":
                    c[speedup_key] = c["supervised_tokens_per_s"] / base["supervised_tokens_per_s"]
                    if "peak_alloc_gib" in c:
                        c[memory_key] = c["peak_alloc_gib"] / base["peak_alloc_gib"]
    for c in cases:  # multi-GPU cases against the one-GPU case of the same rows and micro-batch
        single = next(
            (
                s
                for s in cases
                if s.get("strategy") == "single"
                and s["rows"] == c["rows"]
                and s.get("micro_batch") == c.get("micro_batch")
                and s.get("same_rows_as", 1) in (c.get("devices"), 1)
            ),
            None,
        )
        if single and c.get("strategy"):  # on what a user waits for: supervised tokens, shares compared
            c["speedup_vs_1"] = c["supervised_tokens_per_s"] / single["supervised_tokens_per_s"]
            c["supervised_share_gap"] = c["supervised_share"] / single["supervised_share"] - 1
            # Epoch time for the same rows: packed micro-batches all have one shape, so one rank's step does the
            # work of N of the single GPU's steps; immune to rank 0's rows not being the average rank's.
            c["speedup_vs_1_epoch"] = c["devices"] * single["step_s_median"] / c["step_s_median"]
    out = {"gpu": gpu, "versions": versions, "command": args.command, "cases": cases}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--reference", type=Path, default=Path(__file__).with_name("gemma4-e2b-config.json"))
    c = sub.add_parser("case")
    c.add_argument("--system", choices=["plain-recipe", "plain-careful", "medqlora", "trl"], required=True)
    c.add_argument("--rows", choices=["full-2x2048", "real-lengths", "long-tail"], required=True)
    c.add_argument("--model", required=True)
    c.add_argument("--json", required=True)
    c.add_argument("--layout", choices=["packed", "padded"], default="packed", help="medqlora only")
    c.add_argument("--pack-tokens", type=int, default=MAX_LEN, help="medqlora only: length of a packed row")
    c.add_argument("--micro-batch", type=int, default=MICRO_BATCH, help="medqlora only: (packed) rows per step")
    c.add_argument("--accumulate", type=int, default=ACCUMULATE, help="medqlora only: micro-batches per optimizer step")
    c.add_argument("--loss-chunk", type=int, default=256, help="medqlora only: positions per loss chunk")
    c.add_argument("--ple-on-gpu", action="store_true", help="medqlora only: PLE table on the GPU")
    c.add_argument("--ple-private", action="store_true", help="medqlora only: one PLE host copy per rank")
    c.add_argument("--same-rows-as", type=int, default=1, help="one GPU only: train the batches N ranks share out")
    c.add_argument("--profile", action="store_true", help="medqlora only: print a profiler table")
    c.add_argument("--memory-report", default=None, help="medqlora only: JSON of who holds the peak")
    c.add_argument(
        "--attention",
        choices=["auto", "varlen", "flex", "sdpa", "eager"],
        default=None,
        help="medqlora only: lean.attention (default: the recipe's with --recipe-lean, else sdpa)",
    )
    c.add_argument(
        "--recipe-lean",
        action="store_true",
        help="medqlora only: the speed switches of configs/gemma4-e2b-medical.yaml's model.lean (not the flags)",
    )
    c.add_argument("--sdpa-math", action="store_true", help="SDPA's math backend only (no fused attention kernel)")
    c.add_argument("--strategy", choices=["single", "ddp", "fsdp"], default="single", help="medqlora only")
    c.add_argument("--devices", type=int, default=1, help="medqlora only: GPUs (one process each)")
    c.add_argument("--trace", action="store_true", help="medqlora only: memory/time per step phase")
    c.add_argument("--label", default=None, help="a name for this variant in the results")
    c.add_argument("--compile", action="store_true", help="medqlora only: lean.compile_layers")
    c.add_argument("--loss-grad-in-forward", action="store_true", help="medqlora only: lean.loss_grad_in_forward")
    c.add_argument("--cuda-graph", action="store_true", help="medqlora only: lean.cuda_graph")
    c.add_argument("--checkpoint-share", type=float, default=1.0, help="medqlora only: lean.checkpoint_share")
    c.add_argument("--offload-checkpoints", action="store_true", help="medqlora only: lean.offload_checkpoints")
    c.add_argument("--no-check", action="store_true", help="medqlora only: skip the first batch's check against today")
    c.add_argument(
        "--skip-guards",
        action="store_true",
        help="medqlora only: after warm-up, dynamo checks only the guards that tell its graphs apart (unsafe: a "
        "measurement of what guard checks cost, not a training setting)",
    )
    c.add_argument(
        "--compute-dtype", default=None, help="medqlora only: the 4-bit base's compute dtype (float32: 32-true)"
    )
    c.add_argument(
        "--memory-cap-gib",
        type=float,
        default=None,
        help="cap the process's GPU memory (set_per_process_memory_fraction)",
    )
    m = sub.add_parser("merge")
    m.add_argument("cases", nargs="+")
    m.add_argument("--out", required=True)
    m.add_argument("--command", default=" ".join(sys.argv))
    args = parser.parse_args(argv)
    {"build": lambda a: build(a.out, a.reference), "case": case, "merge": merge}[args.cmd](args)


if __name__ == "__main__":
    main()
