"""Writes the PEFT adapter directory: at the end of fit, and whenever validation loss improves."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from medqlora.callbacks.schedule import total_optimizer_steps
from medqlora.callbacks.steps import run_dir
from medqlora.model.adapter import save_adapter


def progress(trainer: L.Trainer, kind: str) -> dict:
    """{"step": optimizer steps done, "total_steps": the run's planned total, "kind": "final" or "best"}."""
    return {"step": trainer.global_step, "total_steps": total_optimizer_steps(trainer), "kind": kind}


class AdapterExport(Callback):
    """Saves `<run dir>/adapter` at the end of fit and `<run dir>/adapter-best` on each new best `monitor`
    (never under validate/test/predict, which train nothing).

    Args:
        monitor: the metric that decides "best" (lower is better).
        save_best: also keep the best adapter seen at validation.
    """

    def __init__(self, monitor: str = "val/loss", save_best: bool = True):
        self.monitor, self.save_best = monitor, save_best
        self.best = math.inf

    def adapter_dir(self, trainer: L.Trainer, name: str) -> Path:
        """Where `adapter` and `adapter-best` go (override to put them elsewhere)."""
        return run_dir(trainer) / name

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save adapter-best when the monitored value improves (while fitting; not during the sanity check)."""
        value = trainer.callback_metrics.get(self.monitor)
        if (
            not self.save_best
            or trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
            or value is None
            or float(value) >= self.best
        ):
            return
        self.best = float(value)
        weights, directory = pl_module.adapter_weights(), self.adapter_dir(trainer, "adapter-best")  # every rank
        if trainer.is_global_zero:
            save_adapter(pl_module.model, pl_module.name_or_path, directory, weights, progress(trainer, "best"))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save the final adapter."""
        weights, directory = pl_module.adapter_weights(), self.adapter_dir(trainer, "adapter")  # every rank
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.save()  # the card reads metrics.csv
            path = save_adapter(pl_module.model, pl_module.name_or_path, directory, weights, progress(trainer, "final"))
            rank_zero_info(f"medqlora: adapter written to {path}")

    def state_dict(self) -> dict:
        """The best value so far, so a resumed run keeps the right adapter-best."""
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the best value."""
        self.best = state_dict["best"]
