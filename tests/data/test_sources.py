"""Row -> conversation for each format, and SourceSpec's own validation."""

from __future__ import annotations

import pytest
from helpers import write_jsonl

from medqlora.data.sources import RowError, SourceSpec, normalise_question, to_conversation

MEDQA_ROW = {
    "instruction": "Please answer with one of the option in the bracket",
    "input": "Q:A 23-year-old woman has dysuria. Which drug is first-line? \n"
    "{'A': 'Ampicillin', 'B': 'Ceftriaxone', 'C': 'Doxycycline', 'D': 'Ciprofloxacin', "
    "'E': 'Nitrofurantoin'},",
    "output": "E: Nitrofurantoin",
}


def spec(fmt: str, **kw) -> SourceSpec:
    return SourceSpec(name=fmt, format=fmt, hub_id="org/data", **kw)


def test_medqa_dict_string_with_five_options_becomes_lettered_lines():
    conv = to_conversation(MEDQA_ROW, spec("medqa_options"), "thinking")
    assert conv.user.startswith("Please answer with one of the option in the bracket\n\nA 23-year-old woman")
    assert conv.user.endswith("A. Ampicillin\nB. Ceftriaxone\nC. Doxycycline\nD. Ciprofloxacin\nE. Nitrofurantoin")
    assert conv.answer == "E: Nitrofurantoin" and conv.reasoning is None


def test_medqa_options_are_parsed_without_eval():
    row = {**MEDQA_ROW, "input": "Q: Which? {'A': __import__('os').system('echo pwned')},"}
    with pytest.raises(RowError) as err:
        to_conversation(row, spec("medqa_options"), "thinking")
    assert err.value.reason == "bad_options"


@pytest.mark.parametrize("placeholder", ["<noinput>", "", "  <noinput> "])
def test_placeholder_inputs_are_dropped(placeholder):
    row = {"instruction": "List signs of sepsis.", "input": placeholder, "output": "Fever, tachycardia."}
    assert to_conversation(row, spec("instruction"), "thinking").user == "List signs of sepsis."


def test_real_input_is_appended_to_the_instruction():
    row = {"instruction": "Summarise.", "input": "Patient with chest pain.", "output": "ACS suspected."}
    assert to_conversation(row, spec("instruction"), "thinking").user == "Summarise.\n\nPatient with chest pain."


@pytest.mark.parametrize(
    "mode, reasoning, answer",
    [
        ("thinking", "Because X.", "Answer."),
        ("inline", None, "Because X.\n\nAnswer."),
        ("drop", None, "Answer."),
    ],
)
def test_reasoning_goes_where_the_config_says(mode, reasoning, answer):
    row = {"Question": "Why?", "Complex_CoT": "Because X.", "Response": "Answer."}
    conv = to_conversation(row, spec("reasoning"), mode)
    assert (conv.reasoning, conv.answer) == (reasoning, answer)


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"instruction": "", "input": "<noinput>", "output": "x"}, "empty_question"),
        ({"instruction": "Q?", "input": "", "output": "  "}, "empty_answer"),
        ({"instruction": "Q?", "input": "", "output": 42}, "wrong_type"),
    ],
)
def test_unusable_rows_are_classified(row, reason):
    with pytest.raises(RowError) as err:
        to_conversation(row, spec("instruction"), "thinking")
    assert err.value.reason == reason


def test_system_prompt_is_attached():
    row = {"instruction": "Q?", "input": "", "output": "A."}
    assert to_conversation(row, spec("instruction"), "thinking", "Be careful.").system == "Be careful."


def test_column_map_renames_fields(tmp_path):
    s = spec("reasoning", columns={"question": "q"})
    assert s.columns == {"question": "q", "reasoning": "Complex_CoT", "response": "Response"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"format": "dialogue"}, r"format='dialogue' is unknown"),
        ({"format": "instruction", "target": 0}, "target=0"),
        ({"format": "instruction", "columns": {"prompt": "p"}}, r"unknown field\(s\) \['prompt'\]"),
    ],
)
def test_bad_specs_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SourceSpec(name="s", hub_id="org/data", **kwargs)


def test_a_local_path_replaces_the_hub_id_and_one_of_them_is_needed(tmp_path):
    good = write_jsonl(tmp_path / "rows.jsonl", [{"instruction": "a", "input": "", "output": "b"}])
    layered = SourceSpec(name="s", format="instruction", hub_id="org/data", config="en", path=str(good))
    assert (layered.hub_id, layered.config, layered.path) == (None, None, str(good.resolve()))
    assert layered.location == str(good.resolve())
    with pytest.raises(ValueError, match=r"source 's': give hub_id \(a hub dataset\) or path \(a local file\)"):
        SourceSpec(name="s", format="instruction")


def test_local_path_must_exist_and_have_a_known_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SourceSpec(name="s", format="instruction", path=str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "rows.txt"
    bad.write_text("x")
    with pytest.raises(ValueError, match="is not one of"):
        SourceSpec(name="s", format="instruction", path=str(bad))
    good = write_jsonl(tmp_path / "rows.jsonl", [{"instruction": "a", "input": "", "output": "b"}])
    assert SourceSpec(name="s", format="instruction", path=str(good)).path == str(good.resolve())


def test_normalised_question_ignores_case_punctuation_and_spacing():
    assert normalise_question("What  is GOUT?") == normalise_question("what is gout")
