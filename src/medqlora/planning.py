"""`model.lean.memory_budget_gib` on a parsed config: the budget's plan (model/budget.py) written into the config
before anything is built, so the run's config.yaml holds the resolved values and a repeated run uses them.

`medqlora fit` calls `resolve` right after parsing; `medqlora plan --config X [--budget N]` stops there, printing every
candidate weighed. A resumed fit keeps the values its checkpoint was trained with instead of planning again.
"""

from __future__ import annotations

import os

from lightning.pytorch.utilities import rank_zero_info

from medqlora.model.budget import GIB, BudgetQuestion, Plan, Setting, auto_budget_gib, plan

ACCUMULATION = "GradientAccumulation"  # the callback whose `accumulate` the plan sets (callbacks/accumulation.py)


def _get(namespace, dotted: str, default=None):
    for key in dotted.split("."):
        namespace = getattr(namespace, key, None) if namespace is not None else None
    return default if namespace is None else namespace


def _accumulation(config) -> tuple[object | None, int]:
    """The GradientAccumulation callback's init args in `config` (None: the trainer's own setting) and its value."""
    for callback in _get(config, "trainer.callbacks", []) or []:
        if str(_get(callback, "class_path", "")).endswith(ACCUMULATION):
            return callback.init_args, int(_get(callback, "init_args.accumulate", 8))
    return None, int(_get(config, "trainer.accumulate_grad_batches", 1) or 1)


def question(config) -> BudgetQuestion:
    """What the parsed `config` (one subcommand's namespace) leaves to the planner."""
    micro = _get(config, "data.micro_batch_size", 2)
    _, accumulate = _accumulation(config)
    lean = _get(config, "model.lean")
    share, offload = _get(lean, "checkpoint_share", 1.0), _get(lean, "offload_checkpoints", False)
    kept = _get(lean, "activation_budget", 1.0)
    packing = bool(_get(config, "data.packing", True))
    max_length = int(_get(config, "data.max_length", 2048))
    attention = _get(lean, "attention", "auto")
    return BudgetQuestion(
        name_or_path=str(_get(config, "model.name_or_path", "tiny")),
        row_tokens=int(_get(config, "data.pack_tokens", None) or max_length) if packing else max_length,
        rows_per_step=(2 if micro == "auto" else int(micro)) * accumulate,
        micro_batch=None if micro == "auto" else int(micro),
        checkpoint_share=None if share == "auto" else float(share),
        offload=None if offload == "auto" else bool(offload),
        activation_budget=None if kept == "auto" else float(kept),
        compiled=_compiles(config),
        gradient_checkpointing=bool(_get(config, "model.gradient_checkpointing", True)),
        loss_chunk=int(_get(lean, "loss_chunk_size", 256)) if _get(lean, "chunked_loss", True) else 0,
        row_attention=attention in ("auto", "varlen"),
        ple_on_host=bool(_get(lean, "ple_on_host", True)),
        lora_r=int(_get(config, "model.lora.r", 16)),
        lora_targets=tuple(_get(config, "model.lora.targets", BudgetQuestion.lora_targets)),
        optimizer=str(_get(config, "model.optimizer", "adamw_8bit")),
    )


def _compiles(config) -> bool:
    """Will the decoder layers compile (selective checkpointing happens in their graphs)? As `resolve_compile` decides
    at set-up: `compile_layers` true, or `auto` on a GPU run (accelerator gpu, or auto with a GPU visible) that neither
    shards with FSDP nor runs eager attention."""
    switch = _get(config, "model.lean.compile_layers", "auto")
    if switch != "auto":
        return bool(switch)
    if (
        "fsdp" in str(_get(config, "trainer.strategy", "auto")).lower()
        or _get(config, "model.lean.attention") == "eager"
    ):
        return False
    accelerator = str(_get(config, "trainer.accelerator", "auto"))
    if accelerator == "auto":
        import torch

        return torch.cuda.is_available()
    return accelerator in ("gpu", "cuda")


def budget_of(config) -> float | None:
    """The config's budget in GiB (`auto` read from the GPU), or None when it sets none."""
    budget = _get(config, "model.lean.memory_budget_gib")
    if budget is None:
        return None
    return auto_budget_gib() if budget == "auto" else float(budget)


