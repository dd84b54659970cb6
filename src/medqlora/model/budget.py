"""The memory budget: the fastest micro-batch size and checkpointing policy whose training peak fits a budget.

`model.lean.memory_budget_gib` (a number, or `auto`: the GPU's free memory less a margin) makes `data.micro_batch_size`,
`model.lean.checkpoint_share`, `model.lean.offload_checkpoints` and `model.lean.activation_budget` left at `auto`
resolve to the setting this module predicts fastest among those whose peak fits. Rows per optimizer step stay as
configured (micro-batch x accumulation; with `auto` the recipe's 2 x the configured accumulation): the accumulation
adjusts.

The choice comes from a memory model calibrated by measurement, not from probes at every start: probing each candidate
as it trains would compile its layer graphs (one to two minutes a shape on a GPU), and eager probes overstate what
compiled layers keep. The model is linear in the micro-batch's tokens, per decoder layer (fitted to the peaks measured
on one H100, docs/benchmarks.md): a layer that keeps its activations holds `KEPT_BYTES` per token per unit of its width
(hidden + MLP intermediate), a checkpointed one its inputs (`CHECKPOINT_BYTES` per hidden unit; none on the GPU when
offloaded), and the layer backward is working on `IN_FLIGHT_BYTES` per unit of its width (its activations and their
gradients); a kept layer under selective checkpointing keeps its inputs plus the budget's share of the rest (torch's
definition of that budget); on top come the weights and training state counted from the model's own module tree, the
larger of that layer and the loss's chunk of logits (they peak at different moments) and row attention's score matrix.
The speed model says what the same runs measured: a micro-batch costs a fixed `MICRO_BATCH_OVERHEAD_TOKENS` of work (the
4-bit weights' dequantisation, launches) plus its tokens, recomputing every layer adds `RECOMPUTE_COST`, selective
checkpointing `SELECTIVE_COST` per budget, offloading a fixed `OFFLOAD_OVERHEAD_TOKENS` a micro-batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

from medqlora.model.checkpointing import checkpointed_layers

GIB = 1024**3

# Calibration: the ten runs of benchmarks/results/2026-12-07-h100-budget-sweep.json (one H100 80GB, E2B, compiled
# layers, varlen attention, loss gradient in forward, bf16; 2, 8 and 16 rows of 2048 tokens, every layer, half or none
# checkpointed, offloaded or not), each peak within 4%, each micro-batch time within 1% (offloaded: 10-50%).
KEPT_BYTES = 10.46  # bytes a token keeps per unit of width (hidden + intermediate) on a layer that is not checkpointed
CHECKPOINT_BYTES = 2.22  # bytes a token keeps per hidden unit on a checkpointed layer (its inputs)
IN_FLIGHT_BYTES = 25.4  # bytes a token holds per unit of width in the layer backward is working on
LOSS_LOGIT_COPIES = 3  # fp32 [chunk x vocab] buffers alive at the loss's peak (not at the same time as the above)
ATTENTION_SCORE_COPIES = 2  # fp32 [row x row] buffers of one head in the full layers' row attention (varlen)
WORKSPACE_GIB = 0.14  # what else a step holds (masks, sample bounds, the graph's inputs, library workspaces)
MICRO_BATCH_OVERHEAD_TOKENS = 475  # a micro-batch's fixed work, in tokens' worth of compute
RECOMPUTE_COST = 0.275  # the share of a step that recomputing every layer adds
OFFLOAD_OVERHEAD_TOKENS = 4700  # offloading's cost a micro-batch (host copies; the CUDA graph cannot capture them)
# selective checkpointing (model.lean.activation_budget): the share of a step that recomputing inside the compiled
# layers adds when no layer is checkpointed, per budget. A prior, not yet measured on a GPU (the compiler recomputes
# elementwise work first, fused into backward kernels); until it is, `auto` weighs no budget below 1 and a configured
# one is priced with the prior (docs/benchmarks.md)
SELECTIVE_COST = {1.0: 0.0, 0.5: 0.03, 0.25: 0.08}
SELECTIVE_MEASURED = False
# the budget holds the allocator's reserve too: predicted peak x (1 + MARGIN) + MARGIN_GIB. Measured with expandable
# segments (benchmarks/results/2026-12-07-h100-budget-*.json): the reserve ran 0.15-0.65 GiB over the allocated peak
# (CUDA graph pools, allocator slack; 1.5 GiB at 16 rows, every layer checkpointed), and the default's 3.79 GiB peak
# ran out of memory under a 4 GiB cap
MARGIN = 0.05
MARGIN_GIB = 0.5
AUTO_MARGIN_GIB = 1.0  # `auto` leaves this much of the GPU's free memory to others (and CUDA's own context)
SHARES = (1.0, 0.75, 0.5, 0.25, 0.0)  # checkpoint_share candidates
STATE_BYTES = {"adamw_8bit": 10, "paged_adamw_8bit": 10, "adamw": 16}  # per LoRA weight: fp32 value, grad, moments


@dataclass(frozen=True)
class ModelShape:
    """What the memory model needs to know of a model: its decoder layers' widths and the bytes it keeps on the GPU.

    Args:
        hidden: hidden size.
        widths: per decoder layer, hidden + MLP intermediate size.
        vocab: vocabulary size (the loss's logits).
        weight_bytes: the frozen weights on the GPU (4-bit linears, bf16 rest; the PLE table on the host if so).
        lora_params: trainable LoRA weights.
    """

    hidden: int
    widths: tuple[int, ...]
    vocab: int
    weight_bytes: float
    lora_params: int


@dataclass(frozen=True)
class Setting:
    """One candidate: rows per micro-batch, micro-batches per optimizer step, and the checkpointing policy."""

    micro_batch: int
    accumulate: int
    checkpoint_share: float
    offload: bool = False
    activation_budget: float = 1.0

    @property
    def kept_layers(self) -> str:
        """What the layers that are not checkpointed are called in the setting's description."""
        return "each layer" if self.checkpoint_share == 0 else "the others"

    def __str__(self) -> str:
        share = {1.0: "every layer", 0.0: "no layer"}.get(self.checkpoint_share, f"{self.checkpoint_share:g} of layers")
        return (
            f"{self.micro_batch} x accumulation {self.accumulate}, {share} checkpointed"
            + (", inputs offloaded" if self.offload else "")
            + (
                f", {self.kept_layers} keeping {self.activation_budget:g} of activations"
                if self.activation_budget < 1
                else ""
            )
        )


@dataclass(frozen=True)
class Estimate:
    """A setting's predicted peak (GiB allocated) and speed relative to `relative_to` (same model, same rows)."""

    setting: Setting
    peak_gib: float
    speed: float
    fits: bool


@dataclass(frozen=True)
class BudgetQuestion:
    """What is being planned, from the run's config.

    Args:
        name_or_path: the base model (its config.json is all that is read).
        row_tokens: tokens per row (packed rows: pack_tokens; padded: max_length, the longest a row can be).
        rows_per_step: rows per optimizer step (micro-batch x accumulation).
        micro_batch: the configured micro-batch size, None for `auto`.
        checkpoint_share: the configured share, None for `auto`.
        offload: the configured offloading, None for `auto`.
        activation_budget: the configured selective checkpointing of the kept layers, None for `auto`.
        compiled: the decoder layers compile (selective checkpointing happens in their graphs).
        gradient_checkpointing: model.gradient_checkpointing (off: no layer is checkpointed, whatever the share).
        loss_chunk: positions per loss chunk (0: the full-logits loss, every position at once).
        row_attention: the full layers hold a [row x row] score matrix (varlen); flex and sdpa do not.
        ple_on_host: the PLE table stays in host memory.
        lora_r: LoRA rank.
        lora_targets: LoRA target module names.
        optimizer: the optimizer's name (its state per LoRA weight).
    """

    name_or_path: str
    row_tokens: int
    rows_per_step: int
    micro_batch: int | None = None
    checkpoint_share: float | None = None
    offload: bool | None = None
    activation_budget: float | None = None
    compiled: bool = True
    gradient_checkpointing: bool = True
    loss_chunk: int = 256
    row_attention: bool = True
    ple_on_host: bool = True
    lora_r: int = 16
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    optimizer: str = "adamw_8bit"


@dataclass
class Plan:
    """The planner's answer: every candidate it weighed, best first, and the one it picked (None: nothing fits)."""

    budget_gib: float
    weighed: list[Estimate] = field(default_factory=list)
    chosen: Estimate | None = None

    def line(self) -> str:
        """One line for the log: what was picked, its predicted peak and speed, and what it beat."""
        if self.chosen is None:
            return f"medqlora budget: nothing fits {self.budget_gib:.1f} GiB"
        fitting = sum(e.fits for e in self.weighed)
        prior = self.chosen.setting.activation_budget < 1 and not SELECTIVE_MEASURED
        return (
            f"medqlora budget {self.budget_gib:.1f} GiB: {self.chosen.setting} (predicted peak "
            f"{self.chosen.peak_gib:.1f} GiB, {self.chosen.speed:.2f}x the speed of 2 rows a micro-batch with every "
            f"layer checkpointed; the fastest of {fitting} candidates that fit, of {len(self.weighed)} weighed)"
            + ("; selective checkpointing's peak and cost are a prior, not yet measured on a GPU" if prior else "")
        )

    def table(self) -> str:
        """Every candidate weighed, one per line: fits, predicted peak, relative speed."""
        rows = [f"{'fits':<5} {'peak GiB':>9} {'speed':>6}  setting"]
        for e in self.weighed:
            mark = "*" if e is self.chosen else ("yes" if e.fits else "no")
            rows.append(f"{mark:<5} {e.peak_gib:>9.2f} {e.speed:>5.2f}x  {e.setting}")
        return "\n".join(rows)


class BudgetTooSmall(ValueError):
    """No candidate's predicted peak fits the budget; the message names the smallest budget that would."""


@lru_cache(maxsize=8)
def model_shape(name_or_path: str, ple_on_host: bool, lora_r: int, lora_targets: tuple[str, ...]) -> ModelShape:
    """The language model's layer widths and device bytes, counted on transformers' own module tree built on the meta
    device (nothing allocated, ~1.5 s for E2B)."""
    import torch
    from transformers import AutoModelForCausalLM

    from medqlora.hub import load_config

    text = load_config(name_or_path).get_text_config()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(text)
    layers = model.model.layers
    widths = tuple(text.hidden_size + layer.mlp.gate_proj.out_features for layer in layers)
    weight_bytes, lora = 0.0, 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            if name.endswith("lm_head"):
                continue  # tied to the token embedding
            weight_bytes += module.weight.numel() * (0.5 + 1 / 64 + 4 / (64 * 256))  # NF4, double-quantised absmax
            if name.rsplit(".", 1)[-1] in lora_targets and ".layers." in name:
                lora += lora_r * (module.in_features + module.out_features)
        elif isinstance(module, torch.nn.Embedding):
            if ple_on_host and "per_layer" in name:
                continue
            weight_bytes += module.weight.numel() * 2
    rest = sum(p.numel() for n, p in model.named_parameters() if "norm" in n or n.endswith("scale")) * 2
    return ModelShape(text.hidden_size, widths, text.vocab_size, weight_bytes + rest, lora)


def estimate(shape: ModelShape, q: BudgetQuestion, setting: Setting, budget_gib: float) -> Estimate:
    """A setting's predicted peak and its speed relative to the recipe's (2 rows, every layer checkpointed)."""
    tokens = setting.micro_batch * q.row_tokens
    share = setting.checkpoint_share if q.gradient_checkpointing else 0.0
    checkpointed = checkpointed_layers(len(shape.widths), share)
    # a kept layer's activations, of which selective checkpointing keeps a share above its inputs (what checkpointing it
    # would keep): torch's activation_memory_budget is that linear interpolation
    inputs = CHECKPOINT_BYTES * shape.hidden
    kept = sum(
        inputs + setting.activation_budget * (KEPT_BYTES * w - inputs)
        for i, w in enumerate(shape.widths)
        if i not in checkpointed
    )
    per_token = kept + (0 if setting.offload else inputs * len(checkpointed))
    state = shape.lora_params * STATE_BYTES.get(q.optimizer, 16)
    loss = LOSS_LOGIT_COPIES * 4 * shape.vocab * (q.loss_chunk or tokens)
    attention = ATTENTION_SCORE_COPIES * 4 * q.row_tokens**2 if q.row_attention else 0
    in_flight = tokens * IN_FLIGHT_BYTES * max(shape.widths)  # the layer backward is in: activations and their grads
    peak = (shape.weight_bytes + state + tokens * per_token + max(in_flight, loss) + attention) / GIB + WORKSPACE_GIB
    fits = peak * (1 + MARGIN) + MARGIN_GIB <= budget_gib
    return Estimate(setting, peak, relative_speed(q, setting), fits)


def selective_cost(activation_budget: float) -> float:
    """SELECTIVE_COST between its budgets (straight lines), and at 0 every layer's recomputation, less nothing."""
    points = sorted({0.0: RECOMPUTE_COST, **SELECTIVE_COST}.items())
    for (b0, c0), (b1, c1) in zip(points, points[1:]):
        if b0 <= activation_budget <= b1:
            return c0 + (c1 - c0) * (activation_budget - b0) / (b1 - b0)
    raise ValueError(f"model.lean.activation_budget={activation_budget} must be in [0, 1]")


def step_cost(tokens: int, share: float, offload: bool, activation_budget: float = 1.0) -> float:
    """The speed model: a micro-batch's time in tokens' worth of work."""
    recompute = RECOMPUTE_COST * share + selective_cost(activation_budget) * (1 - share)
    return (MICRO_BATCH_OVERHEAD_TOKENS + tokens) * (1 + recompute) + (OFFLOAD_OVERHEAD_TOKENS if offload else 0)


def relative_speed(q: BudgetQuestion, setting: Setting) -> float:
    """Tokens per second of `setting` over the recipe's (2 rows a micro-batch, every layer checkpointed)."""
    share = setting.checkpoint_share if q.gradient_checkpointing else 0.0
    tokens = setting.micro_batch * q.row_tokens
    recipe = 2 * q.row_tokens
    cost = step_cost(tokens, share, setting.offload, setting.activation_budget)
    return (tokens / cost) / (recipe / step_cost(recipe, 1.0, False))


def candidates(q: BudgetQuestion) -> list[Setting]:
    """Every setting the configured values leave open: micro-batch sizes dividing the rows per step, the shares in
    SHARES, offloading on or off (only where some layer is checkpointed), the activation budgets of SELECTIVE_COST
    (once measured: SELECTIVE_MEASURED; only with compiled layers and where some layer is not checkpointed)."""
    micro = [q.micro_batch] if q.micro_batch else [m for m in range(1, q.rows_per_step + 1) if q.rows_per_step % m == 0]
    if not q.gradient_checkpointing:
        shares: tuple[float, ...] = (0.0,)
    else:
        shares = (q.checkpoint_share,) if q.checkpoint_share is not None else SHARES
    offloads = (q.offload,) if q.offload is not None else (False, True)
    if q.activation_budget is not None:
        kept: tuple[float, ...] = (q.activation_budget,)
    else:
        kept = tuple(SELECTIVE_COST) if q.compiled and SELECTIVE_MEASURED else (1.0,)
    return [
        Setting(m, q.rows_per_step // m, s, o, b)
        for m in micro
        for s in shares
        for o in offloads
        for b in kept
        if not (o and s == 0.0) and not (b < 1 and s == 1.0 and q.gradient_checkpointing)
    ]


def plan(q: BudgetQuestion, budget_gib: float) -> Plan:
    """Weigh every candidate and pick the fastest that fits (ties: the smaller peak). Raises BudgetTooSmall naming the
    smallest budget that fits one."""
    if not budget_gib > 0:
        raise ValueError(f"model.lean.memory_budget_gib={budget_gib} must be > 0 (GiB), or auto")
    shape = model_shape(q.name_or_path, q.ple_on_host, q.lora_r, tuple(q.lora_targets))
    weighed = sorted((estimate(shape, q, s, budget_gib) for s in candidates(q)), key=lambda e: (-e.speed, e.peak_gib))
    result = Plan(budget_gib, weighed)
    fitting = [e for e in weighed if e.fits]
    if not fitting:
        smallest = min(weighed, key=lambda e: e.peak_gib)
        needed = math.ceil((smallest.peak_gib * (1 + MARGIN) + MARGIN_GIB) * 10) / 10
        raise BudgetTooSmall(
            f"model.lean.memory_budget_gib={budget_gib:g}: no setting fits; the smallest ({smallest.setting}, "
            f"rows of {q.row_tokens} tokens) needs {needed:g} GiB. Raise the budget to at least {needed:g}, or lower "
            "data.max_length (or data.pack_tokens)"
        )
    result.chosen = fitting[0]
    return result


def auto_budget_gib() -> float:
    """`auto`: the GPU's free memory less AUTO_MARGIN_GIB. Raises ValueError without a GPU."""
    import torch

    if not torch.cuda.is_available():
        raise ValueError(
            "model.lean.memory_budget_gib=auto reads the GPU's free memory and no CUDA GPU is visible; give a number "
            "of GiB (the plan then describes that GPU), or leave it unset"
        )
    free, _ = torch.cuda.mem_get_info()
    return free / GIB - AUTO_MARGIN_GIB
