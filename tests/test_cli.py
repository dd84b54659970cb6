"""The CLI: every YAML parses, the tiny default trains and resumes, bad values fail at parse time."""

from __future__ import annotations

import argparse
import csv
import json
import signal
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO

from medqlora.cli import main, run

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
TINY = REPO / "configs" / "tiny.yaml"
RECIPE = REPO / "configs" / "gemma4-e2b-medical.yaml"


def resolved(*configs: Path, capsys) -> dict:
    """The config LightningCLI resolves from these YAML files (later ones win), as `--print_config` shows it."""
    with pytest.raises(SystemExit) as exit_:
        run(["fit", *[arg for c in configs for arg in ("--config", str(c))], "--print_config"])
    assert exit_.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def holds(full, given, where: str = "") -> list[str]:
    """Where `full` does not hold what `given` says (dict keys and list items by position, numbers by value)."""
    if isinstance(given, dict):
        if not isinstance(full, dict):
            return [f"{where}: {full!r} is not a mapping"]
        return [miss for key, value in given.items() for miss in holds(full.get(key), value, f"{where}.{key}")]
    if isinstance(given, list):
        if not isinstance(full, list) or len(full) != len(given):
            return [f"{where}: {full!r} != {given!r}"]
        return [miss for i, (f, g) in enumerate(zip(full, given)) for miss in holds(f, g, f"{where}[{i}]")]
    if isinstance(given, float) or isinstance(full, float):
        same = isinstance(full, (int, float)) and full == pytest.approx(given)
        return [] if same else [f"{where}: {full!r} != {given!r}"]
    return [] if full == given else [f"{where}: {full!r} != {given!r}"]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_config_resolves_to_the_values_it_writes(config, capsys):
    written = yaml.safe_load(config.read_text())
    overlay = "trainer" not in written or "callbacks" not in written.get("trainer", {})
    layers = [RECIPE, config] if overlay else [config]  # overlays are checked over the recipe they extend
    assert not holds(resolved(*layers, capsys=capsys), written)


