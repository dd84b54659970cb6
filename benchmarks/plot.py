"""Plot a benchmark result file: supervised tokens/s and peak VRAM per case.

python benchmarks/plot.py benchmarks/results/2026-11-25-h100-run2.json docs/benchmarks.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(result: str, out: str) -> None:
    data = json.loads(Path(result).read_text())
    cases = sorted(data["cases"], key=lambda c: (c["rows"], c["system"], c.get("label", "")))
    names = [f"{c.get('label', c['system'])}\n{c['rows']}" for c in cases]
    palette = {"plain-recipe": "#999999", "plain-careful": "#999999", "trl": "#d98c1f"}
    colors = [palette.get(c["system"], "#2a7ab9") for c in cases]
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(12, 4.5))
    speed.bar(names, [c["supervised_tokens_per_s"] for c in cases], color=colors)
    speed.set_ylabel("supervised tokens / s")
    memory.bar(names, [c["peak_alloc_gib"] for c in cases], color=colors)
    memory.set_ylabel("peak allocated VRAM (GiB)")
    memory.axhline(4, color="red", linestyle="--", linewidth=1, label="target at 2 x 2048: 4 GiB")
    memory.legend()
    for ax in (speed, memory):
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"plain recipe vs medqlora, same run, {data['gpu']}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:3])
