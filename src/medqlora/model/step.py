"""One training micro-batch, the whole gradient-accumulation protocol in one object: `TrainStep`.

`QLoRAModule.training_step` calls it for every micro-batch, and Lightning's own zero_grad and backward hooks do
nothing else than hand over to it. A window of `accumulate` micro-batches then goes:

1. The window's first micro-batch (batch_idx % accumulate == 0, Lightning's test) sets every gradient to None.
2. Forward: the loss over the micro-batch's supervised tokens (`QLoRAModule.forward` in the plan's training form).
3. Backward of loss / accumulate, outside autocast (as Lightning runs it), accumulating into the weights' .grad.
   On one process it runs right here; under DDP/FSDP it runs in `backward`, which Lightning calls after the wrapper's
   forward has returned (their gradient hooks are armed then, not before).
4. Lightning steps the optimizer after the window's last micro-batch (callbacks such as NonFiniteGuard may set
   gradients to None before it); nothing here depends on when.

With the plan's `cuda_graph`, steps 2-3 are captured once per micro-batch shape and replayed: the first
`eager_steps` micro-batches of a shape run eagerly (the first compiles the layers), the next is captured, and every
later one copies its tensors into the graph's input buffers and replays it. A graph accumulates into the gradient
tensors it was captured with, so before each replay those tensors are put back on the weights (zeroed when the
weights had none: a new window, or a skipped step). The accumulation factor is baked into a capture: when it
changes, the graph is dropped and captured again. Batches of another shape than the captured one, with an attention
mask, or not on a GPU, run eagerly.

At the recipe's 2 x 2048 micro-batch the GPU waits on the host (Python between compiled layers idled it 40% of a
step, docs/benchmarks.md); replaying takes the host out. Hand-written because neither Lightning nor
`torch.compile(mode="reduce-overhead")` captures a checkpointed forward and its backward together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from medqlora.compat import zero_all
from medqlora.model.loss import LossOutput


class Graph(Protocol):
    """What the step needs of a graph: capture a function once, replay it (tests pass a recording fake)."""

    def capture(self, step: Callable[[], LossOutput]) -> LossOutput: ...

    def replay(self) -> None: ...


class CudaGraph:
    """A CUDA graph of one micro-batch's forward and backward. Capturing runs no kernel: the returned tensors are
    the graph's output buffers, written by each replay."""

    def __init__(self):
        self.graph = torch.cuda.CUDAGraph()

    def capture(self, step: Callable[[], LossOutput]) -> LossOutput:
        """Record `step`; the eager micro-batches before it were the warm-up CUDA graphs need."""
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # hand the eager micro-batches' cached blocks back: the graph keeps its own pool
        # thread_local: other threads (a data loader pinning memory) may call CUDA while this one captures
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            return step()

    def replay(self) -> None:
        """Run the recorded kernels on what the input buffers hold now."""
        self.graph.replay()


def batch_key(batch: dict) -> tuple:
    """What a graph is specific to: the batch's keys and its tensors' shapes and dtypes."""
    return tuple(sorted((k, tuple(v.shape), v.dtype) for k, v in batch.items() if torch.is_tensor(v)))


def on_cuda_without_mask(batch: dict) -> bool:
    """A CUDA graph can serve the batch: on the GPU, and with no padding mask (data the graph would bake in)."""
    return batch["input_ids"].is_cuda and "attention_mask" not in batch


