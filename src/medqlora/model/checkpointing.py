"""Which decoder layers recompute their activations in backward, and where the inputs they keep wait for it.

With `model.gradient_checkpointing` on, `model.lean.checkpoint_share` of the decoder layers, evenly spaced, are
checkpointed (1.0, the recipe's: every layer; 0.5: every other one); the others keep every activation for backward,
which is faster and takes more memory. With `model.lean.offload_checkpoints` what a checkpointed layer keeps (its
inputs: the hidden states and per-layer input) waits in host memory through torch's `save_on_cpu` instead of on the
GPU: 12 MiB a layer at 2 x 2048 tokens on E2B, gigabytes at the long rows (16k tokens: 1.7 GiB over 35 layers). Its
copies are synchronous, so the host waits for the GPU at each layer (torchtune's streamed offloading overlaps them):
worth it where activations, not launches, bound the step. The CUDA graph cannot capture the host copies.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

import torch

from medqlora.compat import checkpoint_function, set_checkpoint_function


def checkpointed_layers(n_layers: int, share: float) -> set[int]:
    """The indices of `share` of `n_layers` layers, evenly spaced from the first (0 layers for share 0)."""
    count = round(share * n_layers)
    return {k * n_layers // count for k in range(count)} if count else set()


def offloaded(checkpoint_fn: Callable) -> Callable:
    """`checkpoint_fn` whose saved tensors (a checkpoint's inputs) wait in host memory, pinned on a CUDA machine."""

    @wraps(checkpoint_fn)
    def run(*args, **kwargs):
        with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()):
            return checkpoint_fn(*args, **kwargs)

    return run


def apply_to_eager_layers(layers: torch.nn.ModuleList, share: float, offload: bool) -> None:
    """After transformers' `gradient_checkpointing_enable` (every layer): keep it on `share` of them only, and with
    `offload` keep those layers' inputs in host memory."""
    chosen = checkpointed_layers(len(layers), share)
    for index, layer in enumerate(layers):
        layer.gradient_checkpointing = index in chosen
        if index in chosen and offload:
            set_checkpoint_function(layer, offloaded(checkpoint_function(layer)))
