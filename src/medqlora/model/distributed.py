"""FSDP-QLoRA through Lightning's own `FSDPStrategy` (DDP needs nothing beyond `trainer.strategy: ddp`).

The 4-bit base is sharded as FSDP flat parameters, which must have one dtype per wrapped unit: the base is
stored in the compute dtype (`model.quantization.quant_storage: bfloat16`, bitsandbytes packs two 4-bit values
a byte either way), each Gemma 4 decoder layer is one unit, and each trainable LoRA matrix (fp32) is a unit
of its own, so adapters never share a flat parameter with frozen bf16 storage. The policy is PEFT's
`fsdp_auto_wrap_policy`, written out here because PEFT's reads the class names from an environment variable.

Checkpoints hold what a QLoRA checkpoint holds on one device: the adapter (gathered from its FSDP units, never
the frozen base) and the optimizer state, here as each rank's own shard state. FSDP's optimizer-state re-keying
cannot express bitsandbytes' blockwise 8-bit state, so a checkpoint resumes on the same number of devices.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from medqlora.compat import decoder_layer_class, fsdp_root_unset

WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def decoder_layer_classes() -> set[type[nn.Module]]:
    """Gemma 4's decoder layer class (the unit FSDP shards and gathers one at a time)."""
    return {decoder_layer_class()}


def qlora_wrap_policy(module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
    """FSDP auto-wrap policy: decoder layers, and every leaf module whose weight trains (the LoRA matrices)."""
    if recurse:
        return True
    if isinstance(module, tuple(decoder_layer_classes())):
        return True
    weight = getattr(module, "weight", None)
    return next(module.children(), None) is None and isinstance(weight, nn.Parameter) and weight.requires_grad


def clean_name(name: str) -> str:
    """A parameter name without FSDP's (and its activation checkpointing's) wrapper segments."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


class QLoRAFSDPStrategy(FSDPStrategy):
    """`FSDPStrategy` with QLoRA's defaults: the wrap policy above, `use_orig_params=True` (frozen and trainable
    weights share units' modules), activation checkpointing left to the model (`model.gradient_checkpointing`),
    and adapter-only checkpoints with per-rank optimizer state (module docstring).

    Every keyword of `FSDPStrategy` is accepted and wins over these defaults, except `state_dict_type`.
    """

    def __init__(self, **kwargs: Any):
        if kwargs.get("state_dict_type", "full") != "full":
            raise ValueError(
                f"trainer.strategy.init_args.state_dict_type={kwargs['state_dict_type']!r}: QLoRA "
                "checkpoints hold only the adapter and optimizer state, written as one file; remove it"
            )
        sharding = str(kwargs.get("sharding_strategy", "FULL_SHARD")).rsplit(".", 1)[-1]
        if sharding not in ("FULL_SHARD", "HYBRID_SHARD"):
            raise ValueError(
                f"trainer.strategy.init_args.sharding_strategy={sharding!r} fails with bitsandbytes' "
                "4-bit weights (docs/distributed.md); use FULL_SHARD (HYBRID_SHARD across nodes), or "
                "`strategy: ddp` to keep a whole copy per GPU"
            )
        kwargs.setdefault("auto_wrap_policy", qlora_wrap_policy)
        kwargs.setdefault("use_orig_params", True)
        kwargs.setdefault("limit_all_gathers", True)
        super().__init__(**kwargs)

    @property
    def mixed_precision_config(self):
        """Lightning's FSDP policy for the precision, but buffers keep their dtype (Gemma 4's rotary inverse
        frequencies would lose precision in bf16) and the small LoRA gradients are reduced in fp32."""
        config = super().mixed_precision_config
        return None if config is None else dataclasses.replace(config, reduce_dtype=torch.float32, buffer_dtype=None)

    @property
    def lightning_restore_optimizer(self) -> bool:
        """Let Lightning call `load_optimizer_state_dict` (FSDPStrategy restores optimizers itself, and skips it)."""
        return True

    def _adapter_units(self) -> list[tuple[str, nn.Module]]:
        """(name, FSDP unit) of every unit that wraps one trainable leaf module (a LoRA matrix)."""
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        root = self.model
        if fsdp_root_unset(root):
            # no forward yet: the first unit FSDP initialises becomes its root, so let the real root go first
            with FSDP.summon_full_params(root, recurse=False, writeback=False):
                pass
        units = [
            (clean_name(name), unit)
            for name, unit in self.lightning_module.named_modules()
            if isinstance(unit, FSDP)
            and next(unit.module.children(), None) is None
            and any(p.requires_grad for p in unit.module.parameters())
        ]
        covered = {f"{name}.{p}" for name, unit in units for p, _ in unit.module.named_parameters()}
        missing = self.lightning_module.trainable_names() - covered
        if missing:
            raise ValueError(
                f"trainer.strategy.init_args.auto_wrap_policy left {len(missing)} trainable weights "
                f"(e.g. {sorted(missing)[0]}) outside a unit of their own; use the default "
                "medqlora.model.distributed.qlora_wrap_policy"
            )
        return units

    def lightning_module_state_dict(self) -> dict[str, Any]:
        """The adapter's full weights (a collective, every rank gets them), not FSDP's full state dict: that
        would gather the whole frozen base on every save only for `on_save_checkpoint` to drop it."""
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        weights = {}
        for name, unit in self._adapter_units():
            with FSDP.summon_full_params(unit, recurse=False, writeback=False):
                for param_name, param in unit.module.named_parameters():
                    weights[f"{name}.{param_name}"] = param.detach().to("cpu", copy=True)
        return weights

    def load_checkpoint(self, checkpoint_path: str | Path, weights_only: bool | None = None) -> dict[str, Any]:
        """Read a checkpoint file and copy its adapter into the FSDP units (every rank reads the same file)."""
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        path = Path(self.broadcast(str(checkpoint_path)))
        checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only)
        saved = checkpoint["state_dict"]
        for name, unit in self._adapter_units():
            with FSDP.summon_full_params(unit, recurse=False, writeback=True):
                for param_name, param in unit.module.named_parameters():
                    key = f"{name}.{param_name}"
                    if key not in saved:
                        raise KeyError(
                            f"checkpoint {path} has no adapter weight {key}: it was written for another "
                            "LoRA setup (model.lora); resume with the same config"
                        )
                    param.data.copy_(saved[key])
        return checkpoint

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Every rank's own optimizer state (over its shards), gathered to rank 0 (a collective)."""
        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer.optimizer
        local = move_data_to_device(optimizer.state_dict(), "cpu")
        ranks = [None] * self.world_size if self.global_rank == 0 else None
        torch.distributed.gather_object(local, ranks, dst=0)
        return {"fsdp_rank_states": ranks}

    def load_optimizer_state_dict(self, checkpoint: dict[str, Any]) -> None:
        """Give each rank back the optimizer state it saved; refuse another number of ranks."""
        for optimizer, state in zip(self.optimizers, checkpoint["optimizer_states"]):
            ranks = state.get("fsdp_rank_states")
            if ranks is None or len(ranks) != self.world_size:
                saved = "no per-rank state" if ranks is None else f"{len(ranks)} ranks"
                raise ValueError(
                    f"this FSDP checkpoint holds {saved} but the run has {self.world_size}: resume on "
                    f"the same number of devices (trainer.devices x trainer.num_nodes), or start a new "
                    "run from the saved adapter"
                )
            optimizer.load_state_dict(ranks[self.global_rank])


def is_fsdp(strategy: object) -> bool:
    """True for Lightning's FSDP strategy (and subclasses such as `QLoRAFSDPStrategy`)."""
    return isinstance(strategy, FSDPStrategy)
