"""The adapter's lifecycle in one place: save it (PEFT format, tokenizer, card), check a directory holds one, load
it onto its base, continue training from it (`model.init_adapter`), and merge it into bf16 weights.

Module names in a saved adapter are the full model's (`model.lora`), so it also loads with the model card's own
snippet: `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), ADAPTER)`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from medqlora.hub import load_tokenizer, resolve_name_or_path
from medqlora.io import atomic_directory
from medqlora.model.card import render
from medqlora.model.loading import QuantSpec, load_base_model
from medqlora.model.lora import LoraSpec
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


def find_adapter(name_or_path: str, setting: str = "model.init_adapter") -> Path:
    """A local adapter directory, or a hub adapter's config and weights (fetched once, then read from the hub cache,
    offline too)."""
    path = Path(name_or_path).expanduser()
    if path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1:
        try:
            return check_adapter_dir(path)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{setting}={name_or_path!r}: {err}") from None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name_or_path, allow_patterns=["adapter_config.json", *WEIGHT_FILES]))
    except Exception as err:  # offline without a cached copy, a typo, a gated repo
        raise FileNotFoundError(
            f"{setting}={name_or_path!r}: not a local adapter directory, and the hub gave no adapter "
            f"({type(err).__name__}); pass a run's adapter/ folder, or a hub id reachable from here"
        ) from err


def _projections(targets) -> list[str]:
    """The projection names a PEFT `target_modules` (medqlora's regex, or a list of names) adapts."""
    text = targets if isinstance(targets, str) else " ".join(targets or [])
    return sorted(set(re.findall(r"[a-z]+_proj", text)))


def continued_lora(adapter_dir: Path, given: LoraSpec | None, name_or_path: str, setting: str) -> LoraSpec:
    """The LoRA settings of the adapter a run continues: its r, alpha and targets (`given`, when set, must agree;
    its dropout may differ: it is a training setting, not part of the weights). Its base must be `name_or_path`
    (the same hub id or folder, or a local copy of the same name)."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    base = str(config.get("base_model_name_or_path"))
    ours = resolve_name_or_path(name_or_path)
    if base not in (name_or_path, ours) and Path(base).name.lower() != Path(ours).name.lower():
        raise ValueError(
            f"{setting} was trained on {base!r}, but model.name_or_path={name_or_path!r}; set "
            f"model.name_or_path to {base!r} (or a local copy of it)"
        )
    theirs = {"r": config["r"], "alpha": config["lora_alpha"], "targets": _projections(config["target_modules"])}
    if given is None:
        return LoraSpec(
            r=theirs["r"], alpha=theirs["alpha"], dropout=config.get("lora_dropout", 0.05), targets=theirs["targets"]
        )
    mine = {"r": given.r, "alpha": given.alpha, "targets": sorted(given.targets)}
    clash = [f"model.lora.{k}={mine[k]} but the adapter has {theirs[k]}" for k in theirs if mine[k] != theirs[k]]
    if clash:
        raise ValueError(
            f"{setting}: " + "; ".join(clash) + ". Its weights fix r, alpha and targets: drop "
            "model.lora (they are read from the adapter) or set them to the adapter's"
        )
    return given


def load_adapter_weights(model, adapter_dir: Path, setting: str = "model.init_adapter") -> int:
    """Copy a saved adapter's weights into `model`'s fresh LoRA (same names and shapes: `continued_lora` checked
    them); returns how many tensors were loaded. A weight the model has no place for, or a LoRA weight of the model
    the adapter lacks, is an error naming it."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    weights = adapter_dir / WEIGHT_FILES[0]
    if weights.is_file():
        from safetensors.torch import load_file

        state = load_file(weights)
    else:
        state = torch.load(adapter_dir / WEIGHT_FILES[1], map_location="cpu", weights_only=True)
    expected = set(get_peft_model_state_dict(model))
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise ValueError(
            f"{setting} ({adapter_dir}) does not fit this model: "
            f"{len(missing)} LoRA weights missing (e.g. {missing[:2]}), {len(extra)} unknown (e.g. {extra[:2]}); "
            "continue an adapter trained on the same base with the same targets"
        )
    set_peft_model_state_dict(model, state)
    return len(state)


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
