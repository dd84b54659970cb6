"""The base really is bitsandbytes 4-bit, LoRA lands exactly where intended, nothing frozen is fp32."""

from __future__ import annotations

import re

import bitsandbytes as bnb
import pytest
import torch
from helpers import make_module

from medqlora.hub import load_config
from medqlora.model.loading import QuantSpec, load_base_model
from medqlora.model.lora import KNOWN_TARGETS, LoraSpec, apply_lora
from medqlora.model.module import LeanSpec


def test_base_linears_are_bnb_nf4_with_double_quant(tiny_dir):
    module = make_module()
    layers = [m for n, m in module.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers, "no bitsandbytes 4-bit layer in the model"
    for layer in layers:
        assert isinstance(layer.weight, bnb.nn.Params4bit)
        assert layer.weight.dtype == torch.uint8
        state = layer.weight.quant_state
        assert state.quant_type == "nf4"
        assert state.nested, "double quantisation is off"
        assert layer.compute_dtype == torch.bfloat16
    lm = module.model.base_model.model.model.language_model
    assert isinstance(lm.layers[0].self_attn.q_proj.base_layer, bnb.nn.Linear4bit)


def test_quantisation_settings_are_configurable(tiny_dir):
    base = load_base_model(
        "tiny", QuantSpec(quant_type="fp4", double_quant=False), torch.device("cpu"), text_only=True, ple_on_host=False
    )
    q = base.model.language_model.layers[0].self_attn.q_proj
    assert q.weight.quant_state.quant_type == "fp4" and not q.weight.quant_state.nested


def _lora_module_names(model) -> set[str]:
    return {n.removeprefix("base_model.model.") for n, m in model.named_modules() if hasattr(m, "lora_A")}


def test_lora_targets_language_model_only_even_with_towers_loaded(tiny_dir):
    base = load_base_model("tiny", QuantSpec(), torch.device("cpu"), text_only=False, ple_on_host=False)
    assert base.model.vision_tower is not None and base.model.audio_tower is not None
    model = apply_lora(base, LoraSpec())
    config = load_config("tiny").get_text_config()
    expected = set()
    for i in range(config.num_hidden_layers):
        shared = i >= config.num_hidden_layers - config.num_kv_shared_layers
        for name in KNOWN_TARGETS:
            if shared and name in ("k_proj", "v_proj"):
                continue  # KV-shared layers have no k/v projections
            part = "self_attn" if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            expected.add(f"model.language_model.layers.{i}.{part}.{name}")
    assert _lora_module_names(model) == expected
    assert not any(re.search("vision|audio", n) for n in _lora_module_names(model))


def test_lora_target_subset(tiny_dir):
    model = apply_lora(
        load_base_model("tiny", QuantSpec(), torch.device("cpu"), text_only=True, ple_on_host=False),
        LoraSpec(targets=["q_proj"]),
    )
    names = _lora_module_names(model)
    assert names and all(n.endswith("self_attn.q_proj") for n in names)


def test_no_frozen_weight_is_upcast_to_fp32(tiny_dir):
    module = make_module()
    frozen = {p.dtype for p in module.model.parameters() if not p.requires_grad}
    assert torch.float32 not in frozen, frozen
    assert all(p.dtype == torch.float32 for p in module.model.parameters() if p.requires_grad)


def test_plain_recipe_switch_upcasts_like_prepare_model_for_kbit_training(tiny_dir):
    plain = LeanSpec(upcast_frozen=True, ple_on_host=False, chunked_loss=False, loss_grad_in_forward=False)
    module = make_module(lean=plain)
    frozen = {p.dtype for p in module.model.parameters() if not p.requires_grad}
    assert torch.float32 in frozen


def test_towers_are_not_loaded_by_default_and_ple_lives_on_host(tiny_dir):
    module = make_module()
    gemma = module.model.base_model.model.model
    assert gemma.vision_tower is None and gemma.audio_tower is None
    assert module.host_embedding is not None
    assert not any("embed_tokens_per_layer" in n for n, _ in module.model.named_parameters())


def test_a_model_that_is_not_gemma4_is_refused(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64
    ).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model.name_or_path=.*'llama'.*Gemma 4"):
        load_config(str(tmp_path))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"r": 0}, r"model.lora.r=0"),
        ({"alpha": -1}, r"model.lora.alpha=-1"),
        ({"dropout": 1.5}, r"model.lora.dropout=1.5"),
        ({"targets": ["qkv"]}, r"model.lora.targets=\['qkv'\]"),
    ],
)
def test_bad_lora_values_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LoraSpec(**kwargs)


def test_bad_quantisation_combination_is_refused():
    with pytest.raises(ValueError, match="double_quant=true needs load_in_4bit=true"):
        QuantSpec(load_in_4bit=False, double_quant=True)
