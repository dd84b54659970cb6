"""Benchmark rows with the exact columns of GBaker/MedQA-USMLE-4-options and qiaojin/PubMedQA (pqa_labeled)."""

from __future__ import annotations

import random

# a learnable synthetic task: the topic word decides the right letter and the right option's text
TOPICS = {
    "cardiac": ("A", "aspirin"),
    "renal": ("B", "diuretic"),
    "hepatic": ("C", "steroid"),
    "pulmonary": ("D", "oxygen"),
}
WORDS = ["aspirin", "insulin", "heparin", "saline", "oxygen", "steroid", "statin", "diuretic"]


def medqa_rows(n: int, seed: int = 0) -> list[dict]:
    """Rows shaped like GBaker/MedQA-USMLE-4-options; the gold letter and its option follow the topic word."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topic, (letter, drug) = rng.choice(list(TOPICS.items()))
        others = iter(rng.sample([w for w in WORDS if w != drug], 3))
        options = {key: drug if key == letter else next(others) for key in "ABCD"}
        rows.append(
            {
                "question": f"A {topic} case. Which option?",
                "answer": options[letter],
                "options": options,
                "meta_info": "step1",
                "answer_idx": letter,
                "metamap_phrases": [topic],
            }
        )
    return rows


def pubmedqa_rows(n: int, seed: int = 0) -> list[dict]:
    """Rows shaped like qiaojin/PubMedQA pqa_labeled."""
    rng = random.Random(seed)
    return [
        {
            "pubid": 1000 + i,
            "question": "Does the drug help?",
            "context": {
                "contexts": ["Patients were randomised.", "Outcomes improved."],
                "labels": ["METHODS", "RESULTS"],
                "meshes": ["Humans"],
                "reasoning_required_pred": ["yes"],
                "reasoning_free_pred": ["yes"],
            },
            "long_answer": "It helps.",
            "final_decision": rng.choice(["yes", "no", "maybe"]),
        }
        for i in range(n)
    ]
