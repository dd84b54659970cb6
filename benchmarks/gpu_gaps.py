"""Where the GPU waits: from a profiler trace, the GPU's idle time and what the CPU was running meanwhile.

A step bound by the CPU shows as gaps between kernels. For every gap of at least `min_gap_us` this sums, per name,
the time each outermost CPU operator of each thread (thread 0 is the busiest; backward runs on its own thread)
overlapped the gap, so the table names the host work that starves the GPU. Gaps of at least `long_gap_us` are also
counted by the kernel that ended them (a decoder layer's first kernel marks a gap between layers).
Used by `bench_train.py case --profile`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path


def _merged(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def idle_report(trace: Path, min_gap_us: float = 50.0, long_gap_us: float = 1000.0, top: int = 20) -> dict:
    """GPU busy and idle time over the trace's span of kernels, and the CPU work that overlapped the idle gaps."""
    events = json.loads(Path(trace).read_text())["traceEvents"]
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
    device_work = [e for e in complete if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    kernels = _merged([(e["ts"], e["ts"] + e["dur"]) for e in device_work])
    if not kernels:
        return {"error": "no kernels in the trace"}
    gaps = [(a[1], b[0]) for a, b in zip(kernels, kernels[1:]) if b[0] - a[1] >= min_gap_us]
    # the long gaps, by the kernel that ended each: a layer's first kernel names a gap between layers
    starts = {e["ts"]: e["name"] for e in device_work}
    long_gaps: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for gap_start, gap_end in gaps:
        if gap_end - gap_start >= long_gap_us:
            entry = long_gaps[starts.get(gap_end, "?")[:80]]
            entry[0] += 1
            entry[1] += (gap_end - gap_start) / 1e3
    cpu = [e for e in complete if e.get("cat") in ("cpu_op", "python_function", "user_annotation")]
    busiest = defaultdict(float)
    for e in cpu:
        busiest[e["tid"]] += e["dur"]
    label = {tid: f"thread {rank}" for rank, tid in enumerate(sorted(busiest, key=lambda t: -busiest[t]))}
    idle = sum(b - a for a, b in gaps)
    overlap: dict[str, float] = defaultdict(float)
    for tid in label:  # per thread, its outermost operators (not inside another one) in time order
        outermost, end = [], -1.0
        for start, stop, name in sorted((e["ts"], e["ts"] + e["dur"], e["name"]) for e in cpu if e["tid"] == tid):
            if start >= end:
                outermost.append((start, stop, f"{label[tid]}: {name}"))
                end = stop
        i = 0
        for gap_start, gap_end in gaps:
            while i < len(outermost) and outermost[i][1] <= gap_start:
                i += 1
            j = i
            while j < len(outermost) and outermost[j][0] < gap_end:
                start, stop, name = outermost[j]
                overlap[name] += min(stop, gap_end) - max(start, gap_start)
                j += 1
        covered = sum(us for name, us in overlap.items() if name.startswith(f"{label[tid]}: "))
        overlap[f"{label[tid]}: (no operator: Python between operators, or idle)"] = idle - covered
    span = kernels[-1][1] - kernels[0][0]
    busy = sum(b - a for a, b in kernels)
    ranked = sorted(overlap.items(), key=lambda kv: -kv[1])[:top]
    ranked_long = sorted(long_gaps.items(), key=lambda kv: -kv[1][1])[:top]
    return {
        "span_ms": span / 1e3,
        "gpu_busy_ms": busy / 1e3,
        "gpu_idle_ms": (span - busy) / 1e3,
        "gpu_idle_ms_in_gaps": idle / 1e3,
        "gaps": len(gaps),
        "min_gap_us": min_gap_us,
        "cpu_during_gaps_ms": {name: round(us / 1e3, 3) for name, us in ranked},
        "long_gaps": {"min_us": long_gap_us, "count": sum(n for n, _ in long_gaps.values())},
        "long_gaps_by_next_kernel": {name: {"gaps": n, "ms": round(ms, 3)} for name, (n, ms) in ranked_long},
    }