class TrainStep:
    """Zero at the window's start, forward, backward of loss / accumulate, gradients owned in place (module docstring).

    Args:
        forward: a micro-batch's loss (`QLoRAModule.forward` in the plan's training form).
        params: the trainable weights.
        backward_in_step: run backward inside the call (one process), else in `backward` (DDP/FSDP).
        graphed: capture and replay micro-batches (`StepPlan.cuda_graph`).
        make_graph: builds a graph (`CudaGraph`; tests pass a fake).
        can_capture: which batches a graph may serve (default: on CUDA, without an attention mask).
        eager_steps: micro-batches of a shape run eagerly before it is captured.
        loss_scale: multiplies the loss before backward (fp16's loss scaler); None for bf16 and fp32.
    """

    def __init__(
        self,
        forward: Callable[[dict], LossOutput],
        params: list[torch.nn.Parameter],
        *,
        backward_in_step: bool = True,
        graphed: bool = False,
        make_graph: Callable[[], Graph] = CudaGraph,
        can_capture: Callable[[dict], bool] = on_cuda_without_mask,
        eager_steps: int = 2,
        loss_scale: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        if graphed and not backward_in_step:
            raise ValueError("a graphed step runs backward inside the step: backward_in_step must be true")
        self.forward, self.params = forward, params
        self.backward_in_step, self.graphed = backward_in_step, graphed
        self.make_graph, self.can_capture, self.eager_steps = make_graph, can_capture, eager_steps
        self.loss_scale = loss_scale
        self.release()

    def __call__(self, batch: dict, batch_idx: int, accumulate: int) -> LossOutput:
        """Run one micro-batch. Returns its loss, predictions and targets: detached when backward already ran, else
        the loss Lightning hands to `backward`."""
        if batch_idx % accumulate == 0:
            for p in self.params:
                p.grad = None
        if not self.backward_in_step:
            return self.forward(batch)
        if self.graphed and self.can_capture(batch):
            return self._graphed(batch, accumulate)
        return self._eager(batch, accumulate)

    def backward(self, loss: torch.Tensor) -> None:
        """Lightning's backward hook (loss already divided by the accumulation): only under DDP/FSDP."""
        if not self.backward_in_step:
            loss.backward()

    # -- one process --------------------------------------------------------------------------------
    def _backward(self, loss: torch.Tensor, accumulate: int, device_type: str) -> None:
        loss = loss / accumulate
        if self.loss_scale is not None:
            loss = self.loss_scale(loss)
        with torch.autocast(device_type, enabled=False):  # the step runs inside Lightning's autocast
            loss.backward()

    def _eager(self, batch: dict, accumulate: int) -> LossOutput:
        out = self.forward(batch)
        self._backward(out.loss, accumulate, batch["input_ids"].device.type)
        return LossOutput(out.loss.detach(), out.preds, out.targets)

    def _graphed(self, batch: dict, accumulate: int) -> LossOutput:
        key = batch_key(batch)
        if self.graph is not None and accumulate != self.accumulate:
            self.release()  # the captured backward divides by the old factor
        if self.graph is not None and key != self.key:
            return self._eager(batch, accumulate)  # one graph, for the shape packed rows all have
        if self.graph is None:
            self.seen = self.seen + 1 if key == self.key else 1
            self.key = key
            if self.seen <= self.eager_steps:
                return self._eager(batch, accumulate)
            self._capture(batch, accumulate)
        for name, static in self.inputs.items():
            static.copy_(batch[name], non_blocking=True)
        self._attach_grads()
        self.graph.replay()
        out = self.output
        return LossOutput(out.loss.clone(), out.preds.clone(), out.targets.clone())  # the next replay overwrites

    def _capture(self, batch: dict, accumulate: int) -> None:
        self.grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        self._attach_grads()
        self.inputs = {k: v.clone() for k, v in batch.items() if torch.is_tensor(v)}
        graph = self.make_graph()

        def step() -> LossOutput:
            out = self.forward({**batch, **self.inputs})
            self._backward(out.loss, accumulate, out.loss.device.type)
            return LossOutput(out.loss.detach(), out.preds, out.targets)

        self.output = graph.capture(step)
        self.graph, self.accumulate = graph, accumulate

    def _attach_grads(self) -> None:
        """Point every weight's .grad back at the tensor the graph accumulates into (keeping its value, or zero
        when the weight had no gradient)."""
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
            zero_all(cleared)

    def release(self) -> None:
        """Drop the graph and its memory pool (training is over, or what it captured no longer holds)."""
        self.graph: Graph | None = None
        self.key: tuple | None = None
        self.seen, self.accumulate = 0, 0  # micro-batches of shape `key` so far; the captured accumulation
        self.inputs: dict[str, torch.Tensor] = {}
        self.output: LossOutput | None = None
        self.grads: list[torch.Tensor] = []
