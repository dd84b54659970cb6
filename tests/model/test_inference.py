"""The inference model (dense linears, fused norms) computes what the 4-bit base and its unmerged adapter compute:
the base before the merge, base + adapter after it (fp32 on the tiny model); no 4-bit weight survives it."""

from __future__ import annotations

import weakref

import bitsandbytes as bnb
import pytest
import torch
from helpers import adapted_tiny
from peft.tuners.lora import LoraLayer

from medqlora.model.inference import for_inference


@pytest.mark.parametrize("four_bit", [False, True])
def test_inference_model_gives_the_base_then_the_merged_adapter(tokenizer, four_bit):
    model = adapted_tiny(four_bit=four_bit)
    ids = torch.tensor([tokenizer("A cardiac case. Which option? Aspirin or insulin.")["input_ids"]])
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with model.disable_adapter():
            plain = model(input_ids=ids).logits
    four_bit_weights = [weakref.ref(m.weight) for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert bool(four_bit_weights) == four_bit
    dense = for_inference(model)
    del model
    assert not any(isinstance(m, (LoraLayer, bnb.nn.Linear4bit)) for m in dense.model.modules())
    assert all(ref() is None for ref in four_bit_weights), "every 4-bit weight is freed"
    adapted_linears = dense.adapted_linears()
    assert adapted_linears and all(type(m) is torch.nn.Linear for m in adapted_linears)
    assert not any(type(m).__name__ == "Gemma4RMSNorm" for m in dense.model.modules())
    with torch.no_grad():
        torch.testing.assert_close(dense.model(input_ids=ids).logits, plain, atol=1e-4, rtol=0)
        dense.merge_adapter()
        torch.testing.assert_close(dense.model(input_ids=ids).logits, adapted, atol=1e-4, rtol=0)
    assert (adapted - plain).abs().max() > 1e-2, "the adapter changes the logits"
    with pytest.raises(RuntimeError, match="already merged"):
        dense.merge_adapter()
