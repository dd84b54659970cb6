"""`model.lean.memory_budget_gib` through the installed console script: `medqlora plan` prints what `medqlora fit`
then trains with, the resolved values land in the run's config.yaml, a resumed run keeps them, and a budget too
small is refused before anything loads."""

from __future__ import annotations

import re

import yaml
from conftest import REPO
from test_console import TINY, medqlora

BUDGET = REPO / "configs" / "budget.yaml"
SHORT = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]


def _pick(output: str) -> tuple[int, int]:
    found = re.search(r"medqlora budget [\d.]+ GiB: (\d+) x accumulation (\d+)", output)
    assert found, output[-2000:]
    return int(found.group(1)), int(found.group(2))


def test_plan_prints_the_candidates_and_fit_trains_the_pick_and_writes_it_down(tmp_path):
    plan = medqlora("plan", "--config", str(TINY), "--config", str(BUDGET), "--budget", "0.7", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "peak GiB" in plan.stdout and plan.stdout.count("x accumulation") > 10  # every candidate, then the pick
    micro, accumulate = _pick(plan.stdout)
    assert not (tmp_path / "runs").exists()  # nothing built, nothing written
    fit = medqlora("fit", "--config", str(TINY), "--config", str(BUDGET), "--model.lean.memory_budget_gib", "0.7",
                   *SHORT, cwd=tmp_path)  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-2000:]
    assert _pick(fit.stdout + fit.stderr) == (micro, accumulate)
    written = next(tmp_path.glob("runs/tiny/*/config.yaml"))
    planned = tmp_path / "planned.yaml"  # as the first fit wrote it (the resume below rewrites it)
    planned.write_text(written.read_text())
    saved = yaml.safe_load(planned.read_text())
    assert saved["data"]["micro_batch_size"] == micro
    accumulation = [c for c in saved["trainer"]["callbacks"] if c["class_path"].endswith("GradientAccumulation")]
    assert accumulation[0]["init_args"]["accumulate"] == accumulate
    assert micro * accumulate == 2 * 2  # tiny.yaml's 2 rows x accumulation 2 per optimizer step
    assert saved["model"]["lean"]["checkpoint_share"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert saved["model"]["lean"]["offload_checkpoints"] in (True, False)

    checkpoint = next(tmp_path.glob("runs/tiny/*/checkpoints/last.ckpt"))
    resumed = medqlora("fit", "--config", str(TINY), "--config", str(BUDGET), "--model.lean.memory_budget_gib", "0.7",
                       "--ckpt_path", str(checkpoint), "--trainer.limit_train_batches", "4", cwd=tmp_path)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"the resumed run keeps its {micro} rows a micro-batch" in resumed.stdout + resumed.stderr

    again = medqlora("fit", "--config", str(planned), *SHORT, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]  # the written config repeats the run as planned
    assert _pick(again.stdout + again.stderr) == (micro, accumulate)  # the budget checks the written setting


def test_a_budget_too_small_and_a_plan_without_one_fail_in_one_line(tmp_path):
    small = medqlora("plan", "--config", str(TINY), "--config", str(BUDGET), "--budget", "0.001", cwd=tmp_path)
    assert small.returncode == 1
    assert "memory_budget_gib=0.001: no setting fits" in small.stderr and "needs" in small.stderr, small.stderr
    fit = medqlora("fit", "--config", str(TINY), "--model.lean.memory_budget_gib", "0.001", cwd=tmp_path)
    assert fit.returncode == 1 and "no setting fits" in fit.stderr, fit.stderr[-2000:]
    assert not list(tmp_path.glob("runs/tiny/*/*"))  # refused before anything was written
    none = medqlora("plan", "--config", str(TINY), cwd=tmp_path)
    assert none.returncode == 1 and "plan needs a budget: pass --budget N" in none.stderr, none.stderr
    helped = medqlora("plan", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "usage: medqlora plan --config" in helped.stdout


def test_selective_checkpointing_without_compiled_layers_is_refused_naming_the_fix(tmp_path):
    """model.lean.activation_budget through the console script: on the CPU the layers do not compile (`auto`), so a
    budget below 1 is refused in one line before the model loads, naming compile_layers and checkpoint_share."""
    fit = medqlora("fit", "--config", str(TINY), "--model.lean.activation_budget", "0.5",
                   "--model.lean.checkpoint_share", "0", *SHORT, cwd=tmp_path)  # fmt: skip
    assert fit.returncode == 1, fit.stderr[-2000:]
    error = fit.stderr.strip().splitlines()[-1]
    assert "activation_budget=0.5 needs compiled layers" in error and "compile_layers" in error, error
    assert "checkpoint_share" in error and not list(tmp_path.glob("runs/tiny/*/checkpoints/*"))
