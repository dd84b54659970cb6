"""Every use of a library's private or internal API, in one place: what it is, the version it was written against,
and why there is no public route. Each has a test named `test_compat_<name>` (tests/test_compat.py) that fails when
the library changes under it, so an upgrade breaks there first and not in the middle of a training run.

Written against: lightning 2.6.6, torch 2.11 and 2.13, transformers 5.17, 5.24 and 5.25, bitsandbytes 0.50.2.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import cache

import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from torch import nn

# -- Lightning -------------------------------------------------------------------------------------------------


def optimizer_step_done(trainer) -> bool:
    """In `on_train_batch_end`: did this micro-batch finish an optimizer step? Counts an epoch's last, partial
    accumulation window, which `(batch_idx + 1) % accumulate` misses.

    Lightning 2.6: `trainer.fit_loop._should_accumulate()`; it has no public form of this test."""
    return not trainer.fit_loop._should_accumulate()


def restore_logging_step(checkpoint: dict) -> None:
    """Make a resumed run log at the step the checkpoint was saved at.

    Lightning 2.6 counts a step for logging (`epoch_loop.state_dict["_batches_that_stepped"]`) only after its
    validation, and on restart adds the missing one back only for checkpoints saved at a train-batch end; one saved at
    a mid-epoch validation would make the resumed run log every row a step early (and overwrite the earlier rows of
    metrics.csv). No public setter exists."""
    fit_loop = checkpoint.get("loops", {}).get("fit_loop", {})
    loop, progress = fit_loop.get("epoch_loop.state_dict"), fit_loop.get("epoch_loop.batch_progress")
    if loop is None or progress is None or "global_step" not in checkpoint:
        return
    total = progress["total"]
    lightning_adds_one = total["completed"] == total["processed"] - 1
    loop["_batches_that_stepped"] = checkpoint["global_step"] - int(lightning_adds_one)


class CkptPathCLI(LightningCLI):
    """LightningCLI whose checkpoint-settings step is `check_ckpt_path` (override it).

    Lightning 2.6 calls `LightningCLI._parse_ckpt_path` after parsing, where it silently replaces the parsed model
    settings with the checkpoint's; medqlora refuses differing settings instead. No public hook runs at that point."""

    def _parse_ckpt_path(self) -> None:
        self.check_ckpt_path()

    def check_ckpt_path(self) -> None:
        """Lightning's own step, unless a subclass replaces it."""
        super()._parse_ckpt_path()


class ExistingMetricsWriter(ExperimentWriter):
    """Lightning's CSV writer, whose check for an existing metrics.csv (where Lightning 2.6 deletes it, in
    `ExperimentWriter._check_log_dir_exists`, called from `__init__`) is `found_log_dir` (override it)."""

    def _check_log_dir_exists(self) -> None:
        self.found_log_dir()

    def found_log_dir(self) -> None:
        """Lightning's own check, unless a subclass replaces it."""
        super()._check_log_dir_exists()


