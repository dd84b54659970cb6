"""Where the evaluation benchmarks' rows live: the one place their hub ids are written.

`medqlora eval` scores these rows (`eval.items.DEFAULT_BENCHMARKS`), and training removes their questions from the
mix (`data.decontaminate: benchmarks`, `data.mix.benchmark_questions`).
"""

from __future__ import annotations

BENCHMARK_LOCATIONS: dict[str, dict[str, str]] = {
    # MedQA (USMLE, 4 options), test split: 1,273 questions
    "medqa": {"hub_id": "GBaker/MedQA-USMLE-4-options", "split": "test"},
    # PubMedQA, the 1,000 expert-labelled questions (its only split is `train`)
    "pubmedqa": {"hub_id": "qiaojin/PubMedQA", "config": "pqa_labeled", "split": "train"},
}
