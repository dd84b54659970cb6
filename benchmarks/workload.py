"""The benchmark's workload and bookkeeping: the recipe's settings, synthetic rows of the mix's lengths, the random
E2B checkpoint, the step clock and each case's summary (throughput, MFU, memory). Shared by the plain loop
(plain_loop.py), medqlora's run (medqlora_run.py) and the command line (bench_train.py).
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import time
from pathlib import Path

import torch
import yaml
from flops import FlopModel, peak_flops, token_positions

EPOCH_ROWS = 47_189  # the model card's training rows
# (prompt median, answer median, share) per source, lognormal sigma 0.5, capped at the recipe's max length
MIX = {"medqa": (230, 12, 0.34), "o1": (90, 900, 0.30), "alpacare": (40, 230, 0.36)}
RECIPE_FILE = Path(__file__).resolve().parents[1] / "configs" / "gemma4-e2b-medical.yaml"


def recipe(path: Path = RECIPE_FILE) -> dict:
    """The recipe's settings, read from its YAML (never restated here): model section, lengths, accumulation."""
    config = yaml.safe_load(path.read_text())
    callbacks = {c["class_path"].rsplit(".", 1)[-1]: c.get("init_args") or {} for c in config["trainer"]["callbacks"]}
    return {
        "model": config["model"],
        "max_length": config["data"]["max_length"],
        "micro_batch": config["data"]["micro_batch_size"],
        "accumulate": callbacks["GradientAccumulation"]["accumulate"],
        "warmup_ratio": callbacks["CosineWarmup"]["warmup_ratio"],
    }


RECIPE = recipe()
MAX_LEN, MICRO_BATCH, ACCUMULATE = RECIPE["max_length"], RECIPE["micro_batch"], RECIPE["accumulate"]
LR, LORA = RECIPE["model"]["lr"], RECIPE["model"]["lora"]
WARMUP_BATCHES, TIMED_BATCHES = 3, int(os.environ.get("BENCH_TIMED", 21))
GIB = 1024**3


def mix_lengths(rng: random.Random) -> tuple[int, int]:
    """(prompt, answer) tokens of one row of the mix's length profile (MIX), capped at the recipe's max length."""
    name = rng.choices(list(MIX), weights=[m[2] for m in MIX.values()])[0]
    p_med, a_med, _ = MIX[name]
    prompt = max(4, round(rng.lognormvariate(math.log(p_med), 0.5)))
    answer = max(2, round(rng.lognormvariate(math.log(a_med), 0.5)))
    prompt = min(prompt, MAX_LEN - 2)
    return prompt, min(answer, MAX_LEN - prompt)


def expected_epoch_supervised_tokens(rows: int = EPOCH_ROWS, draws: int = 200_000, seed: int = 0) -> int:
    """Supervised tokens in an epoch of `rows` rows of the mix: the mean answer length (every answer token is a
    supervised target) over `draws` rows drawn as `synthetic_rows` draws them, times `rows`. Fixed seed: the same
    count in every run, whichever rows a case happened to time."""
    rng = random.Random(seed)
    return round(sum(mix_lengths(rng)[1] for _ in range(draws)) / draws * rows)


LONG_TAIL = (90, 900, 1.0)  # the reasoning source's prompt and answer medians, with a lognormal sigma of 1: a long tail


def long_tail_lengths(rng: random.Random, max_len: int) -> tuple[int, int]:
    """(prompt, answer) of a reasoning row whose answer runs to a long tail (1 in 10 over 3,200 tokens, 1 in 37
    over 6,200), capped at `max_len`."""
    prompt_median, answer_median, sigma = LONG_TAIL
    prompt = max(4, round(rng.lognormvariate(math.log(prompt_median), 0.5)))
    answer = max(2, round(rng.lognormvariate(math.log(answer_median), sigma)))
    return prompt, min(answer, max_len - prompt)


def synthetic_rows(kind: str, n: int, vocab: int, seed: int = 0, max_len: int = MAX_LEN) -> list[dict]:
    """Rows of random token ids: full 2048-token rows (all supervised), the mix's length profile, or reasoning rows
    with a long tail up to `max_len` (`long-tail`)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        if kind == "full-2x2048":
            prompt, answer = 1, MAX_LEN - 1
        elif kind == "long-tail":
            prompt, answer = long_tail_lengths(rng, max_len)
        else:
            prompt, answer = mix_lengths(rng)
        ids = [2] + [rng.randrange(3, vocab) for _ in range(prompt + answer - 1)]
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return rows


def copy_tiny_tokenizer(ckpt: Path) -> None:
    """Write the tiny model's tokenizer (Gemma 4's turn tokens, chat template, byte fallback) beside a checkpoint that
    has none: its ids are all inside E2B's vocabulary."""
    import shutil

    from medqlora.tiny import ensure_tiny_model

    for f in ensure_tiny_model().iterdir():
        if "token" in f.name or f.suffix == ".jinja":
            shutil.copy(f, Path(ckpt) / f.name)


