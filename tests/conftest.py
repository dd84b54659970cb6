"""Offline, CPU, tiny-model fixtures shared by the suite."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_CACHE = Path(os.environ.get("MEDQLORA_TEST_CACHE", tempfile.mkdtemp(prefix="medqlora-test-")))
os.environ["MEDQLORA_CACHE"] = str(_CACHE)  # the tiny model is built here once per session
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ["HF_DATASETS_CACHE"] = str(_CACHE / "datasets")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from medqlora.hub import load_tokenizer  # noqa: E402
from medqlora.tiny import ensure_tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    """The embedded tiny Gemma 4 + tokenizer, built once."""
    return ensure_tiny_model()


@pytest.fixture(scope="session")
def tokenizer(tiny_dir):
    """The tiny tokenizer, loaded through the same path as a hub tokenizer."""
    return load_tokenizer("tiny")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
