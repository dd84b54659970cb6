"""The model for evaluation and generation: every linear dense, norms fused, the adapter merged on request.

At one token a step, decoding is bound by kernel launches, not by reading weights: a 4-bit linear with an unmerged
LoRA is seven kernels a call (bitsandbytes' two absmax kernels and its matmul, then LoRA's A, B, scale and add) and
Gemma 4's RMSNorm eight (casts, square, mean, add, power, two products), about 4,000 kernels a token on E2B.
Here each linear is one matmul and each norm one `F.rms_norm`. E2B's linears are 1.88 B parameters: 3.5 GiB in bf16
in place of 0.9 GiB in NF4, which still fits the 6 GiB the model card gives for 4-bit inference (each 4-bit weight
is freed as its dense one is made). The dense base weight is bitsandbytes' own dequantisation, the one its matmul
uses for more than one token, so the base computes what it computes in 4 bit. Merging adds `scaling * B @ A`
(LoRA's definition, PEFT's `get_delta_weight`) in fp32 and rounds once, as PEFT's `merge_and_unload` does.

Hand-written because PEFT's merge requantises 4-bit weights (a second rounding) and cannot be undone exactly, and
transformers has no inference form of Gemma 4's modules.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from medqlora import compat
from medqlora.model.parts import unwrap


class FusedRMSNorm(nn.Module):
    """Gemma 4's RMSNorm (`x / sqrt(mean(x^2) + eps) * weight`) as one `F.rms_norm` kernel.

    Gemma 4 casts to fp32, normalises, scales and casts back; `F.rms_norm` accumulates bf16 inputs in fp32 and rounds
    once, so only the reduction's order differs, and the two casts are no longer kernels of their own."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.eps = compat.rms_norm_eps(norm)
        weight = getattr(norm, "weight", None) if getattr(norm, "with_scale", True) else None
        self.weight = None if weight is None else nn.Parameter(weight.detach(), requires_grad=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if weight is not None and weight.dtype != hidden_states.dtype:  # a norm kept in fp32 beside bf16 states
            weight = weight.to(hidden_states.dtype)
        return F.rms_norm(hidden_states, (hidden_states.shape[-1],), weight, self.eps)


@dataclass
class _Delta:
    """One adapted linear's dense weight and what merging the adapter adds to it."""

    linear: nn.Linear
    terms: list[tuple[torch.Tensor, torch.Tensor, float]]  # (lora_A weight, lora_B weight, scaling) per adapter

    def merge(self) -> None:
        weight = self.linear.weight
        total = weight.float()
        for a, b, scaling in self.terms:
            total += (b.to(weight.device, torch.float32) @ a.to(weight.device, torch.float32)) * scaling
        weight.copy_(total)


@dataclass
class InferenceModel:
    """A transformers model with plain `nn.Linear`s and fused norms; the adapter is merged by `merge_adapter`.

    `model` runs as the base until then, and as base + adapter after (one way: merged weights are not unmerged)."""

    model: nn.Module
    deltas: list[_Delta] = field(repr=False)
    adapter_merged: bool = False

    def adapted_linears(self) -> list[nn.Linear]:
        """The dense linears that replaced the adapter's wrapped ones."""
        return [delta.linear for delta in self.deltas]

    @torch.no_grad()
    def merge_adapter(self) -> None:
        """Add the adapter to every adapted weight (once)."""
        if self.adapter_merged:
            raise RuntimeError("the adapter is already merged into these weights")
        for delta in self.deltas:
            delta.merge()
        self.adapter_merged = True


def _dense(base: nn.Module) -> nn.Linear:
    """`base` (a linear, 4-bit or not) as a plain `nn.Linear` in its compute dtype, dequantised if it is 4-bit."""
    weight = base.weight
    state = getattr(weight, "quant_state", None)
    if state is not None:
        import bitsandbytes.functional as bnbf

        weight = bnbf.dequantize_4bit(weight.data, state).to(state.dtype)
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=base.bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.data, requires_grad=False)
    if base.bias is not None:
        linear.bias = nn.Parameter(base.bias.data, requires_grad=False)
    return linear


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


@torch.no_grad()
def for_inference(peft_model: nn.Module) -> InferenceModel:
    """Make every linear of `peft_model` (LoRA-wrapped or not, 4-bit or not) a dense `nn.Linear` holding its base
    weight, and every RMSNorm a `FusedRMSNorm`; the adapter's active weights are kept aside for `merge_adapter`.
    Consumes the PEFT model (use the result's `model`)."""
    import bitsandbytes as bnb
    from peft.tuners.lora import LoraLayer

    model = unwrap(peft_model).eval()
    deltas = []
    # by name, so each 4-bit weight is freed as soon as its dense one replaces it
    for name in [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]:
        layer = model.get_submodule(name)
        adapters = [a for a in layer.active_adapters if a in layer.lora_A]
        if any(layer.use_dora.get(a, False) for a in adapters):
            raise ValueError(f"{name}: DoRA adapters are not supported for inference here; use LoRA")
        linear = _dense(layer.get_base_layer())
        terms = [(layer.lora_A[a].weight.data, layer.lora_B[a].weight.data, float(layer.scaling[a])) for a in adapters]
        _replace(model, name, linear)
        deltas.append(_Delta(linear, terms))
        del layer
    for name in [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]:
        _replace(model, name, _dense(model.get_submodule(name)))  # not adapted: PLE gates and projections
    for name in [n for n, m in model.named_modules() if type(m).__name__ == "Gemma4RMSNorm"]:
        _replace(model, name, FusedRMSNorm(model.get_submodule(name)))
    gc.collect()  # modules hold reference cycles (hooks): the 4-bit weights go only when they are collected
    return InferenceModel(model, deltas)
