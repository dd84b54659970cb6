"""Model FLOPs of one QLoRA training micro-batch, for MFU (docs/benchmarks.md derives each term).

Counted from the model's own modules (built on the meta device from its config, so nothing is allocated) and from
the batch's real tokens, never from an implementation's padding or recomputation choices beyond the recipe's:
  frozen 4-bit linears   6 x params per token   forward, the checkpoint's recomputation, input-gradient backward
  LoRA                   8 x params per token   the same plus the weight gradient
  attention              16 x q width per (token, attended key) per layer: QK^T and AV (4 x q width forward),
                         forward + recomputation + a backward of twice the forward; keys are the token's own
                         sample's earlier tokens, at most the sliding window on sliding layers
  LM head                6 x vocab x hidden per supervised position (forward, the loss chunk's recomputation,
                         input-gradient backward; the head is the frozen tied embedding)
Every case, the plain recipe included, is credited the same FLOPs for the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PEAK_BF16_DENSE = {"H100": 989e12, "H200": 989e12}  # FLOP/s, NVIDIA's dense (no sparsity) bf16 figures


@dataclass
class FlopModel:
    """Per-token constants of one model and adapter."""

    linear_params: int  # frozen linears of the language model (decoder layers and the PLE projection)
    lora_params: int
    q_width: list[int]  # heads x head_dim, per layer
    sliding: list[bool]  # per layer: sliding-window attention
    window: int
    head_params: int  # vocab x hidden

    @classmethod
    def from_config(cls, config, lora_r: int, lora_targets: list[str]) -> FlopModel:
        text = config.get_text_config()
        model = meta_text_model(text)
        layers = model.model.layers
        linear = [m for m in model.model.modules() if isinstance(m, torch.nn.Linear)]
        lora = lora_target_linears(model, lora_targets)
        return cls(
            linear_params=sum(m.in_features * m.out_features for m in linear),
            lora_params=sum(lora_r * (m.in_features + m.out_features) for m in lora),
            q_width=[layer.self_attn.q_proj.out_features for layer in layers],
            sliding=[t == "sliding_attention" for t in text.layer_types],
            window=text.sliding_window,
            head_params=text.vocab_size * text.hidden_size,
        )

    def per_token(self) -> float:
        """FLOPs per token without attention and LM head (the part that does not depend on the batch)."""
        return 6 * self.linear_params + 8 * self.lora_params

    def batch(self, positions: torch.Tensor, supervised: int) -> float:
        """FLOPs of one micro-batch: `positions` holds each real token's position within its own sample."""
        keys_full = float((positions + 1).sum())
        keys_sliding = float((positions + 1).clamp(max=self.window).sum())
        attention = sum(16 * q * (keys_sliding if s else keys_full) for q, s in zip(self.q_width, self.sliding))
        return self.per_token() * positions.numel() + attention + 6 * self.head_params * supervised


def meta_text_model(text_config) -> torch.nn.Module:
    """The language model of a config on the meta device: its modules and shapes, nothing allocated."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(text_config)


def lora_target_linears(model: torch.nn.Module, targets: list[str]) -> list[torch.nn.Linear]:
    """The decoder layers' linears a LoRA adapter on `targets` wraps (KV-shared layers have no k/v projection)."""
    return [
        m
        for name, m in model.model.layers.named_modules()
        if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in targets
    ]


def token_positions(batch: dict) -> torch.Tensor:
    """Each real token's position within its sample: packed rows carry position_ids; padded rows count from 0."""
    real = batch["attention_mask"].bool() if "attention_mask" in batch else batch["input_ids"] != 0
    if "position_ids" in batch:
        return batch["position_ids"][real]
    return (real.long().cumsum(-1) - 1)[real]


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak of the named GPU, or None when unknown."""
    return next((v for k, v in PEAK_BF16_DENSE.items() if k in device_name), None)
