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
    fixed = budget.candidates(budget.BudgetQuestion(e2b, 2048, 16, micro_batch=4, checkpoint_share=0.5, offload=False))
    assert fixed == [budget.Setting(4, 4, 0.5, False)]


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


def test_the_memory_model_reproduces_the_peaks_measured_on_the_gpu(e2b):
    """Every case of the committed H100 runs (their switches: varlen attention, compiled layers, chunked loss)."""
    measured = []
    for name in ("2026-12-07-h100-checkpoint-policy.json", "2026-12-07-h100-budget.json"):
        path = REPO / "benchmarks" / "results" / name
        if path.exists():
            data = json.loads(path.read_text())
            measured += [c for c in data.get("cases", data.get("runs", [])) if c.get("peak_alloc_gib")]
    measured = [c for c in measured if c.get("pack_tokens") == 2048 and not c.get("memory_cap_gib")]
    assert len(measured) >= 4
    q = budget.BudgetQuestion(e2b, 2048, 16)
    shape = budget.model_shape(e2b, True, 16, q.lora_targets)
    for case in measured:
        setting = budget.Setting(
            case["micro_batch"], case["accumulate"], case["checkpoint_share"], case["offload_checkpoints"]
        )
        predicted = budget.estimate(shape, q, setting, 1e9).peak_gib
        assert predicted == pytest.approx(case["peak_alloc_gib"], rel=0.1), setting


def test_lean_spec_takes_auto_and_refuses_a_budget_below_zero():
    lean = LeanSpec(checkpoint_share="auto", offload_checkpoints="auto", memory_budget_gib="auto")
    assert (lean.share, lean.offload) == (1.0, False)  # unresolved: the recipe's
    with pytest.raises(ValueError, match=r"memory_budget_gib=-2 must be > 0"):
        LeanSpec(memory_budget_gib=-2)
    with pytest.raises(ValueError, match=r"checkpoint_share=1.5"):
        LeanSpec(checkpoint_share=1.5)
