"""The run directory's files: where a run writes, reading its metrics.csv, and continuing it after a resume.

`runs/<config name>/<version>/` holds one run, resumed or not: a resumed fit writes into the directory of the
run it continues (its checkpoints record the version), so metrics, curves and wall time stay whole.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from medqlora.compat import CSVLoggerWith, ExistingMetricsWriter
from medqlora.files import CONFIG_FILE, DATA_CARD, MEMORY_FILE, METRICS_FILE, PROGRESS_FILE  # noqa: F401
from medqlora.io import atomic_write_text


def eval_dir(adapter_dir: Path) -> Path:
    """Where `medqlora eval` writes an adapter's results: `<run dir>/eval-<adapter name>`."""
    return adapter_dir.parent / f"eval-{adapter_dir.name}"


def read_metrics(metrics_csv: Path) -> dict[str, list[tuple[int, float]]]:
    """Column -> [(optimizer step, value)] for every non-empty cell of a Lightning CSVLogger file."""
    series: dict[str, list[tuple[int, float]]] = {}
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            step = int(float(row.get("step") or 0))
            for key, value in row.items():
                if key not in ("step", "epoch") and value not in ("", None):
                    series.setdefault(key, []).append((step, float(value)))
    return series


class _ContinuingWriter(ExistingMetricsWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; this one keeps the rows an interrupted run logged
    before the step the resumed run starts logging at, and drops the later ones (the resumed run redoes them)."""

    def found_log_dir(self) -> None:
        self._carried: list[dict] | None = None
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self._carried = list(csv.DictReader(f))

    def save(self) -> None:
        if self._carried is None or not self.metrics:
            return super().save()
        first_new = min(int(m["step"]) for m in self.metrics)
        rows = [r for r in self._carried if int(float(r.get("step") or 0)) < first_new] + self.metrics
        self._carried = None
        self.metrics_keys = sorted({key for row in rows for key in row})
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(Path(self.metrics_file_path), text.getvalue())
        self.metrics = []


class RunCSVLogger(CSVLoggerWith):
    """Lightning's `CSVLogger`, except that a resumed run continues its run directory's metrics.csv."""

    writer_class = _ContinuingWriter
