"""LeanSpec: the memory and speed switches of medqlora's training path, as data (`model.lean` in a config).

Each switch says in one line what it buys; docs/benchmarks.md has what each measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class LeanSpec:
    """Memory and speed switches of the default path; turn all off for the plain recipe.

    Args:
        chunked_loss: project only label positions to the vocabulary, in chunks recomputed in backward.
        loss_chunk_size: positions per loss chunk (its fp32 [chunk x vocab] logits set the loss's peak).
        ple_on_host: keep the per-layer embedding table in host memory (4.4 GiB on E2B).
        ple_shared: with several processes on a machine, map one host copy of that table into all of them
            instead of one copy each.
        text_only: do not load the vision and audio towers (text training never runs them).
        upcast_frozen: run `peft.prepare_model_for_kbit_training`, which upcasts every frozen non-4-bit
            weight to fp32 (~11 GB on E2B). Off by default; on reproduces the plain recipe.
        attention: transformers' attention implementation, `sdpa` or `eager` (slow; for debugging); packed
            rows get their block-diagonal mask from the position ids either way.
        loss_grad_in_forward: compute each loss chunk's gradient while its logits exist instead of recomputing
            them in backward (saves a third of the LM head's work and 0.1 GiB at 2 x 2048; model/loss.py). On in
            the recipe's config; off here, since a trainable LM head refuses it.
        compile_layers: run each decoder layer through one `torch.compile`d forward (model/compile.py): fuses the
            elementwise work whose kernel launches bound the step at small micro-batches (with
            loss_grad_in_forward, 1.60x at 2 x 2048 on an H100); one to two minutes of compilation at the first steps.
            On in the recipe's config; off here because on a CPU compiling costs more than it saves. Not with FSDP.
        cuda_graph: capture a training micro-batch's forward and backward as one CUDA graph and replay it for every
            micro-batch of that shape (model/graphed.py): the host no longer paces the GPU (with the two switches
            above, 2.39x eager layers at 2 x 2048 on an H100, +0.09 GiB). Packed micro-batches all have one shape;
            padded ones change shape and mostly run eagerly. On a GPU only (elsewhere the same step runs uncaptured),
            one GPU only (not DDP or FSDP), bf16 or fp32 (not fp16's loss scaler), with chunked_loss and sdpa
            attention. On in the recipe's config.
    """

    chunked_loss: bool = True
    loss_chunk_size: int = 256
    ple_on_host: bool = True
    ple_shared: bool = True
    text_only: bool = True
    upcast_frozen: bool = False
    attention: Literal["sdpa", "eager"] = "sdpa"
    loss_grad_in_forward: bool = False
    compile_layers: bool = False
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        if self.loss_chunk_size < 1:
            raise ValueError(f"model.lean.loss_chunk_size={self.loss_chunk_size} must be >= 1 (default 256)")
        if self.cuda_graph and not self.chunked_loss:
            raise ValueError(
                "model.lean.cuda_graph=true needs model.lean.chunked_loss=true (the full-logits loss selects the "
                "supervised positions, a size the graph cannot hold); turn chunked_loss on or cuda_graph off"
            )
        if self.cuda_graph and self.attention != "sdpa":
            raise ValueError(
                f"model.lean.cuda_graph=true needs model.lean.attention=sdpa, not {self.attention!r} (the graph's "
                "masks are SDPA's boolean masks); set attention to sdpa or cuda_graph to false"
            )
        if self.attention not in ("sdpa", "eager"):
            raise ValueError(
                f"model.lean.attention={self.attention!r}: use sdpa (default) or eager (flex_attention "
                "does not compile for E2B's head_dim 512 on an H100: docs/benchmarks.md)"
            )
