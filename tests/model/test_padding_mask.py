"""Right-padded rows train the same without their attention mask, which the module drops before the forward.

With the mask, pad tokens more than a sliding window past their row's end attend to nothing; CUDA's SDPA kernels
turn those rows into NaN gradients (seen on 2 GPUs, docs/distributed.md). CPU kernels stay finite, so here the
masked forward is the reference the unmasked one must equal (fp32: loss 1e-5, gradients 1e-4 relative norm).
"""

from __future__ import annotations

import torch
from helpers import loss_and_grads, perturbed_module

from medqlora.data.collate import pad_collate
from medqlora.model.module import drop_right_padding_mask

WINDOW = 16  # the tiny model's sliding window


def _rows() -> list[dict]:
    torch.manual_seed(0)
    rows = []
    for n in (8, 30, 70):  # the short rows end more than a window before the longest
        ids = [2] + torch.randint(20, 1000, (n - 1,)).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * 4 + ids[4:]})
    return rows


def test_right_padding_mask_is_dropped_and_left_padding_mask_kept():
    right = pad_collate(_rows(), 0)
    assert "attention_mask" in right and "attention_mask" not in drop_right_padding_mask(right)
    left = dict(right, attention_mask=right["attention_mask"].flip(-1))
    assert torch.equal(drop_right_padding_mask(left)["attention_mask"], left["attention_mask"])
    assert drop_right_padding_mask({"input_ids": right["input_ids"]}).keys() == {"input_ids"}


def test_unmasked_right_padded_rows_give_the_masked_loss_and_gradients():
    batch = pad_collate(_rows(), 0)
    lengths = batch["attention_mask"].sum(1)
    assert (lengths.max() - lengths.min()) > WINDOW  # some pad queries see only padding when masked
    module = perturbed_module(compute_dtype="float32")
    masked_loss, masked = loss_and_grads(module, batch)
    unmasked_loss, unmasked = loss_and_grads(module, drop_right_padding_mask(batch))
    torch.testing.assert_close(unmasked_loss, masked_loss, rtol=1e-5, atol=1e-5)
    for name, grad in masked.items():
        assert grad.abs().sum() > 0, name
        assert (unmasked[name] - grad).norm() / grad.norm() < 1e-4, name
