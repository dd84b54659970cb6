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
import contextlib
import json
import math
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml
from flops import FlopModel, peak_flops, token_positions

EPOCH_ROWS = 47_189  # the model card's training rows
# (prompt median, answer median, share) per source, lognormal sigma 0.5, capped at the recipe's max length
MIX = {"medqa": (230, 12, 0.34), "o1": (90, 900, 0.30), "alpacare": (40, 230, 0.36)}
RECIPE_FILE = Path(__file__).resolve().parents[1] / "configs" / "gemma4-e2b-medical.yaml"


def recipe(path: Path = RECIPE_FILE) -> dict:
    """The recipe's settings, read from its YAML (never restated here): model section, lengths, accumulation."""
    config = yaml.safe_load(path.read_text())
    callbacks = {c["class_path"].rsplit(".", 1)[-1]: c.get("init_args") or {} for c in config["trainer"]["callbacks"]}
    return {
        "model": config["model"],
        "max_length": config["data"]["max_length"],
        "micro_batch": config["data"]["micro_batch_size"],
        "accumulate": callbacks["GradientAccumulation"]["accumulate"],
        "warmup_ratio": callbacks["CosineWarmup"]["warmup_ratio"],
    }


RECIPE = recipe()
MAX_LEN, MICRO_BATCH, ACCUMULATE = RECIPE["max_length"], RECIPE["micro_batch"], RECIPE["accumulate"]
LR, LORA = RECIPE["model"]["lr"], RECIPE["model"]["lora"]
WARMUP_BATCHES, TIMED_BATCHES = 3, int(__import__("os").environ.get("BENCH_TIMED", 21))
GIB = 1024**3


