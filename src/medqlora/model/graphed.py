"""One training micro-batch, forward and backward, captured once as a CUDA graph and replayed.

At the recipe's 2 x 2048 micro-batch the GPU waits on the host: between compiled decoder layers Python runs
transformers' layer loop, checkpointing's hooks and the compiled code's wrappers, and the GPU sat idle for 40% of a
step (docs/benchmarks.md). Packed micro-batches all have one shape, so the whole micro-batch's kernels (forward,
recomputation, backward, the gradients' accumulation) can be recorded once and replayed by one launch: the host then
only copies the next batch into the graph's input buffers. Hand-written because neither Lightning nor
`torch.compile(mode="reduce-overhead")` captures a checkpointed forward and its backward together (the latter's
per-layer graphs overwrote a layer's output before backward read it).

What the graph needs from the step: no host syncs and no host decisions on GPU values for a fixed shape (masks from
model/masks.py, a fixed-size loss), and gradients that stay the same tensors, accumulated in place: `MicroBatchGraph`
keeps them attached between replays (Lightning and NonFiniteGuard may set them to None). Batches of another shape, or
with an attention mask, run the same step eagerly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from medqlora.model.distributed import is_fsdp
from medqlora.model.loss import LossOutput


def check_graphable_run(trainer) -> None:
    """Refuse, naming the setting and the way out, runs whose backward the graph's own cannot stand in for."""
    if trainer.world_size > 1 or is_fsdp(trainer.strategy):
        raise ValueError(
            f"model.lean.cuda_graph=true trains on one device (this run has {trainer.world_size} under "
            f"{type(trainer.strategy).__name__}): set it to false, as configs/ddp.yaml and configs/fsdp.yaml do"
        )
    if getattr(trainer.precision_plugin, "scaler", None) is not None:
        raise ValueError(
            "model.lean.cuda_graph=true runs backward inside the training step, where fp16's loss scaler does not "
            "see it: use trainer.precision bf16-mixed (the recipe's) or set model.lean.cuda_graph=false"
        )


def batch_key(batch: dict) -> tuple:
    """What a graph is specific to: the batch's keys and its tensors' shapes and dtypes."""
    return tuple(sorted((k, tuple(v.shape), v.dtype) for k, v in batch.items() if torch.is_tensor(v)))


class MicroBatchGraph:
    """Forward and backward of a training micro-batch: eager for the first micro-batches of a shape, then captured
    as a CUDA graph and replayed for every later micro-batch of that shape (on CUDA; elsewhere always eager).

    Args:
        step: the micro-batch's loss from a batch (`QLoRAModule.forward` with fixed_shape=True).
        params: the trainable weights, whose gradients the micro-batches accumulate.
        eager_steps: micro-batches of a shape run eagerly before it is captured (the first compiles the layers).
    """

    def __init__(self, step: Callable[[dict], LossOutput], params: list[torch.nn.Parameter], eager_steps: int = 2):
        self.step, self.params, self.eager_steps = step, params, eager_steps
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: tuple | None = None
        self.seen = 0  # micro-batches of shape `key` so far
        self.inputs: dict[str, torch.Tensor] = {}
        self.output: LossOutput | None = None
        self.grads: list[torch.Tensor] = []
        self.accumulate = 0

    def __call__(self, batch: dict, accumulate: int) -> LossOutput:
        """Run forward and backward of `batch` (loss divided by `accumulate`, as Lightning does before backward);
        returns the loss, predictions and targets, detached."""
        key = batch_key(batch)
        if self.graph is not None and key == self.key and accumulate == self.accumulate:
            return self._replay(batch)
        if self.graph is None and self._capturable(batch):
            self.seen = self.seen + 1 if key == self.key else 1
            self.key = key
            if self.seen > self.eager_steps:
                self._capture(batch, accumulate)
                return self._replay(batch)
        return self._eager(batch, accumulate)

    @staticmethod
    def _capturable(batch: dict) -> bool:
        ids = batch["input_ids"]
        # a padding mask is data the graph would bake in; packed and right-padded batches come without one
        return ids.is_cuda and "attention_mask" not in batch

    def _backward(self, loss: torch.Tensor, accumulate: int, device_type: str) -> None:
        with torch.autocast(device_type, enabled=False):  # Lightning runs backward outside the step's autocast
            (loss / accumulate).backward()

    def _eager(self, batch: dict, accumulate: int) -> LossOutput:
        out = self.step(batch)
        self._backward(out.loss, accumulate, batch["input_ids"].device.type)
        return LossOutput(out.loss.detach(), out.preds, out.targets)

    def _attach_grads(self) -> None:
        """Point every weight's .grad back at the tensor the graph accumulates into (keeping its value)."""
        cleared = []
        for p, grad in zip(self.params, self.grads):
            if p.grad is grad:
                continue
            if p.grad is None:
                cleared.append(grad)
            else:
                grad.copy_(p.grad)
            p.grad = grad
        if cleared:
            torch._foreach_zero_(cleared)

    def _capture(self, batch: dict, accumulate: int) -> None:
        self.grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        self._attach_grads()
        self.inputs = {k: v.clone() for k, v in batch.items() if torch.is_tensor(v)}
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # hand the eager micro-batches' cached blocks back: the graph keeps its own pool
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (a data loader pinning memory) may call CUDA while this one captures
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = self.step({**batch, **self.inputs})
            self._backward(out.loss, accumulate, "cuda")
        self.output = LossOutput(out.loss.detach(), out.preds, out.targets)
        self.graph, self.accumulate = graph, accumulate

    def _replay(self, batch: dict) -> LossOutput:
        for name, static in self.inputs.items():
            static.copy_(batch[name], non_blocking=True)
        self._attach_grads()
        self.graph.replay()
        out = self.output
        return LossOutput(out.loss.clone(), out.preds.clone(), out.targets.clone())  # the next replay overwrites

    def zero_grad(self) -> None:
        """Start a new accumulation window (the gradients are zeroed in place before the next backward)."""
        for p in self.params:
            p.grad = None

    def release(self) -> None:
        """Drop the graph and its memory pool (e.g. before changing what the step computes)."""
        self.graph, self.key, self.seen, self.inputs, self.output, self.grads = None, None, 0, {}, None, []
