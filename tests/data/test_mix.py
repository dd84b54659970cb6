"""The mix: awkward rows are counted by reason, dedupe works across sources, the same seed gives the same rows."""

from __future__ import annotations

import json

import pytest
from helpers import write_jsonl

from medqlora.data.mix import EvalQuestions, build_mix
from medqlora.data.sources import SourceSpec


def _instruction_rows(prefix: str, n: int) -> list[dict]:
    return [
        {"instruction": f"{prefix} question number {i}?", "input": "<noinput>", "output": f"answer {i}"}
        for i in range(n)
    ]


def _users(rows) -> list[str]:
    """The user turn of each single-turn conversation row."""
    return [next(m["content"] for m in messages if m["role"] == "user") for messages in rows["messages"]]


@pytest.fixture
def sources(tmp_path) -> list[SourceSpec]:
    medqa = [
        {
            "instruction": "Answer.",
            "input": f"Q: Which drug number {i}? \n{{'A': 'x', 'B': 'y', 'C': 'z', 'D': 'w', 'E': 'v'}},",
            "output": "A: x",
        }
        for i in range(20)
    ]
    medqa.append({"instruction": "Answer.", "input": "Q: broken options {'A': },", "output": "A: x"})
    alpacare = _instruction_rows("alpacare", 30) + [
        {"instruction": "Answer.", "input": "Which drug number 3?", "output": "dup of medqa"},  # not a dup
        {"instruction": "alpacare question number 1?", "input": "<noinput>", "output": "dup"},
        {"instruction": "", "input": "<noinput>", "output": "no question"},
        {"instruction": "Empty answer?", "input": "", "output": ""},
        {"instruction": "What is the eval question about sepsis?", "input": "", "output": "leak"},
    ]
    o1 = [{"Question": f"o1 question {i}?", "Complex_CoT": "think", "Response": "r"} for i in range(10)]
    return [
        SourceSpec(name="medqa", format="medqa_options", path=str(write_jsonl(tmp_path / "m.jsonl", medqa))),
        SourceSpec(
            name="alpacare", format="instruction", path=str(write_jsonl(tmp_path / "a.jsonl", alpacare)), target=20
        ),
        SourceSpec(name="o1", format="reasoning", path=str(write_jsonl(tmp_path / "o.jsonl", o1)), target=50),
    ]


@pytest.fixture
def eval_set(tmp_path) -> EvalQuestions:
    path = write_jsonl(tmp_path / "eval.jsonl", [{"question": "the eval question about SEPSIS"}])
    return EvalQuestions(name="evalset", path=str(path))


def test_every_removal_is_counted_by_reason(sources, eval_set):
    mix = build_mix(sources, seed=0, val_fraction=0.1, reasoning="thinking", decontaminate=[eval_set])
    assert mix.stats["medqa"]["removed"] == {"bad_options": 1}
    assert mix.stats["alpacare"]["removed"] == {
        "duplicate": 1,
        "empty_answer": 1,
        "empty_question": 1,
        "eval_contamination": 1,
    }
    for name, s in mix.stats.items():
        assert s["available"] == s["usable"] + sum(s["removed"].values()), name


def test_duplicates_are_removed_across_sources(tmp_path, sources):
    copy = SourceSpec(
        name="copy", format="instruction", path=str(write_jsonl(tmp_path / "c.jsonl", _instruction_rows("alpacare", 5)))
    )
    mix = build_mix([*sources, copy], seed=0, val_fraction=0.1, reasoning="thinking")
    assert mix.stats["copy"]["removed"] == {"duplicate": 5}


def test_targets_validation_split_and_upsampling(sources):
    mix = build_mix(sources, seed=0, val_fraction=0.1, reasoning="thinking", policy="upsample")
    assert mix.stats["alpacare"]["train"] == 20 and mix.stats["alpacare"]["val"] == 2
    assert mix.stats["o1"]["upsampled"] > 0 and mix.stats["o1"]["train"] == 50
    train_ids, val_ids = set(mix.train["row_id"]), set(mix.val["row_id"])
    assert not train_ids & val_ids, "a validation row is trained on"
    assert set(mix.val["source"]) == {"medqa", "alpacare", "o1"}  # stratified by source
    taken_all = build_mix(sources, seed=0, val_fraction=0.1, reasoning="thinking", policy="all")
    assert taken_all.stats["o1"]["train"] == 9 and taken_all.stats["o1"]["upsampled"] == 0


def test_same_seed_same_rows_other_seed_other_rows(sources):
    def dump(seed):
        mix = build_mix(sources, seed=seed, val_fraction=0.1, reasoning="thinking")
        return json.dumps([mix.train.to_list(), mix.val.to_list()], sort_keys=True)

    assert dump(7) == dump(7)
    assert dump(7) != dump(8)


def test_missing_column_names_source_column_and_fix(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"Question": "q", "Response": "r"}])
    spec = SourceSpec(name="o1", format="reasoning", path=str(path))
    with pytest.raises(ValueError, match=r"source 'o1' .*missing column\(s\) \['Complex_CoT'\].*columns:"):
        build_mix([spec], seed=0, val_fraction=0.1, reasoning="thinking")


