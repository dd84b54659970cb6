"""Gradient accumulation as a callback: Lightning's own scheduler, with the recipe's signature."""

from __future__ import annotations

from lightning.pytorch.callbacks import GradientAccumulationScheduler


class GradientAccumulation(GradientAccumulationScheduler):
    """Accumulate `accumulate` micro-batches per optimizer step (recipe: 8), optionally changing by epoch.

    Args:
        accumulate: micro-batches per optimizer step from epoch 0.
        schedule: optional {epoch: micro-batches} changes from later epochs on, e.g. {2: 16}.
    """

    def __init__(self, accumulate: int = 8, schedule: dict[int, int] | None = None):
        if accumulate < 1:
            raise ValueError(f"GradientAccumulation.accumulate={accumulate} must be >= 1 (recipe: 8)")
        super().__init__(scheduling={0: accumulate, **(schedule or {})})

    def on_train_start(self, trainer, pl_module) -> None:
        """Also set the factor here: a run resumed mid-epoch never sees that epoch's on_train_epoch_start."""
        super().on_train_start(trainer, pl_module)
        trainer.accumulate_grad_batches = self.get_accumulate_grad_batches(trainer.current_epoch)
