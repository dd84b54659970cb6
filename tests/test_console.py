"""The installed `medqlora` console script, as a user runs it: exit status, help, and one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from medqlora.cli import main
from medqlora.usage import COMMANDS, TRAINING_COMMANDS

TINY = REPO / "configs" / "tiny.yaml"
SCRIPT = Path(sys.executable).with_name("medqlora")  # what `pip install` put beside this interpreter


def medqlora(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    assert SCRIPT.is_file(), f"{SCRIPT} is missing: install the package (README) before running the tests"
    return subprocess.run(
        [str(SCRIPT), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
    )


def test_fit_and_validate_exit_0_and_print_no_object(tmp_path):
    # Python's own warning filters, as a user's shell has them (the other tests ignore every warning): none of the
    # library noise medqlora/quiet.py names
    fit = medqlora("fit", "--config", str(TINY), "--trainer.max_steps", "2", cwd=tmp_path, env={"PYTHONWARNINGS": ""})
    assert fit.returncode == 0, fit.stderr[-2000:]
    assert "object at 0x" not in fit.stdout + fit.stderr
    assert "kernels" not in fit.stdout + fit.stderr  # bitsandbytes' optional-kernel hint stays at debug level
    for noise in ("Tip:", "litlogger", "Warning:", "deprecated", "on_before_batch_transfer", "`weights_only`"):
        assert noise not in fit.stdout + fit.stderr, noise
    checkpoint = next(tmp_path.glob("runs/tiny/*/checkpoints/last.ckpt"))
    lightning_notices = ("dirpath has changed", "custom batch sampler", "exists and is not empty")  # quiet.py
    for command, said in [
        (["validate", "--trainer.limit_val_batches", "1"], "medqlora: validate on the validation split: val/acc"),
        (["predict", "--trainer.limit_predict_batches", "1"], "medqlora: predictions for "),
        (["fit", "--trainer.max_steps", "3"], "medqlora: adapter written to"),  # a resume of the same run
    ]:
        done = medqlora(
            command[0], "--config", str(TINY), "--ckpt_path", str(checkpoint), *command[1:], cwd=tmp_path,
            env={"PYTHONWARNINGS": ""},
        )  # fmt: skip
        output = done.stdout + done.stderr
        assert done.returncode == 0, done.stderr[-2000:]
        assert "object at 0x" not in output and said in output, (command, output[-2000:])
        assert not [n for n in lightning_notices if n in output], (command, output[-2000:])


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


def _catches_sigterm(pid: int) -> bool:
    """Whether process `pid` has a handler for SIGTERM yet (the `SigCgt` mask of /proc/PID/status)."""
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("SigCgt:"))
    return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)


@pytest.mark.faults
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_while_the_libraries_import_stops_with_one_line_and_128_plus_n(tmp_path, signum):
    """A Ctrl-C in the first seconds (torch, transformers and Lightning importing) used to print a 22-frame
    traceback; a SIGTERM then killed the process without a word."""
    started = subprocess.Popen(
        [str(SCRIPT), "fit", "--config", str(TINY)], cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    while not _catches_sigterm(started.pid):  # the entry point's handlers are in: the heavy imports follow
        assert started.poll() is None
        time.sleep(0.01)
    started.send_signal(signum)
    err = started.communicate(timeout=120)[1]
    assert started.returncode == 128 + signum, err[-2000:]
    *before, last = err.strip().splitlines()
    assert last == (
        f"medqlora: stopped by {signal.Signals(signum).name} (a fit saves interrupted.ckpt once training has begun)"
    )
    assert before in ([], ["medqlora fit: starting (loading torch, Lightning and transformers)"])  # nothing else
    assert not (tmp_path / "runs").exists()


@pytest.mark.faults
def test_a_ctrl_c_while_the_trainer_sets_up_exits_130_not_lightnings_1(tmp_path):
    """Between the model's build and the first step Lightning turns a KeyboardInterrupt into exit status 1."""
    stopped = medqlora(
        "fit",
        "--config",
        str(TINY),
        "--trainer.callbacks+=faults_helpers.SignalAtSetup",
        "--trainer.callbacks.signum=2",
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO / "tests")},
    )
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1].startswith("medqlora: stopped by SIGINT")


@pytest.mark.faults
def test_a_working_directory_nobody_may_write_is_one_line_with_the_fix():
    """/sys refuses a new folder even to root (the suite may run as root, which chmod does not stop)."""
    unwritable = Path("/sys")
    try:
        (unwritable / "medqlora-probe").mkdir()
    except OSError:
        pass
    else:
        (unwritable / "medqlora-probe").rmdir()
        pytest.skip("/sys is writable here")
    refused = medqlora("fit", "--config", str(TINY), "--trainer.max_steps", "1", cwd=unwritable)
    assert refused.returncode == 1, refused.stderr[-2000:]
    line = refused.stderr.strip().splitlines()[-1]
    assert (
        line.startswith("medqlora: error: cannot write runs (") and "run medqlora from a folder you can write" in line
    )


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["eval", "--help"], ["curves", "--help"], ["bogus"]])
def test_help_version_and_usage_errors_answer_without_loading_torch(args):
    """They answer from medqlora/usage.py and commands.py alone (benchmarks/bench_startup.py times them)."""
    probe = f"import sys; from medqlora.cli import main; main({args!r}); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "False", done.stdout + done.stderr


def test_a_training_command_says_it_is_starting_before_the_imports(tmp_path):
    done = medqlora("fit", "--config", str(TINY), "--print_config", cwd=tmp_path)
    assert done.returncode == 0
    assert done.stderr.splitlines()[0] == "medqlora fit: starting (loading torch, Lightning and transformers)"


def test_generate_prints_the_answer_and_json_on_request(tmp_path):
    fit = medqlora("fit", "--config", str(TINY), "--trainer.max_steps", "1", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-2000:]
    adapter = next(tmp_path.glob("runs/tiny/*/adapter"))
    text = medqlora("generate", str(adapter), "--prompt", "How is gout treated?", "--max-new-tokens", "3", cwd=tmp_path)
    assert text.returncode == 0 and text.stdout.strip() and not text.stdout.lstrip().startswith("{")
    lines = medqlora(
        "generate", str(adapter), "--prompt", "How is gout treated?", "--max-new-tokens", "3", "--json", cwd=tmp_path
    )
    assert json.loads(lines.stdout.strip())["prompt"] == "How is gout treated?"
