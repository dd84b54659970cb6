"""The static-cache greedy decoder gives transformers' `generate` token for token (left-padded batches and single
prompts, sliding window exceeded), and its graph protocol (capture once, refill the inputs, replay) is exercised on
the CPU through an injected graph that records capture and replay and runs the step eagerly."""

from __future__ import annotations

import pytest
import torch
from helpers import adapted_tiny

from medqlora.eval.decode import GreedyDecoder
from medqlora.eval.generate import generate, stop_ids
from medqlora.eval.scoring import prompt_ids

QUESTIONS = [
    "How is gout treated?",
    "A 60 year old with new iron deficiency anaemia and weight loss over three months: what should be done first?",
    "Treat anaphylaxis how?",
    "What confirms hypothyroidism in a tired patient who has gained weight and feels cold all the time?",
]


def transformers_generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """`model.generate`, greedy, left-padded, each row cut at its first stop id."""
    stops, pad = stop_ids(tokenizer), tokenizer.pad_token_id
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=sorted(stops),
        )
    rows = []
    for row in out[:, width:].tolist():
        cut = []
        for token in row:
            if token in stops:
                break
            cut.append(token)
        rows.append(cut)
    return rows


@pytest.mark.parametrize("four_bit", [False, True])
def test_greedy_tokens_equal_transformers_generate_batched_and_alone(tokenizer, four_bit):
    model = adapted_tiny(four_bit=four_bit, ple_on_host=four_bit)
    prompts = [prompt_ids(tokenizer, q) for q in QUESTIONS]
    assert max(map(len, prompts)) > model.config.get_text_config().sliding_window  # the window is exercised
    decoder = GreedyDecoder(model, stop_ids(tokenizer), tokenizer.pad_token_id)
    expected = transformers_generate(model, tokenizer, prompts, 24)
    assert decoder(prompts, 24) == expected
    assert [decoder([p], 24)[0] for p in prompts[:2]] == expected[:2]


class RecordingGraph:
    """Stands in for a CUDA graph: `capture` runs the step once and keeps it, `replay` runs it again into the same
    output buffer, so the decoder's buffers must be refilled between replays for the tokens to come out right."""

    made: list[RecordingGraph] = []

    def __init__(self):
        self.captures, self.replays, self.step, self.out = 0, 0, None, None
        RecordingGraph.made.append(self)

    def capture(self, step):
        self.captures += 1
        self.step, self.out = step, step()
        return self.out

    def replay(self):
        self.replays += 1
        self.out.copy_(self.step())


def test_the_decode_step_is_captured_once_and_replayed_for_every_later_token(tokenizer):
    model = adapted_tiny(ple_on_host=True)
    prompts = [prompt_ids(tokenizer, q) for q in QUESTIONS[:3]]
    stops = stop_ids(tokenizer) - {tokenizer.pad_token_id, tokenizer.eos_token_id}  # run all 16 steps
    eager = GreedyDecoder(model, stops, tokenizer.pad_token_id, graph=False)(prompts, 16)
    RecordingGraph.made.clear()
    graphed = GreedyDecoder(model, stops, tokenizer.pad_token_id, graph=True, make_graph=RecordingGraph)
    assert graphed(prompts, 16) == eager
    (graph,) = RecordingGraph.made
    # prefill gives token 1, the captured step token 2, each replay one more
    assert graph.captures == 1 and graph.replays == 16 - 2
    assert all(len(row) == 16 for row in eager)


def test_generate_answers_as_text_and_a_stop_token_ends_a_row(tokenizer):
    model = adapted_tiny()
    answers = generate(model, tokenizer, QUESTIONS[:2], max_new_tokens=8)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    end = tokenizer.convert_tokens_to_ids("<turn|>")
    first = GreedyDecoder(model, set(), tokenizer.pad_token_id)([prompt_ids(tokenizer, QUESTIONS[0])], 4)[0][0]
    # a decoder that stops at the very first token it would emit returns nothing for that row
    assert GreedyDecoder(model, {first, end}, tokenizer.pad_token_id)([prompt_ids(tokenizer, QUESTIONS[0])], 4) == [[]]