def test_the_recipe_is_the_model_cards(capsys):
    config = resolved(RECIPE, capsys=capsys)
    model, data, trainer = config["model"], config["data"], config["trainer"]
    callbacks = {c["class_path"].rsplit(".", 1)[-1]: c.get("init_args") or {} for c in trainer["callbacks"]}
    assert model["name_or_path"] == "google/gemma-4-E2B-it"
    assert (
        model["quantization"]["quant_type"],
        model["quantization"]["double_quant"],
        model["quantization"]["compute_dtype"],
    ) == ("nf4", True, "bfloat16")
    assert (model["lora"]["r"], model["lora"]["alpha"], model["lora"]["dropout"]) == (16, 16, 0.05)
    assert model["lora"]["targets"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert model["optimizer"] == "adamw_8bit" and model["lr"] == pytest.approx(2e-4)
    assert data["max_length"] == 2048 and data["micro_batch_size"] == 2 and trainer["max_epochs"] == 1
    assert callbacks["GradientAccumulation"]["accumulate"] == 8
    assert callbacks["CosineWarmup"]["warmup_ratio"] == pytest.approx(0.05)
    assert trainer["precision"] == "bf16-mixed"


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_tiny_fast_dev_run(tmp_path, monkeypatch, subcommand):
    monkeypatch.chdir(tmp_path)
    if subcommand == "fit":
        cli = run([subcommand, "--config", str(TINY), "--trainer.fast_dev_run", "2"])
    else:  # without --ckpt_path there is nothing trained to score, and the user is told so
        with pytest.warns(UserWarning, match=f"{subcommand} without --ckpt_path scores a freshly initialised adapter"):
            cli = run([subcommand, "--config", str(TINY), "--trainer.fast_dev_run", "2"])
    assert cli.trainer.state.finished
    if subcommand == "predict":
        rows = cli.trainer.predict_loop.predictions[0]
        assert rows and {"row_id", "supervised_tokens", "accuracy", "prediction", "target"} <= set(rows[0])


def _run_dir() -> Path:
    dirs = sorted(Path("runs/tiny").iterdir())
    assert len(dirs) == 1
    return dirs[0]


def test_tiny_fit_writes_a_run_directory_and_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run(["fit", "--config", str(TINY), "--trainer.max_steps", "3", "--trainer.val_check_interval", "2"])
    run_dir = _run_dir()
    for name in (
        "metrics.csv",
        "config.yaml",
        "data_card.json",
        "data_card.md",
        "memory.json",
        "adapter/adapter_model.safetensors",
        "adapter/README.md",
        "checkpoints/last.ckpt",
    ):
        assert (run_dir / name).exists(), name
    assert list(run_dir.glob("events.out.tfevents.*")), "no TensorBoard events"
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert any(r["train/loss"] for r in rows) and any(r["val/loss"] for r in rows) and any(r["lr"] for r in rows)
    card = json.loads((run_dir / "data_card.json").read_text())
    assert set(card["sources"]) == {"medqa", "o1", "alpacare"}

    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["state_dict"] and all("lora_" in k for k in checkpoint["state_dict"])
    assert 1 <= checkpoint["global_step"] <= 3  # saved at a validation before max_steps

    # the wall time counted up to that checkpoint (its PeakMemory state): a resume continues from there
    saved_wall = next(v["wall_time_s"] for k, v in checkpoint["callbacks"].items() if "PeakMemory" in k)
    assert 0 < saved_wall <= json.loads((run_dir / "memory.json").read_text())["wall_time_s"]
    cli = run(
        [
            "fit",
            "--config",
            str(TINY),
            "--trainer.max_steps",
            "5",
            "--ckpt_path",
            str(run_dir / "checkpoints" / "last.ckpt"),
        ]
    )
    assert cli.trainer.global_step == 5
    assert cli.config.fit.weights_only is True  # the checkpoint loads without unpickling arbitrary objects
    assert _run_dir() == run_dir, "a resumed run continues in its own run directory"
    steps = [int(r["step"]) for r in csv.DictReader(open(run_dir / "metrics.csv")) if r["train/loss"]]
    assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == 4, steps  # whole, no step twice
    assert json.loads((run_dir / "memory.json").read_text())["wall_time_s"] > saved_wall


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model.lora.r", "0"], "model.lora.r=0"),
        (["--model.optimizer", "sgd"], "sgd"),
        (["--data.reasoning", "sometimes"], "sometimes"),
        (["--model.lr", "-1"], "model.lr=-1"),
        (["--data.val_fraction", "0.9"], "data.val_fraction=0.9"),
        (["--model.quantization.quant_type", "int3"], "int3"),
        (["--model.lora.rank", "8"], "rank"),  # an unknown key
        (["--model.lr", "fast"], "fast"),  # a wrong type
        (
            ["--model.quantization.double_quant", "true", "--model.quantization.load_in_4bit", "false"],
            "double_quant=true needs load_in_4bit=true",
        ),
    ],
)
def test_bad_values_fail_naming_field_and_value(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises((SystemExit, ValueError, argparse.ArgumentError)) as err:
        run(["fit", "--config", str(TINY), "--trainer.fast_dev_run", "1", *args])
    text = capsys.readouterr().err + str(err.value)
    assert message in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_asking_for_a_gpu_without_one_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"trainer.accelerator='gpu' but no CUDA GPU is visible.*accelerator cpu"):
        run(
            [
                "fit",
                "--config",
                str(REPO / "configs" / "gemma4-e2b-medical.yaml"),
                "--model.name_or_path",
                "tiny",
                "--data.max_length",
                "256",
            ]
        )


def test_max_length_beyond_the_models_positions_fails_at_parse_time(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused = (SystemExit, ValueError, argparse.ArgumentError)
    with pytest.raises(refused, match=r"data.max_length=100000 exceeds the 4096 positions"):
        run(["fit", "--config", str(TINY), "--data.max_length", "100000"])
    assert not Path("runs").exists()  # nothing was built or written


@pytest.mark.faults
@pytest.mark.parametrize(
    "error, message",
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "Lower data.micro_batch_size"),
        (OSError(28, "No space left on device", "runs/x/last.ckpt"), "disk full while writing runs/x/last.ckpt"),
    ],
)
def test_resource_errors_say_which_knob_to_turn(tmp_path, monkeypatch, error, message):
    from medqlora.model.module import QLoRAModule

    def fail(self, batch, batch_idx):
        raise error

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(QLoRAModule, "training_step", fail)
    with pytest.raises(SystemExit, match=message):
        run(["fit", "--config", str(TINY), "--trainer.fast_dev_run", "1"])


