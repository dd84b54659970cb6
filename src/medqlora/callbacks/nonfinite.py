"""Catch a NaN or inf loss or gradient at the optimizer step, before it reaches the adapter.

A non-finite loss gives non-finite gradients, so one check of the gradients just before each optimizer step
covers both. `skip` drops the step (gradients set to None, which torch's and bitsandbytes' AdamW skip, so
neither weights nor optimizer state move) and counts it; `stop` ends the run with an error that names the
step and the last good checkpoint.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from medqlora.callbacks.steps import optimizer_step_done
from medqlora.compat import grad_norms


class NonFiniteError(RuntimeError):
    """Training stopped on a non-finite loss or gradient (policy `stop`)."""


class NonFiniteGuard(Callback):
    """Skip or stop on NaN/inf gradients; logs `nonfinite/skipped`.

    Args:
        policy: `skip` the optimizer step and count it, or `stop` the run.
        max_skips: with `skip`, stop anyway after this many skipped steps (a diverged run).
    """

    def __init__(self, policy: Literal["skip", "stop"] = "skip", max_skips: int = 10):
        if policy not in ("skip", "stop"):
            raise ValueError(f"NonFiniteGuard.policy={policy!r}: use 'skip' or 'stop'")
        self.policy, self.max_skips = policy, max_skips
        self.skipped = 0
        self.window_rows: list[str] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        """Remember which rows the current optimizer step is made of."""
        self.window_rows.extend(batch.get("row_ids", []) if isinstance(batch, dict) else [])

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        """A finished optimizer step starts a new window of rows."""
        if optimizer_step_done(trainer):
            self.window_rows = []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        """Check every gradient of the step about to run."""
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        # one multi-tensor norm per step, not two kernels per tensor (410 tensors on E2B): a NaN or inf anywhere
        # makes its tensor's norm non-finite (so would a finite gradient beyond 1e19, which deserves a skip too)
        if not params or torch.isfinite(torch.stack(grad_norms([p.grad for p in params]))).all():
            return
        last = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none saved yet"
        rows = ", ".join(self.window_rows[:20]) + (" ..." if len(self.window_rows) > 20 else "")
        where = f"optimizer step {trainer.global_step} (epoch {trainer.current_epoch}; rows {rows or 'unknown'})"
        if self.policy == "stop" or self.skipped >= self.max_skips:
            raise NonFiniteError(
                f"non-finite loss or gradient at {where}; last good checkpoint: {last}. "
                "Lower model.lr, check the batch's rows, or set NonFiniteGuard.policy: skip"
            )
        self.skipped += 1
        for p in params:
            p.grad = None
        rank_zero_warn(f"medqlora: skipped {where}: non-finite gradient ({self.skipped} skipped so far)")
        pl_module.log("nonfinite/skipped", float(self.skipped), on_step=True)

    def state_dict(self) -> dict:
        """The skip count survives a resume."""
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the skip count."""
        self.skipped = state_dict["skipped"]