def synthetic_rows(kind: str, n: int, vocab: int, seed: int = 0) -> list[dict]:
    """Rows of random token ids: full 2048-token rows (all supervised), or the mix's length profile."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        if kind == "full-2x2048":
            prompt, answer = 1, MAX_LEN - 1
        else:
            name = rng.choices(list(MIX), weights=[m[2] for m in MIX.values()])[0]
            p_med, a_med, _ = MIX[name]
            prompt = max(4, round(rng.lognormvariate(math.log(p_med), 0.5)))
            answer = max(2, round(rng.lognormvariate(math.log(a_med), 0.5)))
            prompt, answer = min(prompt, MAX_LEN - 2), min(answer, MAX_LEN - min(prompt, MAX_LEN - 2))
        ids = [2] + [rng.randrange(3, vocab) for _ in range(prompt + answer - 1)]
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return rows


def build(out: Path, reference: Path) -> None:
    """Save the real E2B architecture with random bf16 weights as a local checkpoint."""
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration

    cfg = json.loads(reference.read_text())
    config = Gemma4Config(**{k: v for k, v in cfg.items() if k != "model_type"})
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        torch.set_default_dtype(torch.bfloat16)
        model = Gemma4ForConditionalGeneration(config)
        torch.set_default_dtype(torch.float32)
    print(f"built {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters", flush=True)
    model.save_pretrained(out, safe_serialization=True)


class Clock:
    """Wall time between consecutive step ends (everything a step costs: data, transfer, compute)."""

    def __init__(self) -> None:
        self.last = None
        self.steps: list[tuple[float, dict]] = []

    def tick(self, batch_stats: dict) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        if self.last is not None:
            self.steps.append((now - self.last, batch_stats))
        self.last = now


FLOP_MODEL: FlopModel | None = None  # set by case(): model FLOPs of each micro-batch, for MFU
CHECKS: dict = {}  # with --compile: the compiled layers against the eager ones on the first batch


def batch_stats(batch: dict) -> dict:
    """Tokens, supervised tokens, rows and model FLOPs in one micro-batch."""
    labels, real = batch["labels"], batch["input_ids"] != 0  # synthetic ids are never the pad id 0
    tokens = int(real.sum())
    rows = int(((batch["position_ids"] == 0) & real).sum()) if "position_ids" in batch else labels.shape[0]
    supervised = int((labels[:, 1:] != -100).sum())
    flops = FLOP_MODEL.batch(token_positions(batch), supervised) if FLOP_MODEL else 0.0
    return {"tokens": tokens, "supervised": supervised, "rows": rows, "slots": labels.numel(), "flops": flops}


def run_plain(model_path: str, rows: list[dict], device: torch.device, careful: bool = False) -> Clock:
    """The card's recipe as its users write it: transformers + PEFT + bitsandbytes, a plain loop.

    careful: also put the model in training mode, as a careful user does: `from_pretrained` returns it in eval
    mode, where transformers skips the gradient checkpointing `prepare_model_for_kbit_training` switched on (and
    LoRA dropout is off); the literal loop trains so."""
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from medqlora.data.collate import pad_collate
    from medqlora.model.lora import LoraSpec

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_path, quantization_config=quant, dtype=torch.bfloat16, device_map={"": str(device)}
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    # the card's plain name list trips on the vision tower's Gemma4ClippableLinear: language model only
    spec = LoraSpec(**LORA)
    lora = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_regex(),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    model.config.use_cache = False
    if careful:
        model.train()
    optimizer = bnb.optim.AdamW8bit([p for p in model.parameters() if p.requires_grad], lr=LR)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    clock = Clock()
    clock.tick({})
    for i in range(WARMUP_BATCHES + TIMED_BATCHES):
        batch = pad_collate(rows[i * MICRO_BATCH : (i + 1) * MICRO_BATCH], pad_id=0)  # to the longest of the two
        stats = batch_stats(batch)
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**batch).loss / ACCUMULATE
        loss.backward()
        if (i + 1) % ACCUMULATE == 0:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        clock.tick(stats)
    return clock


def run_medqlora(
    model_path: str, rows: list[dict], device: torch.device, args: argparse.Namespace
) -> tuple[Clock, dict, int]:
    """medqlora's default path through the real Lightning Trainer, on 2 packed rows of 2048 tokens.

    With --devices N > 1 Lightning's launcher re-runs this script once per extra rank; each rank trains on its
    own shard of the batches. Returns rank 0's clock and memory summary, and the world size."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback
    from torch.utils.data import DataLoader

    from medqlora.callbacks.accumulation import GradientAccumulation
    from medqlora.callbacks.memory import PeakMemory
    from medqlora.callbacks.schedule import CosineWarmup
    from medqlora.data.collate import Collator, LengthGroupedBatchSampler, PackedRows, PackingBatchSampler
    from medqlora.model.loading import QuantSpec
    from medqlora.model.lora import LoraSpec
    from medqlora.model.module import LeanSpec, QLoRAModule

    clock = Clock()
    profiler = torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    )

    class Tick(Callback):
        def on_train_start(self, trainer, pl_module):
            clock.tick({})

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if args.profile and batch_idx == WARMUP_BATCHES:
                profiler.start()
            if args.memory_report and batch_idx == WARMUP_BATCHES:
                # no stacks: capturing them inside checkpoint recomputation crashed (torch 2.11)
                torch.cuda.memory._record_memory_history(context=None, stacks="python", max_entries=500_000)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.tick(batch_stats(batch))
            if args.memory_report and batch_idx == WARMUP_BATCHES:
                from memory_peak import peak_report

                try:
                    report = peak_report(torch.cuda.memory._snapshot())
                except Exception as err:  # a diagnostic must not cost the measurement
                    report = {"error": repr(err)}
                torch.cuda.memory._record_memory_history(enabled=None)
                Path(args.memory_report).write_text(json.dumps(report, indent=2))
                print(json.dumps(report, indent=1), flush=True)
            if args.profile and batch_idx == WARMUP_BATCHES + 2:
                profiler.stop()
                for key in ("cuda_time_total", "self_cpu_time_total"):
                    table = profiler.key_averages().table(sort_by=key, row_limit=22, max_name_column_width=60)
                    print(table, flush=True)

    class CompiledCheck(Callback):
        """Before timing: the first batch's loss and LoRA gradients through the compiled layers and the eager ones
        (same seed, so the same dropout masks); the compiled pass also pays the compilation, outside the timing."""

        def on_train_start(self, trainer, pl_module):
            from medqlora.model.compile import eager_layers

            batch = pl_module.on_before_batch_transfer(next(iter(trainer.train_dataloader)), 0)
            batch = {k: v.to(pl_module.device) if torch.is_tensor(v) else v for k, v in batch.items()}

            def loss_and_grads(eager: bool) -> tuple[float, dict]:
                torch.manual_seed(0)
                pl_module.model.zero_grad(set_to_none=True)
                with trainer.precision_plugin.train_step_context():
                    with eager_layers(pl_module.model) if eager else contextlib.nullcontext():
                        loss = pl_module(dict(batch)).loss
                loss.backward()
                params = pl_module.model.named_parameters()
                return loss.item(), {n: p.grad.float().cpu() for n, p in params if p.requires_grad}

            start = time.perf_counter()
            compiled_loss, compiled = loss_and_grads(eager=False)
            CHECKS["first_step_s"] = time.perf_counter() - start
            eager_loss, eager = loss_and_grads(eager=True)
            pl_module.model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            CHECKS.update(
                loss_eager=eager_loss,
                loss_compiled=compiled_loss,
                loss_abs_diff=abs(compiled_loss - eager_loss),
                grad_max_abs_diff=max(float((compiled[n] - g).abs().max()) for n, g in eager.items()),
                grad_max_abs=max(float(g.abs().max()) for g in eager.values()),
                # over all LoRA gradients at once: a zero-initialised B leaves some tensors with ~zero norm
                grad_rel_norm_diff=float(
                    sum(float((compiled[n] - g).pow(2).sum()) for n, g in eager.items()) ** 0.5
                    / max(sum(float(g.pow(2).sum()) for g in eager.values()) ** 0.5, 1e-30)
                ),
            )
            print(f"compiled vs eager: {CHECKS}", flush=True)

    lengths = [len(r["input_ids"]) for r in rows]
    packed = args.layout == "packed"

    class Rows(L.LightningDataModule):
        def train_dataloader(self):
            rank, world = self.trainer.global_rank, self.trainer.world_size
            sampler = (
                PackingBatchSampler(lengths, args.pack_tokens, 0, True, rank, world, args.micro_batch)
                if packed
                else LengthGroupedBatchSampler(lengths, args.micro_batch, 0, True, True, rank, world)
            )
            return DataLoader(
                PackedRows(rows) if packed else rows,
                batch_sampler=sampler,
                collate_fn=Collator(packed=packed, pad_id=0, pack_tokens=args.pack_tokens),
            )

    memory = PeakMemory(every_n_steps=1)
    first = [CompiledCheck()] if args.compile else []  # before PeakMemory, which resets the peak at train start
    extra = []
    if args.trace:
        from where_memory import MemoryTrace

        extra.append(MemoryTrace())
    strategy, overlay = "auto", {}
    if args.strategy != "single":  # the strategy and model settings of configs/ddp.yaml or configs/fsdp.yaml
        overlay = yaml.safe_load((RECIPE_FILE.parent / f"{args.strategy}.yaml").read_text())
        strategy = overlay["trainer"]["strategy"]
        if isinstance(strategy, dict):
            module_name, _, class_name = strategy["class_path"].rpartition(".")
            strategy = getattr(__import__(module_name, fromlist=[class_name]), class_name)(**strategy["init_args"])
    quant = QuantSpec(**{**RECIPE["model"]["quantization"], **overlay.get("model", {}).get("quantization", {})})
    if args.compute_dtype:  # e.g. float32 for a compiled-vs-eager check that bf16 rounding cannot blur
        quant.compute_dtype = args.compute_dtype
    trainer = L.Trainer(
        accelerator=device.type,
        devices=args.devices,
        strategy=strategy,
        precision="32-true" if args.compute_dtype == "float32" else "bf16-mixed",
        max_epochs=1,
        use_distributed_sampler=False,
        # with --same-rows-as N: the batches N ranks share out, warm-up included (N x 3 of them)
        limit_train_batches=(WARMUP_BATCHES + TIMED_BATCHES) * args.same_rows_as,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[
            *first,
            GradientAccumulation(ACCUMULATE),
            CosineWarmup(RECIPE["warmup_ratio"]),
            memory,
            Tick(),
            *extra,
        ],
    )
    settings = RECIPE["model"]  # the recipe's model section, with the case's lean switches on top
    lean = LeanSpec(
        **{
            **settings["lean"],
            "ple_on_host": not args.ple_on_gpu,
            "ple_shared": not args.ple_private,
            "loss_chunk_size": args.loss_chunk,
            "attention": args.attention,
            "compile_layers": args.compile,
            "loss_grad_in_forward": args.loss_grad_in_forward,
        }
    )
    module = QLoRAModule(
        model_path,
        quantization=quant,
        lora=LoraSpec(**settings["lora"]),
        optimizer=settings["optimizer"],
        lr=settings["lr"],
        gradient_checkpointing=settings["gradient_checkpointing"],
        lean=lean,
    )
    trainer.fit(module, datamodule=Rows())
    return clock, memory.summary, trainer.world_size if trainer.is_global_zero else -1


