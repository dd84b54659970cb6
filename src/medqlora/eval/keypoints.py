"""Clinical key-point evaluation: the share of expected key points an answer mentions, by discipline.

Matching: answer and phrasings are lower-cased, accents removed, every run of characters other than letters
and digits becomes one space; a key point is hit when any of its phrasings occurs in the answer as whole
words (so "arb" does not match "carbon"). The prompt set ships with medqlora (`keypoints.yaml`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml


@dataclass(frozen=True)
class KeyPointPrompt:
    """A clinical prompt and its key points, each a tuple of accepted phrasings."""

    id: str
    discipline: str
    prompt: str
    key_points: tuple[tuple[str, ...], ...]


def load_prompts(path: str | Path | None = None) -> list[KeyPointPrompt]:
    """The shipped prompt set, or a YAML file of the same shape; checks every entry."""
    text = Path(path).read_text() if path else resources.files("medqlora.eval").joinpath("keypoints.yaml").read_text()
    prompts = []
    for index, entry in enumerate(yaml.safe_load(text) or []):
        missing = {"id", "discipline", "prompt", "key_points"} - set(entry)
        if missing:
            raise ValueError(f"key-point prompt #{index} ({entry.get('id', '?')}): missing {sorted(missing)}")
        points = tuple(tuple(str(p) for p in point) for point in entry["key_points"])
        if not points or any(not point for point in points):
            raise ValueError(f"key-point prompt {entry['id']!r}: every key point needs at least one phrasing")
        prompts.append(KeyPointPrompt(entry["id"], entry["discipline"], entry["prompt"], points))
    return prompts


def normalise(text: str) -> str:
    """Lower case, no accents, words separated by single spaces, padded with one space each side."""
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    return " " + " ".join(re.sub(r"[^a-z0-9]+", " ", text).split()) + " "


def hits(answer: str, prompt: KeyPointPrompt) -> list[bool]:
    """For each key point: does the answer mention any of its phrasings?"""
    said = normalise(answer)
    return [any(normalise(phrase) in said for phrase in point) for point in prompt.key_points]


def score(answers: dict[str, str], prompts: list[KeyPointPrompt]) -> dict:
    """Hit rate (%) per discipline (mean over its prompts) and on average over all prompts."""
    by_discipline: dict[str, list[float]] = {}
    per_prompt = {}
    for prompt in prompts:
        found = hits(answers[prompt.id], prompt)
        per_prompt[prompt.id] = 100 * sum(found) / len(found)
        by_discipline.setdefault(prompt.discipline, []).append(per_prompt[prompt.id])
    disciplines = {name: sum(v) / len(v) for name, v in by_discipline.items()}
    average = sum(per_prompt.values()) / max(len(per_prompt), 1)
    return {"average": average, "disciplines": disciplines, "prompts": per_prompt}


def summarise(prompts: list[KeyPointPrompt], base: list[str], tuned: list[str]) -> tuple[dict, list[dict]]:
    """Hit rates of the base's and the adapter's answers (in `prompts`' order), and one record per prompt."""
    ids = [p.id for p in prompts]
    base_scores, tuned_scores = score(dict(zip(ids, base)), prompts), score(dict(zip(ids, tuned)), prompts)
    records = [
        {
            "benchmark": "keypoints",
            "id": p.id,
            "discipline": p.discipline,
            "base_answer": b,
            "adapter_answer": t,
            "base_hits": hits(b, p),
            "adapter_hits": hits(t, p),
        }
        for p, b, t in zip(prompts, base, tuned, strict=True)
    ]
    return {"base": base_scores, "adapter": tuned_scores}, records
