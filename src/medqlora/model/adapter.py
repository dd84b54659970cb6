"""The adapter's lifecycle in one place: save it (PEFT format, tokenizer, card), check a directory holds one, load
it onto its base, and merge it into bf16 weights.

Module names in a saved adapter are the full model's (`model.lora`), so it also loads with the model card's own
snippet: `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), ADAPTER)`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from medqlora.hub import load_tokenizer, resolve_name_or_path
from medqlora.io import atomic_directory
from medqlora.model.card import render
from medqlora.model.loading import QuantSpec, load_base_model
from medqlora.runs import PROGRESS_FILE


def save_adapter(model, base: str, directory: Path, weights: dict | None = None, progress: dict | None = None) -> Path:
    """adapter_config.json + adapter_model.safetensors + tokenizer + model card, swapped in atomically.

    model: the PeftModel being trained; base: its `name_or_path` (the tokenizer saved beside the adapter).
    weights: the adapter's full weights (`QLoRAModule.adapter_weights()`); None reads them off the model, which is
        right on one device or DDP, not under FSDP (shards).
    progress: how far training was when this adapter was written ({"step", "total_steps", "kind"}), kept as
        training_state.json so its card says so. The card (README.md) is rendered from `directory`'s parent, the
        run directory (`model.card`)."""
    with atomic_directory(directory) as staging:  # a failed save never touches the previous adapter
        model.save_pretrained(staging, safe_serialization=True, state_dict=weights)
        load_tokenizer(base).save_pretrained(staging)
        if progress is not None:
            (staging / PROGRESS_FILE).write_text(json.dumps(progress, indent=2))
        (staging / "README.md").write_text(render(directory.parent, staging))
    return directory


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
        raise FileNotFoundError(
            f"adapter {directory} has no weights file ({' or '.join(WEIGHT_FILES)}): it was not written whole; {hint}"
        )
    return directory


def adapter_base(adapter_dir: str | Path) -> str:
    """The base model an adapter was trained on, from its adapter_config.json."""
    config = check_adapter_dir(adapter_dir) / "adapter_config.json"
    return json.loads(config.read_text())["base_model_name_or_path"]


def load_adapted(
    adapter_dir: str | Path, base: str | None = None, device: str | None = None, quant: QuantSpec | None = None
):
    """(PeftModel in eval mode, tokenizer): the base (4-bit unless `quant` says otherwise), lean as in training,
    with the adapter loaded."""
    from peft import PeftModel

    name = base or adapter_base(adapter_dir)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_base_model(name, quant or QuantSpec(), target, text_only=True, ple_on_host=target.type == "cuda")
    model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    return model, load_tokenizer(name)


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
