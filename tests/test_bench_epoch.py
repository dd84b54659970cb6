"""benchmarks/workload.py's epoch time: the mix's expected supervised tokens over the case's supervised rate, so two
cases that time different windows of rows at one rate report one epoch time (issue #28 item 6)."""

from __future__ import annotations

import random
import sys

import torch
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import workload  # noqa: E402


def test_expected_supervised_tokens_are_the_mean_answer_of_the_rows_the_benchmark_draws():
    """Another seed's estimate agrees within 1%, and rows synthetic_rows actually makes carry that many supervised
    targets on average (within 3% over 4,000 rows)."""
    expected = workload.EPOCH_SUPERVISED_TOKENS
    assert abs(workload.expected_epoch_supervised_tokens(seed=7) / expected - 1) < 0.01
    rows = workload.synthetic_rows("real-lengths", 4000, vocab=1000, seed=3)
    per_row = sum(sum(label != -100 for label in row["labels"][1:]) for row in rows) / len(rows)
    assert abs(per_row * workload.EPOCH_ROWS / expected - 1) < 0.03
    rng = random.Random(0)
    assert all(p + a <= workload.MAX_LEN for p, a in (workload.mix_lengths(rng) for _ in range(10_000)))


def _clock(steps: list[tuple[float, int, int]]) -> workload.Clock:
    clock = workload.Clock()
    for seconds, supervised, rows in steps:
        stats = {"tokens": 4096, "supervised": supervised, "rows": rows, "slots": 4096, "flops": 0.0}
        clock.steps.append((seconds, stats))
    return clock


def test_two_windows_of_different_rows_at_one_supervised_rate_give_one_epoch_time():
    few_long = _clock([(1.0, 3000, 4)] * 5)  # a window of long reasoning rows
    many_short = _clock([(0.5, 1500, 12)] * 10)  # same supervised rate, three times the rows per second
    cpu = torch.device("cpu")
    a = workload.summarise("medqlora", "real-lengths", few_long, cpu, warmup=0)
    b = workload.summarise("medqlora", "real-lengths", many_short, cpu, warmup=0)
    assert a["rows_per_s"] != b["rows_per_s"]
    assert a["epoch_minutes"] == b["epoch_minutes"] == workload.EPOCH_SUPERVISED_TOKENS / 3000 / 60
    assert a["epoch_supervised_tokens"] == workload.EPOCH_SUPERVISED_TOKENS