class CSVLoggerWith(CSVLogger):
    """`CSVLogger` that makes its writer from `writer_class`. Lightning 2.6 hard-codes `ExperimentWriter` in the
    `experiment` property, built from the private `_experiment` and `_fs`."""

    writer_class: type[ExperimentWriter] = ExperimentWriter

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The writer (made on first use, as in `CSVLogger`)."""
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = self.writer_class(log_dir=self.log_dir)
        return self._experiment


def fsdp_root_unset(root: nn.Module) -> bool:
    """Has FSDP not yet picked its root unit (no forward so far)? torch 2.11: `FullyShardedDataParallel._is_root` is
    None until lazy initialisation; the first unit initialised becomes the root."""
    return getattr(root, "_is_root", True) is None


# -- torch -----------------------------------------------------------------------------------------------------

RECOMPILE_LIMIT_NAMES = ("recompile_limit", "cache_size_limit")  # torch >= 2.6, earlier


def raise_recompile_limit(at_least: int) -> None:
    """Let one compiled function hold `at_least` graphs. torch: `torch._dynamo.config.recompile_limit` (was
    `cache_size_limit`), process-wide; `torch.compile` takes no per-function limit."""
    config = torch._dynamo.config
    name = next(n for n in RECOMPILE_LIMIT_NAMES if hasattr(config, n))
    setattr(config, name, max(getattr(config, name), at_least))


def activation_memory_budget(budget: float):
    """A context in which `torch.compile` partitions a graph's forward and backward keeping `budget` of the
    activations it would save (above what recomputing everything keeps; the rest recomputed, fewest FLOPs first).
    torch: `torch._functorch.config.activation_memory_budget`, read when a graph compiles; torch >= 2.12 also has
    `torch.autograd.graph.region_activation_memory_budget`, torch 2.11 (the GPU image) only the config."""
    from torch._functorch import config

    return config.patch(activation_memory_budget=budget)


UNCOUNTED_OPS: set[str] = set()  # ops the partitioner's FLOP estimate failed on (kept, never recomputed)


def keep_uncounted_ops() -> None:
    """Under `activation_memory_budget` the partitioner prices recomputing each op by running it under torch's
    FlopCounter (`torch._functorch.partitioners.estimate_runtime`); an op whose formula fails on the graph's shapes
    (custom kernels, shapes a formula does not expect) would fail the whole compilation. Price such an op as too
    dear to recompute instead, so its output is kept, and note its name in UNCOUNTED_OPS. Looked up by name at each
    call in torch 2.11 and 2.13."""
    from torch._functorch import partitioners

    estimate = partitioners.estimate_runtime
    if getattr(estimate, "keeps_uncounted", False):
        return

    def estimate_runtime(node):
        try:
            return estimate(node)
        except Exception:  # noqa: BLE001 - any failure of the estimate: keep the op's output
            UNCOUNTED_OPS.add(str(node.target))
            return 1e18

    estimate_runtime.keeps_uncounted, estimate_runtime.__wrapped__ = True, estimate
    partitioners.estimate_runtime = estimate_runtime


def count_grouped_query_attention() -> None:
    """Let torch's FlopCounter count attention whose keys and values have fewer heads than its queries (Gemma 4's
    grouped-query attention), as the same attention with their heads repeated. The partitioner counts each op's FLOPs
    under `activation_memory_budget`; torch 2.11's `torch.utils.flop_counter.sdpa_flop_count` and
    `sdpa_backward_flop_count` assert equal heads (torch >= 2.12 counts grouped-query attention itself: then nothing
    changes). Their registered formulas look both up by name at each call, so replacing them here is seen."""
    from torch.utils import flop_counter

    try:
        flop_counter.sdpa_flop_count((1, 2, 4, 8), (1, 1, 4, 8), (1, 1, 4, 8))
        return  # counts it already
    except AssertionError:
        pass
    forward, backward = flop_counter.sdpa_flop_count, flop_counter.sdpa_backward_flop_count

    def repeated(query_shape, *shapes):
        return [(s[0], query_shape[1], *s[2:]) for s in shapes]

    def sdpa_flop_count(query_shape, key_shape, value_shape):
        return forward(query_shape, *repeated(query_shape, key_shape, value_shape))

    def sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape):
        return backward(grad_out_shape, query_shape, *repeated(query_shape, key_shape, value_shape))

    flop_counter.sdpa_flop_count, flop_counter.sdpa_backward_flop_count = sdpa_flop_count, sdpa_backward_flop_count


def replace_forward(module: nn.Module, forward: Callable) -> None:
    """Route every call of `module` through `forward` (hooks still run). torch's `Module.__call__` calls
    `self.forward`, so an instance attribute wins over the class's method; transformers' layer loop calls the layer
    module and offers no per-layer forward of its own."""
    module.forward = forward


def grad_norms(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor's 2-norm in one multi-tensor kernel. torch: `torch._foreach_norm` (what
    `clip_grad_norm_` runs); the public norms are one kernel per tensor."""
    return list(torch._foreach_norm(tensors))


def zero_all(tensors: list[torch.Tensor]) -> None:
    """Zero every tensor in place in one multi-tensor kernel. torch: `torch._foreach_zero_` (what
    `Optimizer.zero_grad(set_to_none=False)` runs)."""
    torch._foreach_zero_(tensors)


def flash_varlen(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bounds: torch.Tensor,
    max_length: int,
    scale: float,
    window: int | None,
) -> torch.Tensor:
    """Causal FlashAttention-2 over the sequences `bounds` (cumulative starts, int32) of [tokens, heads, dim] tensors,
    K/V heads shared by groups of query heads; with `window`, a query sees only keys fewer than `window` back.

    torch 2.11/2.13: `aten._flash_attention_forward`, the op under torch's `varlen_attn` wrapper (whose arguments
    have changed between releases); the op is differentiable, compiles and is captured by CUDA graphs."""
    left = -1 if window is None else window - 1
    return torch.ops.aten._flash_attention_forward(
        query,
        key,
        value,
        bounds,
        bounds,
        max_length,
        max_length,
        0.0,
        True,
        False,
        scale=scale,
        window_size_left=left,
        window_size_right=-1 if window is None else 0,
    )[0]


# -- transformers ----------------------------------------------------------------------------------------------


