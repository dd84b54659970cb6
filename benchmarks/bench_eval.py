"""`medqlora eval` and `generate` on the real E2B architecture (random weights) beside today's path, one GPU.

    python benchmarks/bench_eval.py setup --ckpt /tmp/e2b-random --work /tmp/bench-eval
    python benchmarks/bench_eval.py eval  --work /tmp/bench-eval --json cases/eval.json      # the command, timed
    python benchmarks/bench_eval.py paths --work /tmp/bench-eval --json cases/paths.json     # decode, today, checks
    python benchmarks/bench_eval.py merge --eval cases/eval.json --paths cases/paths.json --json eval-speed.json

`setup` writes MedQA- and PubMedQA-shaped files (the hub datasets' columns; 1,273 and 1,000 rows; prompt lengths
drawn around the real ones, see `docs/evaluation.md`) and a random LoRA adapter (B ~ N(0, 0.02), so the adapter
changes every score) over the checkpoint; the tiny model's tokenizer is copied beside it (ids < 1,024 are inside
E2B's vocabulary). `eval` runs `python -m medqlora eval` as a user would and times it from the command's start to
its exit (eval.json is written last). `paths` measures, in one process: decoding at batch 1 and over the 54
key-point prompts, today's path on a subset (per-item rates scaled to the full sets), the largest bf16
log-probability difference between the paths and how often they pick the same choice, and the cost of one
`MedQAAccuracy` call during training.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MEDQA_ROWS, PUBMEDQA_ROWS = (1273, 1000) if "--smoke" not in sys.argv else (12, 10)  # --smoke: a CPU check
MEDQA_PROMPT_TOKENS, PUBMEDQA_PROMPT_TOKENS = 220, 330  # means of the chat prompt's length, Gemma 4 tokenizer
WORDS = (
    "patient presents with fever cough chest pain dyspnea history hypertension diabetes examination reveals "
    "tenderness laboratory studies show elevated serum creatinine sodium potassium imaging demonstrates lesion "
    "treatment was started therapy improved outcomes randomised trial cohort significant association risk"
).split()


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(max(n, 1)))


def write_items(work: Path, tokenizer) -> dict:
    """The two benchmark files, lengths lognormal (sigma 0.3) around the real means, and their measured lengths."""
    from medqlora.eval.items import BenchmarkSpec, load_items
    from medqlora.eval.scoring import prompt_ids

    rng = random.Random(0)
    per_word = len(tokenizer(_words(random.Random(1), 2000), add_special_tokens=False)["input_ids"]) / 2000
    medqa, pubmedqa = [], []
    for _ in range(MEDQA_ROWS):
        target = min(rng.lognormvariate(math.log(MEDQA_PROMPT_TOKENS), 0.3), 900)
        options = {k: _words(rng, rng.randint(1, 6)) for k in "ABCD"}
        stem = int(target / per_word) - sum(len(o.split()) for o in options.values())
        letter = rng.choice("ABCD")
        medqa.append({"question": _words(rng, stem), "answer": options[letter], "options": options,
                      "meta_info": "step1", "answer_idx": letter, "metamap_phrases": []})  # fmt: skip
    for i in range(PUBMEDQA_ROWS):
        target = min(rng.lognormvariate(math.log(PUBMEDQA_PROMPT_TOKENS), 0.3), 1000)
        sentences = [_words(rng, 20) for _ in range(max(1, int((target - 40) / per_word / 20)))]
        pubmedqa.append({"pubid": 10_000 + i, "question": _words(rng, 12) + "?",
                         "context": {"contexts": sentences, "labels": ["RESULTS"] * len(sentences)},
                         "long_answer": "", "final_decision": rng.choice(["yes", "no", "maybe"])})  # fmt: skip
    lengths = {}
    for name, rows, kind in (("medqa", medqa, "medqa"), ("pubmedqa", pubmedqa, "pubmedqa")):
        path = work / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        items = load_items(BenchmarkSpec(name=name, kind=kind, path=str(path)))
        sizes = sorted(len(prompt_ids(tokenizer, item.user)) for item in items)
        choices = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in items[0].choices]
        lengths[name] = {"rows": len(items), "prompt_tokens_mean": sum(sizes) / len(sizes),
                         "prompt_tokens_p50": sizes[len(sizes) // 2], "prompt_tokens_max": sizes[-1],
                         "choice_tokens": choices}  # fmt: skip
    return lengths


def setup(args: argparse.Namespace) -> None:
    from workload import copy_tiny_tokenizer

    from medqlora.hub import load_tokenizer
    from medqlora.model.loading import QuantSpec, load_base_model
    from medqlora.model.lora import LoraSpec, apply_lora

    ckpt, work = Path(args.ckpt), Path(args.work)
    (work / "run").mkdir(parents=True, exist_ok=True)
    copy_tiny_tokenizer(ckpt)
    base = load_base_model(str(ckpt), QuantSpec(), DEVICE, text_only=True, ple_on_host=True)
    torch.manual_seed(0)
    model = apply_lora(base, LoraSpec())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    model.save_pretrained(work / "run" / "adapter")
    lengths = write_items(work, load_tokenizer(str(ckpt)))
    (work / "lengths.json").write_text(json.dumps(lengths, indent=2))
    print(json.dumps(lengths))


def eval_case(args: argparse.Namespace) -> None:
    """The command a user runs, timed from its start to its exit."""
    work = Path(args.work)
    out = work / "eval-out"
    shutil.rmtree(out, ignore_errors=True)
    adapter, medqa, pubmedqa = work / "run" / "adapter", work / "medqa.jsonl", work / "pubmedqa.jsonl"
    cmd = [sys.executable, "-m", "medqlora", "eval", str(adapter), "--medqa", str(medqa), "--pubmedqa", str(pubmedqa),
           "--out", str(out), *args.extra]  # fmt: skip
    imports = subprocess.run([sys.executable, "-c", "import time; t = time.perf_counter(); import medqlora.cli; "
                              "print(time.perf_counter() - t)"], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    begin = time.time()
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT)
    exited = time.perf_counter() - start
    written = (out / "eval.json").stat().st_mtime - begin if (out / "eval.json").exists() else None
    results = json.loads((out / "eval.json").read_text()) if proc.returncode == 0 else {}
    kp = [json.loads(line) for line in (out / "eval_items.jsonl").read_text().splitlines()] if results else []
    answers = [r for r in kp if r.get("benchmark") == "keypoints"]
    case = {
        "case": "eval",
        "command": " ".join(cmd[1:]),
        "rc": proc.returncode,
        "eval_wall_s": written,
        "eval_wall_s_note": "the command's start to eval.json written (its mtime); process_exit_s: to its exit",
        "process_exit_s": exited,
        "eval_wall_s_inside": results.get("eval_wall_s"),
        "import_s": float(imports.stdout.strip() or "nan"),
        "phases": results.get("phases"),
        "phases_by_side": results.get("phases_by_side"),
        "peak_alloc_gib": results.get("peak_alloc_gib"),
        "benchmarks": results.get("benchmarks"),
        "keypoint_answers": len(answers),
        "lengths": json.loads((work / "lengths.json").read_text()),
    }
    Path(args.json).write_text(json.dumps(case, indent=2))
    print(json.dumps({k: v for k, v in case.items() if k != "benchmarks"}, indent=2))


CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")


def _peak_reset() -> None:
    if CUDA:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if CUDA else None


def _timed(fn, *args):
    """fn(*args) and its wall seconds, the GPU's queued work included."""
    if CUDA:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(*args)
    if CUDA:
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def _agreement(ours: list[list[float]], theirs: list[list[float]], items) -> dict:
    from medqlora.eval.scoring import predictions

    diff = max(abs(a - b) for x, y in zip(ours, theirs) for a, b in zip(x, y))
    same = [predictions(o, i.choices) == predictions(t, i.choices) for o, t, i in zip(ours, theirs, items)]
    raw = [predictions(o, i.choices)[0] == predictions(t, i.choices)[0] for o, t, i in zip(ours, theirs, items)]
    n = len(same)
    return {"max_abs_logprob_diff": diff, "same_choice_raw": sum(raw) / n, "same_choice_both": sum(same) / n}


