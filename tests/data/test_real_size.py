"""The mix at the size users run (issue #37): rows dropped only after the first written batch, targets that count
usable rows, the prepared mix reused by fingerprint, and degenerate data said on the console in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from helpers import write_jsonl

from medqlora.cli import main
from medqlora.data.datamodule import MedicalMixDataModule
from medqlora.data.mix import EvalQuestions
from medqlora.data.sources import SourceSpec

TINY = REPO / "configs" / "tiny.yaml"
WRITE_BATCH = 1_000  # datasets' rows per written batch: the first one fixes an untyped column's type


def _rows(prefix: str, n: int, long_every: int = 0) -> list[dict]:
    """Instruction rows; every `long_every`-th one has an answer far over 128 tokens."""
    long_answer = " ".join(f"word{i}" for i in range(300))
    return [
        {
            "instruction": f"{prefix} question number {i}?",
            "input": "<noinput>",
            "output": long_answer if long_every and i % long_every == 0 else f"answer {i}",
        }
        for i in range(n)
    ]


@pytest.fixture
def recipe_shaped(tmp_path) -> list[dict]:
    """The recipe's condition at small size: a first source whose training rows fill more than the first written
    batch and all fit, then a source with rows over max_length (as MedQA, then medical-o1's long reasoning)."""
    first = write_jsonl(tmp_path / "first.jsonl", _rows("first", WRITE_BATCH + 200))
    second = write_jsonl(tmp_path / "second.jsonl", _rows("second", 40, long_every=4))
    return [
        {"name": "first", "format": "instruction", "path": str(first)},
        {"name": "second", "format": "instruction", "path": str(second), "target": 25},
    ]


def _overlay(tmp_path: Path, **data) -> Path:
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump({"data": data, "trainer": {"max_steps": 1, "limit_val_batches": 1}}))
    return path


def test_a_mix_that_drops_rows_after_its_first_written_batch_trains(tmp_path, monkeypatch, recipe_shaped):
    """Failed before issue #37 with `Couldn't write column 'drop_reason'` (datasets 5) or `Couldn't cast array of
    type string to null` (datasets 4): the tokenised column's type came from a first batch that dropped nothing."""
    monkeypatch.chdir(tmp_path)
    overlay = _overlay(tmp_path, sources=recipe_shaped, max_length=128)
    assert main(["fit", "--config", str(TINY), "--config", str(overlay)]) == 0
    (run_dir,) = Path("runs/tiny").iterdir()
    card = json.loads((run_dir / "data_card.json").read_text())["sources"]
    assert card["first"]["train_rows"] > WRITE_BATCH
    second = card["second"]
    assert second["removed"] == {"too_long": 10} and second["usable"] == 30
    # the target counts usable rows: all 25 come out, where sampling before filtering gave ~19
    assert (second["train_rows"], second["val_rows"]) == (25, 1)


def test_every_column_the_data_path_writes_has_a_declared_type(tmp_path, monkeypatch, recipe_shaped):
    """datasets 4 and 5 both fix an undeclared column's type from the first written batch (and fail differently
    on a later value); a declared type is what every version honours, so each `map` of the path declares one."""
    from datasets import Dataset

    calls = []
    real_map = Dataset.map

    def recording_map(self, function, *args, **kwargs):
        calls.append((kwargs.get("desc"), kwargs.get("features")))
        return real_map(self, function, *args, **kwargs)

    monkeypatch.setattr(Dataset, "map", recording_map)
    sources = [SourceSpec(**s) for s in recipe_shaped]
    MedicalMixDataModule(sources=sources, max_length=128).prepare_data()
    assert len(calls) == 4, calls  # rows -> conversations and conversations -> tokens, per source
    assert all(features is not None for _, features in calls), [desc for desc, f in calls if f is None]


