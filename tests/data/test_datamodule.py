"""MedicalMixDataModule on the shipped sample files: cached preparation, loaders, data card."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from medqlora.data.datamodule import MedicalMixDataModule, sample_sources


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


def test_training_and_validation_batches_have_one_shape_of_sample_bounds(built):
    """Every packed batch's sample bounds have the plans' most samples as slots, so compiled layers and the CUDA
    graph see one shape from the first training batch to the last validation one."""
    shapes = {tuple(b["cu_seq_lens"].shape) for b in [*built.train_dataloader(), *built.val_dataloader()]}
    assert shapes == {(built.sample_slots() + 1,)}


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
        assert source["available"] == source["usable"] + sum(source["removed"].values())
        assert 0 < source["supervised_token_share"] < 1
        assert source["token_length_percentiles"]["p50"] > 0
    assert card["totals"]["train"] == len(built.train_set)
    assert set(card["padding_ratio"]) == {"padded", "padded_grouped_by_length", "packed_256"}
    assert "| medqa |" in (tmp_path / "data_card.md").read_text()


def test_a_source_that_loses_every_row_is_an_error_unless_it_may(tiny_dir):
    with pytest.raises(
        ValueError,
        match=r"source 'o1' has no training row left .*removed as too_long; raise "
        r"data.max_length \(now 100\).*required: false",
    ):
        MedicalMixDataModule(max_length=100, micro_batch_size=2, seed=5).prepare_data()

    sources = [replace(s, required=False) if s.name == "o1" else s for s in sample_sources()]
    dm = MedicalMixDataModule(sources=sources, max_length=100, micro_batch_size=2, seed=5)
    dm.prepare_data()
    assert any(
        re.match(r"source 'o1': \d+ of \d+ rows \(100%\) removed as too_long", n) for n in dm.card.content["notices"]
    )
    assert dm.card.content["sources"]["o1"]["removed"]["too_long"] > 0  # o1's reasoning rows are the longest
    assert dm.card.content["sources"]["o1"]["train_rows"] == 0
    assert max(dm.train_set["length"]) <= 100


def test_card_counts_agree_at_one_stage_everywhere(built, tmp_path):
    built.card.write(tmp_path)
    card = json.loads((tmp_path / "data_card.json").read_text())
    sources = card["sources"].values()
    assert card["totals"] == {
        "train": sum(s["train_rows"] for s in sources),
        "val": sum(s["val_rows"] for s in sources),
    }
    assert card["totals"] == {"train": len(built.train_set), "val": len(built.val_set)}
    markdown = (tmp_path / "data_card.md").read_text()
    assert f"Rows: {len(built.train_set)} train / {len(built.val_set)} validation" in markdown
    for name, s in card["sources"].items():
        assert f"| {s['target']} | {s['train_rows']} | {s['val_rows']} |" in markdown, name


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_length": 8}, "data.max_length=8"),
        ({"micro_batch_size": 0}, "data.micro_batch_size=0"),
        ({"pack_tokens": 100}, "data.pack_tokens=100 < data.max_length=256"),
    ],
)
def test_bad_values_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MedicalMixDataModule(**{"max_length": 256, **kwargs})


def test_more_than_half_lost_to_one_reason_is_named_with_reason_and_fix():
    from medqlora.data.card import no_training_rows, notices

    def source(**counts):
        return {"available": 10, "removed": {}, "usable": 10, "train_rows": 9, "val_rows": 1, **counts}

    content = {
        "max_length": 256,
        "val_fraction": 0.1,
        "totals": {"train": 23, "val": 3},
        "sources": {
            "kept": source(removed={"duplicate": 5}, usable=5),  # half, not more: no word
            "cleaned": source(removed={"empty_answer": 6}, usable=4, train_rows=4, val_rows=1),
            "cut": source(removed={"too_long": 9}, usable=1, train_rows=1, val_rows=0),
            "gone": source(removed={"wrong_type": 10}, usable=0, train_rows=0, val_rows=0),
            "optional": source(removed={"wrong_type": 10}, usable=0, train_rows=0, val_rows=0),
        },
    }
    said = notices(content)
    assert said[0] == (
        "source 'cleaned': 6 of 10 rows (60%) removed as empty_answer; check the source's `columns:` map and its rows"
    )
    assert said[1].startswith("source 'cut': 9 of 10 rows (90%) removed as too_long; raise data.max_length (now 256)")
    assert said[2].startswith(
        "source 'cut': no validation row (data.val_fraction=0.1 of its 1 usable rows rounds to 0)"
    )
    assert [n.split(":")[0] for n in said] == [
        "source 'cleaned'",
        "source 'cut'",
        "source 'cut'",
        "source 'gone'",
        "source 'optional'",
    ]
    errors = no_training_rows({**content, "notices": said}, {"optional": False})
    assert len(errors) == 1 and errors[0].startswith("source 'gone' has no training row left (10 of 10 rows")
    assert "'cut'" not in errors[0], "the reasons are the source's own, not the previous source's"


@pytest.mark.faults
def test_no_validation_split_is_a_legal_choice_that_trains_and_says_so(tiny_dir):
    dm = MedicalMixDataModule(max_length=256, micro_batch_size=2, seed=5, val_fraction=0.0)
    dm.setup("fit")
    assert len(dm.val_set) == 0 and len(dm.train_set) > 0
    assert list(dm.val_dataloader()) == [] and next(iter(dm.train_dataloader()))["input_ids"].shape[0] == 2
    assert dm.card.content["notices"] == [
        "no validation rows: data.val_fraction is 0, so training runs without validation (no val/loss, no "
        "adapter-best/, checkpoints keep the last step only); set data.val_fraction (recipe: 0.05) to validate"
    ]
    assert all(source["val_rows"] == 0 for source in dm.card.content["sources"].values())


@pytest.mark.faults
@pytest.mark.parametrize("copies", [1, 10], ids=["one-row-source", "all-duplicates-source"])
def test_a_source_of_one_row_or_of_one_row_repeated_trains_and_the_card_says_so(tiny_dir, tmp_path, copies):
    """Both used to stop with `Column name ['labels', 'length', 'input_ids'] not in the dataset`."""
    from helpers import write_jsonl

    from medqlora.data.sources import SourceSpec

    main = [{"instruction": f"question number {i}?", "input": "<noinput>", "output": f"answer {i}"} for i in range(30)]
    lone = [{"instruction": "a lone question?", "input": "<noinput>", "output": "a lone answer"}] * copies
    sources = [
        SourceSpec(name="main", format="instruction", path=str(write_jsonl(tmp_path / "main.jsonl", main))),
        SourceSpec(name="lone", format="instruction", path=str(write_jsonl(tmp_path / "lone.jsonl", lone))),
    ]
    dm = MedicalMixDataModule(max_length=256, micro_batch_size=2, seed=5, sources=sources)
    dm.setup("fit")
    card = dm.card.content["sources"]["lone"]
    assert (card["train_rows"], card["val_rows"]) == (1, 0)
    assert card["removed"] == ({"duplicate": copies - 1} if copies > 1 else {})
    said = [n for n in dm.card.content["notices"] if n.startswith("source 'lone'")]
    duplicates = (
        "source 'lone': 9 of 10 rows (90%) removed as duplicate; remove the repeated rows, or check the source's "
        "`columns:` map (rows that read one empty or repeated column look identical)"
    )
    no_validation = (
        "source 'lone': no validation row (data.val_fraction=0.05 of its 1 usable rows rounds to 0), so its rows are "
        "never validated; raise data.val_fraction or give it more rows"
    )
    assert said == ([] if copies == 1 else [duplicates]) + [no_validation]
    assert next(iter(dm.train_dataloader()))["input_ids"].shape[0] == 2
