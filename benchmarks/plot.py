"""Plot a benchmark result file: supervised tokens/s and peak VRAM per case.

python benchmarks/plot.py benchmarks/results/2026-11-25-h100-run2.json docs/benchmarks.png
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(result: str, out: str) -> None:
    data = json.loads(Path(result).read_text())
    cases = sorted(data["cases"], key=lambda c: -c["supervised_tokens_per_s"])[::-1]  # fastest at the top
    names = [textwrap.fill(c.get("label", c["system"]), 42) for c in cases]  # long labels, so horizontal bars
    palette = {"plain-recipe": "#999999", "plain-careful": "#999999", "trl": "#d98c1f"}
    colors = [palette.get(c["system"], "#2a7ab9") for c in cases]
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(13, 1.1 * len(cases) + 1.5), sharey=True)
    speed.barh(names, [c["supervised_tokens_per_s"] for c in cases], color=colors)
    speed.set_xlabel("supervised tokens / s")
    memory.barh(names, [c["peak_alloc_gib"] for c in cases], color=colors)
    memory.set_xlabel("peak allocated VRAM (GiB)")
    memory.axvline(4, color="red", linestyle="--", linewidth=1, label="target at 2 x 2048: 4 GiB")
    memory.legend(loc="upper right")
    speed.tick_params(axis="y", labelsize=8)
    fig.suptitle(f"plain recipe vs medqlora, same run, {data['gpu']}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:3])
