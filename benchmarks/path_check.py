"""A new training path against today's, on the benchmark's first batch, before timing (issue #16's correctness check).

The case's path (compiled layers, the loss gradient in forward, per-sample attention and/or the micro-batch's CUDA
graph: captured on the batch after one eager pass, then replayed) and today's (eager layers, recomputing loss, SDPA
over the packed rows' masks, no graph)
each run the first batch forward and backward with the same seed; the JSON gets their loss and LoRA-gradient
differences next to two floors measured on today's path alone:
- rounding floor: the loss scaled by 1 + 2^-10 before backward and the gradients scaled back, which changes only how
  backward rounds;
- nudged: the token embeddings scaled by 1 + 2 eps of their dtype (2^-22 in float32, 2^-6 in bfloat16: a couple of
  ulps), how far a rounding-sized change in the forward moves loss and gradients; random-weight models amplify it
  layer by layer.
LoRA dropout is off for the check: on CUDA a compiled graph draws its masks with `rand_like` (inductor's
decomposition) and eager with the fused dropout kernel, so with dropout on the two paths train on different, equally
random, masks. The first pass also pays any compilation, outside the timing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable

import torch
from lightning.pytorch.callbacks import Callback

NUDGE_ULPS, LOSS_SCALE = 2, 1 + 2**-10


def rel_norm_diff(a: dict, b: dict) -> float:
    """|a - b| / |b| over all LoRA gradients at once: a zero-initialised B leaves some tensors with ~zero norm."""
    diff = sum(float((a[n] - g).pow(2).sum()) for n, g in b.items()) ** 0.5
    return diff / max(sum(float(g.pow(2).sum()) for g in b.values()) ** 0.5, 1e-30)


def by_group(a: dict, b: dict, group: Callable[[str], object], contains: str = "") -> dict:
    """rel_norm_diff per group of parameters (rounded), e.g. per layer or per projection."""
    groups: dict = {}
    for name in b:
        if contains in name:
            groups.setdefault(group(name), []).append(name)
    return {k: round(rel_norm_diff(a, {n: b[n] for n in names}), 6) for k, names in sorted(groups.items())}


def layer_of(name: str) -> int:
    return int(name.split(".layers.")[1].split(".")[0])


def projection_of(name: str) -> str:
    return name.split(".lora_")[0].rsplit(".", 1)[1]


class PathCheck(Callback):
    """Writes the comparison into `results` at train start, and the graphs compiled before and after the timed steps
    (`graphs_before_timing` < `graphs_after_timing` means a recompile inside the timing)."""

    def __init__(self, results: dict, loss_grad_in_forward: bool, warmup_batches: int):
        self.results, self.loss_grad_in_forward, self.warmup_batches = results, loss_grad_in_forward, warmup_batches

    def on_train_start(self, trainer, pl_module) -> None:
        from medqlora.model.compile import decoder_layers, eager_layers
        from medqlora.model.step import TrainStep

        batch = pl_module.on_before_batch_transfer(next(iter(trainer.train_dataloader)), 0)
        batch = {k: v.to(pl_module.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        model, plan = pl_module.model, pl_module.plan

        def nudged(module, inputs, out: torch.Tensor) -> torch.Tensor:
            return out * (1 + NUDGE_ULPS * torch.finfo(out.dtype).eps)

        def graphed_loss() -> torch.Tensor:
            # its own graph (and memory pool), dropped after the check: training captures with its dropout on
            trainable = [p for p in model.parameters() if p.requires_grad]
            step = TrainStep(
                lambda b: pl_module.forward(b, pl_module.plan.train), trainable, graphed=True, eager_steps=1
            )
            step(dict(batch), 0, 1)  # eager: compiles
            torch.manual_seed(0)
            loss = step(dict(batch), 0, 1).loss  # zeroed (a window's first micro-batch), captured, then replayed
            step.release()
            return loss

        def loss_and_grads(today: bool, scale: float = 1.0, nudge: bool = False) -> tuple[float, dict]:
            torch.manual_seed(0)
            model.zero_grad(set_to_none=True)
            grad_in_forward = self.loss_grad_in_forward and not today
            loss = "chunked_grad_in_forward" if grad_in_forward else "chunked"
            # today's attention: SDPA over the block-diagonal masks (the varlen function without bounds is SDPA)
            evaluate = dataclasses.replace(plan.evaluate, sample_bounds=False) if today else plan.evaluate
            pl_module.plan = dataclasses.replace(plan, loss=loss, evaluate=evaluate)
            embed = model.get_input_embeddings()
            hook = embed.register_forward_hook(nudged) if nudge else None
            graphed = not today and plan.cuda_graph and torch.cuda.is_available()  # backward inside the graph
            with trainer.precision_plugin.train_step_context():
                if graphed:
                    loss = graphed_loss()
                else:
                    with eager_layers(model) if today else contextlib.nullcontext():
                        loss = pl_module(dict(batch)).loss
            if hook:
                hook.remove()
            if not graphed:
                (loss * scale).backward()
            pl_module.plan = plan
            return loss.item(), {
                n: p.grad.float().cpu() / scale for n, p in model.named_parameters() if p.requires_grad
            }

        dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
        rates = [m.p for m in dropouts]
        for m in dropouts:
            m.p = 0.0  # a new graph per layer variant for the check (dropout's rate is a constant in the graph)
        # one untimed pass of today's path first: on the CPU the process's first forward sometimes rounds differently
        # (multi-threaded only; 1 in 3 runs of the tiny fp32 case since the PLE rows arrive as per_layer_inputs, later
        # passes agree), and random weights amplify a rounding-sized change far past backward's floor
        loss_and_grads(today=True)
        start = time.perf_counter()
        path_loss, path = loss_and_grads(today=False)
        self.results["first_step_s"] = time.perf_counter() - start
        today_loss, today = loss_and_grads(today=True)
        _, floor = loss_and_grads(today=True, scale=LOSS_SCALE)
        nudged_loss, nudged_grads = loss_and_grads(today=True, nudge=True)
        for m, rate in zip(dropouts, rates):
            m.p = rate
        model.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        last = f".layers.{len(decoder_layers(model)) - 1}."
        self.results.update(
            loss_today=today_loss,
            loss_this_path=path_loss,
            loss_abs_diff=abs(path_loss - today_loss),
            grad_max_abs_diff=max(float((path[n] - g).abs().max()) for n, g in today.items()),
            grad_max_abs=max(float(g.abs().max()) for g in today.values()),
            grad_rel_norm_diff=rel_norm_diff(path, today),
            rounding_floor_grad_rel_norm_diff=rel_norm_diff(floor, today),
            nudged_loss_abs_diff=abs(nudged_loss - today_loss),
            nudged_grad_rel_norm_diff=rel_norm_diff(nudged_grads, today),
            # where a difference starts: backward runs from the last layer down
            grad_rel_diff_by_layer=by_group(path, today, layer_of),
            grad_rel_diff_last_layer=by_group(path, today, projection_of, last),
        )
        print(f"this path vs today's: {self.results}", flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx in (self.warmup_batches - 1, trainer.num_training_batches - 1):
            from torch._dynamo.utils import counters

            key = "graphs_before_timing" if batch_idx == self.warmup_batches - 1 else "graphs_after_timing"
            self.results[key] = counters["stats"]["unique_graphs"]
            self.results["graph_breaks"] = sum(counters["graph_break"].values())
