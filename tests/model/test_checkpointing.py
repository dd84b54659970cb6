"""The checkpointing policy (issue #40): a share of the layers, none, and checkpointed inputs offloaded to host
memory each train as every layer checkpointed does: same loss, same LoRA gradients (CPU, tiny model, fp32)."""

from __future__ import annotations

import pytest
import torch
from helpers import loss_and_grads, make_module, packed_batch, perturbed_module
from torch._dynamo.utils import counters

from medqlora.model.checkpointing import checkpointed_layers
from medqlora.model.compile import CompiledLayerForward, decoder_layers
from medqlora.model.module import LeanSpec
from medqlora.model.plan import RunFacts, plan_step


def _module(lean: LeanSpec, checkpointing: bool = True):
    module = perturbed_module(lean, compute_dtype="float32", gradient_checkpointing=checkpointing)
    module.train()
    return module


def test_a_share_of_the_layers_is_evenly_spaced():
    assert checkpointed_layers(35, 1.0) == set(range(35))
    assert checkpointed_layers(35, 0.0) == set()
    assert sorted(checkpointed_layers(6, 0.5)) == [0, 2, 4]
    half = sorted(checkpointed_layers(35, 0.5))
    assert len(half) == 18 and max(b - a for a, b in zip(half, half[1:])) <= 2


@pytest.mark.parametrize(
    "share, offload, compiled, checkpointing",
    [
        (0.5, False, False, True),
        (0.0, False, False, True),
        (1.0, False, False, False),  # model.gradient_checkpointing=false: no layer, whatever the share
        (1.0, True, False, True),
        (0.5, True, False, True),
        (0.5, True, True, True),
    ],
    ids=["half", "none-by-share", "none-by-switch", "offload", "half-offload", "half-offload-compiled"],
)
def test_every_policy_trains_as_every_layer_checkpointed(tokenizer, share, offload, compiled, checkpointing):
    batch = packed_batch(tokenizer)
    reference = _module(LeanSpec(compile_layers=compiled))
    torch.manual_seed(3)
    want_loss, want = loss_and_grads(reference, batch)
    module = _module(
        LeanSpec(compile_layers=compiled, checkpoint_share=share, offload_checkpoints=offload), checkpointing
    )
    layers = decoder_layers(module.model)
    expected = checkpointed_layers(len(layers), share if checkpointing else 0.0)
    if compiled:
        assert {i for i, layer in enumerate(layers) if layer.forward.checkpointing} == expected
        assert all(isinstance(layer.forward, CompiledLayerForward) for layer in layers)
    else:
        assert {i for i, layer in enumerate(layers) if layer.gradient_checkpointing} == expected
    torch.manual_seed(3)
    loss, grads = loss_and_grads(module, batch)
    assert abs(loss.item() - want_loss.item()) <= 1e-6 * abs(want_loss.item())
    for name, grad in want.items():
        assert (grads[name] - grad).norm() <= 1e-5 * grad.norm() + 1e-9, name


def _kept_bytes(module, batch) -> int:
    """Bytes of the tensors a training step keeps for backward where the step's own hooks do not move them."""
    sizes = []

    def keep(tensor):
        sizes.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        loss_and_grads(module, batch)
    return sum(sizes)


def test_what_backward_keeps_shrinks_with_each_policy(tokenizer):
    batch = packed_batch(tokenizer)
    kept = [
        _kept_bytes(_module(LeanSpec(checkpoint_share=share, offload_checkpoints=offload)), batch)
        for share, offload in ((0.0, False), (0.5, False), (1.0, False), (1.0, True))
    ]
    assert kept == sorted(kept, reverse=True) and len(set(kept)) == 4, kept
    assert kept[1] < 0.75 * kept[0]  # half the layers checkpointed: about half the activations kept


def test_offloaded_inputs_wait_in_host_memory(tokenizer, monkeypatch):
    """The checkpointed layers' saved inputs go through save_on_cpu (pinned on a CUDA machine)."""
    calls = []
    real = torch.autograd.graph.save_on_cpu

    def recording(pin_memory=False, **kwargs):
        calls.append(pin_memory)
        return real(pin_memory=pin_memory, **kwargs)

    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu", recording)
    module = _module(LeanSpec(checkpoint_share=0.5, offload_checkpoints=True))
    torch.manual_seed(3)
    loss_and_grads(module, packed_batch(tokenizer))
    n_layers = len(decoder_layers(module.model))
    assert len(calls) == len(checkpointed_layers(n_layers, 0.5))  # one per checkpointed layer's forward
    assert set(calls) == {torch.cuda.is_available()}


def test_selective_checkpointing_keeps_less_and_trains_as_every_layer_checkpointed(tokenizer):
    """activation_budget: compiled layers that are not checkpointed keep a share of their activations and the compiler
    recomputes the rest; loss and LoRA gradients stay the every-layer path's (compiled against eager: fused fp32 sums,
    test_compile.py's bound), and a second module with another budget compiles its own graphs."""
    batch = packed_batch(tokenizer)
    torch.manual_seed(3)
    want_loss, want = loss_and_grads(_module(LeanSpec()), batch)  # eager layers, every one checkpointed
    torch._dynamo.reset()
    kept, results = [], []
    for budget in (1.0, 0.3):
        module = _module(LeanSpec(compile_layers=True, checkpoint_share=0.0, activation_budget=budget))
        assert not any(layer.forward.checkpointing for layer in decoder_layers(module.model))
        kept.append(_kept_bytes(module, batch))
        graphs = counters["stats"]["unique_graphs"]
        torch.manual_seed(3)
        results.append(loss_and_grads(module, batch))
        assert counters["stats"]["unique_graphs"] == graphs  # later steps reuse the graphs: the setting is no guard
    assert kept[1] < 0.7 * kept[0], kept  # the tiny model: 2.8 MB of 6.1 MB
    for loss, grads in results:
        assert abs(loss.item() - want_loss.item()) <= 1e-5 * abs(want_loss.item())
        for name, grad in want.items():
            assert (grads[name] - grad).norm() <= 3e-4 * grad.norm() + 1e-8, name


def test_selective_checkpointing_needs_a_layer_that_is_not_checkpointed():
    with pytest.raises(
        ValueError, match=r"activation_budget=0.5 with every layer checkpointed .*lower checkpoint_share"
    ):
        make_module(LeanSpec(compile_layers=True, activation_budget=0.5))
    with pytest.raises(ValueError, match=r"activation_budget=1.5 must be in \[0, 1\]"):
        LeanSpec(activation_budget=1.5)


@pytest.mark.parametrize(
    "lean, message",
    [
        (dict(offload_checkpoints=True, cuda_graph=True), "offload_checkpoints=true with model.lean.cuda_graph=true"),
        (dict(offload_checkpoints=True, checkpoint_share=0.0), "offload_checkpoints=true with .*checkpoint_share=0"),
        (dict(checkpoint_share=1.5), r"checkpoint_share=1.5 must be in \[0, 1\]"),
    ],
)
def test_refused_combinations_name_both_settings(lean, message):
    with pytest.raises(ValueError, match=message):
        LeanSpec(**lean)


def test_offloading_turns_the_automatic_graph_off_and_needs_checkpointing():
    gpu = RunFacts(device_type="cuda", packing=True)
    assert plan_step(LeanSpec(), gpu).cuda_graph
    assert not plan_step(LeanSpec(offload_checkpoints=True), gpu).cuda_graph
    with pytest.raises(ValueError, match="offload_checkpoints=true with model.gradient_checkpointing=false"):
        make_module(LeanSpec(offload_checkpoints=True), gradient_checkpointing=False)
