"""FSDP-QLoRA's pieces that run without a GPU: the wrap policy and the quant_storage check.
(PyTorch's FSDP itself needs an accelerator; its run is in benchmarks/results/*-distributed.json.)"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from helpers import make_module

from medqlora.model.distributed import QLoRAFSDPStrategy, decoder_layer_classes, qlora_wrap_policy
from medqlora.model.loading import QuantSpec
from medqlora.model.module import QLoRAModule


def test_wrap_policy_takes_decoder_layers_and_lora_matrices_only():
    module = make_module()
    wrapped = {name for name, m in module.model.named_modules() if qlora_wrap_policy(m, False, 0)}
    layers = [n for n, m in module.model.named_modules() if isinstance(m, tuple(decoder_layer_classes()))]
    assert layers and set(layers) <= wrapped
    others = wrapped - set(layers)
    assert others and all(".lora_A." in n or ".lora_B." in n for n in others), sorted(others)[:5]
    assert not any(n.endswith("base_layer") for n in wrapped), "frozen 4-bit linears stay in their layer's unit"


def test_fsdp_refuses_4bit_weights_not_stored_in_the_compute_dtype():
    module = QLoRAModule("tiny", quantization=QuantSpec(quant_storage="uint8"))
    module._trainer = SimpleNamespace(strategy=QLoRAFSDPStrategy())
    with pytest.raises(ValueError, match=r"quant_storage='uint8'.*'bfloat16'"):
        module.configure_model()


def test_quant_storage_value_is_checked():
    with pytest.raises(ValueError, match="model.quantization.quant_storage='int4'"):
        QuantSpec(quant_storage="int4")
