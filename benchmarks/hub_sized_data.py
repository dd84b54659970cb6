"""Local files the size and shape of the recipe's three hub datasets, made up here (no dataset is dumped): each
source's exact columns, as many rows as its hub split has, every row unique, text lengths drawn around the
sources' own (about 1.3 Gemma tokens a word; the reasoning source's long tail runs past 2,048 tokens in a few percent
of rows, as medical-o1's does), plus the two evaluation sets' question files for decontamination.

    python benchmarks/hub_sized_data.py OUT_DIR [--scale 1.0] [--tokenizer tiny]

writes OUT_DIR/{medqa,o1,alpacare,medqa-usmle-test,pubmedqa-labeled}.jsonl, the names configs/local-files.yaml reads
from data/ (so `OUT_DIR=data` trains the recipe offline on them).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
from pathlib import Path

from medqlora.data.samples.make_samples import AGES, FACTS

HUB_ROWS = {"medqa": 10_178, "o1": 25_371, "alpacare": 52_002}  # the hub splits' sizes (train)
EVAL_ROWS = {"medqa-usmle-test": 1_273, "pubmedqa-labeled": 1_000}
# tokens a field holds: (median, lognormal sigma), in the tokenizer the rows are written for
TOKENS = {
    "medqa_question": (220, 0.35),
    "medqa_option": (4, 0.5),
    "o1_question": (90, 0.5),
    "o1_cot": (680, 0.55),
    "o1_response": (200, 0.5),
    "alpacare_instruction": (24, 0.5),
    "alpacare_input": (50, 0.8),
    "alpacare_output": (220, 0.6),
}
GEMMA_TOKENS_PER_WORD = 1.3
# the words of the shipped sample rows' fact table (which the tiny tokenizer was trained on), joined at random
TERMS = sorted({w for fact in FACTS for text in fact for w in re.findall(r"[A-Za-z]+", text)} | set(AGES[0].split()))


def tokens_per_word(tokenizer, seed: int = 0, words: int = 5_000) -> float:
    """How many tokens `tokenizer` makes of a word of TERMS on average: pass it to `write` so that rows have the
    sources' token lengths in that tokenizer (the tiny one splits finer than Gemma's)."""
    text = " ".join(random.Random(seed).choices(TERMS, k=words))
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) / words


def _words(rng: random.Random, field: str, per_word: float) -> str:
    median, sigma = TOKENS[field]
    n = max(1, round(rng.lognormvariate(math.log(median), sigma) / per_word))
    return " ".join(rng.choices(TERMS, k=n))


def medqa_row(rng: random.Random, i: int, per_word: float) -> dict:
    """medical_meadow_medqa: instruction, 'Q: question? {options},' input, 'X: answer' output."""
    options = {letter: _words(rng, "medqa_option", per_word) for letter in "ABCDE"}
    answer = rng.choice("ABCDE")
    question = f"Q:Case {i}: {_words(rng, 'medqa_question', per_word)}?"
    return {
        "instruction": "Please answer with one of the option in the bracket",
        "input": f"{question} \n{options!r},",
        "output": f"{answer}: {options[answer]}",
    }


def o1_row(rng: random.Random, i: int, per_word: float) -> dict:
    """medical-o1-reasoning-SFT (en): Question, Complex_CoT, Response."""
    return {
        "Question": f"Case {i}: {_words(rng, 'o1_question', per_word)}?",
        "Complex_CoT": _words(rng, "o1_cot", per_word),
        "Response": _words(rng, "o1_response", per_word),
    }


def alpacare_row(rng: random.Random, i: int, per_word: float) -> dict:
    """AlpaCare-MedInstruct-52k: instruction, input (`<noinput>` in about a third), output."""
    extra = "<noinput>" if rng.random() < 0.35 else _words(rng, "alpacare_input", per_word)
    return {
        "instruction": f"Task {i}: {_words(rng, 'alpacare_instruction', per_word)}.",
        "input": extra,
        "output": _words(rng, "alpacare_output", per_word),
    }


MAKERS = {"medqa": medqa_row, "o1": o1_row, "alpacare": alpacare_row}


def write(out: Path, scale: float = 1.0, per_word: float = GEMMA_TOKENS_PER_WORD, seed: int = 0) -> dict[str, Path]:
    """Write the three sources (HUB_ROWS x scale rows each) and the two evaluation sets into `out`, rows sized for a
    tokenizer making `per_word` tokens a word (`tokens_per_word`); returns the paths by name. Seeded: the same
    files every time."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = {}
    for name, make in MAKERS.items():
        paths[name] = out / f"{name}.jsonl"
        with open(paths[name], "w", encoding="utf-8") as f:
            for i in range(max(1, round(HUB_ROWS[name] * scale))):
                f.write(json.dumps(make(rng, i, per_word)) + "\n")
    for name, rows in EVAL_ROWS.items():
        paths[name] = out / f"{name}.jsonl"
        with open(paths[name], "w", encoding="utf-8") as f:
            for i in range(rows):  # questions no source row holds ("Exam" never starts a source row)
                f.write(json.dumps({"question": f"Exam {name} {i}: {_words(rng, 'o1_question', per_word)}?"}) + "\n")
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--scale", type=float, default=1.0, help="rows per source as a share of the hub's")
    parser.add_argument("--tokenizer", help="size rows for this tokenizer (e.g. tiny); default: Gemma's 1.3 a word")
    args = parser.parse_args()
    per_word = GEMMA_TOKENS_PER_WORD
    if args.tokenizer:
        from medqlora.hub import load_tokenizer

        per_word = tokens_per_word(load_tokenizer(args.tokenizer))
    for name, path in write(args.out, args.scale, per_word).items():
        print(f"{name}: {path}")
