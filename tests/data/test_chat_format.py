"""Multi-turn chat data (`format: chat`, issue #38): every assistant turn a sample whose prompt is the template's own
generation prompt for the conversation so far, column and key names mappable, cut at a turn boundary."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from helpers import write_jsonl

from medqlora.data.chat import IGNORE_INDEX, encode_many, show_supervision
from medqlora.data.datamodule import MedicalMixDataModule
from medqlora.data.mix import EvalQuestions, build_mix
from medqlora.data.sources import Conversation, RowError, SourceSpec, to_conversation

MESSAGES = [
    {"role": "system", "content": "You are a careful clinician."},
    {"role": "user", "content": "A 45-year-old man has a hot swollen first toe joint. What is it?"},
    {"role": "assistant", "content": "Most likely acute gout."},
    {"role": "user", "content": "How is it confirmed?"},
    {"role": "assistant", "content": "By joint aspiration.", "reasoning": "Crystals under polarised light."},
    {"role": "user", "content": "And the first-line treatment?"},
    {
        "role": "assistant",
        "content": "<|channel>thought\nNSAID or colchicine; he has no kidney disease.<channel|>Colchicine.",
    },
]

# A template in the shape of Gemma 4's published one (a strip-thinking macro over the content, the system turn
# opened by <|think|> when thinking, the empty thought channel in a thinking-off generation prompt), written
# differently from the tiny tokenizer's: samples must follow whichever template the tokenizer carries.
GEMMA4_SHAPED_TEMPLATE = """{{- bos_token -}}
{%- macro strip_thinking(text) -%}
{%- set ns = namespace(out='') -%}
{%- for part in text.split('<channel|>') -%}
{%- if '<|channel>' in part -%}{%- set ns.out = ns.out + part.split('<|channel>')[0] -%}
{%- else -%}{%- set ns.out = ns.out + part -%}{%- endif -%}
{%- endfor -%}
{{- ns.out | trim -}}
{%- endmacro -%}
{%- set thinking = enable_thinking | default(false) -%}
{%- set has_system = messages | length > 0 and messages[0]['role'] == 'system' -%}
{%- if has_system or thinking -%}
<|turn>system
{% if thinking %}<|think|>{% endif %}{% if has_system %}{{ messages[0]['content'] | trim }}{% endif %}<turn|>
{% endif -%}
{%- for message in messages -%}
{%- if not (loop.first and has_system) -%}
{%- if message['role'] == 'assistant' -%}
<|turn>model
{{ strip_thinking(message['content']) }}<turn|>
{% else -%}
<|turn>{{ message['role'] }}
{{ message['content'] | trim }}<turn|>
{% endif -%}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}<|turn>model
{% if not thinking %}<|channel>thought
<channel|>{% endif %}{%- endif -%}"""


def _spec(**kwargs) -> SourceSpec:
    return SourceSpec(name="dialogues", format="chat", hub_id="x/y", **kwargs)


@pytest.fixture(params=["tiny", "gemma4-shaped"])
def any_template(request, tokenizer):
    if request.param == "tiny":
        return tokenizer
    shaped = __import__("copy").deepcopy(tokenizer)
    shaped.chat_template = GEMMA4_SHAPED_TEMPLATE
    return shaped


def test_each_assistant_turn_is_a_sample_after_the_templates_own_generation_prompt(any_template):
    tokenizer = any_template
    conv = to_conversation({"messages": MESSAGES}, _spec(), "thinking")
    (encoded,) = encode_many([conv], tokenizer, max_length=1024)
    assert len(encoded.samples) == 3 and encoded.turns_cut == 0
    end_of_turn = tokenizer.convert_tokens_to_ids("<turn|>")
    for sample, turn in zip(encoded.samples, (2, 4, 6)):
        thinking = turn > 2  # turns 4 and 6 carry reasoning (a key, then a thought channel in the content)
        prompt = tokenizer.apply_chat_template(
            MESSAGES[:turn], add_generation_prompt=True, enable_thinking=thinking, tokenize=False
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert sample.input_ids[: len(prompt_ids)] == prompt_ids, turn
        assert sample.labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids), turn
        target = sample.input_ids[len(prompt_ids) :]
        assert sample.labels[len(prompt_ids) :] == target, "every target token is supervised, nothing else"
        assert target[-1] == end_of_turn
        content = MESSAGES[turn]["content"]
        if "reasoning" in MESSAGES[turn]:
            content = f"<|channel>thought\n{MESSAGES[turn]['reasoning']}<channel|>{content}"
        assert tokenizer.decode(target) == f"{content}<turn|>"
    history = tokenizer.decode(encoded.samples[2].input_ids)
    assert "Crystals" not in history, "the template strips an earlier turn's thoughts from the history"


def test_sharegpt_columns_and_roles_are_one_yaml_entry():
    spec = _spec(columns={"messages": "conversations", "role": "from", "content": "value"})
    row = {"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]}
    conv = to_conversation(row, spec, "thinking")
    assert [(m.role, m.content) for m in conv.messages] == [("user", "Hi?"), ("assistant", "Hello.")]
    assert spec.row_columns() == ["conversations"]
    custom = _spec(roles={"patient": "user", "doctor": "assistant"})
    row = {"messages": [{"role": "patient", "content": "Pain?"}, {"role": "doctor", "content": "Where?"}]}
    assert to_conversation(row, custom, "thinking").answer == "Where?"


@pytest.mark.parametrize(
    "messages, reason",
    [
        ([{"role": "user", "content": "q"}, {"role": "nurse", "content": "a"}], "unknown_role"),
        ([{"role": "user", "content": "q"}], "no_assistant_turn"),
        ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}], "bad_messages"),
        ([{"role": "user", "content": "q"}, {"role": "system", "content": "s"}], "bad_messages"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}], "empty_answer"),
        ("not a list", "bad_messages"),
    ],
)
def test_unusable_conversations_are_counted_by_reason(messages, reason):
    with pytest.raises(RowError) as err:
        to_conversation({"messages": messages}, _spec(), "thinking")
    assert err.value.reason == reason


@pytest.mark.parametrize("mode", ["thinking", "inline", "drop"])
def test_an_assistant_turns_reasoning_follows_data_reasoning(mode):
    conv = to_conversation({"messages": MESSAGES}, _spec(), mode)
    turn = conv.messages[4]
    expected = {
        "thinking": ("By joint aspiration.", "Crystals under polarised light."),
        "inline": ("Crystals under polarised light.\n\nBy joint aspiration.", None),
        "drop": ("By joint aspiration.", None),
    }[mode]
    assert (turn.content, turn.reasoning) == expected


def test_train_on_last_trains_the_last_turn_only(tokenizer):
    conv = to_conversation({"messages": MESSAGES}, _spec(train_on="last"), "thinking")
    (encoded,) = encode_many([conv], tokenizer, max_length=1024)
    (sample,) = encoded.samples
    assert tokenizer.decode([t for t in sample.labels if t != IGNORE_INDEX]).endswith("Colchicine.<turn|>")


def test_a_conversation_over_max_length_is_cut_at_a_turn_boundary(tokenizer):
    conv = to_conversation({"messages": MESSAGES}, _spec(), "thinking")
    (full,) = encode_many([conv], tokenizer, max_length=1024)
    fits_two = len(full.samples[1].input_ids)  # the third turn's prompt alone is longer than this
    (cut,) = encode_many([conv], tokenizer, max_length=fits_two)
    assert [s.input_ids for s in cut.samples] == [s.input_ids for s in full.samples[:2]]
    assert cut.turns_cut == 1 and cut.dropped is None
    (dropped,) = encode_many([conv], tokenizer, max_length=len(full.samples[0].input_ids) - 1)
    assert dropped.samples == [] and dropped.dropped == "too_long"


def test_show_supervision_marks_every_trained_turn(tokenizer):
    conv = to_conversation({"messages": MESSAGES}, _spec(), "thinking")
    (encoded,) = encode_many([conv], tokenizer, max_length=1024)
    shown = [show_supervision(tokenizer, s.input_ids, s.labels) for s in encoded.samples]
    assert [text.count("«") for text in shown] == [1, 1, 1]
    assert shown[0].endswith("«Most likely acute gout.<turn|>»")
    assert shown[2].endswith(
        "«<|channel>thought\nNSAID or colchicine; he has no kidney disease.<channel|>Colchicine.<turn|>»"
    )


def _dialogues(tmp_path, n: int = 12) -> SourceSpec:
    rows = []
    for i in range(n):
        turns = [{"role": "user", "content": f"Case {i}: what is it?"}, {"role": "assistant", "content": f"Dx {i}."}]
        if i % 2:
            turns += [
                {"role": "user", "content": f"Case {i}: treatment?"},
                {"role": "assistant", "content": f"Rx {i}."},
            ]
        rows.append({"messages": turns})
    return SourceSpec(name="dialogues", format="chat", path=str(write_jsonl(tmp_path / "chat.jsonl", rows)))


def test_decontamination_reads_every_user_turn(tmp_path):
    spec = _dialogues(tmp_path)
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question": "Case 3: treatment?"}])
    mix = build_mix(
        [spec],
        seed=0,
        val_fraction=0.0,
        reasoning="thinking",
        decontaminate=[EvalQuestions(name="exam", path=str(questions))],
    )
    assert mix.stats["dialogues"]["removed"] == {"eval_contamination": 1}  # its second user turn holds the question


def test_a_chat_source_trains_a_sample_per_turn_and_the_card_counts_both(tmp_path, tiny_dir):
    spec = _dialogues(tmp_path)
    dm = MedicalMixDataModule(sources=[spec], max_length=256, val_fraction=0.0)
    dm.prepare_data()
    assert len(dm.train_set) == 18  # 6 conversations of one turn, 6 of two
    ids = dm.train_set["row_id"]
    assert sum(i.endswith("/1") for i in ids) == 6 and sum("/" not in i for i in ids) == 6
    card = dm.card.content["sources"]["dialogues"]
    assert card["drawn"] == {"train": 12, "val": 0} and card["train_rows"] == 18
    assert "18 (12 conv.)" in dm.card.markdown()
    last_only = MedicalMixDataModule(sources=[replace(spec, train_on="last")], max_length=256, val_fraction=0.0)
    last_only.prepare_data()
    assert len(last_only.train_set) == 12


def test_a_chat_source_cut_at_a_turn_is_in_the_data_card(tmp_path, tiny_dir, tokenizer):
    spec = _dialogues(tmp_path)
    conv = Conversation.single(user="Case 1: what is it?", answer="Dx 1.")
    (one_turn,) = encode_many([conv], tokenizer, max_length=256)
    dm = MedicalMixDataModule(sources=[spec], max_length=len(one_turn.samples[0].input_ids) + 2, val_fraction=0.0)
    dm.prepare_data()
    card = dm.card.content["sources"]["dialogues"]
    assert card["cut_at_turn"] == {"rows": 6, "turns": 6} and card["train_rows"] == 12
    assert "cut at a turn boundary: 6 (6 turns left out)" in dm.card.markdown()
    assert json.loads(json.dumps(card))  # the card stays JSON
