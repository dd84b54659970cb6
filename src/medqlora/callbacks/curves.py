"""curves.png for a run: train/val loss, lr and peak memory against optimizer steps, from its metrics.csv.

Written by the `TrainingCurves` callback at the end of fit, and by `medqlora curves RUN_DIR` for any run.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from medqlora.callbacks.steps import run_dir
from medqlora.io import atomic_path
from medqlora.runs import METRICS_FILE, read_metrics

PANELS = [  # (title, [(metric column, label)])
    ("loss", [("train/loss", "train"), ("val/loss", "validation")]),
    ("learning rate", [("lr", "lr")]),
    (
        "peak memory (GiB)",
        [
            ("mem/peak_alloc_gib", "CUDA allocated"),
            ("mem/peak_reserved_gib", "CUDA reserved"),
            ("mem/rss_gib", "host RSS"),
        ],
    ),
]


def plot_curves(run_dir: str | Path, out: str | Path | None = None, panels: list | None = None) -> Path:
    """Draw curves.png (or `out`) from `run_dir/metrics.csv`; returns the image path."""
    panels = panels or PANELS
    from matplotlib.figure import Figure  # not pyplot: its backend (a notebook's inline plots) stays as it is

    run_dir = Path(run_dir)
    metrics = run_dir / METRICS_FILE
    if not metrics.is_file():
        raise FileNotFoundError(
            f"{metrics} not found: point at a run directory written by CSVLogger (runs/<name>/<version>/)"
        )
    series = read_metrics(metrics)
    if not series:
        raise ValueError(f"{metrics} holds no logged values (empty, or a header only): nothing to draw yet")
    fig = Figure(figsize=(5 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (title, columns) in zip(axes[0], panels):
        for column, label in columns:
            if series.get(column):
                steps, values = zip(*series[column])
                ax.plot(steps, values, marker="." if len(steps) < 40 else None, label=label)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(run_dir.as_posix())
    fig.tight_layout()
    path = Path(out) if out else run_dir / "curves.png"
    with atomic_path(path) as tmp:  # a kill never leaves half a picture
        fig.savefig(tmp, dpi=100)
    return path


class TrainingCurves(Callback):
    """Writes curves.png into the run directory at the end of fit (needs a CSVLogger among the loggers).

    Subclasses change what is drawn by setting `panels` ([(title, [(metric, label), ...]), ...]).
    """

    panels = PANELS

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Flush the loggers and draw the run's curves."""
        if not trainer.loggers:
            return
        directory = run_dir(trainer)  # every rank: a collective
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.save()
        if (directory / METRICS_FILE).is_file() and read_metrics(directory / METRICS_FILE):  # something to draw
            rank_zero_info(f"medqlora: curves written to {plot_curves(directory, panels=self.panels)}")
