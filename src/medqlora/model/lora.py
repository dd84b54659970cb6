"""LoRA on the language model only, in PEFT's own format.

Gemma 4's vision and audio towers wrap their linears in `Gemma4ClippableLinear`; a plain name list
(`["q_proj", ...]`) matches those too and PEFT fails on them. We target the names *under the language
model's decoder layers* with one regex, so the adapter keeps the full model's module names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LANGUAGE_MODEL_LAYERS = r"model\.language_model\.layers\.\d+\.(?:self_attn|mlp)"
KNOWN_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraSpec:
    """PEFT LoRA settings (the model card: r 16, alpha 16, dropout 0.05 on q/k/v/o/gate/up/down).

    Args:
        r: adapter rank.
        alpha: scaling numerator (the update is scaled by alpha / r).
        dropout: dropout on the adapter's input.
        targets: projection names to adapt in every language-model layer.
    """

    r: int = 16
    alpha: int = 16
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: list(KNOWN_TARGETS))

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"model.lora.r={self.r} must be a positive rank (recipe: 16)")
        if self.alpha <= 0:
            raise ValueError(f"model.lora.alpha={self.alpha} must be positive (recipe: 16)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.lora.dropout={self.dropout} must be in [0, 1) (recipe: 0.05)")
        unknown = sorted(set(self.targets) - set(KNOWN_TARGETS))
        if unknown or not self.targets:
            raise ValueError(
                f"model.lora.targets={self.targets}: {unknown or 'empty'}; choose from {list(KNOWN_TARGETS)}"
            )

    def target_regex(self) -> str:
        """The PEFT `target_modules` regex: these projections, language-model layers only."""
        return rf"{LANGUAGE_MODEL_LAYERS}\.(?:{'|'.join(self.targets)})"

    def peft_config(self):
        """The `peft.LoraConfig` for a causal LM."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_regex(),
            bias="none",
            task_type="CAUSAL_LM",
        )


def apply_lora(model, spec: LoraSpec):
    """Wrap `model` with a fresh LoRA adapter; frozen base, trainable adapter only."""
    from peft import get_peft_model

    return get_peft_model(model, spec.peft_config())


def trainable_summary(model) -> str:
    """'trainable 1.2M / 5.1B (0.02%)' for the setup log."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"trainable params {trainable:,} / {total:,} ({100 * trainable / max(total, 1):.3f}%)"
