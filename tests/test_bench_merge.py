"""benchmarks/bench_train.py merge: a results file from case files made on another machine (the GPU's)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_train  # noqa: E402

DEVICE_VERSIONS = {"torch": "2.11.0", "transformers": "5.17.0"}


def _case(path: Path, system: str, tokens_per_s: float, gib: float) -> str:
    case = {"system": system, "rows": "real-lengths", "supervised_tokens_per_s": tokens_per_s}
    case |= {"peak_alloc_gib": gib, "gpu": "NVIDIA H100 80GB HBM3", "versions": DEVICE_VERSIONS}
    path.write_text(json.dumps(case))
    return str(path)


def test_merge_keeps_the_gpu_and_versions_the_cases_were_measured_with(tmp_path: Path):
    cases = [
        _case(tmp_path / "a.json", "plain-careful", 250.0, 27.6),
        _case(tmp_path / "b.json", "medqlora", 3250.0, 3.7),
    ]
    out = tmp_path / "merged.json"
    bench_train.main(["merge", *cases, "--out", str(out), "--command", "bash run.sh"])
    merged = json.loads(out.read_text())
    assert merged["gpu"] == "NVIDIA H100 80GB HBM3" and merged["versions"] == DEVICE_VERSIONS  # not this machine's
    assert all("gpu" not in c and "versions" not in c for c in merged["cases"])
    medqlora = next(c for c in merged["cases"] if c["system"] == "medqlora")
    assert medqlora["speedup_supervised_tokens_per_s_vs_careful"] == pytest.approx(13.0)
    assert medqlora["memory_ratio_vs_careful"] == pytest.approx(3.7 / 27.6)