def test_the_prepared_mix_is_reused_until_anything_it_depends_on_changes(tmp_path, recipe_shaped):
    sources = [SourceSpec(**s) for s in recipe_shaped]
    first = MedicalMixDataModule(sources=sources, max_length=128)
    first.prepare_data()
    again = MedicalMixDataModule(sources=sources, max_length=128)
    again.prepare_data()
    assert again.card.content == first.card.content
    assert again.train_set["input_ids"] == first.train_set["input_ids"]
    assert again.train_set.cache_files[0]["filename"] == first.train_set.cache_files[0]["filename"]

    def saved_in(dm) -> str:
        return Path(dm.train_set.cache_files[0]["filename"]).parts[-3]  # mix-<key>/train/<shard>

    changes = {
        "max_length": dict(max_length=100),
        "seed": dict(max_length=128, seed=1),
        "target": dict(max_length=128, sources=[sources[0], SourceSpec(**{**recipe_shaped[1], "target": 20})]),
    }
    keys = [saved_in(first)]
    for kwargs in changes.values():
        dm = MedicalMixDataModule(**{"sources": sources, **kwargs})
        dm.prepare_data()
        keys.append(saved_in(dm))
    assert len(set(keys)) == len(keys), dict(zip(["first", *changes], keys))
    edited = Path(recipe_shaped[1]["path"])
    edited.write_text(edited.read_text().replace('answer 1"', 'another answer"'))
    dm = MedicalMixDataModule(sources=sources, max_length=128)
    dm.prepare_data()
    assert saved_in(dm) not in keys, "an edited source file must build the mix anew"


def test_a_decontamination_set_is_part_of_the_key(tmp_path, recipe_shaped):
    sources = [SourceSpec(**s) for s in recipe_shaped]
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question": "second question number 5?"}])
    clean = MedicalMixDataModule(sources=sources, max_length=128)
    clean.prepare_data()
    decontaminated = MedicalMixDataModule(
        sources=sources, max_length=128, decontaminate=[EvalQuestions(name="exam", path=str(questions))]
    )
    decontaminated.prepare_data()
    assert decontaminated.card.content["sources"]["second"]["removed"] == {"eval_contamination": 1, "too_long": 10}


def test_a_val_fraction_that_rounds_to_no_row_says_so(tiny_dir):
    dm = MedicalMixDataModule(max_length=256, seed=5, val_fraction=0.0001)
    dm.prepare_data()
    assert len(dm.val_set) == 0 and len(dm.train_set) > 0
    assert dm.card.content["notices"] == [
        "no validation rows: data.val_fraction=0.0001 of 100 usable rows rounds to 0 in every source, so training "
        "runs without validation (no val/loss, no adapter-best/, checkpoints keep the last step only); set "
        "data.val_fraction (recipe: 0.05) to validate"
    ]


def test_degenerate_data_is_one_line_each_on_the_console_and_still_trains(tmp_path):
    """40 identical rows, through the installed console script: deduplication keeps 1 (more than half gone), and one
    row has no validation share; each is one line, and the run trains."""
    from test_console import medqlora

    row = {"instruction": "Name the first-line treatment for gout.", "input": "<noinput>", "output": "Colchicine."}
    same = write_jsonl(tmp_path / "same.jsonl", [row] * 40)
    overlay = _overlay(tmp_path, sources=[{"name": "same", "format": "instruction", "path": str(same)}])
    fit = medqlora("fit", "--config", str(TINY), "--config", str(overlay), cwd=tmp_path, env={"PYTHONWARNINGS": ""})
    assert fit.returncode == 0, fit.stderr[-2000:]
    err = fit.stdout + fit.stderr
    said = [line for line in err.splitlines() if "medqlora data: " in line]
    assert said == [
        "medqlora data: source 'same': 39 of 40 rows (98%) removed as duplicate; remove the repeated rows, or check "
        "the source's `columns:` map (rows that read one empty or repeated column look identical)",
        "medqlora data: no validation rows: data.val_fraction=0.05 of 1 usable rows rounds to 0 in every source, so "
        "training runs without validation (no val/loss, no adapter-best/, checkpoints keep the last step only); set "
        "data.val_fraction (recipe: 0.05) to validate",
    ]
    assert "UserWarning" not in err
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_the_card_says_how_many_rows_each_max_length_keeps(tmp_path):
    """Issue #40: rows over max_length are dropped; the card counts, per source, the rows each longer max_length
    would keep whole, so a user sees what raising it buys."""
    rows = _rows("mixed", 40, long_every=4)  # 10 answers of ~1,500 tokens, 30 short ones
    sources = [SourceSpec(name="mixed", format="instruction", path=str(write_jsonl(tmp_path / "m.jsonl", rows)))]
    dm = MedicalMixDataModule(sources=sources, max_length=1024, val_fraction=0.0)
    dm.prepare_data()
    card = dm.card.content["sources"]["mixed"]
    within = {int(n): count for n, count in card["rows_within"].items()}
    assert card["removed"] == {"too_long": 10} and card["usable"] == 30
    assert within[1024] == 30  # what this max_length keeps
    assert within[16384] == 40  # every row, at a length that holds the long answers
    assert list(within.values()) == sorted(within.values())
    assert "Rows each `data.max_length` keeps whole" in dm.card.markdown()