def test_each_validation_logs_eval_loss_and_accuracy_and_the_best_checkpoint_follows_eval_loss(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run(["fit", "--config", str(TINY), "--trainer.max_steps", "4", "--trainer.val_check_interval", "2"])
    run_dir = _run_dir()
    rows = [r for r in csv.DictReader(open(run_dir / "metrics.csv")) if r["val/loss"]]
    assert len(rows) >= 3 and all(r["val/acc"] for r in rows), "loss and accuracy at every validation"
    assert all(0.0 <= float(r["val/acc"]) <= 1.0 for r in rows)
    lowest = min(float(r["val/loss"]) for r in rows)
    best = list((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1
    states = torch.load(best[0], weights_only=False)["callbacks"]
    score = next(v["best_model_score"] for k, v in states.items() if k.startswith("ModelCheckpoint"))
    assert float(score) == pytest.approx(lowest)
    assert (run_dir / "adapter-best" / "adapter_model.safetensors").is_file()


def _trained_run(*extra: str) -> Path:
    run(["fit", "--config", str(TINY), "--trainer.max_steps", "2", *extra])
    return _run_dir()


def test_resume_refuses_a_setting_that_differs_from_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint = _trained_run() / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match=r"model.lr is 0.1 here but 0.005 in the checkpoint.*drop these overrides"):
        run(["fit", "--config", str(TINY), "--ckpt_path", str(checkpoint), "--model.lr", "0.1"])
    with pytest.raises(ValueError, match=r"data.max_length is 200 here but 256 in the checkpoint"):
        run(["fit", "--config", str(TINY), "--ckpt_path", str(checkpoint), "--data.max_length", "200"])
    with pytest.raises(ValueError, match=r"model.lean.loss_chunk_size is 64 here but 256"):  # defaults spelled out
        run(["fit", "--config", str(TINY), "--ckpt_path", str(checkpoint), "--model.lean.loss_chunk_size", "64"])
    assert len(list(Path("runs/tiny").iterdir())) == 1  # refused before a run directory was made
    # the same values spelled out are no difference
    cli = run(
        [
            "fit",
            "--config",
            str(TINY),
            "--ckpt_path",
            str(checkpoint),
            "--model.lr",
            "0.005",
            "--trainer.max_steps",
            "3",
        ]
    )
    assert cli.trainer.global_step == 3


@pytest.mark.faults
def test_an_interrupted_run_exits_128_plus_the_signal_and_its_adapter_says_it_is_unfinished(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "fit",
            "--config",
            str(TINY),
            "--trainer.max_steps",
            "6",
            "--trainer.callbacks+=faults_helpers.SignalAtBatch",
            "--trainer.callbacks.batch=3",
            f"--trainer.callbacks.signum={int(signal.SIGTERM)}",
        ]
    )
    assert code == 128 + signal.SIGTERM
    run_dir = _run_dir()
    assert (run_dir / "checkpoints" / "interrupted.ckpt").is_file()
    state = json.loads((run_dir / "adapter" / "training_state.json").read_text())
    assert state == {"step": 3, "total_steps": 6, "kind": "final"}  # signal after micro-batch 4: saved at step 3
    card = (run_dir / "adapter" / "README.md").read_text()
    assert "Training did not finish" in card and "optimizer step 3 of 6" in card and "interrupted.ckpt" in card
    assert (
        run(
            [
                "fit",
                "--config",
                str(TINY),
                "--trainer.max_steps",
                "6",
                "--ckpt_path",
                str(run_dir / "checkpoints" / "interrupted.ckpt"),
            ]
        ).trainer.global_step
        == 6
    )
    assert "after all 6 optimizer steps" in (run_dir / "adapter" / "README.md").read_text()


@pytest.mark.parametrize("subcommand, prefix", [("validate", "val"), ("test", "test"), ("predict", None)])
def test_evaluation_subcommands_write_no_adapter_and_name_their_folder(tmp_path, monkeypatch, subcommand, prefix):
    monkeypatch.chdir(tmp_path)
    checkpoint = _trained_run() / "checkpoints" / "last.ckpt"
    run(
        [
            subcommand,
            "--config",
            str(TINY),
            "--ckpt_path",
            str(checkpoint),
            "--trainer.limit_val_batches",
            "2",
            "--trainer.limit_test_batches",
            "2",
            "--trainer.limit_predict_batches",
            "2",
        ]
    )
    made = [d for d in Path("runs/tiny").iterdir() if d.name.startswith(f"{subcommand}-")]
    assert len(made) == 1
    assert not list(Path("runs").rglob(f"{subcommand}-*/adapter*"))
    assert not list(Path("runs").rglob("adapter-best"))  # the fit of 2 steps never validated; validate wrote none
    if prefix:
        header = (made[0] / "metrics.csv").read_text().splitlines()[0].split(",")
        assert f"{prefix}/loss" in header and f"{prefix}/acc" in header
        assert not any(h.startswith("val/") for h in header) or prefix == "val"


def test_predict_writes_a_line_per_validation_row_and_test_scores_its_own_split(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    checkpoint = str(_trained_run() / "checkpoints" / "last.ckpt")
    cli = run(["predict", "--config", str(TINY), "--ckpt_path", checkpoint])
    (made,) = Path("runs/tiny").glob("predict-*")
    lines = [json.loads(line) for line in (made / "predictions.jsonl").read_text().splitlines()]
    assert sorted(row["row_id"] for row in lines) == sorted(cli.datamodule.val_set["row_id"])  # every row, once
    assert all(row["supervised_tokens"] > 0 and row["target"].endswith("<turn|>") for row in lines)
    assert all(0 <= row["accuracy"] <= 1 for row in lines)
    assert f"predictions for {len(lines)} rows written to {made / 'predictions.jsonl'}" in caplog.text
    caplog.clear()

    held_out = ["--data.test_fraction", "0.1"]
    cli = run(["test", "--config", str(TINY), "--ckpt_path", checkpoint, *held_out])
    split, rows = cli.datamodule.test_split()
    assert split == "test" and len(rows) > 0
    trained_or_validated = set(cli.datamodule.train_set["row_id"]) | set(cli.datamodule.val_set["row_id"])
    assert not set(rows["row_id"]) & trained_or_validated
    assert "test on the test split: test/acc" in caplog.text
    caplog.clear()
    cli = run(["test", "--config", str(TINY), "--ckpt_path", checkpoint])
    assert cli.datamodule.test_split()[0] == "val"
    assert "test on the validation split: test/acc" in caplog.text


def test_the_recipe_runs_on_local_files_with_the_shipped_overlay(tmp_path, monkeypatch):
    """configs/local-files.yaml over the recipe: each path replaces its source's hub id (no `hub_id: null` needed)."""
    monkeypatch.chdir(tmp_path)
    samples = REPO / "src" / "medqlora" / "data" / "samples"
    data = tmp_path / "data"
    data.mkdir()
    for name in ("medqa", "o1", "alpacare"):
        (data / f"{name}.jsonl").write_text((samples / f"{name}.jsonl").read_text())
    leaked = json.loads((samples / "alpacare.jsonl").read_text().splitlines()[0])["instruction"]
    (data / "medqa-usmle-test.jsonl").write_text(json.dumps({"question": "Not in the training rows at all?"}) + "\n")
    (data / "pubmedqa-labeled.jsonl").write_text(json.dumps({"question": leaked}) + "\n")
    cli = run(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "gemma4-e2b-medical.yaml"),
            "--config",
            str(REPO / "configs" / "local-files.yaml"),
            "--model.name_or_path",
            "tiny",
            "--trainer.accelerator",
            "cpu",
            "--data.sample_policy",
            "all",
            "--data.num_workers",
            "0",
            "--trainer.max_steps",
            "1",
            "--trainer.val_check_interval",
            "1.0",
            "--trainer.logger",
            "false",
        ]
    )
    assert cli.trainer.global_step == 1
    sources = cli.datamodule.card.content["sources"]
    assert {name: s["location"] for name, s in sources.items()} == {
        name: str((data / f"{name}.jsonl").resolve()) for name in ("medqa", "o1", "alpacare")
    }
    assert sources["alpacare"]["removed"].get("eval_contamination") == 1
    assert all(s["train_rows"] > 0 for s in sources.values())


@pytest.mark.faults
def test_two_runs_started_in_the_same_second_get_two_run_directories(tmp_path, monkeypatch):
    """The other run took this second's directory first: this one reserves the next name, and leaves that one be."""
    import medqlora.training_cli as cli_module

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli_module.time, "strftime", lambda fmt: "20261201-120000")
    taken = Path("runs/tiny/20261201-120000")
    taken.mkdir(parents=True)
    (taken / "metrics.csv").write_text("step,train/loss\n0,1.0\n")
    run(["fit", "--config", str(TINY), "--trainer.max_steps", "1"])
    assert sorted(p.name for p in Path("runs/tiny").iterdir()) == ["20261201-120000", "20261201-120000-2"]
    assert (taken / "metrics.csv").read_text() == "step,train/loss\n0,1.0\n"
    assert (Path("runs/tiny/20261201-120000-2") / "adapter" / "adapter_model.safetensors").is_file()
    # and the next one after both
    assert cli_module._reserve_stamp("20261201-120000", [{"save_dir": "runs", "name": "tiny"}], str, True) == (
        "20261201-120000-3"
    )
