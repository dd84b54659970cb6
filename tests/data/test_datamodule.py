"""MedicalMixDataModule on the shipped sample files: cached preparation, loaders, data card."""

from __future__ import annotations

import json

import pytest

from medqlora.data.datamodule import MedicalMixDataModule


@pytest.fixture(scope="module")
def built(tiny_dir):
    dm = MedicalMixDataModule(max_length=256, micro_batch_size=2, seed=5)
    dm.prepare_data()
    return dm


def test_preparation_is_cached_and_repeatable(built):
    again = MedicalMixDataModule(max_length=256, micro_batch_size=2, seed=5)
    again.prepare_data()
    assert built.train_set.cache_files, "the tokenised split is not backed by a datasets cache file"
    assert again.train_set._fingerprint == built.train_set._fingerprint
    assert again.train_set["input_ids"] == built.train_set["input_ids"]
    other = MedicalMixDataModule(max_length=200, micro_batch_size=2, seed=5)
    other.prepare_data()
    assert other.train_set._fingerprint != built.train_set._fingerprint  # max length is part of the key


def test_packed_loader_yields_fixed_shape_batches(built):
    batches = list(built.train_dataloader())
    assert all(b["input_ids"].shape == (2, 256) for b in batches[:-1])
    samples = sum(int(((b["position_ids"] == 0) & (b["input_ids"] != 0)).sum()) for b in batches)
    assert samples == len(built.train_set)  # every training row, exactly once per epoch


def test_padded_loader(tiny_dir):
    dm = MedicalMixDataModule(max_length=256, micro_batch_size=4, packing=False, group_by_length=True, seed=5)
    dm.prepare_data()
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 4 and "attention_mask" in batch


def test_data_card_counts_and_writes(built, tmp_path):
    built.card.write(tmp_path)
    card = json.loads((tmp_path / "data_card.json").read_text())
    assert card["seed"] == 5 and set(card["sources"]) == {"medqa", "o1", "alpacare"}
    for source in card["sources"].values():
        assert source["loaded"] == source["available"] + sum(source["removed"].values())
        assert 0 < source["supervised_token_share"] < 1
        assert source["token_length_percentiles"]["p50"] > 0
    assert card["totals"]["train"] == len(built.train_set)
    assert set(card["padding_ratio"]) == {"padded", "padded_grouped_by_length", "packed_256"}
    assert "| medqa |" in (tmp_path / "data_card.md").read_text()


def test_rows_over_max_length_are_counted_in_the_card(tiny_dir):
    dm = MedicalMixDataModule(max_length=100, micro_batch_size=2, seed=5)
    dm.prepare_data()
    removed = {name: s["removed_after_tokenising"]["train"] for name, s in dm.card.content["sources"].items()}
    assert removed["o1"].get("too_long", 0) > 0  # o1's reasoning rows are the longest
    assert max(dm.train_set["length"]) <= 100


@pytest.mark.parametrize("kwargs, message", [
    ({"max_length": 8}, "data.max_length=8"),
    ({"micro_batch_size": 0}, "data.micro_batch_size=0"),
    ({"pack_tokens": 100}, "data.pack_tokens=100 < data.max_length=256"),
])
def test_bad_values_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MedicalMixDataModule(**{"max_length": 256, **kwargs})
