"""medqlora's multiple-choice scorer against lm-evaluation-harness, item by item, on the same model and prompts.

    pip install lm-eval==0.4.13
    python benchmarks/check_lm_eval.py ADAPTER MEDQA PUBMEDQA OUT.json [--limit N]

ADAPTER is an adapter directory a run wrote (e.g. the tiny default's: `medqlora fit --config configs/tiny.yaml`);
MEDQA and PUBMEDQA are files with the benchmarks' columns (docs/evaluation.md). Each item's prompt and choices are
medqlora's (`eval.items`); lm-evaluation-harness's HFLM computes every (prompt, choice) log-likelihood with its own
tokenisation, batching and padding, on the very model `medqlora eval` scores (4-bit base + adapter, adapter off for
the base). Reported per benchmark and model: the share of items where both pick the same option (raw sum and
lm-eval's acc_norm, per character), and the largest log-likelihood difference.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from importlib.metadata import version
from pathlib import Path

import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from medqlora.data.chat import generation_prompt
from medqlora.eval.items import BenchmarkSpec, load_items
from medqlora.eval.scoring import choice_logprobs, predictions
from medqlora.model.adapter import load_adapted
from medqlora.model.loading import QuantSpec

TOLERANCE = 1e-4  # nats per choice, in fp32 (bf16/NF4 kernels over other padding and batch shapes differ by more)


def harness_logprobs(model, tokenizer, items) -> list[list[float]]:
    """log p(choice | prompt) for every choice of every item, computed by lm-evaluation-harness."""
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8, add_bos_token=False, device="cpu")
    prompts = [generation_prompt([{"role": "user", "content": item.user}], tokenizer, thinking=False) for item in items]
    requests = [
        Instance("loglikelihood", doc={}, arguments=(prompt, choice), idx=c)
        for prompt, item in zip(prompts, items)
        for c, choice in enumerate(item.choices)
    ]
    results = iter(value for value, _greedy in lm.loglikelihood(requests, disable_tqdm=True))
    return [[next(results) for _ in item.choices] for item in items]


def agreement(ours: list[list[float]], theirs: list[list[float]], items) -> dict:
    """How often the two pick the same option, raw and length-normalised, and how far their numbers are apart."""
    same_raw = same_norm = 0
    for a, b, item in zip(ours, theirs, items, strict=True):
        (raw_a, norm_a), (raw_b, norm_b) = predictions(a, item.choices), predictions(b, item.choices)
        same_raw += raw_a == raw_b
        same_norm += norm_a == norm_b
    gap = max(abs(x - y) for a, b in zip(ours, theirs) for x, y in zip(a, b))
    n = len(items)
    return {"items": n, "same_choice_raw": same_raw / n, "same_choice_norm": same_norm / n, "max_abs_loglik_diff": gap}


PRECISIONS = {  # fp32: the two scorers' logic, exactly; nf4-bf16: what `medqlora eval` runs
    "fp32": QuantSpec(load_in_4bit=False, double_quant=False, compute_dtype="float32"),
    "nf4-bf16": QuantSpec(),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("adapter", "medqa", "pubmedqa", "out"):
        parser.add_argument(name, type=Path)
    parser.add_argument("--limit", type=int, default=50)
    args = parser.parse_args()
    specs = [
        BenchmarkSpec(name="medqa", kind="medqa", path=str(args.medqa), limit=args.limit),
        BenchmarkSpec(name="medqa-letter", kind="medqa", path=str(args.medqa), limit=args.limit, prompt="letter"),
        BenchmarkSpec(name="pubmedqa", kind="pubmedqa", path=str(args.pubmedqa), limit=args.limit),
    ]
    report = {"lm_eval": version("lm-eval"), "tolerance_nats_fp32": TOLERANCE, "runs": {}}
    for precision, quant in PRECISIONS.items():
        model, tokenizer = load_adapted(args.adapter, device="cpu", quant=quant)
        for spec in specs:
            items = load_items(spec)
            for label in ("base", "adapter"):
                with model.disable_adapter() if label == "base" else contextlib.nullcontext(), torch.no_grad():
                    ours, theirs = choice_logprobs(model, tokenizer, items), harness_logprobs(model, tokenizer, items)
                result = agreement(ours, theirs, items)
                report["runs"].setdefault(precision, {}).setdefault(spec.name, {})[label] = result
                print(precision, spec.name, label, result)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
