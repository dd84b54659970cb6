"""The switch table: which `LeanSpec` settings a run can take, and the step plan derived from them once.

Every combination of `model.lean` switches with each other or with the run (devices, strategy, precision, packing,
attention) that cannot work, or would silently do less than it says, is one row of `CONFLICTS`, checked twice: against
the config alone when `LeanSpec` is built (at parse time), and against the run when the model is set up (before
loading). Each message names both settings and the way out. `plan_step` then resolves the `auto` switches and fixes,
once, everything the step used to decide per call (which masks, which loss form, where backward runs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from medqlora.model.lean import LeanSpec


@dataclass(frozen=True)
class RunFacts:
    """What the switches are checked against: the run's device, processes, strategy, precision and data layout.

    Args:
        device_type: `cuda`, `cpu`, ...
        world_size: processes training together.
        strategy: the strategy's class name (for messages).
        fsdp: the strategy shards the model (FSDP).
        loss_scaler: the precision scales the loss (fp16-mixed).
        packing: the data module packs samples into fixed-shape rows (None: not a medqlora data module).
        missing_compiler: the compiler `torch.compile` needs on this device when none is on PATH, else None.
        quant_storage: the dtype the 4-bit base is stored in (None: not 4-bit).
        compute_dtype: the base's compute dtype.
    """

    device_type: str = "cpu"
    world_size: int = 1
    strategy: str = "SingleDeviceStrategy"
    fsdp: bool = False
    loss_scaler: bool = False
    packing: bool | None = None
    missing_compiler: str | None = None
    quant_storage: str | None = None
    compute_dtype: str = "bfloat16"

    @classmethod
    def of(cls, trainer, quant) -> RunFacts:
        """The facts of a Lightning `trainer` about to train with 4-bit settings `quant` (`QuantSpec`)."""
        from medqlora.model.compile import missing_compiler
        from medqlora.model.distributed import is_fsdp

        device = trainer.strategy.root_device.type
        return cls(
            device_type=device,
            world_size=trainer.world_size,
            strategy=type(trainer.strategy).__name__,
            fsdp=is_fsdp(trainer.strategy),
            loss_scaler=getattr(trainer.precision_plugin, "scaler", None) is not None,
            packing=getattr(getattr(trainer, "datamodule", None), "packing", None),
            missing_compiler=missing_compiler(device),
            quant_storage=quant.quant_storage if quant.load_in_4bit else None,
            compute_dtype=quant.compute_dtype,
        )


@dataclass(frozen=True)
class Conflict:
    """One row of the table: settings that do not go together, why, and the way out."""

    settings: str
    why: str
    fix: str
    applies: Callable[[LeanSpec, RunFacts | None], bool]

    def message(self, lean: LeanSpec, run: RunFacts | None) -> str:
        """The error's text, with the run's own values filled in."""
        facts = run or RunFacts()
        values = {
            **vars(facts),
            "attention": lean.attention,
            "compile": str(lean.compile_layers).lower(),
            "activation_budget": lean.activation_budget,
        }
        return f"{self.settings.format(**values)}: {self.why}; {self.fix.format(**values)}"


PER_SAMPLE = ("varlen", "flex")  # the attention choices that take the packed samples' bounds (model/attention.py)


def _on(switch: bool | str) -> bool:
    """Explicitly on (`auto` is decided by `plan_step`, and never conflicts)."""
    return switch is True


CONFLICTS: list[Conflict] = [
    Conflict(
        "model.lean.cuda_graph=true needs model.lean.chunked_loss=true",
        "the full-logits loss selects the supervised positions, a size the graph cannot hold",
        "turn chunked_loss on or cuda_graph off",
        lambda lean, run: _on(lean.cuda_graph) and not lean.chunked_loss,
    ),
    Conflict(
        "model.lean.cuda_graph=true needs model.lean.attention varlen, flex or sdpa, not {attention!r}",
        "eager attention takes the masks transformers decides per batch on the host",
        "set attention to varlen, flex, sdpa or auto, or cuda_graph to false",
        lambda lean, run: _on(lean.cuda_graph) and lean.attention == "eager",
    ),
    Conflict(
        "model.lean.compile_layers=true needs model.lean.attention varlen, flex or sdpa, not {attention!r}",
        "eager attention takes the masks transformers decides per batch, so each layer variant would compile again "
        "mid-epoch",
        "set attention to varlen, flex, sdpa or auto, or compile_layers to false",
        lambda lean, run: _on(lean.compile_layers) and lean.attention == "eager",
    ),
    Conflict(
        "model.lean.attention={attention} with data.packing=false",
        "its samples are the packed rows' (from their position ids); padded rows would run SDPA inside compiled "
        "layers built for per-sample attention",
        "set data.packing to true (the recipe's) or attention to sdpa or auto",
        lambda lean, run: lean.attention in PER_SAMPLE and run is not None and run.packing is False,
    ),
    Conflict(
        "model.lean.attention={attention} on {device_type} with model.quantization.compute_dtype={compute_dtype!r}",
        "FlashAttention-2, which the sliding-window layers run, takes bfloat16 or float16 only",
        "use compute_dtype bfloat16 (the recipe's) or attention sdpa or auto",
        lambda lean, run: (
            lean.attention in PER_SAMPLE
            and run is not None
            and run.device_type == "cuda"
            and run.compute_dtype not in ("bfloat16", "float16")
        ),
    ),
    Conflict(
        "model.lean.attention=flex on trainer.accelerator {device_type}",
        "FlexAttention, which the full-attention layers run with it, has no backward off a GPU",
        "train on a GPU, or set attention to varlen or auto",
        lambda lean, run: lean.attention == "flex" and run is not None and run.device_type != "cuda",
    ),
    Conflict(
        "model.lean.loss_grad_in_forward=true needs model.lean.chunked_loss=true",
        "the gradient is taken inside the chunked loss; the full-logits loss would ignore the switch",
        "turn chunked_loss on or loss_grad_in_forward off",
        lambda lean, run: lean.loss_grad_in_forward and not lean.chunked_loss,
    ),
    Conflict(
        "model.lean.cuda_graph=true trains on one device (this run has {world_size} under trainer.strategy {strategy})",
        "the graph runs backward inside the training step, where DDP's and FSDP's gradient hooks do not see it",
        "set it to false (or auto), as configs/ddp.yaml and configs/fsdp.yaml do",
        lambda lean, run: _on(lean.cuda_graph) and run is not None and (run.world_size > 1 or run.fsdp),
    ),
    Conflict(
        "model.lean.cuda_graph=true with trainer.precision 16-mixed",
        "the graph runs backward inside the training step, where fp16's loss scaler does not see it",
        "use trainer.precision bf16-mixed (the recipe's) or set model.lean.cuda_graph=false",
        lambda lean, run: _on(lean.cuda_graph) and run is not None and run.loss_scaler,
    ),
    Conflict(
        "model.lean.cuda_graph=true with data.packing=false",
        "padded micro-batches change shape from batch to batch, so almost none would replay the graph",
        "set data.packing to true (the recipe's) or cuda_graph to false",
        lambda lean, run: _on(lean.cuda_graph) and run is not None and run.packing is False,
    ),
    Conflict(
        "model.lean.compile_layers=true is not supported under FSDP (trainer.strategy {strategy})",
        "its units wrap the layers the compiled forward replaces",
        "set it to false (or auto), or train with DDP (configs/ddp.yaml)",
        lambda lean, run: _on(lean.compile_layers) and run is not None and run.fsdp,
    ),
    Conflict(
        "model.lean.compile_layers={compile} needs a compiler for torch.compile on {device_type} and none is on PATH",
        "Triton builds its GPU kernel launchers with a C compiler, inductor's CPU kernels are C++",
        "install one ({missing_compiler}: apt install build-essential) or set model.lean.compile_layers=false",
        lambda lean, run: run is not None and run.missing_compiler is not None and resolve_compile(lean, run),
    ),
    Conflict(
        "model.lean.offload_checkpoints=true with model.lean.cuda_graph=true",
        "the graph cannot capture the copies to host memory",
        "set cuda_graph to auto (off with offloading) or false, or offload_checkpoints to false",
        lambda lean, run: lean.offload and _on(lean.cuda_graph),
    ),
    Conflict(
        "model.lean.offload_checkpoints=true with model.lean.checkpoint_share=0",
        "only checkpointed layers' inputs are offloaded, and no layer is checkpointed",
        "raise checkpoint_share, or set offload_checkpoints to false",
        lambda lean, run: lean.offload and lean.share == 0,
    ),
    Conflict(
        "model.lean.offload_checkpoints=true is not supported under FSDP (trainer.strategy {strategy})",
        "its units gather and free the weights around the very layers whose inputs would move to the host",
        "set it to false, or train with DDP (configs/ddp.yaml)",
        lambda lean, run: lean.offload and run is not None and run.fsdp,
    ),
    Conflict(
        "model.lean.activation_budget={activation_budget} needs compiled layers (model.lean.compile_layers={compile} "
        "on {device_type})",
        "the compiler chooses what a layer recomputes; eager layers keep all autograd saves",
        "set compile_layers to true (or auto, on a GPU), or activation_budget to 1 and checkpoint a share of the "
        "layers instead (checkpoint_share)",
        lambda lean, run: (
            lean.kept_activations < 1
            and (lean.compile_layers is False or (run is not None and not resolve_compile(lean, run)))
        ),
    ),
    Conflict(
        "model.quantization.quant_storage={quant_storage!r} cannot be sharded by FSDP (trainer.strategy {strategy})",
        "FSDP's flat parameters hold one dtype",
        "set it to the compute dtype ({compute_dtype!r}), as configs/fsdp.yaml does",
        lambda lean, run: run is not None and run.fsdp and run.quant_storage not in (None, run.compute_dtype),
    ),
]


def check_switches(lean: LeanSpec, run: RunFacts | None = None) -> None:
    """Raise ValueError for the first row of `CONFLICTS` that applies (`run` None: the config alone)."""
    for conflict in CONFLICTS:
        if conflict.applies(lean, run):
            raise ValueError(conflict.message(lean, run))


def resolve_compile(lean: LeanSpec, run: RunFacts) -> bool:
    """`compile_layers`, with `auto` on wherever it pays and runs: a GPU, not FSDP."""
    if lean.compile_layers != "auto":
        return bool(lean.compile_layers)
    return run.device_type == "cuda" and not run.fsdp and lean.attention != "eager"


def resolve_graph(lean: LeanSpec, run: RunFacts) -> bool:
    """`cuda_graph`, with `auto` on wherever it can capture: one GPU, no loss scaler, packed rows, chunked loss,
    attention other than eager, and no offloading.
    `true` on a CPU keeps the graph's step (fixed-shape loss) but runs it uncaptured."""
    if lean.cuda_graph != "auto":
        return bool(lean.cuda_graph)
    single = run.world_size == 1 and not run.fsdp and not run.loss_scaler
    return (
        run.device_type == "cuda"
        and single
        and run.packing is not False
        and lean.chunked_loss
        and lean.attention != "eager"
        and not lean.offload
    )


