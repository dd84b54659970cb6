"""Peak memory per logging interval and per epoch, split into parameters, optimizer state and activations.

On CUDA: peak allocated and reserved memory, reset every interval. On CPU: the process's resident set.
At the end of fit: a one-line summary and `memory.json` in the run directory (the model card reads it).
"""

from __future__ import annotations

import json
import platform
import resource
import sys
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from medqlora.callbacks.steps import optimizer_step_done, run_dir
from medqlora.io import atomic_write_text
from medqlora.runs import MEMORY_FILE

GIB = 1024**3


def _tensor_bytes(tensors, device: torch.device) -> int:
    return sum(
        t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor) and t.device.type == device.type
    )


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class PeakMemory(Callback):
    """Logs `mem/*` every `every_n_steps` optimizer steps (default: the trainer's log interval).

    Args:
        every_n_steps: logging interval in optimizer steps; None = `trainer.log_every_n_steps`.
    """

    def __init__(self, every_n_steps: int | None = None):
        self.every_n_steps = every_n_steps
        self.summary: dict[str, float] = {}
        self._epoch_peak = 0.0
        self._start = 0.0
        self._earlier_s = 0.0  # wall time of the sessions before a resume

    def wall_time_s(self) -> float:
        """Seconds of training so far, over every session of a resumed run."""
        return self._earlier_s + (time.perf_counter() - self._start if self._start else 0.0)

    def _device(self, trainer: L.Trainer) -> torch.device:
        return trainer.strategy.root_device  # the module itself is back on the CPU after teardown

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Reset the counters once the model and optimizer are in place."""
        self._start = time.perf_counter()
        if self._device(trainer).type == "cuda":
            torch.cuda.reset_peak_memory_stats(self._device(trainer))

    def split(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Bytes (GiB) of parameters + buffers, optimizer state and gradients on the training device."""
        device = self._device(trainer)
        params = _tensor_bytes([*pl_module.parameters(), *pl_module.buffers()], device)
        state = [v for opt in trainer.optimizers for s in opt.state.values() for v in s.values()]
        grads = _tensor_bytes([p.grad for p in pl_module.parameters() if p.grad is not None], device)
        return {
            "params_gib": params / GIB,
            "optimizer_state_gib": _tensor_bytes(state, device) / GIB,
            "grads_gib": grads / GIB,
        }

    def measure(self, trainer: L.Trainer) -> dict[str, float]:
        """Peak since the last reset (CUDA) or resident set (CPU), in GiB."""
        device = self._device(trainer)
        if device.type == "cuda":
            return {
                "peak_alloc_gib": torch.cuda.max_memory_allocated(device) / GIB,
                "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB,
            }
        return {"rss_gib": _rss_bytes() / GIB, "peak_rss_gib": _peak_rss_bytes() / GIB}

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        """Log the interval's peak on optimizer-step boundaries and reset it."""
        every = self.every_n_steps or trainer.log_every_n_steps
        if optimizer_step_done(trainer) and trainer.global_step % max(1, every) == 0:
            stats = self.measure(trainer)
            peak = stats.get("peak_alloc_gib", stats.get("peak_rss_gib", 0.0))
            self._epoch_peak = max(self._epoch_peak, peak)
            self.summary["peak_gib"] = max(self.summary.get("peak_gib", 0.0), peak)
            if "peak_reserved_gib" in stats:
                self.summary["peak_reserved_gib"] = max(
                    self.summary.get("peak_reserved_gib", 0.0), stats["peak_reserved_gib"]
                )
            for key, value in stats.items():
                pl_module.log(f"mem/{key}", value, on_step=True, prog_bar=key in ("peak_alloc_gib", "rss_gib"))
            if self._device(trainer).type == "cuda":
                torch.cuda.reset_peak_memory_stats(self._device(trainer))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log the epoch's peak."""
        pl_module.log("mem/epoch_peak_gib", self._epoch_peak, on_epoch=True)
        self._epoch_peak = 0.0

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Print a one-line summary and write memory.json to the run directory."""
        stats = self.measure(trainer)
        peak = max(self.summary.get("peak_gib", 0.0), stats.get("peak_alloc_gib", stats.get("peak_rss_gib", 0.0)))
        split = self.split(trainer, pl_module)
        on_cuda = self._device(trainer).type == "cuda"
        reserved = max(self.summary.get("peak_reserved_gib", 0.0), stats.get("peak_reserved_gib", 0.0))
        name = torch.cuda.get_device_name(self._device(trainer)) if on_cuda else (platform.processor() or "CPU")
        self.summary = {
            "device": str(self._device(trainer)),
            "device_name": name,
            "peak_gib": peak,
            "peak_reserved_gib": reserved,
            **split,
            "activations_peak_gib": max(0.0, peak - sum(split.values())) if on_cuda else None,
            "wall_time_s": self.wall_time_s(),
        }
        rank_zero_info(
            "medqlora memory: peak {peak_gib:.2f} GiB on {device} (params {params_gib:.2f}, "
            "optimizer {optimizer_state_gib:.3f}, grads {grads_gib:.3f}); "
            "wall {wall_time_s:.0f} s".format(**self.summary)
        )
        budget = getattr(getattr(pl_module, "lean", None), "memory_budget_gib", None)
        if on_cuda and isinstance(budget, (int, float)):  # the plan's prediction, checked (model/budget.py)
            self.summary["memory_budget_gib"] = budget
            if reserved > budget:
                rank_zero_warn(
                    f"medqlora memory: the peak reserved {reserved:.2f} GiB went over model.lean.memory_budget_gib="
                    f"{budget:g}: the memory model underestimated this run; lower the budget by the difference"
                )
        directory = run_dir(trainer) if trainer.loggers else None  # every rank: a collective
        if trainer.is_global_zero and directory is not None:
            atomic_write_text(directory / MEMORY_FILE, json.dumps(self.summary, indent=2))

    def state_dict(self) -> dict:
        """Wall time so far, so a resumed run's memory.json counts the whole run."""
        return {"wall_time_s": self.wall_time_s()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue the wall-time count of the run being resumed."""
        self._earlier_s = state_dict.get("wall_time_s", 0.0)
