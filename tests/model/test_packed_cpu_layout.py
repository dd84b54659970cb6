"""bitsandbytes' packed CPU layout (taken on CPUs with AVX512-BF16) is forced on here, whatever this CPU has.

bitsandbytes >= 0.50 repacks a `Linear4bit`'s weight in place the first time it runs in eval mode without grad
on such a CPU; it refuses output sizes that are not a multiple of 32 (the tiny model's per-layer gate is 16) and
requantises the scales. medqlora keeps one layout on every CPU (`medqlora.compat.keep_4bit_layout`).
"""

from __future__ import annotations

import bitsandbytes as bnb
import bitsandbytes.nn.modules as bnb_modules
import pytest
import torch
from conftest import REPO
from helpers import padded_batch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from medqlora.cli import run
from medqlora.model.loading import QuantSpec, load_base_model

TINY = REPO / "configs" / "tiny.yaml"


def force_packed_layout(monkeypatch, on: bool) -> None:
    """Make every `Linear4bit` built from now on believe the CPU has AVX512-BF16 (or not)."""
    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: on)


def test_forcing_reaches_bitsandbytes_and_breaks_a_plain_load(monkeypatch, tiny_dir, tokenizer):
    """The control: with the layout forced on, a plain transformers load fails at its first eval forward, as the
    README's first command did on such CPUs. So the tests below really run with the packed path on."""
    force_packed_layout(monkeypatch, True)
    plain = AutoModelForCausalLM.from_pretrained(tiny_dir, quantization_config=QuantSpec().bnb_config()).eval()
    assert all(m.support_avx512bf16_for_cpu for m in plain.modules() if isinstance(m, bnb.nn.Linear4bit))
    batch = padded_batch(tokenizer)
    with torch.no_grad(), pytest.raises(AssertionError, match="divisible by block_n"):
        plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def test_medqlora_loads_keep_one_layout_in_eval(monkeypatch, tiny_dir, tokenizer):
    force_packed_layout(monkeypatch, True)
    model = load_base_model("tiny", QuantSpec(), torch.device("cpu"), text_only=True, ple_on_host=False).eval()
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
    batch = padded_batch(tokenizer)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.isfinite(logits).all()
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)


def _train_validate_train(workdir, monkeypatch, packed: bool) -> dict[str, torch.Tensor]:
    monkeypatch.chdir(workdir)
    force_packed_layout(monkeypatch, packed)
    # accumulation 2: a validation after optimizer step 2, then two more steps
    run(["fit", "--config", str(TINY), "--trainer.max_steps", "4", "--trainer.val_check_interval", "4"])
    run_dir = next((workdir / "runs" / "tiny").iterdir())
    assert "val/loss" in (run_dir / "metrics.csv").read_text().splitlines()[0]
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def test_train_validate_train_gives_the_same_adapter_with_the_packed_path_on_and_off(tmp_path, monkeypatch):
    (tmp_path / "on").mkdir()
    (tmp_path / "off").mkdir()
    with_packed = _train_validate_train(tmp_path / "on", monkeypatch, True)
    without = _train_validate_train(tmp_path / "off", monkeypatch, False)
    assert with_packed.keys() == without.keys()
    assert all(torch.equal(with_packed[k], without[k]) for k in without)
