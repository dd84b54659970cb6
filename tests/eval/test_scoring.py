"""Benchmark items, scoring by log-likelihood on a case whose answer is known, and the bootstrap interval."""

from __future__ import annotations

import pytest
from fixtures import medqa_rows, pubmedqa_rows
from helpers import write_jsonl

from medqlora.eval.items import DEFAULT_BENCHMARKS, BenchmarkSpec, Item, load_items
from medqlora.eval.scoring import bootstrap_delta_pp, summarise


def test_items_read_the_benchmarks_columns(tmp_path):
    path = str(write_jsonl(tmp_path / "m.jsonl", medqa_rows(6)))
    medqa = load_items(BenchmarkSpec(name="medqa", kind="medqa", path=path))
    row = medqa_rows(6)[0]
    assert len(medqa) == 6 and medqa[0].choices == ("A:", "B:", "C:", "D:")
    assert medqa[0].choices[medqa[0].gold] == f"{row['answer_idx']}:"
    assert medqa[0].user.startswith("Please answer with one of the option in the bracket\n\n")
    assert f"A. {row['options']['A']}" in medqa[0].user and row["question"] in medqa[0].user
    letters = load_items(BenchmarkSpec(name="medqa", kind="medqa", path=path, prompt="letter"))
    assert letters[0].choices == ("A", "B", "C", "D") and letters[0].choices[letters[0].gold] == row["answer_idx"]
    assert letters[0].user.endswith("Answer with the letter of the correct option.")
    pub = load_items(
        BenchmarkSpec(
            name="pubmedqa", kind="pubmedqa", limit=3, path=str(write_jsonl(tmp_path / "p.jsonl", pubmedqa_rows(5)))
        )
    )
    assert len(pub) == 3 and pub[0].choices == ("yes", "no", "maybe")
    assert "Outcomes improved." in pub[0].user and pub[0].id == "pubmedqa-1000"


def test_a_row_missing_a_column_names_benchmark_row_and_column(tmp_path):
    rows = medqa_rows(2)
    del rows[1]["answer_idx"]
    spec = BenchmarkSpec(name="medqa", kind="medqa", path=str(write_jsonl(tmp_path / "m.jsonl", rows)))
    with pytest.raises(ValueError, match=r"'medqa' row 1: column 'answer_idx' is missing"):
        load_items(spec)


def test_scoring_picks_the_choice_the_model_prefers_and_counts_it_against_gold():
    """The base prefers 'A' on every item, the adapter 'B'; gold is 'B'."""
    items = [Item(f"q{i}", f"question {i}", ("A", "B", "C", "D"), gold=1) for i in range(5)]
    base = [[-0.1, -3.0, -3.0, -3.0]] * 5
    tuned = [[-3.0, -0.1, -3.0, -3.0]] * 5
    summary, records = summarise("handmade", items, base, tuned)
    assert [r["adapter_pred"] for r in records] == ["B"] * 5 and [r["base_pred"] for r in records] == ["A"] * 5
    assert summary["base_accuracy"] == 0 and summary["adapter_accuracy"] == 100 and summary["delta_pp"] == 100
    assert summary["delta_ci95_pp"] == [100, 100]


def test_bootstrap_interval_brackets_the_observed_delta_and_shrinks_with_more_items():
    small = bootstrap_delta_pp([False] * 10 + [True] * 10, [True] * 15 + [False] * 5)
    large = bootstrap_delta_pp([False] * 100 + [True] * 100, [True] * 150 + [False] * 50)
    assert small[0] < 25 < small[1] and large[0] < 25 < large[1]
    assert large[1] - large[0] < small[1] - small[0]
    assert bootstrap_delta_pp([True, False], [True, False]) == (0.0, 0.0)


def test_medqa_is_asked_exactly_as_training_renders_it_with_the_artefacts_cleaned_once(tmp_path):
    from medqlora.data.sources import SourceSpec, to_conversation

    options = {"A": "Colchicine", "B": 'Allopurinol\n"', "C": "Febuxostat", "D": "Probenecid"}
    training_row = {
        "instruction": "Please answer with one of the option in the bracket",
        "input": f"Q:What treats acute gout?? {options!r},",
        "output": "A: Colchicine",
    }
    source = SourceSpec(name="medqa", format="medqa_options", path=str(write_jsonl(tmp_path / "t.jsonl", [{}])))
    trained = to_conversation(training_row, source, "thinking")
    benchmark_row = {
        "question": "What treats acute gout??",
        "options": options,
        "answer_idx": "A",
        "answer": "Colchicine",
        "meta_info": "step1",
        "metamap_phrases": [],
    }
    item = load_items(
        BenchmarkSpec(name="medqa", kind="medqa", path=str(write_jsonl(tmp_path / "b.jsonl", [benchmark_row])))
    )[0]
    assert item.user == trained.user
    assert "??" not in item.user and '"' not in item.user and "B. Allopurinol\nC." in item.user
    assert trained.answer.startswith(item.choices[item.gold])  # the scored opening of the trained answer


def test_each_answer_opening_is_scored_with_the_tokens_training_used(tokenizer):
    for letter in "ABCD":
        opening = tokenizer(f"{letter}:", add_special_tokens=False)["input_ids"]
        answer = tokenizer(f"{letter}: Colchicine<turn|>", add_special_tokens=False)["input_ids"]
        assert answer[: len(opening)] == opening


def test_length_normalised_accuracy_stops_a_short_answer_winning_by_length():
    from medqlora.eval.scoring import predictions

    # "no" has the highest sum only because it is short; per character "maybe" is the most likely
    assert predictions([-3.0, -1.5, -2.0], ("yes", "no", "maybe")) == (1, 2)
    assert predictions([-1.0, -1.5, -2.0], ("yes", "no", "maybe")) == (0, 0)


@pytest.mark.faults
def test_a_benchmark_the_hub_cannot_serve_names_the_flag_that_takes_a_local_copy():
    """Offline (the suite runs with HF_HUB_OFFLINE=1), `eval --medqa FILE` without `--pubmedqa` used to stop on the
    hub's ConnectionError for PubMedQA without naming the flag."""
    pubmedqa = next(spec for spec in DEFAULT_BENCHMARKS if spec.kind == "pubmedqa")
    with pytest.raises(ValueError) as refused:
        load_items(pubmedqa)
    message = str(refused.value)
    assert "benchmark 'pubmedqa': could not read 'qiaojin/PubMedQA'" in message
    assert "--pubmedqa FILE" in message and "question, context, final_decision" in message
    assert "\n" not in message
