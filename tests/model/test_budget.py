"""The memory budget's planner (model/budget.py): candidates keep the rows per step, the pick is the fastest that fits,
a budget too small is refused naming one that fits, and the memory model reproduces the GPU's measured peaks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medqlora.model import budget
from medqlora.model.lean import LeanSpec

REPO = Path(__file__).resolve().parents[2]
E2B_CONFIG = REPO / "benchmarks" / "gemma4-e2b-config.json"


@pytest.fixture(scope="module")
def e2b(tmp_path_factory) -> str:
    """A folder holding only E2B's config.json: all the planner reads."""
    folder = tmp_path_factory.mktemp("e2b")
    (folder / "config.json").write_text(E2B_CONFIG.read_text())
    return str(folder)


def test_every_candidate_keeps_the_rows_per_optimizer_step(e2b):
    q = budget.BudgetQuestion(e2b, 2048, 16)
    settings = budget.candidates(q)
    assert {s.micro_batch for s in settings} == {1, 2, 4, 8, 16}
    assert all(s.micro_batch * s.accumulate == 16 for s in settings)
    assert not any(s.offload and s.checkpoint_share == 0 for s in settings)  # nothing to offload
    fixed = budget.BudgetQuestion(
        e2b, 2048, 16, micro_batch=4, checkpoint_share=0.5, offload=False, activation_budget=1
    )
    assert budget.candidates(fixed) == [budget.Setting(4, 4, 0.5, False)]
    fixed = budget.BudgetQuestion(
        e2b, 2048, 16, micro_batch=4, checkpoint_share=0, offload=False, activation_budget=0.5
    )
    assert budget.candidates(fixed) == [budget.Setting(4, 4, 0.0, False, 0.5)]  # a configured budget is checked


def test_the_pick_is_the_fastest_candidate_that_fits_and_more_memory_never_slows_it(e2b):
    q = budget.BudgetQuestion(e2b, 2048, 16)
    speeds = []
    for gib in (4, 8, 12, 24, 48, 80):
        result = budget.plan(q, gib)
        fitting = [e for e in result.weighed if e.fits]
        assert result.chosen.speed == max(e.speed for e in fitting)
        assert result.chosen.peak_gib * (1 + budget.MARGIN) + budget.MARGIN_GIB <= gib
        speeds.append(result.chosen.speed)
    assert speeds == sorted(speeds) and speeds[-1] > speeds[0]


