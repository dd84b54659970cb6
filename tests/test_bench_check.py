"""benchmarks/path_check.py, the check a benchmark case runs before timing: a new path against today's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from path_check import by_group, layer_of, projection_of, rel_norm_diff  # noqa: E402

NAMES = [
    f"base_model.model.model.language_model.layers.{layer}.{part}.{proj}.lora_B.default.weight"
    for layer in (0, 1)
    for part, proj in (("self_attn", "q_proj"), ("mlp", "down_proj"))
]


def test_relative_difference_is_over_all_tensors_and_per_group():
    today = {n: torch.ones(4) for n in NAMES}
    path = {n: torch.ones(4) for n in NAMES}
    assert rel_norm_diff(path, today) == 0.0
    path[NAMES[0]] = torch.full((4,), 3.0)  # one tensor of four off by 2 everywhere: |d| = 4, |today| = 4
    assert rel_norm_diff(path, today) == pytest.approx(1.0)
    assert by_group(path, today, layer_of) == {0: pytest.approx(4 / 8**0.5), 1: 0.0}
    assert by_group(path, today, projection_of, ".layers.1.") == {"down_proj": 0.0, "q_proj": 0.0}


def test_a_case_with_the_loss_gradient_in_forward_checks_itself_against_today(tmp_path: Path):
    """Through the benchmark's command line on the tiny model in fp32: the new loss is today's to rounding, and the
    two floors measure something (the forward one, a few ulps of the embeddings, moves gradients visibly)."""
    out = tmp_path / "case.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_train.py"), "case", "--system", "medqlora"]
    cmd += ["--model", "tiny", "--rows", "real-lengths", "--loss-grad-in-forward", "--compute-dtype", "float32"]
    env = {
        **os.environ,
        "BENCH_TIMED": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "benchmarks")]),
    }
    done = subprocess.run([*cmd, "--json", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    check = json.loads(out.read_text())["vs_today"]
    assert check["loss_abs_diff"] < 1e-5
    assert 0 < check["rounding_floor_grad_rel_norm_diff"] < 1e-5
    assert check["grad_rel_norm_diff"] < 10 * check["rounding_floor_grad_rel_norm_diff"]
    assert check["nudged_grad_rel_norm_diff"] > 10 * check["rounding_floor_grad_rel_norm_diff"]
    assert set(check["grad_rel_diff_by_layer"]) == {str(i) for i in range(6)}  # JSON keys: every layer checked
