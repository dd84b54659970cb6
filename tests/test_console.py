"""The installed `medqlora` console script, as a user runs it: exit status, help, and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from medqlora.cli import TRAINING_COMMANDS, main
from medqlora.commands import COMMANDS

TINY = REPO / "configs" / "tiny.yaml"
SCRIPT = Path(sys.executable).with_name("medqlora")  # what `pip install` put beside this interpreter


def medqlora(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    assert SCRIPT.is_file(), f"{SCRIPT} is missing: install the package (README) before running the tests"
    return subprocess.run(
        [str(SCRIPT), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def test_fit_and_validate_exit_0_and_print_no_object(tmp_path):
    fit = medqlora("fit", "--config", str(TINY), "--trainer.max_steps", "2", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-2000:]
    assert "object at 0x" not in fit.stdout + fit.stderr
    assert "kernels" not in fit.stdout + fit.stderr  # bitsandbytes' optional-kernel hint stays at debug level
    checkpoint = next(tmp_path.glob("runs/tiny/*/checkpoints/last.ckpt"))
    validate = medqlora(
        "validate",
        "--config",
        str(TINY),
        "--ckpt_path",
        str(checkpoint),
        "--trainer.limit_val_batches",
        "1",
        cwd=tmp_path,
    )
    assert validate.returncode == 0, validate.stderr[-2000:]
    assert "object at 0x" not in validate.stdout + validate.stderr


@pytest.mark.faults
def test_a_failing_command_exits_non_zero_with_one_line_and_no_traceback(tmp_path):
    failed = medqlora("fit", "--config", str(TINY), "--ckpt_path", "missing.ckpt", cwd=tmp_path)
    assert failed.returncode == 1
    errors = [line for line in failed.stderr.splitlines() if line.startswith("medqlora: error:")]
    assert len(errors) == 1 and "missing.ckpt does not exist" in errors[0]
    assert "Traceback" not in failed.stderr
    assert not (tmp_path / "runs").exists()  # refused before anything was built or written

    verbose = medqlora("fit", "--config", str(TINY), "--ckpt_path", "missing.ckpt", "--verbose", cwd=tmp_path)
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr


def test_help_lists_every_command_and_each_has_its_own_help(tmp_path, capsys):
    listing = medqlora("--help", cwd=tmp_path)
    assert listing.returncode == 0
    commands = {**TRAINING_COMMANDS, **COMMANDS}
    for name, summary in commands.items():
        assert f"  {name:<9} {summary}" in listing.stdout
    for name in commands:  # in-process: the same main() the script calls, without a start-up per command
        assert main([name, "--help"]) == 0, name
        assert "usage:" in capsys.readouterr().out, name
    assert main([]) == 2 and "fit" in capsys.readouterr().err


@pytest.mark.faults
def test_an_unknown_command_or_a_fit_without_a_config_is_a_usage_error_naming_the_way_out(
    capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert main(["bogus"]) == 2
    line = capsys.readouterr().err.strip()
    assert "unknown command 'bogus'" in line and all(name in line for name in ("fit", "eval", "generate", "curves"))
    assert main(["fit", "--trainer.max_steps", "1"]) == 2
    assert "fit needs --config: configs/tiny.yaml" in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "nothing was trained or written"


@pytest.mark.faults
@pytest.mark.parametrize(
    "args, line",
    [
        (["--model.lora.bogus", "3"], "model.lora: Option 'bogus' is not accepted"),
        (["--data.packing", "maybe"], "data.packing: Expected a <class 'bool'>. Got value: maybe"),
        (["--model.optimizer", "sgd"], "model.optimizer: Expected a typing.Literal["),
    ],
)
def test_a_value_the_parser_refuses_is_one_line_naming_the_key(args, line, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", str(TINY), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and line in err[0] and "usage:" not in err[0], err
