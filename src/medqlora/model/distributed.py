"""FSDP-QLoRA through Lightning's own `FSDPStrategy` (DDP needs nothing beyond `trainer.strategy: ddp`).

The 4-bit base is sharded as FSDP flat parameters, which must have one dtype per wrapped unit: the base is
stored in the compute dtype (`model.quantization.quant_storage: bfloat16`, bitsandbytes packs two 4-bit values
a byte either way), each Gemma 4 decoder layer is one unit, and each trainable LoRA matrix (fp32) is a unit
of its own, so adapters never share a flat parameter with frozen bf16 storage. The policy is PEFT's
`fsdp_auto_wrap_policy`, written out here because PEFT's reads the class names from an environment variable.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import FSDPStrategy
from torch import nn


def decoder_layer_classes() -> set[type[nn.Module]]:
    """Gemma 4's decoder layer class (the unit FSDP shards and gathers one at a time)."""
    from transformers.models.gemma4.modeling_gemma4 import Gemma4TextDecoderLayer

    return {Gemma4TextDecoderLayer}


def qlora_wrap_policy(module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
    """FSDP auto-wrap policy: decoder layers, and every leaf module whose weight trains (the LoRA matrices)."""
    if recurse:
        return True
    if isinstance(module, tuple(decoder_layer_classes())):
        return True
    weight = getattr(module, "weight", None)
    return next(module.children(), None) is None and isinstance(weight, nn.Parameter) and weight.requires_grad


class QLoRAFSDPStrategy(FSDPStrategy):
    """`FSDPStrategy` with QLoRA's defaults: the wrap policy above, `use_orig_params=True` (frozen and trainable
    weights share units' modules), activation checkpointing left to the model (`model.gradient_checkpointing`).

    Every keyword of `FSDPStrategy` is accepted and wins over these defaults.
    """

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("auto_wrap_policy", qlora_wrap_policy)
        kwargs.setdefault("use_orig_params", True)
        kwargs.setdefault("limit_all_gathers", True)
        super().__init__(**kwargs)


def is_fsdp(strategy: object) -> bool:
    """True for Lightning's FSDP strategy (and subclasses such as `QLoRAFSDPStrategy`)."""
    return isinstance(strategy, FSDPStrategy)