def paths(args: argparse.Namespace) -> None:
    import eval_today

    from medqlora.eval import keypoints
    from medqlora.eval.decode import GreedyDecoder
    from medqlora.eval.generate import stop_ids
    from medqlora.eval.items import BenchmarkSpec, load_items
    from medqlora.eval.scoring import choice_logprobs, prompt_ids
    from medqlora.model.adapter import load_adapted
    from medqlora.model.compile import eager_layers
    from medqlora.model.inference import for_inference

    work, n = Path(args.work), args.today_items
    import peft
    import transformers

    report: dict = {"case": "paths", "device": torch.cuda.get_device_name() if CUDA else "cpu", "today_items": n}
    report["versions"] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
    model, tokenizer = load_adapted(work / "run" / "adapter")
    items = {k: load_items(BenchmarkSpec(name=k, kind=k, path=str(work / f"{k}.jsonl"))) for k in ("medqa", "pubmedqa")}
    subset = {k: v[:n] for k, v in items.items()}
    prompts = [prompt_ids(tokenizer, p.prompt) for p in keypoints.load_prompts()]
    stops = stop_ids(tokenizer)

    # today's path on a subset: base and adapter, then per-item rates scaled to the full sets
    today, old = {}, {}
    for side in ("base", "adapter"):
        for name, subset_items in subset.items():
            with model.disable_adapter() if side == "base" else contextlib.nullcontext():
                old[(name, side)], seconds = _timed(eval_today.choice_logprobs, model, tokenizer, subset_items)
            today[f"{name}_{side}_s_per_item"] = seconds / len(subset_items)
    _peak_reset()
    _, seconds = _timed(eval_today.generate_ids, model, tokenizer, prompts[:1], args.today_tokens)
    today["decode_tokens_per_s_b1"] = args.today_tokens / seconds
    _, seconds = _timed(eval_today.generate_ids, model, tokenizer, prompts[:8], args.today_tokens)
    today["decode_tokens_per_s_batch8"] = 8 * args.today_tokens / seconds
    today["peak_alloc_gib_decode"] = _peak()
    full = {"medqa": MEDQA_ROWS, "pubmedqa": PUBMEDQA_ROWS}
    today["phases_estimated"] = {
        name: sum(today[f"{name}_{s}_s_per_item"] for s in ("base", "adapter")) * full[name] for name in full
    }
    today["phases_estimated"]["keypoints"] = 2 * len(prompts) * 512 / today["decode_tokens_per_s_batch8"]
    report["today"] = today
    # the floor: today's own path at batch 1 against batch 8 (kernels of other shapes round differently)
    floor = {}
    for name, subset_items in subset.items():
        alone = eval_today.choice_logprobs(model, tokenizer, subset_items[:16], batch_size=1)
        floor[f"{name}_adapter"] = _agreement(alone, old[(name, "adapter")][:16], subset_items[:16])
    report["today_batch1_vs_batch8"] = floor

    # the new scorer on the same 4-bit + unmerged-LoRA model (what MedQAAccuracy runs during training)
    new_peft = {}
    for side in ("base", "adapter"):
        for name, subset_items in subset.items():
            with model.disable_adapter() if side == "base" else contextlib.nullcontext():
                new_peft[(name, side)] = choice_logprobs(model, tokenizer, subset_items)
    _peak_reset()
    with eager_layers(model):
        _, seconds = _timed(choice_logprobs, model, tokenizer, items["medqa"][:200], 4096, "callback")
    report["medqa_callback"] = {"items": 200, "batch_tokens": 4096, "seconds": seconds, "peak_alloc_gib": _peak()}

    # dense weights: decoding and the eval path's scores
    dense = for_inference(model)
    model = None  # the dense model replaced it; its 4-bit weights are freed
    if CUDA:
        torch.cuda.empty_cache()
    new_dense = {}
    for side in ("base", "adapter"):
        if side == "adapter":
            dense.merge_adapter()
        for name, subset_items in subset.items():
            new_dense[(name, side)] = choice_logprobs(dense.model, tokenizer, subset_items)
    agreement = {}
    for key in old:
        label = "_".join(key)
        agreement[label] = {
            "eval_path_vs_today": _agreement(new_dense[key], old[key], subset[key[0]]),
            "packed_scoring_same_weights_vs_today": _agreement(new_peft[key], old[key], subset[key[0]]),
        }
    report["bf16_agreement"] = agreement
    decoder = GreedyDecoder(dense.model, stops, tokenizer.pad_token_id)
    _peak_reset()
    decoder([prompts[0]], 8)  # a first call outside the timing (CUDA context, kernels' first launch)
    runs = []
    for _ in range(2):
        ids, seconds = _timed(decoder, [prompts[0]], args.b1_tokens)
        runs.append(len(ids[0]) / seconds)
    report["decode_tokens_per_s_b1"] = max(runs)
    report["decode_b1_runs"] = {"new_tokens": args.b1_tokens, "tokens_per_s": runs}
    ids, seconds = _timed(decoder, prompts, 512)
    generated = sum(map(len, ids))
    report["decode_tokens_per_s_batched"] = generated / seconds
    report["decode_batched"] = {"prompts": len(prompts), "max_new_tokens": 512, "generated": generated, "s": seconds}
    report["peak_alloc_gib_decode"] = _peak()
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def merge(args: argparse.Namespace) -> None:
    """One JSON of both cases, with the headline figures at the top under the names a reader looks for."""
    cases = {name: json.loads(Path(path).read_text()) for name, path in (("eval", args.eval), ("paths", args.paths))}
    ev, p = cases["eval"], cases["paths"]
    merged = {
        "gpu": p["device"],
        "versions": p["versions"],  # the GPU machine's, as the paths case recorded them (not this machine's)
        "summary": {
            "eval_wall_s": ev["eval_wall_s"],
            "phases": ev["phases"],
            "peak_alloc_gib": {
                "eval": ev["peak_alloc_gib"],
                "decode": p["peak_alloc_gib_decode"],
                "medqa_callback": p["medqa_callback"]["peak_alloc_gib"],
            },  # fmt: skip
            "decode_tokens_per_s_b1": p["decode_tokens_per_s_b1"],
            "decode_tokens_per_s_batched": p["decode_tokens_per_s_batched"],
            "today": {
                "eval_wall_s_estimated": ev["phases"]["load"] + sum(p["today"]["phases_estimated"].values()),
                "phases_estimated": p["today"]["phases_estimated"],
                "decode_tokens_per_s_b1": p["today"]["decode_tokens_per_s_b1"],
                "decode_tokens_per_s_batch8": p["today"]["decode_tokens_per_s_batch8"],
            },  # fmt: skip
            "medqa_callback_s_per_call": p["medqa_callback"]["seconds"],
        },
        **cases,
    }
    Path(args.json).write_text(json.dumps(merged, indent=2))
    print(json.dumps(merged["summary"], indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup")
    s.add_argument("--ckpt", required=True)
    s.add_argument("--work", required=True)
    e = sub.add_parser("eval")
    e.add_argument("--work", required=True)
    e.add_argument("--json", required=True)
    e.add_argument("extra", nargs="*", help="more `medqlora eval` flags, after --")
    p = sub.add_parser("paths")
    p.add_argument("--work", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--today-items", type=int, default=64)
    p.add_argument("--today-tokens", type=int, default=32)
    p.add_argument("--b1-tokens", type=int, default=256)
    for sub_parser in (s, e, p):
        sub_parser.add_argument("--smoke", action="store_true", help="12 and 10 rows: a quick check on the CPU")
    m = sub.add_parser("merge")
    m.add_argument("--eval", required=True)
    m.add_argument("--paths", required=True)
    m.add_argument("--json", required=True)
    args = parser.parse_args()
    {"setup": setup, "eval": eval_case, "paths": paths, "merge": merge}[args.cmd](args)


if __name__ == "__main__":
    main()
