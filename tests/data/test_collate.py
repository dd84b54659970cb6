"""Batching: packing never lets a token see another sample; plans are deterministic and complete."""

from __future__ import annotations

import random

import pytest
import torch
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from medqlora.data.collate import (
    Collator,
    LengthGroupedBatchSampler,
    PackedRows,
    PackingBatchSampler,
    pack_collate,
    pad_collate,
)
from medqlora.hub import load_config

ROWS = [
    {"input_ids": [2, 10, 11, 12], "labels": [-100, -100, 11, 12]},
    {"input_ids": [2, 20, 21], "labels": [-100, 20, 21]},
    {"input_ids": [2, 30, 31, 32, 33], "labels": [-100, -100, -100, 32, 33]},
]


def test_pack_collate_restarts_positions_and_masks_boundaries():
    batch = pack_collate(ROWS)
    assert batch["input_ids"].tolist() == [[2, 10, 11, 12, 2, 20, 21, 2, 30, 31, 32, 33]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4]]
    assert batch["labels"][0, [0, 4, 7]].tolist() == [-100, -100, -100]
    assert "attention_mask" not in batch  # padding-free: nothing to mask


def test_packed_micro_batches_have_a_fixed_shape_and_a_separate_filler():
    sampler = PackingBatchSampler(
        [len(r["input_ids"]) for r in ROWS], pack_tokens=8, seed=0, shuffle=False, rows_per_batch=2
    )
    batch_plan = list(sampler)
    assert batch_plan == [[(2, 0), (1, 0), (0, 1)]]  # first-fit decreasing: 5 + 3 | 4
    rows = PackedRows(ROWS)
    batch = pack_collate([rows[key] for key in batch_plan[0]], width=8, pad_id=0)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][1].tolist() == [2, 10, 11, 12, 0, 0, 0, 0]
    assert batch["position_ids"][1].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]  # the filler is its own segment
    assert batch["labels"][1].tolist() == [-100, -100, 11, 12, -100, -100, -100, -100]


def test_an_epochs_last_short_micro_batch_gets_filler_rows_so_shapes_never_change():
    """The epoch's last micro-batch holds fewer packs; a changed batch size would make compiled layers recompile."""
    lengths = [len(r["input_ids"]) for r in ROWS]
    sampler = PackingBatchSampler(lengths, pack_tokens=8, seed=0, shuffle=True, rows_per_batch=3)
    collate, rows = Collator(packed=True, pad_id=0, pack_tokens=8, packed_rows=3), PackedRows(ROWS)
    (plan,) = list(sampler)  # two packs for a micro-batch of three
    batch = collate([rows[key] for key in plan])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["position_ids"].shape == (3, 8)
    assert batch["input_ids"][2].tolist() == [0] * 8 and batch["position_ids"][2].tolist() == list(range(8))
    assert (batch["labels"][2] == -100).all()  # nothing to learn from the filler row
    unfilled = pack_collate([rows[key] for key in plan], width=8, pad_id=0)
    assert torch.equal(batch["input_ids"][:2], unfilled["input_ids"])
    assert torch.equal(batch["labels"][:2], unfilled["labels"])


def test_pad_collate_pads_right_and_ignores_padding():
    batch = pad_collate(ROWS, pad_id=0)
    assert batch["input_ids"].shape == (3, 5)
    assert batch["input_ids"][1].tolist() == [2, 20, 21, 0, 0]
    assert batch["labels"][1].tolist() == [-100, 20, 21, -100, -100]
    assert batch["attention_mask"].sum(1).tolist() == [4, 3, 5]


@pytest.mark.parametrize("make_mask", [create_causal_mask, create_sliding_window_causal_mask])
def test_transformers_builds_a_block_diagonal_mask_from_packed_position_ids(tiny_dir, make_mask):
    config = load_config("tiny").get_text_config()
    config._attn_implementation = "sdpa"
    batch = pack_collate(ROWS)
    n = batch["input_ids"].shape[1]
    mask = make_mask(config, torch.zeros(1, n, 8), None, None, batch["position_ids"])
    assert mask is not None, "transformers did not detect the packed sequences"
    mask = mask.reshape(n, n).bool() if mask.dtype == torch.bool else (mask.reshape(n, n) == 0)
    sample = torch.tensor([0] * 4 + [1] * 3 + [2] * 5)
    pos = batch["position_ids"][0]
    for i in range(n):
        for j in range(n):
            allowed = sample[i] == sample[j] and j <= i
            if make_mask is create_sliding_window_causal_mask:
                allowed = allowed and pos[i] - pos[j] < config.sliding_window
            assert bool(mask[i, j]) == bool(allowed), (i, j)


def _lengths(n: int = 300, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(5, 120) for _ in range(n)]


def test_packing_plan_is_deterministic_complete_and_within_budget():
    lengths = _lengths()
    plan = PackingBatchSampler(lengths, pack_tokens=256, seed=3).packs()
    assert plan == PackingBatchSampler(lengths, pack_tokens=256, seed=3).packs()
    assert sorted(i for pack in plan for i in pack) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in pack) <= 256 for pack in plan)
    used = sum(lengths) / (256 * len(plan))
    assert used > 0.9, f"packing fills only {used:.0%} of the budget"


def test_epochs_change_the_order_but_seeds_fix_it():
    sampler = PackingBatchSampler(_lengths(), pack_tokens=256, seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_ranks_get_disjoint_equal_shards():
    lengths = _lengths()
    shards = [list(PackingBatchSampler(lengths, 256, seed=1, rank=r, world_size=2)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1])
    flat = [i for shard in shards for batch in shard for i, _slot in batch]
    assert len(flat) == len(set(flat))


def test_length_grouping_reduces_padding():
    lengths = _lengths()

    def padding(plan):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in plan)

    plain = LengthGroupedBatchSampler(lengths, 4, seed=0).plan()
    grouped = LengthGroupedBatchSampler(lengths, 4, seed=0, group_by_length=True).plan()
    assert sorted(i for b in grouped for i in b) == list(range(len(lengths)))
    assert padding(grouped) < padding(plain) / 4