def test_unreadable_file_names_the_source(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text("{not json\n")
    spec = SourceSpec(name="broken", format="instruction", path=str(path))
    with pytest.raises(ValueError, match=r"source 'broken': .*broken.jsonl line 1: not valid JSON"):
        build_mix([spec], seed=0, val_fraction=0.1, reasoning="thinking")


def test_duplicate_source_names_are_refused(sources):
    with pytest.raises(ValueError, match="names must be unique"):
        build_mix([sources[0], sources[0]], seed=0, val_fraction=0.1, reasoning="thinking")


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
def test_local_files_of_every_supported_format_load_through_datasets(tmp_path, suffix):
    import pandas as pd

    rows = _instruction_rows("local", 10)
    path = tmp_path / f"rows{suffix}"
    frame = pd.DataFrame(rows)
    {
        ".json": lambda: frame.to_json(path, orient="records"),
        ".jsonl": lambda: write_jsonl(path, rows),
        ".csv": lambda: frame.to_csv(path, index=False),
        ".parquet": lambda: frame.to_parquet(path),
    }[suffix]()
    spec = SourceSpec(name="local", format="instruction", path=str(path))
    mix = build_mix([spec], seed=0, val_fraction=0.1, reasoning="thinking")
    assert mix.stats["local"]["available"] == 10 and mix.stats["local"]["usable"] == 10
    assert sorted([*_users(mix.train), *_users(mix.val)]) == sorted(r["instruction"] for r in rows)


def test_a_short_benchmark_question_anywhere_in_a_row_is_removed(tmp_path):
    rows = [
        {"instruction": "Is halofantrine ototoxic? Explain.", "input": "<noinput>", "output": "a"},  # leads
        {"instruction": "Explain whether Is halofantrine ototoxic holds", "input": "", "output": "b"},  # inside
        {"instruction": "A drug question.", "input": "", "output": "As asked: is halofantrine ototoxic? No."},
        {"instruction": "Is halofantrine ototoxicity common?", "input": "", "output": "c"},  # not the question
        {"instruction": "Is warfarin safe?", "input": "", "output": "d"},
    ]
    spec = SourceSpec(name="rows", format="instruction", path=str(write_jsonl(tmp_path / "r.jsonl", rows)))
    questions = [
        {"question": "Is halofantrine ototoxic?"},
        {"question": "A long benchmark question that has many more than eight words in it?"},
    ]
    eval_set = EvalQuestions(name="pubmedqa", path=str(write_jsonl(tmp_path / "q.jsonl", questions)))
    mix = build_mix([spec], seed=0, val_fraction=0.0, reasoning="thinking", decontaminate=[eval_set])
    assert mix.stats["rows"]["removed"] == {"eval_contamination": 3}
    assert sorted(_users(mix.train)) == ["Is halofantrine ototoxicity common?", "Is warfarin safe?"]


def test_an_eval_set_path_replaces_its_hub_id(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "q"}])
    layered = EvalQuestions(name="e", hub_id="GBaker/MedQA-USMLE-4-options", path=str(path))
    assert layered.hub_id is None and layered.path == str(path.resolve())


@pytest.mark.faults
@pytest.mark.parametrize(
    "write, message",
    [
        (
            lambda p: p.write_text(
                "".join(
                    json.dumps({"instruction": f"q{i}?", "input": "", "output": "a"}) + "\n"
                    if i != 19
                    else '{"instruction": "q19?", "inp\n'
                    for i in range(40)
                )
            ),
            r"r.jsonl line 20: not valid JSON .*; fix or remove that line",
        ),
        (lambda p: p.write_text(""), r"r.jsonl is empty"),
        (
            lambda p: p.write_bytes(b'{"instruction": "q?", "input": "", "output": "caf\xe9"}\n' * 3),
            r"r.jsonl line 1: byte 0xe9 is not UTF-8; re-save the file as UTF-8",
        ),
    ],
    ids=["truncated-line", "empty", "not-utf8"],
)
def test_a_bad_file_is_named_with_its_line_and_fix(tmp_path, write, message):
    path = tmp_path / "r.jsonl"
    write(path)
    spec = SourceSpec(name="alpacare", format="instruction", path=str(path))
    with pytest.raises(ValueError, match=r"^source 'alpacare': .*" + message) as err:
        build_mix([spec], seed=0, val_fraction=0.1, reasoning="thinking")
    assert "login" not in str(err.value)  # no hub was asked


@pytest.mark.faults
def test_a_semicolon_csv_is_named(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("instruction;input;output\nq?;;a\n")
    spec = SourceSpec(name="alpacare", format="instruction", path=str(path))
    with pytest.raises(ValueError, match=r"source 'alpacare': .*rows.csv is separated by ';'.*comma-separated"):
        build_mix([spec], seed=0, val_fraction=0.1, reasoning="thinking")
