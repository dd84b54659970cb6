"""Regional compilation: Gemma 4's decoder layer through `torch.compile`, checkpointed outside the graph.

At the recipe's 2 x 2048 shape a step is bound by kernel launches (16k a micro-batch: norms, gating, LoRA scaling,
dropout, each its own kernel) rather than by the GPU's arithmetic. Compiling the repeated decoder layer fuses that
elementwise work. One compiled function serves every layer (the layer is an argument, so layers of one shape share
a graph): E2B's 35 layers need one graph per layer variant (sliding or full attention, KV-shared or not, double-wide
MLP, how many K/V the layer finds shared), about eight, compiled once.

transformers checkpoints a layer around its whole forward, which dynamo cannot trace through (the KV-sharing dict
is written inside the checkpoint); here the layer's own forward is compiled and our non-reentrant checkpoint wraps
it, so recomputation replays the compiled forward. Dropout keeps eager's random stream (`fallback_random`): a
compiled step draws the masks an eager one draws, so loss and gradients can be compared, and resumes stay exact.
The layers always get tensor masks (`QLoRAModule.forward` builds them, model/masks.py): transformers hands
full-attention layers no mask when no row of a micro-batch is packed, which would compile a second graph per layer
variant mid-epoch (about 40 s on E2B).

Selective checkpointing (`model.lean.activation_budget`) happens inside the graph: the compiler's partitioner keeps a
share of what a layer would save for backward and recomputes the rest there, the elementwise work first, fused into the
backward kernels: what checkpointing the whole layer around the graph would recompute, less its matmuls.
"""

from __future__ import annotations

import os
import shutil
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial, update_wrapper, wraps

import torch
from torch.utils.checkpoint import checkpoint

from medqlora.compat import (
    activation_memory_budget,
    count_grouped_query_attention,
    keep_uncounted_ops,
    own_forward,
    raise_recompile_limit,
    replace_forward,
)
from medqlora.model.checkpointing import offloaded
from medqlora.model.parts import text_model

RECOMPILE_LIMIT = 64  # graphs per compiled function: E2B's layer variants need ~8, dynamo's default limit is 8


class CompiledLayerForward:
    """A decoder layer's forward through the shared compiled function, checkpointed when training with grad (its
    inputs kept in host memory with `offload`: model/checkpointing.py)."""

    def __init__(self, layer: torch.nn.Module, compiled, eager, checkpointing: bool, offload: bool = False):
        self.layer, self.compiled, self.eager, self.checkpointing = layer, compiled, eager, checkpointing
        self.checkpoint = offloaded(checkpoint) if offload else checkpoint
        self.use_eager = False

    def __call__(self, *args, **kwargs):
        fn = self.eager if self.use_eager else self.compiled
        if self.checkpointing and self.layer.training and torch.is_grad_enabled():
            if self.checkpoint is not checkpoint:  # offloaded inputs come back contiguous: hand them in that way, so
                # the recomputation meets the strides the graph was compiled for (the per-layer input is a view)
                args = tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)
            return self.checkpoint(partial(fn, self.layer, **kwargs), *args, use_reentrant=False)
        return fn(self.layer, *args, **kwargs)


def compiled_forward(eager: Callable, activation_budget: float = 1.0) -> Callable:
    """`eager` through `torch.compile`; with `activation_budget` < 1 partitioned under torch's
    `activation_memory_budget`: of what a layer would keep for backward, keep that share (above what checkpointing it
    whole keeps) and recompute the rest, the fewest FLOPs first.

    The partition is fixed when a graph compiles and dynamo's cache hangs on the code object without a guard on that
    setting, so a budgeted forward compiles a copy of the code: another module in the process, with another budget,
    does not reuse its graphs."""
    options = {"fallback_random": True}
    if activation_budget >= 1.0:
        return torch.compile(eager, dynamic=False, options=options)
    count_grouped_query_attention()  # the partitioner counts each op's FLOPs, Gemma 4's attention among them
    keep_uncounted_ops()
    copy = types.FunctionType(
        eager.__code__.replace(), eager.__globals__, eager.__name__, eager.__defaults__, eager.__closure__
    )
    copy.__kwdefaults__ = eager.__kwdefaults__
    compiled = torch.compile(update_wrapper(copy, eager), dynamic=False, options=options)

    @wraps(eager)
    def run(*args, **kwargs):
        with activation_memory_budget(activation_budget):
            return compiled(*args, **kwargs)

    return run


def missing_compiler(device_type: str) -> str | None:
    """The compiler `torch.compile` needs for `device_type` when none is on PATH, else None: Triton builds its GPU
    kernel launchers with a C compiler, inductor's CPU kernels are C++."""
    if device_type == "cuda":
        wanted, names = "gcc", [os.environ.get("CC"), "cc", "gcc", "clang"]
    else:
        wanted, names = "g++", [os.environ.get("CXX"), "g++", "clang++"]
    return None if any(name and shutil.which(name) for name in names) else wanted


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The language model's decoder layers, under a PEFT wrapper or not."""
    return text_model(model).layers


def compile_decoder_layers(
    model: torch.nn.Module, checkpointed: set[int], offload: bool = False, activation_budget: float = 1.0
) -> int:
    """Route every decoder layer through one `torch.compile`d forward, those in `checkpointed` (indices) recomputed in
    backward, the others keeping `activation_budget` of what the compiler would keep (`compiled_forward`);
    returns how many layers were routed.

    Compilation itself happens at the first forward of each layer variant. Call after the adapter is applied."""
    layers = decoder_layers(model)
    eager = own_forward(type(layers[0]))
    compiled = compiled_forward(eager, activation_budget)
    raise_recompile_limit(RECOMPILE_LIMIT)
    for index, layer in enumerate(layers):
        layer.gradient_checkpointing = False  # checkpointed by CompiledLayerForward instead
        replace_forward(layer, CompiledLayerForward(layer, compiled, eager, index in checkpointed, offload))
    return len(layers)


@contextmanager
def eager_layers(model: torch.nn.Module) -> Iterator[None]:
    """Run compiled decoder layers eagerly inside the block (same checkpointing), to compare the two paths."""
    routed = [layer.forward for layer in decoder_layers(model) if isinstance(layer.forward, CompiledLayerForward)]
    for forward in routed:
        forward.use_eager = True
    try:
        yield
    finally:
        for forward in routed:
            forward.use_eager = False
