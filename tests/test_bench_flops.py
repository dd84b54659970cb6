"""benchmarks/flops.py, the MFU numerator, counted independently from the model medqlora actually trains."""

from __future__ import annotations

import sys
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from helpers import make_module

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from flops import FlopModel, peak_flops, token_positions  # noqa: E402

from medqlora.hub import load_config  # noqa: E402
from medqlora.model.lora import KNOWN_TARGETS  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    module = make_module()
    flops = FlopModel.from_config(load_config("tiny"), module.lora.r, list(KNOWN_TARGETS))
    return module, flops


def test_parameter_counts_match_the_loaded_qlora_model(trained):
    """Frozen linears = every 4-bit linear of the language model; LoRA = the module's trainable parameters."""
    module, flops = trained
    language_model = module.model.base_model.model.model.language_model
    four_bit = [m for m in language_model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit and flops.linear_params == sum(m.in_features * m.out_features for m in four_bit)
    assert flops.lora_params == sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_attention_counts_keys_within_each_sample_and_window(trained):
    """Two packed samples of 3 and 2 tokens: full layers see 1+2+3 and 1+2 keys, sliding ones at most the window."""
    _, flops = trained
    flops = FlopModel(**{**flops.__dict__, "window": 2})
    positions = torch.tensor([0, 1, 2, 0, 1])
    no_attention = FlopModel(**{**flops.__dict__, "q_width": [0] * len(flops.q_width)})
    attention = flops.batch(positions, 0) - no_attention.batch(positions, 0)
    expected = sum(16 * q * (8 if sliding else 9) for q, sliding in zip(flops.q_width, flops.sliding))
    assert attention == expected
    assert no_attention.batch(positions, 3) - no_attention.batch(positions, 0) == 6 * flops.head_params * 3


def test_token_positions_of_packed_and_padded_batches():
    packed = {"input_ids": torch.tensor([[5, 6, 7, 8, 0]]), "position_ids": torch.tensor([[0, 1, 0, 1, 0]])}
    padded = {"input_ids": torch.tensor([[5, 6, 7], [8, 0, 0]]), "attention_mask": torch.tensor([[1, 1, 1], [1, 0, 0]])}
    assert token_positions(packed).tolist() == [0, 1, 0, 1]  # the filler (id 0) is not a token
    assert token_positions(padded).tolist() == [0, 1, 2, 0]


def test_peak_is_known_for_hopper_only():
    assert peak_flops("NVIDIA H100 80GB HBM3") == peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("NVIDIA GeForce RTX 3060") is None
