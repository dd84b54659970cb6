"""Callbacks the fault and distributed tests wire into a real `medqlora fit` subprocess from YAML."""

from __future__ import annotations

import json
import os
import signal

import lightning as L


class KillAtBatch(L.Callback):
    """SIGKILLs the process right after micro-batch `batch` (0-based, counted over the whole run) trains."""

    def __init__(self, batch: int):
        self.batch, self.seen = batch, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.seen == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)
        self.seen += 1


class BatchLog(L.Callback):
    """Appends 'global_step batch_idx checksum' per trained micro-batch to `path` (which batches ran, in order)."""

    def __init__(self, path: str = "batches.log"):
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_step} {batch_idx} {int(batch['input_ids'].sum())} {float(outputs['loss']):.6f}\n")


class SignalAtBatch(L.Callback):
    """Sends this process `signum` right after micro-batch `batch` trains (an operator's kill or Ctrl-C);
    with `rank`, only that rank's process gets it."""

    def __init__(self, batch: int, signum: int = signal.SIGTERM, rank: int | None = None):
        self.batch, self.signum, self.seen, self.rank = batch, signum, 0, rank

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.seen == self.batch and self.rank in (None, trainer.global_rank):
            os.kill(os.getpid(), self.signum)
        self.seen += 1


class PleReport(L.Callback):
    """Writes `<path>-<rank>.json` at train start: which medqlora PLE files this process maps (/proc/self/maps) and
    a checksum of the host table's first 64 rows as this rank reads them."""

    def __init__(self, path: str = "ple"):
        self.path = path

    def on_train_start(self, trainer, pl_module):
        import torch

        mapped = {" ".join(line.split()[5:]) for line in open("/proc/self/maps") if "medqlora-ple-" in line}
        rows = pl_module.host_embedding.gather(torch.arange(64).view(1, -1))
        report = {"rank": trainer.global_rank, "mapped": sorted(mapped), "rows_sum": float(rows.double().sum())}
        with open(f"{self.path}-{trainer.global_rank}.json", "w") as f:
            json.dump(report, f)


class GradientLog(L.Callback):
    """Saves rank 0's adapter gradients, as the optimizer is about to see them (after DDP's reduction), to
    `<path>-<step>.pt` for each optimizer step."""

    def __init__(self, path: str = "grads"):
        self.path = path

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        import torch

        if trainer.global_rank == 0:
            grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}
            torch.save(grads, f"{self.path}-{trainer.global_step}.pt")


class SignalAtSetup(L.Callback):
    """Sends this process `signum` as the trainer sets up: after the model and data are built, before training."""

    def __init__(self, signum: int = signal.SIGINT):
        self.signum = signum

    def setup(self, trainer, pl_module, stage):
        os.kill(os.getpid(), self.signum)
