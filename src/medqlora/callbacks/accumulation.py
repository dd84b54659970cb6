"""Gradient accumulation as a callback: Lightning's own scheduler, with the recipe's signature."""

from __future__ import annotations

import warnings

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
        from medqlora.model.module import QLoRAModule

        with warnings.catch_warnings():
            if type(pl_module).optimizer_zero_grad is QLoRAModule.optimizer_zero_grad:  # written for accumulation
                warnings.filterwarnings("ignore", message=r"When using `Trainer\(accumulate_grad_batches != 1\)`")
            super().on_train_start(trainer, pl_module)
        trainer.accumulate_grad_batches = self.get_accumulate_grad_batches(trainer.current_epoch)
        check_validation_interval(trainer)

    def on_train_epoch_start(self, trainer, *args) -> None:
        """Set this epoch's factor, and check it against the validation interval."""
        super().on_train_epoch_start(trainer, *args)
        check_validation_interval(trainer)


def check_validation_interval(trainer) -> None:
    """Refuse validations inside an accumulation window: the checkpoint they trigger would miss the window's
    partial gradients, so a run resumed from it would no longer equal the uninterrupted run."""
    every, accumulate = trainer.val_check_batch, trainer.accumulate_grad_batches
    if not trainer.enable_validation or not isinstance(every, int) or every % accumulate == 0:
        return
    if every >= trainer.num_training_batches:
        return  # validation at epoch end: the last, partial window is stepped first
    lower, upper = every // accumulate * accumulate, (every // accumulate + 1) * accumulate
    raise ValueError(
        f"trainer.val_check_interval validates every {every} micro-batches, which is not a multiple of "
        f"GradientAccumulation.accumulate={accumulate}: validations and their checkpoints would fall "
        f"inside an accumulation window; use {upper}" + (f" or {lower}" if lower else "")
    )
