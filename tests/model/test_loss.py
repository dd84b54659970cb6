"""The lean path (chunked loss, PLE on host, no towers) gives the plain path's loss and LoRA gradients.

Tolerance: with fp32 compute the paths agree to 1e-5 (loss) and 1e-4 (gradients, relative norm). In bf16 they
round logits differently (the plain path soft-caps in bf16, the lean one in fp32), so the loss agrees to 2e-2
and gradients move by a few percent; packed vs padded is likewise checked in fp32 (in bf16 the different GEMM
shapes alone move gradients by ~1.5%).
"""

from __future__ import annotations

import pytest
import torch
from helpers import loss_and_grads, packed_batch, padded_batch, perturbed_module

from medqlora.model.loss import chunked_lm_loss, full_logits_loss
from medqlora.model.module import LeanSpec

PLAIN = LeanSpec(chunked_loss=False, loss_grad_in_forward=False, ple_on_host=False, text_only=False)


def _assert_grads_close(a: dict, b: dict, rtol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        scale = b[name].norm().clamp_min(1e-6)
        assert (a[name] - b[name]).norm() / scale < rtol, name


def test_lean_path_equals_plain_path(tokenizer):
    batch = padded_batch(tokenizer)
    lean_loss, lean_grads = loss_and_grads(perturbed_module(LeanSpec(), compute_dtype="float32"), batch)
    plain_loss, plain_grads = loss_and_grads(perturbed_module(PLAIN, compute_dtype="float32"), batch)
    torch.testing.assert_close(lean_loss, plain_loss, rtol=1e-5, atol=1e-5)
    _assert_grads_close(lean_grads, plain_grads, rtol=1e-4)


def test_lean_path_equals_plain_path_in_bf16_within_rounding(tokenizer):
    batch = padded_batch(tokenizer)
    lean_loss, _ = loss_and_grads(perturbed_module(LeanSpec()), batch)
    plain_loss, _ = loss_and_grads(perturbed_module(PLAIN), batch)
    torch.testing.assert_close(lean_loss, plain_loss, rtol=2e-2, atol=0)


def test_packed_rows_equal_padded_rows(tokenizer):
    module = perturbed_module(LeanSpec(), compute_dtype="float32")
    padded_loss, padded_grads = loss_and_grads(module, padded_batch(tokenizer))
    packed_loss, packed_grads = loss_and_grads(module, packed_batch(tokenizer))
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-4, atol=1e-5)
    _assert_grads_close(packed_grads, padded_grads, rtol=1e-4)


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_chunked_loss_matches_full_logits_for_any_chunk_size(chunk):
    torch.manual_seed(0)
    hidden = torch.randn(2, 7, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64)
    labels = torch.randint(0, 50, (2, 7))
    labels[0, :3] = -100
    logits = torch.tanh((hidden @ weight.t()) / 30.0) * 30.0
    ref = full_logits_loss(logits, labels)
    (ref_grad,) = torch.autograd.grad(ref.loss, hidden)
    out = chunked_lm_loss(hidden, weight, labels, softcap=30.0, chunk_size=chunk)
    (grad,) = torch.autograd.grad(out.loss, hidden)
    torch.testing.assert_close(out.loss.double(), ref.loss.double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)
    assert torch.equal(out.preds, ref.preds) and torch.equal(out.targets, ref.targets)


def test_eager_attention_gives_the_sdpa_loss_on_packed_rows(tokenizer):
    """`lean.attention` reaches transformers, and both kernels honour the packed rows' block-diagonal mask."""
    sdpa = perturbed_module(LeanSpec(), "float32")
    eager = perturbed_module(LeanSpec(attention="eager"), "float32")
    assert eager.model.config.get_text_config()._attn_implementation == "eager"
    assert sdpa.model.config.get_text_config()._attn_implementation == "sdpa"
    batch = packed_batch(tokenizer)
    torch.testing.assert_close(loss_and_grads(eager, batch)[0], loss_and_grads(sdpa, batch)[0], atol=1e-5, rtol=0)


def test_attention_value_is_checked():
    with pytest.raises(ValueError, match="model.lean.attention='flex_attention'"):
        LeanSpec(attention="flex_attention")


@pytest.mark.parametrize("softcap", [30.0, None])
@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_gradient_in_forward_equals_recomputed_chunks(chunk, softcap):
    """lean.loss_grad_in_forward: loss, predictions and hidden-state gradient of the recomputing loss, with the
    loss scaled afterwards as gradient accumulation scales it. Both take fp32 logits, hence fp32 tolerances."""
    torch.manual_seed(0)
    hidden = torch.randn(2, 7, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64)
    labels = torch.randint(0, 50, (2, 7))
    labels[0, :3] = -100
    ref = chunked_lm_loss(hidden, weight, labels, softcap=softcap, chunk_size=chunk)
    (ref_grad,) = torch.autograd.grad(ref.loss / 8, hidden)
    out = chunked_lm_loss(hidden, weight, labels, softcap=softcap, chunk_size=chunk, grad_in_forward=True)
    (grad,) = torch.autograd.grad(out.loss / 8, hidden)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-8)
    assert torch.equal(out.preds, ref.preds)


def test_gradient_in_forward_gives_the_modules_loss_and_lora_gradients(tokenizer):
    """Through the whole tiny model (fp32): the same loss and LoRA gradients as the recomputing chunked loss; under
    no_grad (validation) it takes the plain path."""
    batch = packed_batch(tokenizer)
    ref_loss, ref_grads = loss_and_grads(perturbed_module(LeanSpec(loss_grad_in_forward=False), "float32"), batch)
    module = perturbed_module(LeanSpec(loss_grad_in_forward=True), "float32")
    loss, grads = loss_and_grads(module, batch)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    _assert_grads_close(grads, ref_grads, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(module(dict(batch)).loss, ref_loss, rtol=1e-6, atol=1e-6)


def test_gradient_in_forward_refuses_a_trainable_head():
    hidden = torch.randn(1, 4, 8, requires_grad=True)
    weight = torch.randn(20, 8, requires_grad=True)
    with pytest.raises(ValueError, match="loss_grad_in_forward needs a frozen LM head"):
        chunked_lm_loss(hidden, weight, torch.randint(0, 20, (1, 4)), 30.0, grad_in_forward=True)
