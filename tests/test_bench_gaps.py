"""benchmarks/gpu_gaps.py: the GPU's idle gaps in a profiler trace, and which CPU work overlapped them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from gpu_gaps import idle_report  # noqa: E402


def test_gaps_are_charged_to_the_cpu_work_that_overlapped_them(tmp_path: Path):
    def event(cat: str, ts: float, dur: float, name: str = "k", tid: int = 7) -> dict:
        return {"ph": "X", "cat": cat, "ts": ts, "dur": dur, "name": name, "tid": tid}

    events = [
        event("kernel", 0, 10),
        event("kernel", 5, 10),  # overlapping kernels count once
        event("kernel", 100, 10, "rms_norm_first_of_a_layer"),
        event("kernel", 130, 10),  # a 20 us gap: under min_gap_us, idle but not charged
        event("cpu_op", 5, 55, "aten::mm", tid=1),
        event("cpu_op", 6, 10, "aten::inner", tid=1),  # inside aten::mm: not outermost
        event("cpu_op", 20, 70, "CompiledFunction", tid=2),
    ]
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"traceEvents": events}))
    report = idle_report(trace, min_gap_us=50, long_gap_us=80)
    assert report["span_ms"] == pytest.approx(0.140)
    assert report["gpu_busy_ms"] == pytest.approx(0.035)
    assert report["gpu_idle_ms_in_gaps"] == pytest.approx(0.085) and report["gaps"] == 1
    assert report["cpu_during_gaps_ms"] == {
        "thread 0: CompiledFunction": 0.07,
        "thread 1: aten::mm": 0.045,
        "thread 1: (no operator: Python between operators, or idle)": 0.04,
        "thread 0: (no operator: Python between operators, or idle)": 0.015,
    }
    assert report["long_gaps"] == {"min_us": 80, "count": 1}
    assert report["long_gaps_by_next_kernel"] == {"rms_norm_first_of_a_layer": {"gaps": 1, "ms": 0.085}}
