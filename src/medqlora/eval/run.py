"""`medqlora eval`: load the base once with the adapter on top, score every benchmark and the key-point prompts with
the adapter off (the base) and on, and write eval.json + eval_items.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

from medqlora.eval import keypoints, scoring
from medqlora.eval.generate import MAX_NEW_TOKENS
from medqlora.eval.items import DEFAULT_BENCHMARKS, BenchmarkSpec, load_items
from medqlora.eval.scoring import BATCH_SIZE
from medqlora.io import atomic_write_text
from medqlora.model.adapter import load_adapted


def run_eval(
    adapter_dir: str | Path,
    out_dir: str | Path,
    benchmarks: list[BenchmarkSpec] | None = None,
    with_keypoints: bool = True,
    batch_size: int = BATCH_SIZE,
    max_new_tokens: int = MAX_NEW_TOKENS,
    base: str | None = None,
    model_and_tokenizer=None,
) -> dict:
    """Score every benchmark and the key-point prompts, base vs adapter; write eval.json + eval_items.jsonl."""
    model, tokenizer = model_and_tokenizer or load_adapted(adapter_dir, base)
    results: dict = {"adapter": str(adapter_dir), "benchmarks": [], "keypoints": None}
    records: list[dict] = []
    for spec in benchmarks if benchmarks is not None else DEFAULT_BENCHMARKS:
        summary, items = scoring.compare(model, tokenizer, load_items(spec), spec.name, batch_size)
        results["benchmarks"].append(
            {
                **summary,
                "source": spec.hub_id or spec.path,
                "split": spec.split if spec.hub_id else None,
                "limit": spec.limit,
                "prompt": spec.prompt if spec.kind == "medqa" else "abstract + question",
            }
        )
        records += items
    if with_keypoints:
        results["keypoints"], items = keypoints.compare(
            model, tokenizer, keypoints.load_prompts(), max_new_tokens=max_new_tokens, batch_size=batch_size
        )
        records += items
    out = Path(out_dir)
    atomic_write_text(out / "eval_items.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    atomic_write_text(out / "eval.json", json.dumps(results, indent=2))
    return results