def _write(config, setting: Setting) -> None:
    """Put resolved values into the parsed config (what config.yaml and every class then get)."""
    config.data.micro_batch_size = setting.micro_batch
    if _get(config, "model.lean") is not None:
        config.model.lean.checkpoint_share = setting.checkpoint_share
        config.model.lean.offload_checkpoints = setting.offload
        config.model.lean.activation_budget = setting.activation_budget
    args, _ = _accumulation(config)
    if args is not None:
        args.accumulate = setting.accumulate
    else:
        config.trainer.accumulate_grad_batches = setting.accumulate


def resolve(config, resumed: dict | None = None, announce: bool = True, use_budget: bool = True) -> Plan | None:
    """Resolve `config`'s `auto` micro-batch and checkpointing in place: within its budget (returns the plan), to the
    values `resumed` (the checkpoint a fit continues) was trained with, or without a budget to the recipe's (2 rows,
    every layer checkpointed, nothing offloaded). The rows per optimizer step stay; the accumulation adjusts.
    `use_budget=False` (validate, test, predict): the recipe's values, whatever the budget."""
    q = question(config)
    open_values = (q.micro_batch, q.checkpoint_share, q.offload, q.activation_budget)
    saved = _resumed_values(resumed, q.rows_per_step) if None in open_values else None
    if saved is not None:
        _write(config, saved)
        rank_zero_info(
            f"medqlora budget: the resumed run keeps its {saved.micro_batch} rows a micro-batch, checkpoint_share "
            f"{saved.checkpoint_share:g}, offload_checkpoints {str(saved.offload).lower()}, activation_budget "
            f"{saved.activation_budget:g}"
        )
        return None
    budget = budget_of(config) if use_budget else None
    if budget is None:
        micro = q.micro_batch or 2
        share = 1.0 if q.checkpoint_share is None else q.checkpoint_share
        kept = 1.0 if q.activation_budget is None else q.activation_budget
        _write(config, Setting(micro, max(1, q.rows_per_step // micro), share, bool(q.offload), kept))
        return None
    _use_expandable_segments()
    result = plan(q, budget)  # a configured setting that leaves nothing open is checked against the budget
    _write(config, result.chosen.setting)
    if announce:
        rank_zero_info(result.line())
    return result


def _resumed_values(resumed: dict | None, rows_per_step: int) -> Setting | None:
    """The setting a checkpoint was trained with, when it saved it (before activation_budget: 1.0)."""
    if not resumed:
        return None
    lean = (resumed.get("hyper_parameters") or {}).get("lean")
    micro = (resumed.get("datamodule_hyper_parameters") or {}).get("micro_batch_size")
    values = vars(lean) if lean is not None and not isinstance(lean, dict) else (lean or {})
    share, offload = values.get("checkpoint_share"), values.get("offload_checkpoints")
    kept = values.get("activation_budget", 1.0)
    if not isinstance(micro, int) or not isinstance(offload, bool):
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (share, kept)):
        return None
    return Setting(micro, max(1, rows_per_step // micro), float(share), offload, float(kept))


def _use_expandable_segments() -> None:
    """With a budget, the allocator grows segments in place instead of caching fragments the budget cannot spend
    (without it, 8 x 2048 ran out of memory under a 12 GiB cap at 9.4 GiB allocated). A user's own setting wins."""
    if "PYTORCH_CUDA_ALLOC_CONF" in os.environ:
        return
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
    import torch

    if torch.cuda.is_available():
        torch.cuda.memory._set_allocator_settings("expandable_segments:True")


def report(result: Plan, q: BudgetQuestion) -> str:
    """`medqlora plan`'s answer: the question, every candidate weighed, and the pick."""
    head = (
        f"medqlora plan: {q.name_or_path}, rows of {q.row_tokens} tokens, {q.rows_per_step} rows per optimizer step, "
        f"budget {result.budget_gib:.1f} GiB ({result.budget_gib * GIB / 1e9:.1f} GB); predicted peaks, speed "
        "relative to the recipe's 2 rows a micro-batch with every layer checkpointed"
    )
    return f"{head}\n{result.table()}\n{result.line()}"
