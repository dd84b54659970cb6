"""Plot the memory budget's Pareto front (issue #40): each measured setting's epoch speed against its reserved peak,
the caps as vertical lines, the planner's picks ringed.

python benchmarks/plot_budget.py benchmarks/results/2026-12-07-h100-budget-sweep.json \
    benchmarks/results/2026-12-07-h100-budget-capped.json docs/budget.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DEFAULT = (2, 1.0, False)  # the recipe's micro-batch, checkpoint share, offloading


def label(run: dict) -> str:
    """A setting in a few characters: rows a micro-batch x share checkpointed (+off: inputs offloaded)."""
    return f"{run['micro_batch']}x, {run['checkpoint_share']:g}" + (" off" if run["offload_checkpoints"] else "")


def main(sweep: str, capped: str, out: str) -> None:
    runs = [r for f in (sweep, capped) for r in json.loads(Path(f).read_text())["runs"] if "error" not in r]
    default = next(r for r in runs if (r["micro_batch"], r["checkpoint_share"], r["offload_checkpoints"]) == DEFAULT)
    base = default["epoch_supervised_tokens_per_s"]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for run in runs:
        x, y = run["peak_reserved_gib"], run["epoch_supervised_tokens_per_s"] / base
        picked = run.get("role") == "pick"
        ax.scatter(x, y, s=60 if picked else 30, color="#d98c1f" if picked else "#2a7ab9", zorder=3)
        ax.annotate(label(run), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    for cap in (4, 8, 12, 24, 48):
        ax.axvline(cap, color="#999999", linestyle="--", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("peak reserved GPU memory (GiB, log scale); dashed: the budgets")
    ax.set_ylabel("epoch supervised tokens/s vs the default (2 rows, every layer checkpointed)")
    ax.set_title("E2B QLoRA on one H100: speed for memory (orange: the planner's pick run under its cap)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:4])
