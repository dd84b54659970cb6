"""medqlora's own commands refuse to overwrite what they did not make, and bad input gets one clear line."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
import torch
from conftest import REPO
from fsspec.implementations.local import get_umask

from medqlora.cli import main, run

TINY = REPO / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished tiny run (2 optimizer steps)."""
    workdir = tmp_path_factory.mktemp("trained")
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        run(["fit", "--config", str(TINY), "--trainer.max_steps", "2"])
    finally:
        os.chdir(cwd)
    return next((workdir / "runs" / "tiny").iterdir())


def error_line(capsys) -> str:
    """The one line a failed command printed (and check there was no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("medqlora: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_merge_refuses_a_folder_that_holds_files_and_names_force(run_dir, tmp_path, capsys):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    assert main(["merge", str(run_dir / "adapter"), str(target)]) == 1
    line = error_line(capsys)
    assert "--force" in line and str(target) in line
    assert (target / "notes.txt").read_text() == "keep me"

    run(["merge", str(run_dir / "adapter"), str(tmp_path / "new")])  # a new folder is fine
    assert (tmp_path / "new" / "config.json").is_file()
    (tmp_path / "empty").mkdir()
    run(["merge", str(run_dir / "adapter"), str(tmp_path / "empty")])  # so is an empty one
    assert (tmp_path / "empty" / "config.json").is_file()
    run(["merge", str(run_dir / "adapter"), str(target), "--force"])  # replaced only when asked
    assert (target / "config.json").is_file() and not (target / "notes.txt").exists()


def test_merge_into_the_run_directory_itself_is_refused(run_dir, capsys):
    before = sorted(p.name for p in run_dir.iterdir())
    assert main(["merge", str(run_dir / "adapter"), str(run_dir)]) == 1
    line = error_line(capsys)  # refused as a folder holding what merge reads, not as one --force could replace
    assert str(run_dir) in line and "which it reads" in line and "add --force" not in line
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_curves_does_not_overwrite_a_file_it_did_not_make(run_dir, tmp_path, capsys):
    picture = tmp_path / "mine.png"
    picture.write_bytes(b"not ours")
    assert main(["curves", str(run_dir), str(picture)]) == 1
    assert "--force" in error_line(capsys)
    assert picture.read_bytes() == b"not ours"
    assert main(["curves", str(run_dir)]) == 0  # its own curves.png is redrawn in place


@pytest.mark.faults
@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d, t: ["generate", str(d / "adapter"), "--prompt", ""], "--prompt is empty"),
        (
            lambda d, t: ["generate", str(d / "adapter"), "--prompt", "word " * 5000],
            r"prompt 1 is [\d,]+ tokens; with --max-new-tokens 512 that exceeds the model's 4,096 positions",
        ),
        (lambda d, t: ["generate", str(t / "half"), "--prompt", "hi"], "has no weights file"),
        (lambda d, t: ["eval", str(t / "half"), "--no-keypoints"], "has no weights file"),
        (lambda d, t: ["generate", str(t / "nowhere"), "--prompt", "hi"], "is not a directory"),
        (lambda d, t: ["generate", str(d / "adapter"), "--prompts-file", str(t / "none.txt")], "does not exist"),
    ],
)
def test_bad_input_gets_one_line_naming_it(run_dir, tmp_path, capsys, make_args, message):
    (tmp_path / "half").mkdir()  # an adapter folder whose weights were never written
    (tmp_path / "half" / "adapter_config.json").write_text((run_dir / "adapter" / "adapter_config.json").read_text())
    assert main(make_args(run_dir, tmp_path)) == 1
    assert re.search(message, error_line(capsys))


@pytest.mark.faults
def test_eval_limit_zero_is_a_usage_error(run_dir, capsys):
    assert main(["eval", str(run_dir / "adapter"), "--limit", "0"]) == 2
    assert "--limit: must be >= 1 (got 0)" in capsys.readouterr().err


@pytest.mark.faults
@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty (0 bytes)"),
        (b"\x00garbage" * 40, "is not a torch checkpoint file"),
        (None, "does not exist"),
    ],
)
def test_a_bad_checkpoint_is_refused_before_anything_is_built(tmp_path, monkeypatch, capsys, content, message):
    monkeypatch.chdir(tmp_path)
    checkpoint = tmp_path / "bad.ckpt"
    if content is not None:
        checkpoint.write_bytes(content)
    assert main(["fit", "--config", str(TINY), "--ckpt_path", str(checkpoint)]) == 1
    line = error_line(capsys)
    assert f"--ckpt_path {checkpoint}" in line and message in line and "last.ckpt" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.faults
def test_a_checkpoint_holding_arbitrary_objects_names_weights_only(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.save({"state_dict": {}, "x": Path("anything")}, tmp_path / "foreign.ckpt")
    assert main(["fit", "--config", str(TINY), "--ckpt_path", "foreign.ckpt"]) == 1
    assert "--weights_only false" in error_line(capsys)


def test_outputs_get_the_users_umask(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    previous = os.umask(0o002)  # a group-shared setting: files 664, folders 775
    get_umask.cache_clear()  # fsspec (Lightning's checkpoint writer) reads the umask once per process
    try:
        run(["fit", "--config", str(TINY), "--trainer.max_steps", "1"])
    finally:
        os.umask(previous)
        get_umask.cache_clear()
    made = next(Path("runs/tiny").iterdir())
    for name in (
        "data_card.json",
        "data_card.md",
        "memory.json",
        "adapter/adapter_model.safetensors",
        "adapter/README.md",
        "checkpoints/last.ckpt",
    ):
        assert stat.S_IMODE((made / name).stat().st_mode) == 0o664, name
    assert stat.S_IMODE((made / "adapter").stat().st_mode) == 0o775


@pytest.mark.faults
def test_force_never_replaces_what_a_command_reads_or_a_run(run_dir, tmp_path, capsys):
    """merge into its own adapter, into the run holding it, or into a folder inside it; curves over the run's own
    files or a folder: refused naming the path even with --force, and nothing is touched."""
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    other_run = tmp_path / "other"
    other_run.mkdir()
    (other_run / "metrics.csv").write_text("step,train/loss\n0,1.0\n")
    cases = [
        (["merge", str(run_dir / "adapter"), str(run_dir / "adapter"), "--force"], "which it reads"),
        (["merge", str(run_dir / "adapter"), str(run_dir), "--force"], "which it reads"),
        (["merge", str(run_dir / "adapter"), str(run_dir / "adapter" / "merged"), "--force"], "which it reads"),
        (["merge", str(run_dir / "adapter"), str(other_run), "--force"], "holds a training run or an adapter"),
        (["curves", str(run_dir), str(run_dir / "metrics.csv"), "--force"], "is not a .png picture"),
        (["curves", str(run_dir), str(other_run), "--force"], "is not a .png picture"),
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        line = error_line(capsys)
        assert message in line and argv[2] in line, line
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before
    assert (other_run / "metrics.csv").read_text().startswith("step")


@pytest.mark.faults
def test_card_and_curves_refuse_what_is_not_a_run_or_holds_no_values(run_dir, tmp_path, capsys):
    stray = tmp_path / "stray"
    stray.mkdir()
    assert main(["card", str(stray)]) == 1
    assert "is not a run directory" in error_line(capsys) and not (stray / "adapter").exists()
    empty = tmp_path / "empty-run"
    empty.mkdir()
    (empty / "metrics.csv").write_text("")
    assert main(["curves", str(empty)]) == 1
    assert "holds no logged values" in error_line(capsys) and not (empty / "curves.png").exists()
