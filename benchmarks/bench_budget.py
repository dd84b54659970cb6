"""The memory budget's Pareto table (issue #40): every candidate setting measured, then the planner's pick at each
budget run under that cap, in one process on one GPU (the model loads once; each micro-batch shape compiles once).

    python benchmarks/bench_budget.py --model /tmp/e2b-random --json out.json --part sweep   # every candidate, no cap
    python benchmarks/bench_budget.py --model /tmp/e2b-random --json out.json --part capped  # picks and bests, capped
    python benchmarks/bench_budget.py --model /tmp/e2b-random --json out.json --part long    # 8192 / 16384 rows, 12 GiB

The recipe's switches (varlen attention, compiled layers, loss gradient in forward, CUDA graph where it captures),
random E2B weights, rows of the mix's lengths, the recipe's 16 rows per optimizer step; the expandable-segments
allocator, as `medqlora fit` sets it with a budget. `--model tiny` smoke-tests on the CPU.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import random
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import lightning as L  # noqa: E402
import torch  # noqa: E402
import workload  # noqa: E402
from bench_train import device_name, package_versions  # noqa: E402
from flops import FlopModel  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from lightning.pytorch.strategies import SingleDeviceStrategy  # noqa: E402
from torch.utils.checkpoint import checkpoint  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from workload import (  # noqa: E402
    EPOCH_ROWS,
    EPOCH_SUPERVISED_TOKENS,
    GIB,
    LORA,
    RECIPE,
    Clock,
    batch_stats,
    mix_lengths,
    summarise,
    synthetic_rows,
)

from medqlora import compat  # noqa: E402
from medqlora.callbacks.accumulation import GradientAccumulation  # noqa: E402
from medqlora.callbacks.memory import PeakMemory  # noqa: E402
from medqlora.callbacks.schedule import CosineWarmup  # noqa: E402
from medqlora.data.collate import Collator, PackedRows, PackingBatchSampler  # noqa: E402
from medqlora.model import budget  # noqa: E402
from medqlora.model.checkpointing import checkpointed_layers, offloaded  # noqa: E402
from medqlora.model.compile import CompiledLayerForward, compile_decoder_layers, decoder_layers  # noqa: E402
from medqlora.model.lean import LeanSpec  # noqa: E402
from medqlora.model.loading import QuantSpec  # noqa: E402
from medqlora.model.lora import LoraSpec  # noqa: E402
from medqlora.model.module import QLoRAModule  # noqa: E402

BUDGETS = (4, 8, 12, 24, 48)
ROWS_PER_STEP = RECIPE["micro_batch"] * RECIPE["accumulate"]
WARM, TIMED = 3, int(os.environ.get("BENCH_TIMED", 8))


class KeepOnDevice(SingleDeviceStrategy):
    """One device; the model stays there between fits (Lightning's teardown would move it to the CPU)."""

    def teardown(self) -> None:
        self.optimizers = []


def set_policy(module: QLoRAModule, share: float, offload: bool, activation_budget: float = 1.0) -> None:
    """Checkpoint `share` of the compiled layers (inputs offloaded with `offload`), the others keeping
    `activation_budget` of their activations (a new budget compiles the layers again), and drop the old CUDA graph."""
    layers = decoder_layers(module.model)
    chosen = checkpointed_layers(len(layers), share)
    if isinstance(layers[0].forward, CompiledLayerForward) and activation_budget != module.lean.kept_activations:
        compile_decoder_layers(module.model, chosen, offload, activation_budget)
        module.lean.activation_budget = activation_budget
    for index, layer in enumerate(layers):
        forward = layer.forward
        if not isinstance(forward, CompiledLayerForward):  # eager layers (the CPU smoke test): no offloading
            layer.gradient_checkpointing = index in chosen
            continue
        forward.checkpointing = index in chosen
        forward.checkpoint = offloaded(checkpoint) if offload else checkpoint
    module.train_step.release()
    module.train_step.graphed = module.plan.cuda_graph and not offload  # the graph cannot capture host copies
    module.lean.checkpoint_share, module.lean.offload_checkpoints = share, offload


@functools.cache
def epoch_packs(pack: int) -> int:
    """Rows of `pack` tokens an epoch of the mix packs into: the same for every micro-batch size (a micro-batch is that
    many packed rows), so a setting's epoch takes epoch_packs / micro_batch of its micro-batch steps."""
    rng = random.Random(0)
    lengths = [sum(mix_lengths(rng)) for _ in range(EPOCH_ROWS)]
    return len(PackingBatchSampler(lengths, pack, 0, True, 0, 1, 1))


def add_epoch_figures(result: dict) -> None:
    """The epoch's minutes and supervised tokens/s at this setting's median micro-batch time. The timed sample's own
    supervised rate is not comparable across micro-batch sizes: a few micro-batches of 2 rows see other rows (another
    supervised share and padding) than a few of 16."""
    seconds = epoch_packs(result["pack_tokens"]) / result["micro_batch"] * result["step_s_median"]
    result["epoch_minutes"] = seconds / 60
    result["epoch_supervised_tokens_per_s"] = EPOCH_SUPERVISED_TOKENS / seconds


def fit_once(module: QLoRAModule, rows: list[dict], setting: budget.Setting, pack: int, cap_gib: float | None) -> dict:
    """Train WARM + TIMED micro-batches of `setting` (under `cap_gib` if given); its figures, or its error."""
    device = (
        module.device
        if module.model is not None
        else torch.device("cuda", 0)
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    if module.model is not None:
        set_policy(module, setting.checkpoint_share, setting.offload, setting.activation_budget)
    else:  # set up by the fit below: with an offloading first setting, the CUDA graph stays off for the module's life
        module.lean.checkpoint_share, module.lean.offload_checkpoints = setting.checkpoint_share, setting.offload
        module.lean.activation_budget = setting.activation_budget
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, (cap_gib or 1e9) * GIB / total))
        torch.cuda.reset_peak_memory_stats()
    # what earlier runs left allocated (the model's weights, and after an out-of-memory error whatever its frames held):
    # part of this run's peak
    held_gib = torch.cuda.memory_allocated(device) / GIB if device.type == "cuda" else 0.0
    clock, memory = Clock(), PeakMemory(every_n_steps=1)
    lengths = [len(r["input_ids"]) for r in rows]
    sampler = PackingBatchSampler(lengths, pack, 0, True, 0, 1, setting.micro_batch)

    class Tick(Callback):
        def on_train_start(self, trainer, pl_module):
            clock.tick({})

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.tick(batch_stats(batch))

    class Rows(L.LightningDataModule):
        def train_dataloader(self):
            collate = Collator(True, 0, pack, setting.micro_batch, sample_slots=sampler.most_samples())
            return DataLoader(PackedRows(rows), batch_sampler=sampler, collate_fn=collate)

    trainer = L.Trainer(
        strategy=KeepOnDevice(device),
        precision="bf16-mixed",
        max_epochs=1,
        use_distributed_sampler=False,
        limit_train_batches=WARM + TIMED,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[GradientAccumulation(setting.accumulate), CosineWarmup(RECIPE["warmup_ratio"]), memory, Tick()],
    )
    started = time.perf_counter()
    try:
        trainer.fit(module, datamodule=Rows())
        result = summarise("medqlora", "real-lengths", clock, device, WARM)
        if pack == RECIPE["max_length"]:  # the mix's rows (the long-row runs have an epoch of their own)
            result.update(micro_batch=setting.micro_batch, pack_tokens=pack)
            add_epoch_figures(result)
        if device.type == "cuda":
            result["peak_alloc_gib"] = memory.summary.get("peak_gib", result["peak_alloc_gib"])
            result["peak_reserved_gib"] = memory.summary.get("peak_reserved_gib", result["peak_reserved_gib"])
    except torch.OutOfMemoryError as err:
        result = {"error": "out of memory", "detail": str(err).splitlines()[0]}
        trainer.strategy.optimizers = []  # the failed step's state goes before the next run measures its peak
    except Exception as err:  # noqa: BLE001 - one setting failing (a compiler error) must not lose the others
        trace = traceback.format_exc()
        result = {"error": type(err).__name__, "detail": trace[-3000:]}
        trainer.strategy.optimizers = []
    finally:
        if module.train_step is not None:  # None when the first fit failed before set-up
            module.train_step.release()
    result.update(
        micro_batch=setting.micro_batch,
        accumulate=setting.accumulate,
        checkpoint_share=setting.checkpoint_share,
        offload_checkpoints=setting.offload,
        activation_budget=setting.activation_budget,
        uncounted_ops=sorted(compat.UNCOUNTED_OPS),
        pack_tokens=pack,
        memory_cap_gib=cap_gib,
        held_at_start_gib=held_gib,
        wall_s=round(time.perf_counter() - started, 1),
    )
    print(json.dumps({k: v for k, v in result.items() if k != "step_s"}), flush=True)
    return result


