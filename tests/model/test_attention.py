"""model/attention.py: per-sample (varlen) attention gives today's masked-SDPA loss and LoRA gradients on packed rows,
its sample bounds agree with the collator's, and without bounds it is transformers' SDPA.

On a CPU the varlen path runs each sample of a sliding-window layer through SDPA and full layers through the GPU's
row attention (dense GEMMs masked to the samples, its own backward); FlashAttention-2 on the sliding layers is checked
against today's path in the benchmark's pre-timing check (docs/benchmarks.md). `flex` (FlexAttention on the full
layers) runs forward only on a CPU; its backward is checked the same way on the GPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import encoded_rows, loss_and_grads, packed_batch, perturbed_module
from test_loss import _assert_grads_close
from torch.utils.data import DataLoader

from medqlora.data.collate import Collator, PackedRows, PackingBatchSampler, pack_collate, sample_bounds
from medqlora.model import attention
from medqlora.model.attention import NAMES, varlen_attention
from medqlora.model.lean import LeanSpec
from medqlora.model.masks import packed_attention_masks


def test_sample_bounds_from_positions_equal_the_collators_with_empty_slots(tokenizer):
    rows = [{**r, "slot": i % 2} for i, r in enumerate(encoded_rows(tokenizer))]
    width = max(sum(len(r["input_ids"]) for r in rows if r["slot"] == s) for s in (0, 1)) + 3
    batch = pack_collate(rows, width=width, packed_rows=3, sample_slots=12)
    bounds = batch["cu_seq_lens"]
    assert bounds.dtype == torch.int32 and bounds.shape == (13,)
    assert torch.equal(bounds, sample_bounds(batch["position_ids"], 12))
    samples = len(rows) + 3  # each row's filler segment, and the third row of filler alone
    assert bounds[samples:].eq(3 * width).all() and bounds[:samples].diff().gt(0).all()
    assert pack_collate(rows, width=width, packed_rows=3, sample_slots=2)["cu_seq_lens"].shape == (samples + 1,)


def test_every_micro_batch_of_an_epoch_has_one_shape_of_bounds():
    """The loader's collator gets the plan's most samples, so compiled layers and the CUDA graph see one shape."""
    lengths = [5, 9, 3, 12, 7, 2, 8, 4, 6, 11, 1, 10, 3, 3, 2]
    rows = [{"input_ids": [7] * n, "labels": [7] * n} for n in lengths]
    sampler = PackingBatchSampler(lengths, pack_tokens=16, seed=0, rows_per_batch=2)
    slots = sampler.most_samples()
    loader = DataLoader(PackedRows(rows), batch_sampler=sampler, collate_fn=Collator(True, 0, 16, 2, slots))
    batches = list(loader)
    assert {tuple(b["cu_seq_lens"].shape) for b in batches} == {(slots + 1,)}
    assert max(int((b["cu_seq_lens"].diff() > 0).sum()) for b in batches) <= slots
    for b in batches:
        assert torch.equal(b["cu_seq_lens"], sample_bounds(b["position_ids"], slots))


@pytest.mark.parametrize("window", [None, 3])
def test_varlen_attention_equals_masked_sdpa_with_grouped_heads(window):
    """Full layers (no window) through row attention's own backward, sliding ones per sample; fp64."""
    torch.manual_seed(0)
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 0, 1], [0, 1, 2, 3, 4, 5, 6, 0, 1, 2]])
    q = torch.randn(2, 4, 10, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 2, 10, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 2, 10, 8, dtype=torch.float64, requires_grad=True)
    masks = packed_attention_masks(positions, window)
    mask = masks["sliding_attention" if window else "full_attention"]
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.7, enable_gqa=True).transpose(1, 2)
    out, _ = varlen_attention(
        torch.nn.Module(), q, k, v, None, scaling=0.7, sliding_window=window, cu_seq_lens_q=sample_bounds(positions, 9)
    )
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g))


def test_varlen_gives_todays_loss_and_lora_gradients_on_packed_rows(tokenizer, monkeypatch):
    """fp32, the tiny model (sliding window 16, shorter than its samples; grouped K/V heads; KV-shared layers)."""
    batch = packed_batch(tokenizer)
    sdpa_loss, sdpa_grads = loss_and_grads(perturbed_module(LeanSpec(attention="sdpa"), "float32"), batch)
    varlen = perturbed_module(LeanSpec(attention="varlen"), "float32")
    assert varlen.plan.attention == "varlen" and varlen.plan.train.sample_bounds
    assert varlen.model.config.get_text_config()._attn_implementation == NAMES["varlen"]
    windows = []
    per_sample, rows = attention._per_sample, attention.row_attention
    monkeypatch.setattr(attention, "_per_sample", lambda *a: windows.append(a[-1]) or per_sample(*a))
    monkeypatch.setattr(attention, "row_attention", lambda *a: windows.append("rows") or rows(*a))
    varlen_loss, varlen_grads = loss_and_grads(varlen, batch)
    layers = varlen.config.get_text_config().layer_types
    # every layer by its route in the forward, and again, last layer first, in the checkpoint's recomputation
    expected = [16 if kind == "sliding_attention" else "rows" for kind in layers]
    assert windows == expected + expected[::-1]
    torch.testing.assert_close(varlen_loss, sdpa_loss, rtol=1e-5, atol=1e-5)
    _assert_grads_close(varlen_grads, sdpa_grads, rtol=1e-4)


