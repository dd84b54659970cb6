"""Small builders the tests share (not fixtures: they take arguments)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from medqlora.data.chat import encode
from medqlora.data.collate import pack_collate, pad_collate
from medqlora.data.sources import Conversation
from medqlora.model.loading import QuantSpec
from medqlora.model.lora import LoraSpec
from medqlora.model.module import LeanSpec, QLoRAModule

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "gemma4-e2b-medical.yaml"

CONVERSATIONS = [
    Conversation.single(user="Name the first-line treatment for gout.", answer="Colchicine is first-line."),
    Conversation.single(
        user="What confirms hypothyroidism?",
        answer="A raised serum TSH.",
        reasoning="Fatigue and weight gain suggest it; TSH confirms.",
    ),
    Conversation.single(user="Treat anaphylaxis how?", answer="Intramuscular epinephrine.", system="Be brief."),
]


def make_module(lean: LeanSpec | None = None, dropout: float = 0.0, **kwargs) -> QLoRAModule:
    """A configured tiny QLoRAModule on the CPU (dropout 0 so forwards are deterministic)."""
    kwargs.setdefault("quantization", QuantSpec())
    module = QLoRAModule("tiny", lora=LoraSpec(dropout=dropout), lean=lean or LeanSpec(), **kwargs)
    module.configure_model()
    return module


def perturbed_module(lean: LeanSpec | None = None, compute_dtype: str = "bfloat16", **kwargs) -> QLoRAModule:
    """A tiny module whose LoRA B is non-zero (it starts at zero), so gradients reach A too (kwargs: QLoRAModule's)."""
    torch.manual_seed(1)
    module = make_module(lean=lean, quantization=QuantSpec(compute_dtype=compute_dtype), **kwargs)
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return module


def loss_and_grads(module: QLoRAModule, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The module's loss on `batch` and the gradient of every trainable weight."""
    module.model.zero_grad()
    out = module(dict(batch))
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in module.model.named_parameters() if p.requires_grad}
    return out.loss.detach(), grads


def encoded_rows(tokenizer, convs=CONVERSATIONS, max_length: int = 256) -> list[dict]:
    """Conversations -> rows as the data module stores them."""
    rows = []
    for conv in convs:
        enc = encode(conv, tokenizer, max_length)
        rows.append({"input_ids": enc.input_ids, "labels": enc.labels})
    return rows


def padded_batch(tokenizer) -> dict[str, torch.Tensor]:
    """A padded batch of the shared conversations."""
    return pad_collate(encoded_rows(tokenizer), tokenizer.pad_token_id)


def packed_batch(tokenizer) -> dict[str, torch.Tensor]:
    """The same conversations as one packed row."""
    return pack_collate(encoded_rows(tokenizer))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """Write rows as JSON lines and return the path."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


SPEED_SWITCHES = ("compile_layers", "loss_grad_in_forward", "cuda_graph")


def recipe_speed_switches(keys: tuple[str, ...] = SPEED_SWITCHES) -> list[str]:
    """The recipe config's speed switches, as command-line overrides for a tiny CPU run (on a CPU `cuda_graph` runs
    its step, backward included, without capturing it)."""
    lean = yaml.safe_load(RECIPE.read_text())["model"]["lean"]
    return [arg for key in keys for arg in (f"--model.lean.{key}", str(lean[key]).lower())]


def adapted_tiny(four_bit: bool = False, ple_on_host: bool = False, compute_dtype: str = "float32"):
    """The tiny Gemma 4 with a LoRA adapter whose B weights are random (so the adapter changes every output), in eval
    mode: fp32 without quantisation by default, or NF4 (forced onto bitsandbytes' plain CPU layout by the loader)."""
    from medqlora.model.loading import load_base_model
    from medqlora.model.lora import apply_lora

    quant = QuantSpec(load_in_4bit=four_bit, double_quant=four_bit, compute_dtype=compute_dtype)
    base = load_base_model("tiny", quant, torch.device("cpu"), text_only=True, ple_on_host=ple_on_host)
    torch.manual_seed(0)
    model = apply_lora(base, LoraSpec(dropout=0.0)).eval()
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.2)
    return model