def quant_dtype() -> str:
    """The recipe's compute dtype."""
    return RECIPE["model"]["quantization"]["compute_dtype"]


def host_memory() -> dict:
    """This process's host memory (GiB): resident, and proportional (pages shared with other processes, such as a
    PLE table mapped by every rank, counted once in total across them)."""
    fields = dict(line.split()[:2] for line in open("/proc/self/smaps_rollup") if line.split()[0] in ("Rss:", "Pss:"))
    return {"host_rss_gib": int(fields["Rss:"]) / 2**20, "host_pss_gib": int(fields["Pss:"]) / 2**20}


def summarise(system: str, kind: str, clock: Clock, device: torch.device, warmup: int = WARMUP_BATCHES) -> dict:
    """One case's figures (throughput, padding, epoch time, peak memory), from the timed steps (after warm-up)."""
    timed = clock.steps[warmup:]
    seconds = sum(s for s, _ in timed)
    total = {k: sum(st[k] for _, st in timed) for k in ("tokens", "supervised", "rows", "slots", "flops")}
    case = {
        "system": system,
        "rows": kind,
        "steps_timed": len(timed),
        "step_s_median": statistics.median(s for s, _ in timed),
        "step_s": [round(s, 4) for s, _ in timed],  # each one: a slow outlier (a recompile, say) shows here
        "tokens_per_s": total["tokens"] / seconds,
        "supervised_tokens_per_s": total["supervised"] / seconds,
        "rows_per_s": total["rows"] / seconds,
        "padding_share": 1 - total["tokens"] / total["slots"],
        "supervised_share": total["supervised"] / total["tokens"],
        "epoch_minutes": EPOCH_ROWS / (total["rows"] / seconds) / 60,
        "model_tflops_per_s": sum(st["flops"] for _, st in timed) / seconds / 1e12,
        "flops_per_token": sum(st["flops"] for _, st in timed) / max(total["tokens"], 1),
    }
    peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    case["mfu"] = case["model_tflops_per_s"] * 1e12 / peak if peak else None
    if device.type == "cuda":
        case["peak_alloc_gib"] = torch.cuda.max_memory_allocated(device) / GIB
        case["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / GIB
    return case


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
        * (8 if args.rows == "real-lengths" else 1)
        * scale
        * max(args.devices, args.same_rows_as)
    )
    rows = synthetic_rows(args.rows, n_rows, vocab, seed=0)
    if args.rows == "full-2x2048" and args.model == "tiny":
        rows = [{k: v[:256] for k, v in r.items()} for r in rows]  # CPU smoke test
    global FLOP_MODEL
    FLOP_MODEL = FlopModel.from_config(load_config(model_path), LORA["r"], LORA["targets"])
    if device.type == "cuda" and args.memory_cap_gib:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(args.memory_cap_gib * GIB / total, device.index or 0)
    if args.system in ("plain-recipe", "plain-careful"):
        clock = run_plain(model_path, rows, device, careful=args.system == "plain-careful")
        result = summarise(args.system, args.rows, clock, device)
    else:
        clock, memory, world = run_medqlora(model_path, rows, device, args)
        if world < 0:
            return  # not rank 0: rank 0 writes the case
        variant = {
            "strategy": args.strategy,
            "devices": world,
            "layout": args.layout,
            "micro_batch": args.micro_batch,
            "pack_tokens": args.pack_tokens if args.layout == "packed" else None,
            "ple_on_host": not args.ple_on_gpu,
            "ple_shared": not args.ple_private,
            "same_rows_as": args.same_rows_as,
            "loss_chunk": args.loss_chunk,
            "attention": args.attention,
            "compile_layers": args.compile,
            "loss_grad_in_forward": args.loss_grad_in_forward,
            "compute_dtype": args.compute_dtype or quant_dtype(),
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
        if world > 1:  # rank 0's throughput x ranks: every rank steps through equal-shape packed micro-batches
            result["tokens_per_s_per_gpu"] = result["tokens_per_s"]
            for key in ("tokens_per_s", "supervised_tokens_per_s", "rows_per_s"):
                result[key] *= world
            result["epoch_minutes"] /= world
    if args.memory_cap_gib:
        result["memory_cap_gib"] = args.memory_cap_gib
    if CHECKS:
        result["compiled_vs_eager"] = CHECKS
    if args.label:
        result["label"] = args.label
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result), flush=True)


