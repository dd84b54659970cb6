"""LeanSpec: the memory and speed switches of medqlora's training path, as data (`model.lean` in a config).

Each switch says in one line what it buys; docs/benchmarks.md has what each measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from medqlora.model.plan import check_switches


@dataclass
class LeanSpec:
    """Memory and speed switches; the defaults are the recipe's (configs/gemma4-e2b-medical.yaml), all off is the
    plain recipe.

    Args:
        chunked_loss: project only label positions to the vocabulary, in chunks recomputed in backward.
        loss_chunk_size: positions per loss chunk (its fp32 [chunk x vocab] logits set the loss's peak).
        ple_on_host: keep the per-layer embedding table in host memory (4.4 GiB on E2B).
        ple_shared: with several processes on a machine, map one host copy of that table into all of them
            instead of one copy each.
        text_only: do not load the vision and audio towers (text training never runs them).
        upcast_frozen: run `peft.prepare_model_for_kbit_training`, which upcasts every frozen non-4-bit
            weight to fp32 (~11 GB on E2B). Off by default; on reproduces the plain recipe.
        attention: `varlen`: each packed sample attends within itself (model/attention.py): FlashAttention-2's
            varlen kernel on the sliding-window layers, skipping what the block-diagonal mask hides, and on the
            head_dim-512 full ones dense GEMMs masked to the samples (faster there than any kernel that skips);
            sliding layers per sample through SDPA on a CPU. `flex`: the same, but the full layers through
            FlexAttention with a per-sample block mask, which skips every masked block and holds no score matrix
            (a GPU only; training E2B 5% slower than varlen on an H100 at the same peak: docs/benchmarks.md).
            `sdpa` and `eager` are transformers' (eager is slow; for debugging), over the packed rows'
            block-diagonal masks.
            `auto` (default): varlen on a GPU with packed bf16/fp16 rows, else sdpa.
        loss_grad_in_forward: compute each loss chunk's gradient while its logits exist instead of recomputing
            them in backward (saves a third of the LM head's work and 0.1 GiB at 2 x 2048; model/loss.py). The LM
            head is frozen in every LoRA setup medqlora builds (it is the tied token embedding).
        compile_layers: run each decoder layer through one `torch.compile`d forward (model/compile.py): fuses the
            elementwise work whose kernel launches bound the step at small micro-batches (with
            loss_grad_in_forward, 1.60x at 2 x 2048 on an H100); one to two minutes of compilation at the first steps.
            `auto` (default): on a GPU, except under FSDP; on a CPU compiling costs more than it saves.
        cuda_graph: capture a training micro-batch's forward and backward as one CUDA graph and replay it for every
            micro-batch of that shape (model/step.py): the host no longer paces the GPU (with the two switches
            above, 2.39x eager layers at 2 x 2048 on an H100, +0.09 GiB). `auto` (default): on wherever it can
            capture (one GPU, bf16 or fp32, packed rows, chunked loss, attention not eager); `true` elsewhere is
            refused, or on a CPU runs the graph's step uncaptured. model/plan.py lists what goes with what.
        checkpoint_share: with `model.gradient_checkpointing` on, the share of decoder layers recomputed in backward,
            evenly spaced (1.0, the recipe's: every layer; 0.5: every other one); the others keep their activations:
            faster, more memory (model/checkpointing.py). `auto`: chosen within `memory_budget_gib`, else 1.0.
        offload_checkpoints: the checkpointed layers' inputs (all a checkpoint keeps) wait in host memory instead of
            on the GPU: what long rows need; synchronous copies, so the host waits at each layer, and no CUDA graph.
            `auto`: chosen within `memory_budget_gib`, else off.
        activation_budget: selective checkpointing inside the compiled layers: the share of the activations a
            compiled layer keeps for backward, of what the compiler would keep (1.0, default) above what
            checkpointing the whole layer keeps (0.0). The compiler recomputes the rest in backward, the cheapest
            first (elementwise work before any matmul; torch's `activation_memory_budget`), so the layers that are
            not checkpointed keep less for some recomputation (model/compile.py). Needs compiled layers and some
            layer not checkpointed (`checkpoint_share` < 1). Not yet measured on a GPU: `auto` is 1.0 until it is
            (docs/benchmarks.md), then chosen within `memory_budget_gib`.
        memory_budget_gib: GiB of GPU memory training may peak at (`auto`: the GPU's free memory less 1 GiB).
            `medqlora fit` then resolves `data.micro_batch_size`, `checkpoint_share`, `offload_checkpoints` and
            `activation_budget` left at `auto` to the fastest setting predicted to fit, keeping the rows per optimizer
            step (the accumulation adjusts), and writes the resolved values to the run's config.yaml (model/budget.py;
            `medqlora plan` shows the choice).
    """

    chunked_loss: bool = True
    loss_chunk_size: int = 256
    ple_on_host: bool = True
    ple_shared: bool = True
    text_only: bool = True
    upcast_frozen: bool = False
    attention: Literal["auto", "varlen", "flex", "sdpa", "eager"] = "auto"
    loss_grad_in_forward: bool = True
    compile_layers: bool | Literal["auto"] = "auto"
    cuda_graph: bool | Literal["auto"] = "auto"
    checkpoint_share: float | Literal["auto"] = 1.0
    offload_checkpoints: bool | Literal["auto"] = False
    activation_budget: float | Literal["auto"] = 1.0
    memory_budget_gib: float | Literal["auto"] | None = None

    def __post_init__(self) -> None:
        if self.checkpoint_share != "auto" and not 0.0 <= self.checkpoint_share <= 1.0:
            raise ValueError(
                f"model.lean.checkpoint_share={self.checkpoint_share} must be in [0, 1] (1: every layer, the recipe's; "
                "0: none, as model.gradient_checkpointing=false) or auto"
            )
        if self.activation_budget != "auto" and not 0.0 <= self.activation_budget <= 1.0:
            raise ValueError(
                f"model.lean.activation_budget={self.activation_budget} must be in [0, 1] (1: what the compiler keeps, "
                "the default; 0.5: half of that, the rest recomputed) or auto"
            )
        if self.memory_budget_gib not in (None, "auto") and not self.memory_budget_gib > 0:
            raise ValueError(f"model.lean.memory_budget_gib={self.memory_budget_gib} must be > 0 (GiB), auto or null")
        for name in ("offload_checkpoints",):
            if getattr(self, name) not in (True, False, "auto"):
                raise ValueError(f"model.lean.{name}={getattr(self, name)!r}: use true, false or auto")
        if self.loss_chunk_size < 1:
            raise ValueError(f"model.lean.loss_chunk_size={self.loss_chunk_size} must be >= 1 (default 256)")
        if self.attention not in ("auto", "varlen", "flex", "sdpa", "eager"):
            choices = "auto (default), varlen, flex, sdpa or eager"
            raise ValueError(f"model.lean.attention={self.attention!r}: use {choices}")
        for name in ("compile_layers", "cuda_graph"):
            if getattr(self, name) not in (True, False, "auto"):
                raise ValueError(f"model.lean.{name}={getattr(self, name)!r}: use true, false or auto (default)")
        check_switches(self)  # the switch table against the config alone; against the run at set-up

    @property
    def share(self) -> float:
        """`checkpoint_share`, with an unresolved `auto` as the recipe's 1.0 (every layer)."""
        return 1.0 if self.checkpoint_share == "auto" else float(self.checkpoint_share)

    @property
    def offload(self) -> bool:
        """`offload_checkpoints`, with an unresolved `auto` as off."""
        return self.offload_checkpoints is True

    @property
    def kept_activations(self) -> float:
        """`activation_budget`, with an unresolved `auto` as 1.0 (what the compiler keeps)."""
        return 1.0 if self.activation_budget == "auto" else float(self.activation_budget)
