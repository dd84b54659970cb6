"""medqlora's path through the real Lightning Trainer, as a benchmark case (one GPU, DDP or FSDP)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml
from path_check import PathCheck
from workload import RECIPE, RECIPE_FILE, TIMED_BATCHES, WARMUP_BATCHES, Clock, batch_stats

CHECKS: dict = {}  # with --compile, --loss-grad-in-forward or --cuda-graph: that path against today's, first batch
PROFILE: dict = {}  # with --profile on a GPU: where the GPU waited during the profiled micro-batches (gpu_gaps.py)


def lean_switches(args) -> dict:
    """The case's speed switches: the recipe YAML's `model.lean` with --recipe-lean (--attention may override its
    attention), else the flags (all off: eager layers, SDPA)."""
    if args.recipe_lean:
        keys = ("attention", "compile_layers", "loss_grad_in_forward", "cuda_graph")
        switches = {k: RECIPE["model"]["lean"][k] for k in keys}
        if getattr(args, "offload_checkpoints", False):  # the graph cannot capture the host copies
            switches["cuda_graph"] = "auto"
        return {**switches, "attention": args.attention or switches["attention"]}
    return {
        "attention": args.attention or "sdpa",
        "compile_layers": args.compile,
        "loss_grad_in_forward": args.loss_grad_in_forward,
        "cuda_graph": args.cuda_graph,
    }


def run_medqlora(
    model_path: str, rows: list[dict], device: torch.device, args: argparse.Namespace
) -> tuple[Clock, dict, int]:
    """medqlora's default path through the real Lightning Trainer, on 2 packed rows of 2048 tokens.

    With --devices N > 1 Lightning's launcher re-runs this script once per extra rank; each rank trains on its
    own shard of the batches. Returns rank 0's clock (its step times, every rank's tokens) and memory summary, and
    the world size."""
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
            if args.skip_guards and batch_idx == WARMUP_BATCHES - 1:  # every layer variant is compiled by now
                torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)
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
                if torch.cuda.is_available():
                    from gpu_gaps import idle_report

                    trace = Path("/tmp/medqlora-profile-trace.json")
                    profiler.export_chrome_trace(str(trace))
                    PROFILE["gpu_idle"] = idle_report(trace)
                    print(json.dumps(PROFILE["gpu_idle"], indent=1), flush=True)

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
                collate_fn=Collator(
                    packed=packed,
                    pad_id=0,
                    pack_tokens=args.pack_tokens,
                    packed_rows=args.micro_batch,
                    sample_slots=sampler.most_samples() if packed else None,
                ),
            )

    memory = PeakMemory(every_n_steps=1)
    # before PeakMemory, which resets the peak at train start
    switches = lean_switches(args)
    new_path = switches["compile_layers"] or switches["loss_grad_in_forward"] or switches["cuda_graph"]
    first = (
        [PathCheck(CHECKS, switches["loss_grad_in_forward"], WARMUP_BATCHES)]
        if (new_path or switches["attention"] in ("varlen", "flex", "auto")) and not args.no_check
        else []
    )
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
            GradientAccumulation(args.accumulate),
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
            "checkpoint_share": args.checkpoint_share,
            "offload_checkpoints": args.offload_checkpoints,
            **switches,
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
    if trainer.world_size > 1:  # ranks step together: each step's figures summed over ranks, exact totals
        keys = ("tokens", "supervised", "rows", "slots", "flops")
        local = [[float(stats[k]) for k in keys] for _, stats in clock.steps]
        summed = trainer.strategy.reduce(
            torch.tensor(local, dtype=torch.float64, device=trainer.strategy.root_device), reduce_op="sum"
        )
        clock.steps = [(seconds, dict(zip(keys, row))) for (seconds, _), row in zip(clock.steps, summed.tolist())]
    return clock, memory.summary, trainer.world_size if trainer.is_global_zero else -1
