"""What `--ckpt_path` must agree with: a readable checkpoint, and the settings the run it continues was made with.

LightningCLI silently replaces the command line's model settings with the checkpoint's. medqlora compares them
instead and refuses a difference, naming the key and both values, before anything is loaded or written.
"""

from __future__ import annotations

import dataclasses
import pickle
import typing
import zipfile
from pathlib import Path
from typing import Any

import torch

LIGHTNING_KEYWORDS = ("last", "best", "hpc", "registry")  # ckpt_path values Lightning resolves itself
HARMLESS = ("data.num_workers",)  # settings that may change on resume without changing the run


def read_checkpoint(path: str | Path, weights_only: bool = True) -> dict[str, Any]:
    """The checkpoint at `path`, loaded on the CPU; a missing, empty or unreadable file fails in one line."""
    path = Path(path)
    where = f"--ckpt_path {path}"
    fix = "point --ckpt_path at a checkpoint a run wrote, e.g. runs/<name>/<version>/checkpoints/last.ckpt"
    if not path.exists():
        raise FileNotFoundError(f"{where} does not exist; {fix}")
    if not path.is_file():
        raise IsADirectoryError(f"{where} is a directory, not a checkpoint file; {fix}")
    if path.stat().st_size == 0:
        raise ValueError(f"{where} is empty (0 bytes): it was never written whole; {fix}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as err:
        if weights_only and zipfile.is_zipfile(path):  # torch.save's format, holding more than tensors
            raise ValueError(
                f"{where} holds objects that safe loading refuses (it was not written by medqlora); "
                "if you trust the file, add --weights_only false"
            ) from err
        raise ValueError(
            f"{where} is not a torch checkpoint file (not the zip archive torch.save writes); {fix}"
        ) from err
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError) as err:
        raise ValueError(
            f"{where} is not a readable checkpoint (truncated or not a torch file: {err.__class__.__name__}); {fix}"
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{where} is a torch file but not a Lightning checkpoint (no state_dict); {fix}")
    return checkpoint


def spec_defaults(cls: type) -> dict[str, dict]:
    """{parameter: its dataclass's default values} for each constructor parameter typed `SomeSpec | None`, so that
    a setting left at None (the defaults) compares equal to the same defaults spelled out."""
    out = {}
    for name, hint in typing.get_type_hints(cls.__init__).items():
        for arg in typing.get_args(hint) or (hint,):
            if dataclasses.is_dataclass(arg):
                try:
                    out[name] = dataclasses.asdict(arg())
                except TypeError:  # no defaults for every field (e.g. a source needs a name)
                    pass
    return out


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}.{key}").items()}
    if isinstance(value, (list, tuple)) and any(isinstance(v, dict) for v in value):
        return {k: v for i, item in enumerate(value) for k, v in _flatten(item, f"{prefix}.{i}").items()}
    return {prefix: list(value) if isinstance(value, tuple) else value}


def settings(section: str, values: dict, cls: type) -> dict[str, Any]:
    """`values` (a config section as LightningCLI dumps it) flattened to {"model.lora.r": 16, ...}, with
    dataclass-typed settings left at None expanded to their defaults."""
    values = {k: v for k, v in values.items() if not k.startswith("_")}
    for name, defaults in spec_defaults(cls).items():
        if values.get(name) is None:
            values[name] = defaults
    return _flatten(values, section)


def differences(saved: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """'key: value here vs value in the checkpoint' for every setting that differs (keys in both)."""
    return [
        f"{key} is {given[key]!r} here but {saved[key]!r} in the checkpoint"
        for key in sorted(saved.keys() & given.keys())
        if key not in HARMLESS and not key.startswith("data.sources") and saved[key] != given[key]
    ]  # the sources are compared whole (`source_differences`)


def _describe(source: dict) -> str:
    where = source.get("path") or source.get("hub_id")
    return f"{source.get('name')} ({source.get('format')}, {where}, target {source.get('target')})"


def source_differences(saved: list[dict], given: list[dict]) -> list[str]:
    """One line when the sources a run trains on differ in any way from the checkpoint's (a source added, removed,
    renamed, or read from another place, format, columns or target), naming both lists; [] when they agree.
    Both are lists of `SourceSpec` fields (`asdict`), defaults filled in."""

    def same(a: dict, b: dict) -> bool:
        return all(a[k] == b[k] for k in a.keys() & b.keys())  # a field an older checkpoint lacks is not compared

    if len(saved) == len(given) and all(same(a, b) for a, b in zip(saved, given)):
        return []
    return [
        f"data.sources are {'; '.join(map(_describe, given))} here but {'; '.join(map(_describe, saved))} in the "
        "checkpoint (a run trains on the data it started with: start a new run on other data, or continue this "
        "adapter's weights with model.init_adapter)"
    ]
