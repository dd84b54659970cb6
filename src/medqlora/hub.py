"""Names -> files: resolve `model.name_or_path` (a hub id, a local directory or `tiny`) and read its tokenizer
and config, once per process however many parts of a run ask.

The bottom floor beside `io` and `runs`: data, model, eval and callbacks all read the model's tokenizer and
config through here, so none of them imports another for it.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

from medqlora.tiny import TINY_MODEL_ID, ensure_tiny_model


def resolve_name_or_path(name_or_path: str) -> str:
    """`tiny` -> the built tiny model's directory; anything else (hub id or path) unchanged."""
    return str(ensure_tiny_model()) if name_or_path == TINY_MODEL_ID else name_or_path


def _unreachable(name_or_path: str, what: str, err: OSError) -> OSError:
    """An error that names the model and the way out, for a name that is neither a folder nor a reachable hub id."""
    local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1  # a hub id is owner/name
    if local or Path(name_or_path).expanduser().exists():
        return OSError(
            f"model.name_or_path={name_or_path!r}: no {what} there ({str(err).splitlines()[0]}); pass the folder "
            "that holds the checkpoint's config.json and tokenizer, or a hub id (owner/name)"
        )
    return OSError(
        f"model.name_or_path={name_or_path!r}: cannot load its {what} ({str(err).splitlines()[0]}). Offline "
        "(HF_HUB_OFFLINE=1, or no network), pass a local copy: --model.name_or_path /path/to/gemma-4-E2B-it; "
        "online, accept the model's licence on the hub and run huggingface-cli login"
    )


@lru_cache(maxsize=8)
def load_tokenizer(name_or_path: str):
    """The model's own tokenizer (with its chat template), loaded once per process. Never runs remote code."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolve_name_or_path(name_or_path), trust_remote_code=False)
    except OSError as err:
        raise _unreachable(name_or_path, "tokenizer", err) from err


@lru_cache(maxsize=8)
def _config(name_or_path: str):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(resolve_name_or_path(name_or_path), trust_remote_code=False)
    except OSError as err:
        raise _unreachable(name_or_path, "config", err) from err
    if config.model_type != "gemma4":
        raise ValueError(
            f"model.name_or_path={name_or_path!r} is a {config.model_type!r} model; medqlora "
            "trains Gemma 4 (e.g. google/gemma-4-E2B-it or `tiny`)"
        )
    return config


def load_config(name_or_path: str):
    """The model config, checked to be Gemma 4 (medqlora's LoRA targets, template and loss assume it); read once
    per process, a fresh copy each call (loading edits it)."""
    return copy.deepcopy(_config(name_or_path))


def max_positions(name_or_path: str) -> int:
    """How many positions the model's text decoder has."""
    return _config(name_or_path).get_text_config().max_position_embeddings
