"""Checkpoint on SIGTERM / SIGINT at the next optimizer-step boundary, then stop cleanly.

A checkpoint taken inside an accumulation window would lose the window's partial gradients, so the signal
only raises a flag; the save happens once the current optimizer step has run, and the `medqlora` command then
exits with 128 + the signal's number (143 for SIGTERM, 130 for Ctrl-C), as an interrupted program does, so a
scheduler or `fit && eval` does not take the run for finished. Resume with `--ckpt_path <dirpath>/interrupted.ckpt`.
"""

from __future__ import annotations

import signal
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from medqlora.callbacks.steps import optimizer_step_done, run_dir

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class CheckpointOnInterrupt(Callback):
    """On SIGTERM/SIGINT: finish the optimizer step, save `interrupted.ckpt`, stop.

    Args:
        dirpath: where to write it (default: the run directory's `checkpoints/`).
    """

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath
        self.received: int | None = None
        self.stopped_by: int | None = None  # the signal that stopped the run (SIGTERM when another rank got one)
        self.saved: Path | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Take over SIGTERM and SIGINT for the duration of training (main thread only)."""
        try:
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        except ValueError:  # not the main thread: leave signals to the host process
            self._previous = {}

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        """At a step boundary after a signal: save and ask the trainer to stop."""
        if not optimizer_step_done(trainer):
            return
        # every rank must agree (saving is a collective): stop when any rank got the signal
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        root = Path(self.dirpath or run_dir(trainer) / "checkpoints")
        self.saved = root / "interrupted.ckpt"
        trainer.save_checkpoint(self.saved, weights_only=False)  # the whole state; unset, Lightning says so
        name = signal.Signals(self.received).name if self.received is not None else "a signal (on another rank)"
        rank_zero_info(
            f"medqlora: {name} received; saved {self.saved} at "
            f"optimizer step {trainer.global_step}; resume with --ckpt_path {self.saved}"
        )
        self.stopped_by = self.received if self.received is not None else int(signal.SIGTERM)
        trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Give the signals back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