def resolve_attention(lean: LeanSpec, run: RunFacts) -> str:
    """`attention`, with `auto` varlen wherever its kernels train (a GPU, packed rows, bf16 or fp16), else sdpa."""
    if lean.attention != "auto":
        return lean.attention
    kernels = run.device_type == "cuda" and run.compute_dtype in ("bfloat16", "float16")
    return "varlen" if kernels and run.packing is not False else "sdpa"


@dataclass(frozen=True)
class Form:
    """How one forward is computed.

    Args:
        own_masks: attention masks built from the position ids on the device (model/masks.py), not by transformers.
        sample_bounds: no masks; attention gets the packed samples' bounds instead (model/attention.py).
        fixed_shape: the loss covers every position (unsupervised ones weigh zero): nothing depends on GPU values.
    """

    own_masks: bool = False
    sample_bounds: bool = False
    fixed_shape: bool = False


@dataclass(frozen=True)
class StepPlan:
    """Everything the step would otherwise decide per call, fixed once at set-up.

    Args:
        attention: `varlen`, `flex`, `sdpa` or `eager` (model/attention.py; the latter two are transformers').
        compile_layers: decoder layers run compiled (model/compile.py).
        cuda_graph: training micro-batches are captured and replayed (model/step.py).
        loss: `full_logits` (the plain path), `chunked`, or `chunked_grad_in_forward` (model/loss.py).
        backward_in_step: the step unit runs backward inside `training_step` (one process); under DDP/FSDP it runs
            in Lightning's `backward`, after the wrapper's forward has armed its gradient hooks.
        train: the form of a training forward.
        evaluate: the form of a validation, test or predict forward.
    """

    attention: Literal["varlen", "flex", "sdpa", "eager"] = "sdpa"
    compile_layers: bool = False
    cuda_graph: bool = False
    loss: Literal["full_logits", "chunked", "chunked_grad_in_forward"] = "chunked"
    backward_in_step: bool = True
    train: Form = Form()
    evaluate: Form = Form()


def plan_step(lean: LeanSpec, run: RunFacts) -> StepPlan:
    """Check `lean` against `run` (ValueError naming both settings and the fix) and derive the step plan."""
    check_switches(lean, run)
    compiled, graphed = resolve_compile(lean, run), resolve_graph(lean, run)
    attention = resolve_attention(lean, run)
    sdpa, per_sample = attention == "sdpa", attention in PER_SAMPLE
    if not lean.chunked_loss:
        loss = "full_logits"
    else:
        loss = "chunked_grad_in_forward" if lean.loss_grad_in_forward else "chunked"
    # compiled layers always get tensor masks: transformers' choice between a mask and SDPA's is_causal would compile
    # each layer variant twice; the graph needs masks and a loss that read no GPU value on the host
    return StepPlan(
        attention=attention,
        compile_layers=compiled,
        cuda_graph=graphed,
        loss=loss,
        backward_in_step=run.world_size == 1 and not run.fsdp,
        train=Form(own_masks=(compiled or graphed) and sdpa, sample_bounds=per_sample, fixed_shape=graphed),
        evaluate=Form(own_masks=compiled and sdpa, sample_bounds=per_sample),
    )