def merge(args: argparse.Namespace) -> None:
    """Combine case files into one result file with the GPU, versions and command."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "transformers", "peft", "bitsandbytes", "lightning"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    cases = [json.loads(Path(p).read_text()) for p in args.cases if Path(p).is_file()]
    for rows in {c["rows"] for c in cases}:
        for system, suffix in (("plain-recipe", ""), ("plain-careful", "_vs_careful")):
            base = next((c for c in cases if c["rows"] == rows and c["system"] == system), None)
            for c in cases:
                if base and c["rows"] == rows and c["system"] == "medqlora":
                    c[f"speedup_supervised_tokens_per_s{suffix}"] = (
                        c["supervised_tokens_per_s"] / base["supervised_tokens_per_s"]
                    )
                    if "peak_alloc_gib" in c:
                        c[f"memory_ratio_vs_{system.removeprefix('plain-').replace('recipe', 'plain')}"] = (
                            c["peak_alloc_gib"] / base["peak_alloc_gib"]
                        )
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
    c.add_argument("--system", choices=["plain-recipe", "plain-careful", "medqlora"], required=True)
    c.add_argument("--rows", choices=["full-2x2048", "real-lengths"], required=True)
    c.add_argument("--model", required=True)
    c.add_argument("--json", required=True)
    c.add_argument("--layout", choices=["packed", "padded"], default="packed", help="medqlora only")
    c.add_argument("--pack-tokens", type=int, default=MAX_LEN, help="medqlora only: length of a packed row")
    c.add_argument("--micro-batch", type=int, default=MICRO_BATCH, help="medqlora only: (packed) rows per step")
    c.add_argument("--loss-chunk", type=int, default=256, help="medqlora only: positions per loss chunk")
    c.add_argument("--ple-on-gpu", action="store_true", help="medqlora only: PLE table on the GPU")
    c.add_argument("--ple-private", action="store_true", help="medqlora only: one PLE host copy per rank")
    c.add_argument("--same-rows-as", type=int, default=1, help="one GPU only: train the batches N ranks share out")
    c.add_argument("--profile", action="store_true", help="medqlora only: print a profiler table")
    c.add_argument("--memory-report", default=None, help="medqlora only: JSON of who holds the peak")
    c.add_argument("--attention", default="sdpa", help="medqlora only: sdpa or eager")
    c.add_argument("--strategy", choices=["single", "ddp", "fsdp"], default="single", help="medqlora only")
    c.add_argument("--devices", type=int, default=1, help="medqlora only: GPUs (one process each)")
    c.add_argument("--trace", action="store_true", help="medqlora only: memory/time per step phase")
    c.add_argument("--label", default=None, help="a name for this variant in the results")
    c.add_argument("--compile", action="store_true", help="medqlora only: lean.compile_layers")
    c.add_argument("--loss-grad-in-forward", action="store_true", help="medqlora only: lean.loss_grad_in_forward")
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