def own_forward(layer_class: type[nn.Module]) -> Callable:
    """The decoder layer's own forward. transformers >= 5.2x wraps the class's `forward` in its gradient checkpointing
    (a `functools.wraps` wrapper, so `inspect.unwrap` finds the original); 5.17 does not wrap it."""
    return inspect.unwrap(layer_class.forward)


def enable_activation_checkpointing(model: nn.Module, kwargs: dict) -> None:
    """Checkpoint every decoder layer with `kwargs`. transformers >= 5.2x calls it `activation_checkpointing_enable`;
    5.17 (the GPU image) only has `gradient_checkpointing_enable`."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable(kwargs)


def checkpoint_function(layer: nn.Module) -> Callable:
    """The function transformers' gradient checkpointing runs a layer through (a partial of torch's checkpoint),
    set on each layer by `gradient_checkpointing_enable` as the private `_gradient_checkpointing_func` (5.17-5.25)."""
    return layer._gradient_checkpointing_func


def set_checkpoint_function(layer: nn.Module, function: Callable) -> None:
    """Replace the function transformers checkpoints `layer` through (`checkpoint_function`)."""
    layer._gradient_checkpointing_func = function


def cache_kwarg(text_model: nn.Module) -> str:
    """The keyword the text model takes its KV cache under: transformers 5.17 says `past_key_values`, 5.2x `cache`
    (the old name still accepted there, with a deprecation warning)."""
    return "cache" if "cache" in inspect.signature(text_model.forward).parameters else "past_key_values"


def rms_norm_eps(norm: nn.Module) -> float:
    """Gemma 4's RMSNorm epsilon. It has no public accessor: the attribute is `eps` in transformers 5.17-5.24 and
    `variance_epsilon` from 5.25."""
    return norm.eps if hasattr(norm, "eps") else norm.variance_epsilon


def decoder_layer_class() -> type[nn.Module]:
    """Gemma 4's decoder layer class (FSDP's unit). transformers exports it only from its modeling module."""
    from transformers.models.gemma4.modeling_gemma4 import Gemma4TextDecoderLayer

    return Gemma4TextDecoderLayer


# Gemma 4's attention calls `cache.update(key, value, layer_idx, ...)` on whatever its cache keyword holds, and
# otherwise (positions and masks given) only asks for `is_compileable` where a missing one means False:
# eval/decode.py's StaticCache implements just `update` (transformers' own static cache allocates for every layer and
# decides masks on the host). Written against 5.17/5.24.
CACHE_METHODS = ("update",)
CACHE_OPTIONAL = ("is_compileable",)

# -- bitsandbytes ----------------------------------------------------------------------------------------------


def keep_4bit_layout(model: nn.Module) -> int:
    """Switch off bitsandbytes' packed CPU layout on every 4-bit linear; returns how many were switched.

    bitsandbytes 0.50 on CPUs with AVX512-BF16 repacks a `Linear4bit`'s weight in place the first time it runs in
    eval mode without grad (validation, generation), and asserts that its output size is a multiple of 32. Training
    after that runs on weights requantised from the packed copy, so train -> validate -> train would differ from a CPU
    without the feature. The switch is the module attribute `support_avx512bf16_for_cpu`; there is no option."""
    switched = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            switched += 1
    return switched


@cache  # one class: bitsandbytes is imported only when the 8-bit optimizer is asked for
def adamw8bit_without_syncs() -> type:
    """bitsandbytes' `AdamW8bit` whose step does not synchronise the device after every tensor.

    A copy of bitsandbytes 0.50's `Optimizer8bit.step` (its `initialized`, `check_overrides`, `to_gpu`, `init_state`
    and `update_step`) without the `sync_gpu` per tensor, which only its paged variant needs; there is no option."""
    import bitsandbytes as bnb

    class AdamW8bit(bnb.optim.AdamW8bit):
        """bitsandbytes' 8-bit AdamW whose step leaves the device queue running: no synchronisation per tensor
        (the kernels of one stream already run in order; only paged state, not used here, needs the sync)."""

        @torch.no_grad()
        def step(self, closure: Callable[[], float] | None = None) -> float | None:
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            if not self.initialized:  # as bitsandbytes' step does on its first call
                self.check_overrides()
                self.to_gpu()
                self.initialized = True
            for gindex, group in enumerate(self.param_groups):
                for pindex, p in enumerate(group["params"]):
                    if p.grad is None:
                        continue
                    if not self.state[p]:
                        self.init_state(group, p, gindex, pindex)
                    self.update_step(group, p, gindex, pindex)
            return loss

    return AdamW8bit
