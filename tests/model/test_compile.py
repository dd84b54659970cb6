"""lean.compile_layers: the compiled decoder layers train as the eager ones do (CPU, tiny model, inductor)."""

from __future__ import annotations

import pytest
import torch
from helpers import loss_and_grads, make_module, packed_batch
from torch._dynamo.utils import counters

from medqlora.model.compile import CompiledLayerForward, decoder_layers, eager_layers
from medqlora.model.module import LeanSpec


def _module(dropout: float):
    torch.manual_seed(1)
    module = make_module(LeanSpec(compile_layers=True), dropout=dropout, quantization=_fp32())
    torch.manual_seed(2)
    with torch.no_grad():  # LoRA B starts at zero: make it non-zero so gradients reach A too
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    module.train()
    return module


def _fp32():
    from medqlora.model.loading import QuantSpec

    return QuantSpec(compute_dtype="float32")  # bf16 rounds fused and unfused arithmetic differently


def _seeded(module, batch, seed: int = 3):
    torch.manual_seed(seed)
    return loss_and_grads(module, batch)


@pytest.mark.parametrize("dropout", [0.0, 0.05])
def test_compiled_layers_give_eager_loss_and_lora_gradients(tokenizer, dropout):
    """Same batch, same seed: loss within 1e-5 and every LoRA gradient within 3e-4 (relative norm) of the eager
    path, with the recipe's dropout too (masks from eager's random stream); no graph breaks, no recompiles.
    Fused fp32 kernels sum in another order: layer 0's lora_A gradient, the deepest, differed by 1.35e-4 with
    dropout on the tiny model v2 (a dropout mask drawn from another stream would move it far more)."""
    torch._dynamo.reset()
    counters.clear()
    module = _module(dropout)
    assert all(isinstance(layer.forward, CompiledLayerForward) for layer in decoder_layers(module.model))
    batch = packed_batch(tokenizer)
    with eager_layers(module.model):
        eager_loss, eager_grads = _seeded(module, batch)
    loss, grads = _seeded(module, batch)
    assert abs(loss.item() - eager_loss.item()) <= 1e-5 * abs(eager_loss.item())
    for name, grad in eager_grads.items():
        assert (grads[name] - grad).norm() <= 3e-4 * grad.norm() + 1e-8, name
    assert not counters["graph_break"], dict(counters["graph_break"])
    graphs = counters["stats"]["unique_graphs"]
    assert 0 < graphs <= len(decoder_layers(module.model)) + 1  # one per layer variant, not per call
    _seeded(module, batch)
    assert counters["stats"]["unique_graphs"] == graphs  # a second step reuses them


def test_compile_layers_refused_under_fsdp():
    """FSDP wraps the layers the compiled forward replaces: refused with the setting's name and the way out (the
    switch table, model/plan.py, which `configure_model` runs before loading)."""
    from medqlora.model.plan import RunFacts, plan_step

    with pytest.raises(ValueError, match=r"model\.lean\.compile_layers=true .*FSDP.*configs/ddp\.yaml"):
        plan_step(LeanSpec(compile_layers=True), RunFacts(device_type="cuda", fsdp=True, strategy="QLoRAFSDPStrategy"))


def test_compile_layers_without_a_compiler_says_which_to_install(monkeypatch):
    """torch.compile needs a C/C++ compiler; without one the run stops before loading, naming it and the way out."""
    import medqlora.model.compile as compile_file
    from medqlora.model.module import QLoRAModule

    monkeypatch.setattr(compile_file.shutil, "which", lambda name: None)
    module = QLoRAModule("tiny", lean=LeanSpec(compile_layers=True))
    with pytest.raises(ValueError, match=r"compile_layers=true needs a compiler .* on cpu .*\(g\+\+: apt install"):
        module.configure_model()
    assert module.model is None
    assert compile_file.missing_compiler("cuda") == "gcc"


def test_rows_of_one_sample_each_reuse_the_packed_graphs(tokenizer):
    """transformers gives full-attention layers no mask when every row holds one sample: the compiled layers get
    the masks model/masks.py builds instead, so no second set of graphs compiles mid-epoch, and loss and gradients
    stay eager's."""
    torch._dynamo.reset()
    counters.clear()
    module = _module(0.0)
    packed = packed_batch(tokenizer)
    _seeded(module, packed)
    graphs = counters["stats"]["unique_graphs"]
    length = packed["input_ids"].shape[1]
    single = dict(packed, position_ids=torch.arange(length).repeat(packed["input_ids"].shape[0], 1))
    loss, grads = _seeded(module, single)
    assert counters["stats"]["unique_graphs"] == graphs
    with eager_layers(module.model):
        eager_loss, eager_grads = _seeded(module, single)
    assert abs(loss.item() - eager_loss.item()) <= 1e-5 * abs(eager_loss.item())
    for name, grad in eager_grads.items():
        assert (grads[name] - grad).norm() <= 3e-4 * grad.norm() + 1e-8, name
