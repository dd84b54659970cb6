"""`medqlora eval | generate | merge`: load the base once with the adapter on top, then measure, answer or merge."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from medqlora.eval import keypoints, scoring
from medqlora.eval.items import DEFAULT_BENCHMARKS, BenchmarkSpec, load_items
from medqlora.io import atomic_directory, atomic_write_text
from medqlora.model.loading import QuantSpec, load_base_model, load_tokenizer, resolve_name_or_path

WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def check_adapter_dir(adapter_dir: str | Path) -> Path:
    """`adapter_dir` if it holds a whole PEFT adapter (config and weights); else one line saying what is missing."""
    directory = Path(adapter_dir)
    hint = "pass the adapter directory a run wrote (runs/<name>/<version>/adapter)"
    if not directory.is_dir():
        raise FileNotFoundError(f"adapter {directory} is not a directory; {hint}")
    if not (directory / "adapter_config.json").is_file():
        raise FileNotFoundError(f"adapter {directory} has no adapter_config.json; {hint}")
    if not any((directory / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(f"adapter {directory} has no weights file ({' or '.join(WEIGHT_FILES)}): it was "
                                f"not written whole; {hint}")
    return directory


def adapter_base(adapter_dir: str | Path) -> str:
    """The base model an adapter was trained on, from its adapter_config.json."""
    config = check_adapter_dir(adapter_dir) / "adapter_config.json"
    return json.loads(config.read_text())["base_model_name_or_path"]


def load_adapted(adapter_dir: str | Path, base: str | None = None, device: str | None = None,
                 quant: QuantSpec | None = None):
    """(PeftModel in eval mode, tokenizer): the base (4-bit unless `quant` says otherwise), lean as in training,
    with the adapter loaded."""
    from peft import PeftModel

    name = base or adapter_base(adapter_dir)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_base_model(name, quant or QuantSpec(), target, text_only=True, ple_on_host=target.type == "cuda")
    model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    return model, load_tokenizer(name)


def run_eval(adapter_dir: str | Path, out_dir: str | Path, benchmarks: list[BenchmarkSpec] | None = None,
             with_keypoints: bool = True, batch_size: int = 8, max_new_tokens: int = 512, base: str | None = None,
             model_and_tokenizer=None) -> dict:
    """Score every benchmark and the key-point prompts, base vs adapter; write eval.json + eval_items.jsonl."""
    model, tokenizer = model_and_tokenizer or load_adapted(adapter_dir, base)
    results: dict = {"adapter": str(adapter_dir), "benchmarks": [], "keypoints": None}
    records: list[dict] = []
    for spec in benchmarks if benchmarks is not None else DEFAULT_BENCHMARKS:
        summary, items = scoring.compare(model, tokenizer, load_items(spec), spec.name, batch_size)
        results["benchmarks"].append({**summary, "source": spec.hub_id or spec.path,
                                      "split": spec.split if spec.hub_id else None, "limit": spec.limit,
                                      "prompt": spec.prompt if spec.kind == "medqa" else "abstract + question"})
        records += items
    if with_keypoints:
        results["keypoints"], items = keypoints.compare(model, tokenizer, keypoints.load_prompts(),
                                                        max_new_tokens=max_new_tokens, batch_size=batch_size)
        records += items
    out = Path(out_dir)
    atomic_write_text(out / "eval_items.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    atomic_write_text(out / "eval.json", json.dumps(results, indent=2))
    return results


def merge(adapter_dir: str | Path, out_dir: str | Path, base: str | None = None) -> Path:
    """bf16 weights with the adapter merged in, as safetensors that `AutoModelForCausalLM` loads without PEFT."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    name = base or adapter_base(adapter_dir)
    model = AutoModelForCausalLM.from_pretrained(resolve_name_or_path(name), dtype=torch.bfloat16)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    with atomic_directory(Path(out_dir)) as staging:
        merged.save_pretrained(staging, safe_serialization=True)
        load_tokenizer(name).save_pretrained(staging)
    return Path(out_dir)
