"""Training lowers the loss; the saved adapter loads with the model card's snippet and gives the same logits."""

from __future__ import annotations

import json

import torch
from helpers import make_module, padded_batch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from medqlora.model.adapter import save_adapter
from medqlora.model.loading import keep_4bit_layout


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tokenizer):
    module = make_module(lr=5e-3)
    optimizer = module.configure_optimizers()
    batch = padded_batch(tokenizer)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = module(dict(batch)).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses


def test_saved_adapter_loads_with_the_model_card_snippet_and_reproduces_logits(tokenizer, tiny_dir, tmp_path):
    module = make_module()
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    batch = padded_batch(tokenizer)
    module.model.eval()
    with torch.no_grad():
        expected = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    adapter = save_adapter(module.model, "tiny", tmp_path / "adapter")
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer_config.json"):
        assert (adapter / name).is_file(), name
    keys = load_file(adapter / "adapter_model.safetensors").keys()
    assert all(k.startswith("base_model.model.model.language_model.layers.") and "lora_" in k for k in keys)

    # the model card's own snippet, on the full model (vision and audio towers included)
    bnb_config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, quantization_config=bnb_config)
    assert base.model.vision_tower is not None
    model = PeftModel.from_pretrained(base, adapter)
    # on AVX512-BF16 CPUs bitsandbytes would repack the weights for eval (and refuses the tiny model's 16-wide
    # per-layer gate): keep the layout the adapter was trained in, as medqlora's own loader does
    keep_4bit_layout(model)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(logits[mask].float(), expected[mask].float(), rtol=0, atol=1e-3)
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 16