def test_more_checkpointing_or_offloading_never_predicts_more_memory(e2b):
    q = budget.BudgetQuestion(e2b, 2048, 16)
    shape = budget.model_shape(e2b, True, 16, q.lora_targets)
    for micro in (1, 4, 16):
        peaks = [budget.estimate(shape, q, budget.Setting(micro, 16 // micro, s), 1e9).peak_gib for s in budget.SHARES]
        assert peaks == sorted(peaks)  # SHARES runs from every layer to none
        plain = budget.estimate(shape, q, budget.Setting(micro, 16 // micro, 1.0), 1e9)
        offloaded = budget.estimate(shape, q, budget.Setting(micro, 16 // micro, 1.0, True), 1e9)
        assert offloaded.peak_gib < plain.peak_gib and offloaded.speed < plain.speed


def test_selective_checkpointing_is_weighed_only_where_it_can_run_and_trades_memory_for_speed(e2b, monkeypatch):
    """Activation budgets below 1 need compiled layers and a layer that is not checkpointed, and `auto` weighs them only
    once their cost is measured on a GPU; the lower the budget, the less a setting keeps and the slower it runs
    (between every layer's activations and every layer checkpointed)."""
    unmeasured = budget.candidates(budget.BudgetQuestion(e2b, 2048, 16))
    assert {s.activation_budget for s in unmeasured} == {1.0} or budget.SELECTIVE_MEASURED
    monkeypatch.setattr(budget, "SELECTIVE_MEASURED", True)
    compiled = budget.candidates(budget.BudgetQuestion(e2b, 2048, 16))
    assert {s.activation_budget for s in compiled} == set(budget.SELECTIVE_COST)
    assert all(s.checkpoint_share < 1 for s in compiled if s.activation_budget < 1)
    eager = budget.candidates(budget.BudgetQuestion(e2b, 2048, 16, compiled=False))
    assert {s.activation_budget for s in eager} == {1.0}
    q = budget.BudgetQuestion(e2b, 2048, 16)
    shape = budget.model_shape(e2b, True, 16, q.lora_targets)
    for micro in (2, 8):
        ladder = [budget.Setting(micro, 16 // micro, 0.0, False, b) for b in (1.0, 0.5, 0.25)]
        ladder.append(budget.Setting(micro, 16 // micro, 1.0))
        estimates = [budget.estimate(shape, q, s, 1e9) for s in ladder]
        assert [e.peak_gib for e in estimates] == sorted((e.peak_gib for e in estimates), reverse=True)
        assert [e.speed for e in estimates] == sorted((e.speed for e in estimates), reverse=True)
    configured = budget.BudgetQuestion(e2b, 2048, 16, checkpoint_share=0, activation_budget=0.5)
    monkeypatch.setattr(budget, "SELECTIVE_MEASURED", False)
    assert "a prior, not yet measured on a GPU" in budget.plan(configured, 12).line()
    assert budget.selective_cost(0.0) == budget.RECOMPUTE_COST and budget.selective_cost(1.0) == 0.0
    with pytest.raises(ValueError, match=r"activation_budget=1.5 must be in \[0, 1\]"):
        budget.selective_cost(1.5)


def test_a_budget_too_small_is_refused_naming_the_smallest_that_fits(e2b):
    q = budget.BudgetQuestion(e2b, 2048, 16)
    with pytest.raises(budget.BudgetTooSmall) as refused:
        budget.plan(q, 1.0)
    message = str(refused.value)
    assert "model.lean.memory_budget_gib=1" in message and "data.max_length" in message
    needed = float(message.split("needs ")[1].split(" GiB")[0])
    assert budget.plan(q, needed).chosen is not None  # the named budget does fit
    with pytest.raises(budget.BudgetTooSmall):
        budget.plan(q, needed - 0.2)


def _measured(*names: str) -> list[dict]:
    """The committed H100 runs of the recipe's 2048-token rows (varlen attention, compiled layers, chunked loss)."""
    runs = []
    for name in names:
        data = json.loads((REPO / "benchmarks" / "results" / name).read_text())
        runs += [c for c in data.get("cases", data.get("runs", [])) if c.get("peak_alloc_gib")]
    return [c for c in runs if c.get("pack_tokens") == 2048]


def _setting(case: dict) -> budget.Setting:
    return budget.Setting(
        case["micro_batch"],
        case["accumulate"],
        case["checkpoint_share"],
        case["offload_checkpoints"],
        case.get("activation_budget", 1.0),
    )


def test_the_memory_model_reproduces_the_peaks_measured_on_the_gpu(e2b):
    """The sweep it was fitted on, and the earlier checkpoint-policy runs it was not."""
    measured = _measured("2026-12-07-h100-checkpoint-policy.json", "2026-12-07-h100-budget-sweep.json")
    assert len({_setting(c) for c in measured}) >= 10
    q = budget.BudgetQuestion(e2b, 2048, 16)
    shape = budget.model_shape(e2b, True, 16, q.lora_targets)
    for case in measured:
        predicted = budget.estimate(shape, q, _setting(case), 1e9).peak_gib
        assert predicted == pytest.approx(case["peak_alloc_gib"], rel=0.05), _setting(case)


def test_the_speed_model_reproduces_the_measured_micro_batch_times(e2b):
    """Relative to the recipe's setting in the same run: within 2% where nothing is offloaded (offloading's measured
    cost varies by 2x between micro-batch sizes; the model charges its mean)."""
    measured = [c for c in _measured("2026-12-07-h100-budget-sweep.json") if not c.get("memory_cap_gib")]
    recipe = next(c for c in measured if _setting(c) == budget.Setting(2, 8, 1.0))
    q = budget.BudgetQuestion(e2b, 2048, 16)
    for case in measured:
        speed = case["micro_batch"] / case["step_s_median"] / (2 / recipe["step_s_median"])
        tolerance = 0.5 if case["offload_checkpoints"] else 0.02
        assert budget.relative_speed(q, _setting(case)) == pytest.approx(speed, rel=tolerance), _setting(case)


def test_lean_spec_takes_auto_and_refuses_a_budget_below_zero():
    lean = LeanSpec(checkpoint_share="auto", offload_checkpoints="auto", memory_budget_gib="auto")
    assert (lean.share, lean.offload) == (1.0, False)  # unresolved: the recipe's
    with pytest.raises(ValueError, match=r"memory_budget_gib=-2 must be > 0"):
        LeanSpec(memory_budget_gib=-2)
    with pytest.raises(ValueError, match=r"checkpoint_share=1.5"):
        LeanSpec(checkpoint_share=1.5)


def test_no_budget_picks_a_setting_that_ran_out_of_memory_under_its_cap(e2b):
    """The H100 runs under `torch.cuda.set_per_process_memory_fraction` caps: the recipe's default (3.79 GiB allocated)
    ran out of memory under 4 GiB (the CUDA graph's pool and the allocator's reserve come on top); the picks that ran
    stayed inside their caps."""
    runs = json.loads((REPO / "benchmarks" / "results" / "2026-12-07-h100-budget-capped.json").read_text())["runs"]
    picks = [r for r in runs if r.get("role") == "pick"]
    assert any("error" in r for r in picks) and any("error" not in r for r in picks)
    q = budget.BudgetQuestion(e2b, 2048, 16)
    for run in picks:
        chosen = budget.plan(q, run["memory_cap_gib"]).chosen.setting
        if "error" in run:
            assert chosen != _setting(run), run["memory_cap_gib"]
        else:
            assert run["peak_reserved_gib"] <= run["memory_cap_gib"]