def test_flex_skips_the_blocks_between_samples_and_equals_masked_sdpa():
    """fp64 forward (FlexAttention has no backward on a CPU; the GPU's is checked before the benchmark's timing) on
    rows longer than one 128-token block and not a multiple of it; the block mask keeps only blocks within samples."""
    torch.manual_seed(0)
    positions = torch.cat([torch.arange(n) for n in (130, 170, 50, 250)]).view(2, 300)
    q, k, v = (torch.randn(2, h, 300, 16, dtype=torch.float64) for h in (4, 2, 2))
    masks = packed_attention_masks(positions, None)["full_attention"]
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=masks, scale=0.5, enable_gqa=True).transpose(1, 2)
    from torch.nn.attention import flex_attention as flex

    kept, create = [], flex.create_block_mask
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(flex, "create_block_mask", lambda *a, **k: kept.append(create(*a, **k)) or kept[-1])
        out = attention.flex_row_attention(q, k, v, sample_bounds(positions, 7), 0.5)
    torch.testing.assert_close(out, ref)
    blocks = kept[0].to_dense()[:, 0]  # [row, query block, key block]
    # row 0: samples 0-129 and 130-299, so queries 256-299 see no key below 128; row 1: 0-49 and 50-299
    assert blocks.tolist() == [[[1, 0, 0], [1, 1, 0], [0, 1, 1]], [[1, 0, 0], [1, 1, 0], [1, 1, 1]]]


def test_flex_through_the_tiny_model_gives_row_attentions_loss(tokenizer):
    """The `flex` choice registered with transformers routes the full layers through FlexAttention, forward only."""
    batch = packed_batch(tokenizer)
    module = perturbed_module(LeanSpec(attention="varlen"), "float32")
    with torch.no_grad():
        rows = module(dict(batch)).loss
        text = module.model.get_base_model().model.language_model
        text.set_attn_implementation(attention.register("flex"))
        calls, flex = [], attention.flex_row_attention
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(attention, "flex_row_attention", lambda *a: calls.append(1) or flex(*a))
            flexed = module(dict(batch)).loss
    layers = module.config.get_text_config().layer_types
    assert len(calls) == layers.count("full_attention") > 0
    torch.testing.assert_close(flexed, rows, rtol=1e-5, atol=1e-5)


def test_without_bounds_varlen_is_transformers_sdpa(tokenizer):
    """Generation and padded rows pass no bounds: the registered function is then SDPA over transformers' masks."""
    batch = packed_batch(tokenizer)
    varlen = perturbed_module(LeanSpec(attention="varlen"), "float32")
    sdpa = perturbed_module(LeanSpec(attention="sdpa"), "float32")
    ids = batch["input_ids"][:, :40]
    with torch.no_grad():
        logits = [m.model(input_ids=ids, use_cache=False).logits for m in (varlen, sdpa)]
    torch.testing.assert_close(logits[0], logits[1])


def test_row_attention_in_bf16_keeps_fp32_scores():
    """Half-precision inputs: the scores and the K/V gradients summed over heads stay fp32, so the error against fp32
    on the same (bf16-representable) inputs is the outputs' rounding, not every score's (bf16 GEMM outputs: 3%)."""
    torch.manual_seed(0)
    positions = torch.cat([torch.arange(n) for n in (40, 70, 18)]).view(2, 64)
    bounds = sample_bounds(positions, 6)
    leaves = [(torch.randn(2, h, 64, 32) * 2).bfloat16().float() for h in (8, 1, 1)]
    grad = torch.randn(2, 64, 8, 32).bfloat16().float()
    masks = packed_attention_masks(positions, None)["full_attention"]
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v = (t.to(dtype).requires_grad_() for t in leaves)
        out = attention.row_attention(q, k, v, bounds, 1.0)
        results.append([out.float(), *(g.float() for g in torch.autograd.grad(out, (q, k, v), grad.to(dtype)))])
    ref = [t.detach().requires_grad_() for t in leaves]
    sdpa = F.scaled_dot_product_attention(*ref, attn_mask=masks, scale=1.0, enable_gqa=True).transpose(1, 2)

    def apart(got, want):
        return float((got - want).norm() / want.norm())

    assert max(map(apart, results[0], [sdpa, *torch.autograd.grad(sdpa, ref, grad)])) < 1e-5
    assert max(map(apart, results[1], results[0])) < 1e-2


def test_bmm_takes_an_fp32_out_dtype_for_bf16_inputs():
    """What row attention's GPU route calls (CUDA kernels only; the meta kernel checks the signature and dtype)."""
    a, b = (torch.empty(2, 4, 8, dtype=torch.bfloat16, device="meta") for _ in range(2))
    assert torch.bmm(a, b.mT, out_dtype=torch.float32).dtype == torch.float32
