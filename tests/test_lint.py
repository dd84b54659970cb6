"""The code base stays lint-clean (ruff, configured in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PATHS = ["src", "tests", "benchmarks", "notebooks"]


def _ruff() -> str:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is missing: it is a dev dependency (pip install -e '.[dev]'), and CI runs it through this test"
    return ruff


def test_ruff_check_is_clean():
    result = subprocess.run([_ruff(), "check", *PATHS], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean():
    result = subprocess.run([_ruff(), "format", "--check", *PATHS], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, "run `ruff format src tests benchmarks notebooks`\n" + result.stdout + result.stderr


def test_package_imports_without_gpu_or_network():
    code = "import medqlora.cli, medqlora.data.datamodule, medqlora.model.module; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr
