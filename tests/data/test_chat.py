"""Rendering: a row is the template's own generation prompt + target + <turn|>; masks are exact."""

from __future__ import annotations

import pytest

from medqlora.data.chat import IGNORE_INDEX, encode, messages_of, render_prompt, show_supervision
from medqlora.data.sources import Conversation

PLAIN = Conversation.single(user="What treats gout?", answer="Colchicine.")
REASONING = Conversation.single(
    user="What treats gout?", answer="Colchicine.", reasoning="Acute gout; NSAID or colchicine."
)
SYSTEM = Conversation.single(user="What treats gout?", answer="Colchicine.", system="You are a careful clinician.")


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("conv, thinking", [(PLAIN, False), (REASONING, True), (SYSTEM, False)])
def test_prompt_tokens_equal_the_templates_generation_prompt(tokenizer, conv, thinking):
    enc = encode(conv, tokenizer, max_length=512)
    template = tokenizer.apply_chat_template(
        messages_of(conv), add_generation_prompt=True, enable_thinking=thinking, tokenize=False
    )
    prompt_ids = _ids(tokenizer, template)
    assert enc.input_ids[: len(prompt_ids)] == prompt_ids
    assert enc.labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    target = enc.input_ids[len(prompt_ids) :]
    assert enc.labels[len(prompt_ids) :] == target  # every target token is supervised, nothing else
    assert target[-1] == tokenizer.convert_tokens_to_ids("<turn|>")


def test_thinking_off_prompt_holds_the_empty_thought_channel(tokenizer):
    assert render_prompt(PLAIN, tokenizer).endswith("<|turn>model\n<|channel>thought\n<channel|>")


def test_reasoning_target_opens_with_the_thought_channel(tokenizer):
    enc = encode(REASONING, tokenizer, max_length=512)
    target = tokenizer.decode([t for t in enc.labels if t != IGNORE_INDEX])
    assert target == "<|channel>thought\nAcute gout; NSAID or colchicine.<channel|>Colchicine.<turn|>"
    assert render_prompt(REASONING, tokenizer).startswith("<bos><|turn>system\n<|think|><turn|>\n")
    assert render_prompt(REASONING, tokenizer).endswith("<|turn>model\n")


def test_the_template_behaves_like_gemma4s(tokenizer):
    def render(msgs, **kw):
        return tokenizer.apply_chat_template(msgs, tokenize=False, **kw)

    user = [{"role": "user", "content": "  Hi  "}]
    assert render(user) == "<bos><|turn>user\nHi<turn|>\n"  # no system turn, content trimmed
    assert (
        render([{"role": "system", "content": "S"}, *user]) == "<bos><|turn>system\nS<turn|>\n<|turn>user\nHi<turn|>\n"
    )
    reply = [*user, {"role": "assistant", "content": "<|channel>thought\nhidden<channel|>Shown"}]
    assert render(reply) == "<bos><|turn>user\nHi<turn|>\n<|turn>model\nShown<turn|>\n"  # thoughts stripped
    assert (
        render(user, add_generation_prompt=True, enable_thinking=True)
        == "<bos><|turn>system\n<|think|><turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n"
    )


def test_over_long_rows_are_dropped_or_truncated(tokenizer):
    prompt_len = len(_ids(tokenizer, render_prompt(PLAIN, tokenizer)))
    with pytest.raises(ValueError, match="too_long"):
        encode(PLAIN, tokenizer, max_length=prompt_len + 1)
    enc = encode(PLAIN, tokenizer, max_length=prompt_len + 1, truncation="truncate")
    assert len(enc.input_ids) == prompt_len + 1
    assert sum(t != IGNORE_INDEX for t in enc.labels) == 1


def test_truncation_never_leaves_a_row_without_supervised_tokens(tokenizer):
    prompt_len = len(_ids(tokenizer, render_prompt(PLAIN, tokenizer)))
    with pytest.raises(ValueError, match="no_supervised_tokens"):
        encode(PLAIN, tokenizer, max_length=prompt_len, truncation="truncate")


def test_show_supervision_marks_exactly_the_target(tokenizer):
    enc = encode(PLAIN, tokenizer, max_length=512)
    shown = show_supervision(tokenizer, enc.input_ids, enc.labels)
    assert shown == render_prompt(PLAIN, tokenizer) + "«Colchicine.<turn|>»"