def build(out: Path, reference: Path) -> None:
    """Save the real E2B architecture with random bf16 weights as a local checkpoint."""
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration

    cfg = json.loads(reference.read_text())
    config = Gemma4Config(**{k: v for k, v in cfg.items() if k != "model_type"})
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        torch.set_default_dtype(torch.bfloat16)
        model = Gemma4ForConditionalGeneration(config)
        torch.set_default_dtype(torch.float32)
    print(f"built {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters", flush=True)
    model.save_pretrained(out, safe_serialization=True)


class Clock:
    """Wall time between consecutive step ends (everything a step costs: data, transfer, compute)."""

    def __init__(self) -> None:
        self.last = None
        self.steps: list[tuple[float, dict]] = []

    def tick(self, batch_stats: dict) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        if self.last is not None:
            self.steps.append((now - self.last, batch_stats))
        self.last = now


EPOCH_SUPERVISED_TOKENS = expected_epoch_supervised_tokens()
FLOP_MODEL: FlopModel | None = None  # set by bench_train.case(): model FLOPs of each micro-batch, for MFU


def batch_stats(batch: dict) -> dict:
    """Tokens, supervised tokens, rows and model FLOPs in one micro-batch."""
    labels, real = batch["labels"], batch["input_ids"] != 0  # synthetic ids are never the pad id 0
    tokens = int(real.sum())
    rows = int(((batch["position_ids"] == 0) & real).sum()) if "position_ids" in batch else labels.shape[0]
    supervised = int((labels[:, 1:] != -100).sum())
    flops = FLOP_MODEL.batch(token_positions(batch), supervised) if FLOP_MODEL else 0.0
    return {"tokens": tokens, "supervised": supervised, "rows": rows, "slots": labels.numel(), "flops": flops}


def host_memory() -> dict:
    """This process's host memory (GiB): resident, and proportional (pages shared with other processes, such as a
    PLE table mapped by every rank, counted once in total across them)."""
    fields = dict(line.split()[:2] for line in open("/proc/self/smaps_rollup") if line.split()[0] in ("Rss:", "Pss:"))
    return {"host_rss_gib": int(fields["Rss:"]) / 2**20, "host_pss_gib": int(fields["Pss:"]) / 2**20}


def summarise(system: str, kind: str, clock: Clock, device: torch.device, warmup: int = WARMUP_BATCHES) -> dict:
    """One case's figures (throughput, padding, epoch time, peak memory), from the timed steps (after warm-up)."""
    timed = clock.steps[warmup:]
    seconds = sum(s for s, _ in timed)
    total = {k: sum(st[k] for _, st in timed) for k in ("tokens", "supervised", "rows", "slots", "flops")}
    case = {
        "system": system,
        "rows": kind,
        "steps_timed": len(timed),
        "step_s_median": statistics.median(s for s, _ in timed),
        "step_s": [round(s, 4) for s, _ in timed],  # each one: a slow outlier (a recompile, say) shows here
        "tokens_per_s": total["tokens"] / seconds,
        "supervised_tokens_per_s": total["supervised"] / seconds,
        "rows_per_s": total["rows"] / seconds,
        "padding_share": 1 - total["tokens"] / total["slots"],
        "supervised_share": total["supervised"] / total["tokens"],
        # the mix's expected supervised tokens at this case's supervised rate (not its rows/s: windows of rows differ)
        "epoch_supervised_tokens": EPOCH_SUPERVISED_TOKENS,
        "epoch_minutes": EPOCH_SUPERVISED_TOKENS / (total["supervised"] / seconds) / 60,
        "model_tflops_per_s": sum(st["flops"] for _, st in timed) / seconds / 1e12,
        "flops_per_token": sum(st["flops"] for _, st in timed) / max(total["tokens"], 1),
    }
    peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    case["mfu"] = case["model_tflops_per_s"] * 1e12 / peak if peak else None
    if device.type == "cuda":
        case["peak_alloc_gib"] = torch.cuda.max_memory_allocated(device) / GIB
        case["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / GIB
        stats = torch.cuda.memory_stats(device)  # retries: the allocator freed its cache to fit (slow steps)
        case["alloc_retries"], case["cuda_ooms"] = stats["num_alloc_retries"], stats["num_ooms"]
        case["allocator"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    return case