def question(model: str, pack: int, attention: str) -> budget.BudgetQuestion:
    """The planner's question for this benchmark's rows (the recipe's LoRA and optimizer, `auto` everywhere)."""
    return budget.BudgetQuestion(
        model, pack, ROWS_PER_STEP, row_attention=attention == "varlen", lora_targets=tuple(LORA["targets"])
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("--part", required=True, help="sweep, capped, long, or some joined by commas; all: the three")
    parser.add_argument("--long-reserve-s", type=float, default=0, help="capped: leave this long to the long rows")
    parser.add_argument("--deadline-s", type=float, default=1e9, help="start no run after this many seconds")
    parser.add_argument("--sweep", type=Path, help="capped: the sweep's JSON (the best measured candidate per budget)")
    parser.add_argument("--micro", default="2,4,8,16", help="sweep: micro-batch sizes")
    parser.add_argument(
        "--settings",
        help="sweep: only these, in order: micro:share[:offload[:activation budget]],... e.g. 8:1,2:0:-:.5",
    )
    parser.add_argument("--max-peak-gib", type=float, default=70.0, help="sweep: skip candidates predicted above it")
    args = parser.parse_args(argv)
    parts = {"sweep", "capped", "long"} if args.part == "all" else set(args.part.split(","))

    from medqlora.hub import load_config, resolve_name_or_path

    model_path = resolve_name_or_path(args.model)
    vocab = load_config(model_path).get_text_config().vocab_size
    workload.FLOP_MODEL = FlopModel.from_config(load_config(model_path), LORA["r"], LORA["targets"])
    on_gpu = torch.cuda.is_available()
    lean = {**RECIPE["model"]["lean"], "cuda_graph": "auto", "compile_layers": "auto" if not on_gpu else True}
    if not on_gpu:
        lean["attention"] = "auto"
    runs: list[dict] = []
    plans: dict = {}

    def save() -> None:  # after every run: a call cut short keeps what it measured
        out = {
            "gpu": device_name(torch.device("cuda" if on_gpu else "cpu")),
            "versions": package_versions(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "calibration": {k: getattr(budget, k) for k in dir(budget) if k.isupper() and k != "GIB"},
            "plans": plans,
            "runs": runs,
        }
        args.json.write_text(json.dumps(out, indent=2, default=str))

    def module_for(attention: str) -> QLoRAModule:
        settings = RECIPE["model"]
        return QLoRAModule(
            model_path,
            quantization=QuantSpec(**settings["quantization"]),
            lora=LoraSpec(**settings["lora"]),
            optimizer=settings["optimizer"],
            lr=settings["lr"],
            gradient_checkpointing=True,
            lean=LeanSpec(**{**lean, "attention": attention}),
        )

    started = time.perf_counter()

    def in_time(micro_batch: int, reserve: float = 0) -> bool:  # leave a run's time (a new shape compiles a minute)
        return time.perf_counter() - started + 30 + 3 * micro_batch + reserve < args.deadline_s

    if parts & {"sweep", "capped"}:
        pack = RECIPE["max_length"] if on_gpu else 256
        q = question(model_path, pack, "varlen")
        rows = synthetic_rows("real-lengths", 16 * (WARM + TIMED) * 8, vocab, seed=0, max_len=pack)
        rows = [r for r in rows if len(r["input_ids"]) <= pack]  # the CPU smoke test's shorter rows
        module = module_for(lean["attention"])
        for cap in BUDGETS:
            try:
                chosen = budget.plan(q, cap).chosen
                plans[cap] = {
                    "pick": vars(chosen.setting),
                    "predicted_peak_gib": chosen.peak_gib,
                    "predicted_speed": chosen.speed,
                }
            except budget.BudgetTooSmall as err:
                plans[cap] = {"pick": None, "refused": str(err)}
        if "sweep" in parts:
            micro = [int(m) for m in args.micro.split(",")]
            shape = budget.model_shape(q.name_or_path, q.ple_on_host, q.lora_r, q.lora_targets)
            settings = [
                s
                for s in budget.candidates(q)
                if s.micro_batch in micro
                and s.checkpoint_share in (1.0, 0.5, 0.0)
                and not (s.offload and s.checkpoint_share < 1)
            ]
            picks = [budget.Setting(**p["pick"]) for p in plans.values() if p.get("pick")]
            settings = list(dict.fromkeys([*settings, *picks]))
            first = [
                budget.Setting(2, 8, 1.0),
                *picks,
            ]  # the default and the picks before the rest, one shape at a time
            order = {s: i for i, s in enumerate(first)}
            shapes = [m for m in dict.fromkeys(s.micro_batch for s in first)]
            shapes += [m for m in micro if m not in shapes]

            def priority(s: budget.Setting) -> tuple:
                rank = shapes.index(s.micro_batch) if s.micro_batch in shapes else len(shapes)
                return (rank, order.get(s, len(order)), -s.checkpoint_share, s.offload)

            if args.settings:
                settings = [
                    budget.Setting(
                        int(m),
                        ROWS_PER_STEP // int(m),
                        float(sh),
                        bool(rest and rest[0] == "o"),
                        float(rest[1]) if len(rest) > 1 else 1.0,
                    )
                    for m, sh, *rest in (item.split(":") for item in args.settings.split(","))
                ]
            for s in settings if args.settings else sorted(settings, key=priority):
                predicted = budget.estimate(shape, q, s, 1e9)
                if predicted.peak_gib > args.max_peak_gib or not in_time(s.micro_batch):
                    continue
                result = fit_once(module, rows, s, pack, None)
                result.update(predicted_peak_gib=predicted.peak_gib, predicted_speed=predicted.speed)
                runs.append(result)
                save()
        if "capped" in parts:
            sweep = json.loads(args.sweep.read_text())["runs"] if args.sweep else list(runs)
            for r in sweep:
                if "error" not in r and "epoch_supervised_tokens_per_s" not in r:
                    add_epoch_figures(r)  # a sweep saved before the epoch figures: its runs' step times price them
            wanted: list[tuple[float, str, budget.Setting]] = []
            for cap in BUDGETS:
                if plans[cap].get("pick"):
                    wanted.append((cap, "pick", budget.Setting(**plans[cap]["pick"])))
                fitting = [r for r in sweep if "error" not in r and r.get("peak_reserved_gib", 1e9) <= cap]
                for r in sorted(fitting, key=lambda r: -r["epoch_supervised_tokens_per_s"])[:1]:
                    s = budget.Setting(
                        r["micro_batch"],
                        r["accumulate"],
                        r["checkpoint_share"],
                        r["offload_checkpoints"],
                        r.get("activation_budget", 1.0),
                    )
                    if all(s != w for c, _, w in wanted if c == cap):
                        wanted.append((cap, "best-measured", s))
            # the picks first; one micro-batch shape after another (each compiles once); offloading last (no CUDA
            # graph after it)
            for cap, role, s in sorted(wanted, key=lambda w: (w[1] != "pick", w[2].offload, w[2].micro_batch, w[0])):
                if not in_time(s.micro_batch, args.long_reserve_s if "long" in parts else 0):
                    continue
                result = fit_once(module, rows, s, pack, cap)
                result["role"] = role
                runs.append(result)
                save()
    if "long" in parts:  # long rows within 12 GiB: offloaded checkpoints, FlexAttention at 16384
        for pack, attention in ((8192, "varlen"), (16384, "flex")):
            if not on_gpu:
                pack, attention = pack // 8, "auto"
            rows = synthetic_rows("long-tail", 8 * (WARM + TIMED), vocab, seed=0, max_len=pack)
            rows = [r for r in rows if len(r["input_ids"]) == len(r["labels"]) <= pack]
            q = question(model_path, pack, attention)
            try:
                pick = budget.plan(q, 12).chosen
                plans[pack] = {"pick": vars(pick.setting), "predicted_peak_gib": pick.peak_gib}
                setting = pick.setting
            except budget.BudgetTooSmall as err:
                plans[pack] = {"refused": str(err)}
                setting = budget.Setting(1, ROWS_PER_STEP, 1.0, True)
            if not in_time(8):
                continue
            module = None  # the previous module's model and graphs go before this one loads
            gc.collect()
            if on_gpu:
                torch.cuda.empty_cache()
            module = module_for(attention)
            result = fit_once(module, rows, setting, pack, 12 if on_gpu else None)
            result["attention"] = attention
            runs.append(result)
            save()
    save()


if __name__ == "__main__":
    main()
