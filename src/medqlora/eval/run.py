"""`medqlora eval`: load the base once with the adapter, score every benchmark and the key-point prompts as the base
and then with the adapter merged in, and write eval.json + eval_items.jsonl.

The model is made ready for inference once (`model.inference`: dense linears, fused norms), everything runs as the
base, the adapter is merged, and everything runs again; eval.json records the wall time of each phase.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from medqlora.eval import BATCH_TOKENS, MAX_NEW_TOKENS, keypoints
from medqlora.eval.generate import generate
from medqlora.eval.items import DEFAULT_BENCHMARKS, BenchmarkSpec, load_items
from medqlora.eval.scoring import BatchSize, choice_logprobs, summarise
from medqlora.io import atomic_write_text
from medqlora.model.adapter import check_adapter_dir, load_adapted
from medqlora.model.inference import for_inference

SIDES = ("base", "adapter")


class PhaseClock:
    """Wall seconds per phase and model side, the GPU's queued work included (it is waited for at each end)."""

    def __init__(self):
        self.start = time.perf_counter()
        self.seconds: dict[str, dict[str, float]] = defaultdict(dict)

    @contextmanager
    def __call__(self, phase: str, side: str = "both") -> Iterator[None]:
        begin = time.perf_counter()
        yield
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds[phase][side] = self.seconds[phase].get(side, 0.0) + time.perf_counter() - begin

    def summary(self) -> dict:
        """`eval_wall_s` (since the clock started), `phases` (seconds per phase, both sides summed) and
        `phases_by_side`."""
        return {
            "eval_wall_s": time.perf_counter() - self.start,
            "phases": {phase: sum(sides.values()) for phase, sides in self.seconds.items()},
            "phases_by_side": {phase: dict(sides) for phase, sides in self.seconds.items()},
        }


def run_eval(
    adapter_dir: str | Path,
    out_dir: str | Path,
    benchmarks: list[BenchmarkSpec] | None = None,
    with_keypoints: bool = True,
    batch_tokens: BatchSize = BATCH_TOKENS,
    max_new_tokens: int = MAX_NEW_TOKENS,
    base: str | None = None,
    clock: PhaseClock | None = None,
) -> dict:
    """Score every benchmark and the key-point prompts, base vs adapter; write eval.json + eval_items.jsonl.

    batch_tokens: tokens per scoring forward, or "auto" (from the GPU's free memory). clock: a clock started
    earlier (the command's start), so `eval_wall_s` covers what came before this call too."""
    clock = clock or PhaseClock()
    specs = benchmarks if benchmarks is not None else DEFAULT_BENCHMARKS
    with clock("load"):
        check_adapter_dir(adapter_dir)  # what is cheap to check fails before the model loads
        items = {spec.name: load_items(spec) for spec in specs}
        prompts = keypoints.load_prompts() if with_keypoints else []
        model, tokenizer = load_adapted(adapter_dir, base)
        ready = for_inference(model)
    del model
    scores: dict[str, dict[str, list]] = {name: {} for name in items}
    answers: dict[str, list[str]] = {}
    for side in SIDES:
        if side == "adapter":
            with clock("merge"):
                ready.merge_adapter()
        for name, questions in items.items():
            with clock(name, side):
                scores[name][side] = choice_logprobs(ready.model, tokenizer, questions, batch_tokens, f"{name} {side}")
        if prompts:
            with clock("keypoints", side):
                texts = [p.prompt for p in prompts]
                answers[side] = generate(
                    ready.model, tokenizer, texts, max_new_tokens=max_new_tokens, desc=f"key points {side}"
                )
    results: dict = {"adapter": str(adapter_dir), "benchmarks": [], "keypoints": None}
    records: list[dict] = []
    for spec in specs:
        both = scores[spec.name]
        summary, per_item = summarise(spec.name, items[spec.name], both["base"], both["adapter"])
        results["benchmarks"].append(
            {
                **summary,
                "source": spec.hub_id or spec.path,
                "split": spec.split if spec.hub_id else None,
                "limit": spec.limit,
                "prompt": spec.prompt if spec.kind == "medqa" else "abstract + question",
            }
        )
        records += per_item
    if prompts:
        results["keypoints"], per_prompt = keypoints.summarise(prompts, answers["base"], answers["adapter"])
        records += per_prompt
    out = Path(out_dir)
    atomic_write_text(out / "eval_items.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    results.update(clock.summary())
    if torch.cuda.is_available():
        results["peak_alloc_gib"] = torch.cuda.max_memory_allocated() / 2**30
    atomic_write_text(out / "eval.json", json.dumps(results, indent=2))
    return results
