"""Scoring each item's prompt once, its choices side by side in packed rows, gives the log-probabilities of one
sequence per (question, choice): fp32 on the tiny model, to 1e-4, whatever the packing and batch size."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import adapted_tiny

from medqlora.eval import scoring
from medqlora.eval.items import Item
from medqlora.model.masks import shared_prompt_masks

WORDS = "the patient has fever and cough with pain in the chest renal cardiac hepatic after surgery".split()


def _items(n: int, seed: int = 0, longest: int = 40) -> list[Item]:
    rng = random.Random(seed)
    choices = ("A:", "B: yes", "maybe so", "no")
    return [Item(f"q{i}", " ".join(rng.choices(WORDS, k=rng.randint(2, longest))), choices, 0) for i in range(n)]


def one_sequence_per_choice(model, tokenizer, items: list[Item]) -> list[list[float]]:
    """The definition: log p(choice | prompt) from a plain forward of prompt + choice, one at a time."""
    out = []
    for item in items:
        prompt = scoring.prompt_ids(tokenizer, item.user)
        row = []
        for choice in item.choices:
            ids = tokenizer(choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt + ids]), use_cache=False).logits[0].float()
            logp = torch.log_softmax(logits, -1)
            row.append(sum(logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(ids)))
        out.append(row)
    return out


def _max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


@pytest.mark.parametrize("batch_tokens", [64, 2048])  # one row per forward (several forwards), or all in one
def test_packed_scores_equal_one_sequence_per_choice_with_the_adapter_on_and_off(tokenizer, batch_tokens):
    model = adapted_tiny()
    items = _items(10)
    expected = one_sequence_per_choice(model, tokenizer, items)
    got = scoring.choice_logprobs(model, tokenizer, items, batch_tokens=batch_tokens)
    assert _max_diff(got, expected) < 1e-4
    with model.disable_adapter():
        base = scoring.choice_logprobs(model, tokenizer, items, batch_tokens=batch_tokens)
        assert _max_diff(base, one_sequence_per_choice(model, tokenizer, items)) < 1e-4
    assert _max_diff(base, got) > 1e-2, "the adapter changes the scores"


def test_several_items_share_a_row_and_an_item_longer_than_a_row_gets_a_wider_one(tokenizer, monkeypatch):
    monkeypatch.setattr(scoring, "ROW_TOKENS", 128)
    rows = scoring._pack(scoring._blocks(_items(12), tokenizer), 128)
    assert len(rows) < 12 and all(len(r.ids) <= 128 for r in rows)
    assert max(len(set(r.group)) for r in rows) >= 2
    model = adapted_tiny(four_bit=True, ple_on_host=True)  # the eval path's loading: NF4, PLE rows from the host
    items = _items(3, seed=1, longest=60) + [_items(1, seed=2, longest=2)[0]]
    long = Item("long", " ".join(["fever"] * 150), items[0].choices, 1)  # ~160 tokens: wider than a row
    got = scoring.choice_logprobs(model, tokenizer, [*items, long], batch_tokens=256)
    assert _max_diff(got, one_sequence_per_choice(model, tokenizer, [*items, long])) < 1e-4


def test_a_choice_sees_the_prompt_and_itself_never_another_choice_or_item():
    # row: item 1 = prompt (2 tokens) + choice a (2) + choice b (1); item 2 = prompt (1) + choice (1)
    group = torch.tensor([[1, 1, 1, 1, 1, 2, 2]])
    branch = torch.tensor([[0, 0, 1, 1, 2, 0, 1]])
    position = torch.tensor([[0, 1, 2, 3, 2, 0, 1]])
    full = shared_prompt_masks(group, branch, position, sliding_window=2)
    sees = full["full_attention"][0, 0]
    assert sees[4].tolist() == [True, True, False, False, True, False, False]  # choice b: prompt + itself
    assert sees[3].tolist() == [True, True, True, True, False, False, False]
    assert sees[6].tolist() == [False] * 5 + [True, True]
    window = full["sliding_attention"][0, 0]
    assert window[3].tolist() == [False, False, True, True, False, False, False]  # positions 2-3 of 0..3
    assert window[4].tolist() == [False, True, False, False, True, False, False]  # position 2 sees 1 and itself
