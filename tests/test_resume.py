"""Exact resume: a run SIGKILLed at an arbitrary micro-batch and resumed from its last checkpoint ends with
an adapter bit-identical to an uninterrupted run's, and logs the same losses."""

from __future__ import annotations

import csv
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from helpers import recipe_speed_switches
from safetensors.torch import load_file

TINY = REPO / "configs" / "tiny.yaml"
MAX_STEPS = 6  # accumulation 2 in tiny.yaml: 12 micro-batches, checkpoints at every optimizer step
# rank 64 makes every LoRA matrix >= 4096 elements, so bitsandbytes keeps 8-bit (not 32-bit) Adam state for it
EIGHT_BIT = ["--model.lora.r", "64", "--model.lora.alpha", "64"]


def _fit(workdir: Path, *extra: str, expect_kill: bool = False, expect_code: int = 0) -> None:
    cmd = [
        sys.executable,
        "-m",
        "medqlora",
        "fit",
        "--config",
        str(TINY),
        "--trainer.max_steps",
        str(MAX_STEPS),
        "--trainer.val_check_interval",
        "1.0",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.every_n_train_steps=1",
        "--trainer.callbacks.save_last=true",
        "--trainer.callbacks.dirpath=ckpt",
        *EIGHT_BIT,
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    if expect_kill:
        assert done.returncode == -9, done.stderr[-3000:]
    else:
        assert done.returncode == expect_code, done.stderr[-3000:]


def _adapter(workdir: Path) -> dict:
    runs = sorted((workdir / "runs" / "tiny").glob("*/adapter/adapter_model.safetensors"))
    return load_file(runs[-1])


def _losses(workdir: Path) -> dict[int, float]:
    out = {}
    for path in (workdir / "runs" / "tiny").glob("*/metrics.csv"):
        for row in csv.DictReader(open(path)):
            if row.get("train/loss"):
                out[int(row["step"])] = float(row["train/loss"])
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    _fit(workdir)
    return workdir


# a step boundary, the middle of an accumulation window, and one drawn at random (after the first checkpoint)
KILL_POINTS = [4, 7, random.Random(20261125).randrange(3, 2 * MAX_STEPS - 1)]


@pytest.mark.faults
@pytest.mark.parametrize("kill_batch", KILL_POINTS, ids=["at-a-step-boundary", "mid-accumulation-window", "random"])
def test_killed_and_resumed_run_is_bit_identical(uninterrupted, tmp_path, kill_batch):
    killer = f"--trainer.callbacks+=faults_helpers.KillAtBatch --trainer.callbacks.batch={kill_batch}"
    _fit(tmp_path, *killer.split(), expect_kill=True)
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
    _fit(tmp_path, "--ckpt_path", "ckpt/last.ckpt")
    expected, resumed = _adapter(uninterrupted), _adapter(tmp_path)
    assert expected.keys() == resumed.keys()
    different = [k for k in expected if not (expected[k] == resumed[k]).all()]
    assert not different, f"{len(different)} adapter tensors differ, e.g. {different[:2]}"
    reference, logged = _losses(uninterrupted), _losses(tmp_path)
    assert logged and all(reference[step] == loss for step, loss in logged.items())


@pytest.mark.faults
@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_signal_saves_at_the_step_boundary_and_the_resume_is_exact(uninterrupted, tmp_path, signum):
    number = int(getattr(__import__("signal"), signum))
    sender = (
        f"--trainer.callbacks+=faults_helpers.SignalAtBatch --trainer.callbacks.batch=6 "
        f"--trainer.callbacks.signum={number} "
        "--trainer.callbacks+=medqlora.callbacks.interrupt.CheckpointOnInterrupt "
        "--trainer.callbacks.dirpath=interrupted"
    )
    _fit(tmp_path, *sender.split(), expect_code=128 + number)  # saved, then reported as stopped by the signal
    checkpoint = tmp_path / "interrupted" / "interrupted.ckpt"
    assert checkpoint.is_file()
    _fit(tmp_path, "--ckpt_path", str(checkpoint))
    expected, resumed = _adapter(uninterrupted), _adapter(tmp_path)
    assert all((expected[k] == resumed[k]).all() for k in expected)


LEAN = recipe_speed_switches()


@pytest.mark.faults
def test_resume_is_exact_with_the_recipes_speed_switches(tmp_path_factory):
    """The recipe's speed switches: compiled layers draw dropout from eager's random stream, which the checkpoint
    restores, and the CUDA graph's step (on a CPU: run, not captured) does its own backward inside the training step,
    so a resumed run still ends bit-identical."""
    reference, workdir = tmp_path_factory.mktemp("lean-uninterrupted"), tmp_path_factory.mktemp("lean-resumed")
    _fit(reference, *LEAN)
    killer = "--trainer.callbacks+=faults_helpers.KillAtBatch --trainer.callbacks.batch=7"
    _fit(workdir, *LEAN, *killer.split(), expect_kill=True)
    _fit(workdir, *LEAN, "--ckpt_path", "ckpt/last.ckpt")
    expected, resumed = _adapter(reference), _adapter(workdir)
    different = [k for k in expected if not (expected[k] == resumed[k]).all()]
    assert not different, f"{len(different)} adapter tensors differ, e.g. {different[:2]}"
    logged = _losses(workdir)
    assert logged and all(_losses(reference)[step] == loss for step, loss in logged.items())
