"""Where the lean path's CUDA memory and step time go, phase by phase (diagnostic, used by `bench_train --trace`).

`MemoryTrace` prints, for the first batches of a real `Trainer.fit`, the allocated memory and wall time at each
hook of a step (batch start, before/after backward, before the optimizer step, batch end; synchronised), and
at one mid-accumulation batch end a census of every CUDA tensor over 64 MiB that Python still references:
parameters, gradients of parameters (frozen ones included) and anything else, with shapes.
"""

from __future__ import annotations

import gc
import time

import torch
from lightning.pytorch.callbacks import Callback

GIB = 2**30
CUDA = torch.cuda.is_available()  # on the CPU (smoke test) memory reads as 0


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def _gib(read) -> float:
    return read() / GIB if CUDA else 0.0


def cuda_census(module: torch.nn.Module, min_bytes: int = 2**26) -> list[tuple[float, str]]:
    """(GiB, description) of every large CUDA tensor reachable from Python, largest first."""
    named = {id(p): f"param {n} requires_grad={p.requires_grad}" for n, p in module.named_parameters()}
    named.update(
        {
            id(p.grad): f"grad of {n} requires_grad={p.requires_grad}"
            for n, p in module.named_parameters()
            if p.grad is not None
        }
    )
    named.update({id(b): f"buffer {n}" for n, b in module.named_buffers()})
    found = []
    for obj in gc.get_objects():
        if not (torch.is_tensor(obj) and obj.is_cuda):
            continue
        size = obj.untyped_storage().nbytes()
        if size >= min_bytes:
            what = named.get(id(obj), f"other requires_grad={obj.requires_grad} grad_fn={type(obj.grad_fn).__name__}")
            found.append((round(size / GIB, 3), f"{what} {tuple(obj.shape)} {obj.dtype}"))
    return sorted(found, reverse=True)


class MemoryTrace(Callback):
    """Allocated GiB and seconds since batch start at each hook, for batches [0, until)."""

    def __init__(self, until: int = 10, census_at: int = 4):
        self.until, self.census_at = until, census_at
        self._t0 = 0.0

    def _mark(self, trainer, where: str) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.current.ready >= self.until + 1:
            return
        _sync()
        print(
            f"trace step={trainer.global_step} {where:<16} alloc {_gib(torch.cuda.memory_allocated):6.2f} GiB"
            f"  max {_gib(torch.cuda.max_memory_allocated):6.2f}  t {time.perf_counter() - self._t0:6.3f} s",
            flush=True,
        )

    def on_train_start(self, trainer, pl_module):
        _sync()
        print(
            "trace train_start alloc",
            round(_gib(torch.cuda.memory_allocated), 2),
            "GiB; census:",
            cuda_census(pl_module)[:12],
            flush=True,
        )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        _sync()
        self._t0 = time.perf_counter()
        self._mark(trainer, f"batch {batch_idx} start")

    def on_before_backward(self, trainer, pl_module, loss):
        # on one process the step unit runs backward inside training_step (model/step.py): this mark then comes after
        # it, and the max column is the forward's and backward's peak together
        self._mark(trainer, "before_backward")

    def on_after_backward(self, trainer, pl_module):
        self._mark(trainer, "after_backward")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self._mark(trainer, "before_opt_step")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._mark(trainer, "batch_end")
        if batch_idx == self.census_at:
            print("trace census at batch end", batch_idx, cuda_census(pl_module)[:15], flush=True)
