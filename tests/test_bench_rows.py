"""benchmarks/bench_train.medqlora_rows: the plain baseline times the very rows medqlora's packed case times (issue #28
item 5), read back from the batches medqlora's loader makes, and warms up on rows outside them."""

from __future__ import annotations

import sys

from conftest import REPO
from torch.utils.data import DataLoader

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_train  # noqa: E402
import workload  # noqa: E402

from medqlora.data.collate import Collator, PackedRows, PackingBatchSampler  # noqa: E402


def test_the_baseline_times_the_rows_of_medqlora_s_timed_micro_batches():
    rows = workload.synthetic_rows("real-lengths", 400, vocab=1000, seed=0)
    for i, row in enumerate(rows):
        row["row_id"] = str(i)  # the collator carries row ids into the batch
    warm, timed = bench_train.medqlora_rows(rows, 2048, 2, warmup_rows=16)
    # what medqlora's case trains: its loader's batches after the warm-up ones, as benchmarks/medqlora_run.py builds it
    sampler = PackingBatchSampler([len(r["input_ids"]) for r in rows], 2048, 0, True, 0, 1, 2)
    loader = DataLoader(PackedRows(rows), batch_sampler=sampler, collate_fn=Collator(True, 0, 2048, 2))
    batches = list(loader)[workload.WARMUP_BATCHES : workload.WARMUP_BATCHES + workload.TIMED_BATCHES]
    trained = [row_id for batch in batches for row_id in batch["row_ids"]]
    assert [r["row_id"] for r in timed] == trained and len(trained) >= 64
    assert len(warm) == 16 and not {r["row_id"] for r in warm} & set(trained)
