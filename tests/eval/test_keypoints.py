"""The shipped key-point prompt set, answer matching, and per-discipline hit rates."""

from __future__ import annotations

import pytest

from medqlora.eval.keypoints import KeyPointPrompt, hits, load_prompts, normalise, score
from medqlora.eval.scoring import prompt_ids


def test_shipped_set_has_54_prompts_over_7_disciplines_with_3_to_6_key_points():
    prompts = load_prompts()
    assert len(prompts) == 54 and len({p.id for p in prompts}) == 54
    disciplines = {p.discipline for p in prompts}
    assert len(disciplines) == 7 and {"internal medicine", "dermatology"} <= disciplines
    assert all(3 <= len(p.key_points) <= 6 for p in prompts)


def test_matching_is_normalised_and_whole_word():
    prompt = KeyPointPrompt(
        "x",
        "cardiology",
        "?",
        (("ARB", "angiotensin receptor blocker"), ("café au lait",), ("beta-blocker", "bisoprolol")),
    )
    assert hits("Give an angiotensin-receptor  BLOCKER.", prompt) == [True, False, False]
    assert hits("carbon monoxide; Cafe au Lait spots; beta blocker", prompt) == [False, True, True]
    assert normalise("Ünïcode, (punct)!") == " unicode punct "


def test_hit_rate_is_averaged_per_discipline_then_overall():
    prompts = [
        KeyPointPrompt("a", "d1", "?", (("x",), ("y",))),
        KeyPointPrompt("b", "d1", "?", (("z",),)),
        KeyPointPrompt("c", "d2", "?", (("w",), ("v",), ("u",), ("t",))),
    ]
    result = score({"a": "x", "b": "nothing", "c": "w v u t"}, prompts)
    assert result["prompts"] == {"a": 50.0, "b": 0.0, "c": 100.0}
    assert result["disciplines"] == {"d1": 25.0, "d2": 100.0}
    assert result["average"] == pytest.approx(50.0)


def test_a_prompt_file_missing_a_field_says_which(tmp_path):
    path = tmp_path / "kp.yaml"
    path.write_text("- {id: p1, discipline: x, prompt: '?'}\n")
    with pytest.raises(ValueError, match=r"p1.*missing \['key_points'\]"):
        load_prompts(path)


def test_generation_prompt_follows_the_thinking_switch(tokenizer):
    plain = tokenizer.decode(prompt_ids(tokenizer, "How is gout treated?"))
    thinking = tokenizer.decode(prompt_ids(tokenizer, "How is gout treated?", thinking=True))
    assert "<|think|>" in thinking and "<|think|>" not in plain
    assert plain.endswith("<|channel>thought\n<channel|>")  # Gemma 4's empty thought channel, thinking off
