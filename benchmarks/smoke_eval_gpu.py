"""GPU check of the eval path on the real E2B architecture (random weights; one device call).

    python benchmarks/smoke_eval_gpu.py /tmp/e2b-random /tmp/adapter out.json

Random weights answer at random, so this checks mechanics and cost, not accuracy: batched, left-padded
log-likelihood scoring equals one-at-a-time scoring; generation runs with the PLE table in host memory;
the adapter changes the scores; time and peak memory of each part. The checkpoint has no tokenizer, so the
tiny model's (ids < 1024, inside E2B's vocabulary) is copied beside it.
"""

import json
import shutil
import sys
import time
from pathlib import Path

import torch

from medqlora.eval import keypoints, scoring
from medqlora.eval.items import Item
from medqlora.model.adapter import load_adapted
from medqlora.model.loading import QuantSpec, load_base_model
from medqlora.model.lora import LoraSpec, apply_lora
from medqlora.tiny import ensure_tiny_model

ckpt, adapter, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
for f in ensure_tiny_model().iterdir():
    if "token" in f.name or f.suffix == ".jinja":
        shutil.copy(f, ckpt / f.name)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the CPU runs it on the tiny model
base = load_base_model(str(ckpt), QuantSpec(), device, text_only=True, ple_on_host=True)
model = apply_lora(base, LoraSpec())
with torch.no_grad():
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.normal_(0, 0.02)
model.save_pretrained(adapter)
del model, base
if device.type == "cuda":
    torch.cuda.empty_cache()

report = {}
model, tokenizer = load_adapted(adapter)
items = [
    Item(f"q{i}", f"Question {i}: which organ? " + "context " * (i % 7 * 20), ("A", "B", "C", "D"), i % 4)
    for i in range(64)
]
if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
start = time.perf_counter()
summary, records = scoring.compare(model, tokenizer, items, "synthetic", batch_size=16)
report["scoring_s_64_items_base_and_adapter"] = time.perf_counter() - start
one_by_one = scoring.choice_logprobs(model, tokenizer, items[:8], batch_size=1)
batched = [r["adapter_logprobs"] for r in records[:8]]
report["batched_vs_single_max_abs_diff"] = max(abs(a - b) for x, y in zip(one_by_one, batched) for a, b in zip(x, y))
report["adapter_changes_scores"] = any(r["base_logprobs"] != r["adapter_logprobs"] for r in records)
report["scoring_summary"] = summary
start = time.perf_counter()
results, answers = keypoints.compare(model, tokenizer, keypoints.load_prompts(), max_new_tokens=32, batch_size=16)
report["keypoints_s_54_prompts_x2_32_tokens"] = time.perf_counter() - start
report["keypoint_answer_example"] = answers[0]["adapter_answer"][:200]
report["peak_alloc_gib"] = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
out.write_text(json.dumps(report, indent=2))
print(json.dumps(report, indent=2))
