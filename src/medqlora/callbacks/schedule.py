"""Cosine learning-rate schedule with linear warmup, as a callback.

The lr of optimizer step `s` is a pure function of `s` and the run's total optimizer steps, set just
before each step; so it needs no state of its own and is right after a resume, under accumulation
(fixed or scheduled), `max_steps` and several devices.
"""

from __future__ import annotations

import math

import lightning as L
from lightning.pytorch.callbacks import Callback, GradientAccumulationScheduler


def total_optimizer_steps(trainer: L.Trainer) -> int:
    """Optimizer steps of the whole run, honouring an accumulation schedule that changes by epoch."""
    estimated = int(trainer.estimated_stepping_batches)
    schedulers = [c for c in trainer.callbacks if isinstance(c, GradientAccumulationScheduler)]
    if not schedulers or trainer.max_epochs is None or trainer.max_epochs < 0:
        return estimated
    batches = trainer.num_training_batches
    if batches == float("inf"):
        return estimated
    steps = sum(
        math.ceil(batches / schedulers[0].get_accumulate_grad_batches(epoch)) for epoch in range(trainer.max_epochs)
    )
    return min(steps, trainer.max_steps) if trainer.max_steps and trainer.max_steps > 0 else steps


def cosine_with_warmup(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based).

    Rises linearly to 1.0 at step `warmup - 1`, then follows a cosine to `min_ratio` at step `total - 1`.
    """
    if step < warmup:
        return (step + 1) / warmup
    decay_steps = max(1, total - warmup)
    progress = min(1.0, (step - warmup + 1) / decay_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class CosineWarmup(Callback):
    """Linear warmup over `warmup_ratio` of the optimizer steps, then cosine decay to `min_lr_ratio` x peak.

    Args:
        warmup_ratio: share of all optimizer steps spent warming up (recipe: 0.05).
        min_lr_ratio: the floor, as a fraction of the peak lr, reached at the last optimizer step.
    """

    def __init__(self, warmup_ratio: float = 0.05, min_lr_ratio: float = 0.0):
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"CosineWarmup.warmup_ratio={warmup_ratio} must be in [0, 1) (recipe: 0.05)")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"CosineWarmup.min_lr_ratio={min_lr_ratio} must be in [0, 1]")
        self.warmup_ratio, self.min_lr_ratio = warmup_ratio, min_lr_ratio
        self.total_steps = 0
        self.warmup_steps = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Count the run's optimizer steps and remember each group's peak lr."""
        self.total_steps = max(1, total_optimizer_steps(trainer))
        self.warmup_steps = math.ceil(self.warmup_ratio * self.total_steps)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])

    def lr_multiplier(self, step: int) -> float:
        """The schedule's factor at optimizer step `step`."""
        return cosine_with_warmup(step, self.total_steps, self.warmup_steps, self.min_lr_ratio)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        """Set the lr of the step about to run and log it."""
        factor = self.lr_multiplier(trainer.global_step)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        pl_module.log("lr", optimizer.param_groups[0]["lr"], on_step=True, prog_bar=True)
