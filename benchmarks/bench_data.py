"""Data preparation at the recipe's size, on this machine's CPU: the recipe's data section (targets, sample policy,
validation share, seed, max length, decontamination) over local files the size of its three hub datasets
(hub_sized_data.py, rows sized for the tokenizer at hand), timed cold (an empty datasets cache) and again
(the same preparation, reused), each in a fresh process as a user's `medqlora fit` would run it.

    python benchmarks/bench_data.py [--tokenizer tiny] [--out benchmarks/results/DATE-cpu-data-prep.json]

Issue #37's aims on 2 cores: cold <= 60 s, again <= 15 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parent / "configs" / "gemma4-e2b-medical.yaml"

PREPARE = """
import json, sys, time
start = time.perf_counter()
from medqlora.data.datamodule import MedicalMixDataModule
from medqlora.data.mix import EvalQuestions
from medqlora.data.sources import SourceSpec
spec = json.loads(sys.argv[1])
imported = time.perf_counter()
dm = MedicalMixDataModule(
    sources=[SourceSpec(**s) for s in spec.pop("sources")],
    decontaminate=[EvalQuestions(**e) for e in spec.pop("decontaminate")],
    **spec,
)
dm.prepare_data()
prepared = time.perf_counter()
print(json.dumps({
    "import_s": round(imported - start, 2),
    "prepare_s": round(prepared - imported, 2),
    "card": dm.card.content,
}))
"""


def recipe_data(files: dict[str, Path], tokenizer: str) -> dict:
    """The recipe's data section with each source and evaluation set read from `files`."""
    data = yaml.safe_load(RECIPE.read_text())["data"]
    sources = [
        {k: v for k, v in s.items() if k not in ("hub_id", "config")} | {"path": str(files[s["name"]])}
        for s in data["sources"]
    ]
    decontaminate = [{"name": name, "path": str(files[name])} for name in ("medqa-usmle-test", "pubmedqa-labeled")]
    keep = ("max_length", "micro_batch_size", "packing", "reasoning", "sample_policy", "val_fraction", "seed")
    return {**{k: data[k] for k in keep}, "tokenizer": tokenizer, "sources": sources, "decontaminate": decontaminate}


def timed_run(spec: dict, cache: Path) -> dict:
    """One preparation in a fresh process: wall time from its start to the prepared splits."""
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PREPARE, json.dumps(spec)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall_s": round(wall, 2), **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", default="tiny")
    parser.add_argument(
        "--out", type=Path, default=HERE / "results" / f"{time.strftime('%Y-%m-%d')}-cpu-data-prep.json"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    import hub_sized_data

    from medqlora.hub import load_tokenizer

    with tempfile.TemporaryDirectory(prefix="medqlora-bench-data-") as tmp:
        per_word = hub_sized_data.tokens_per_word(load_tokenizer(args.tokenizer))
        files = hub_sized_data.write(Path(tmp) / "data", per_word=per_word)
        spec = recipe_data(files, args.tokenizer)
        cache = Path(tmp) / "cache"
        cold = timed_run(spec, cache)
        again = timed_run(spec, cache)
        reseeded = timed_run({**spec, "seed": spec["seed"] + 1}, cache)  # a new mix from the same tokenised maps
    card = cold.pop("card")
    for run in (again, reseeded):
        run.pop("card")
    result = {
        "command": "python benchmarks/bench_data.py --tokenizer " + args.tokenizer,
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "processor": platform.processor() or platform.machine(),
            "avx512_bf16": "avx512_bf16" in Path("/proc/cpuinfo").read_text(),
        },
        "rows": hub_sized_data.HUB_ROWS,
        "tokens_per_word": round(per_word, 3),
        "cold": cold,
        "again": again,
        "reseeded": reseeded,
        "aims_s": {"cold": 60, "again": 15},
        "totals": card["totals"],
        "sources": {
            name: {
                k: s[k]
                for k in (
                    "available",
                    "removed",
                    "usable",
                    "target",
                    "train_rows",
                    "val_rows",
                    "upsampled",
                    "token_length_percentiles",
                )
            }
            for name, s in card["sources"].items()
        },
        "notices": card["notices"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("cold", "again", "reseeded", "totals")}, indent=1))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
