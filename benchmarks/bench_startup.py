"""How soon each `medqlora` command answers, as a user starts it: the installed console script in a fresh process,
timed to its first byte of output and to its exit (median of --repeat runs), on this machine's CPU.

    python benchmarks/bench_startup.py [--repeat 3] [--out benchmarks/results/DATE-cpu-startup.json]

Issue #39's aims on a 2-core CPU: `--help` and `--version` answer in under 2 s; every command starts printing
within 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPT = Path(sys.executable).with_name("medqlora")
TINY = HERE.parent / "configs" / "tiny.yaml"
CASES = {
    "--help": ["--help"],
    "--version": ["--version"],
    "eval --help": ["eval", "--help"],
    "fit --help": ["fit", "--help"],
    "fit (tiny, 1 step)": ["fit", "--config", str(TINY), "--trainer.max_steps", "1"],
    "eval (missing adapter)": ["eval", "no-such-adapter"],
}


def timed(args: list[str], cwd: Path) -> dict[str, float]:
    """Seconds to the first byte on stdout or stderr, and to the exit, of one run of the console script."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [str(SCRIPT), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ}
    )
    process.stdout.read(1)
    first = time.perf_counter() - start
    process.stdout.read()
    code = process.wait()
    return {"first_output_s": round(first, 3), "exit_s": round(time.perf_counter() - start, 3), "exit_status": code}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / f"{time.strftime('%Y-%m-%d')}-cpu-startup.json")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="medqlora-bench-startup-") as work:
        for name, command in CASES.items():
            runs = [timed(command, Path(work)) for _ in range(args.repeat)]
            results[name] = {
                "command": "medqlora " + " ".join(command),
                "first_output_s": statistics.median(r["first_output_s"] for r in runs),
                "exit_s": statistics.median(r["exit_s"] for r in runs),
                "exit_status": runs[0]["exit_status"],
                "runs": runs,
            }
            case = results[name]
            print(f"{name:<24} first output {case['first_output_s']:6.2f} s   exit {case['exit_s']:6.2f} s")
    out = {
        "command": f"python benchmarks/bench_startup.py --repeat {args.repeat}",
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "processor": platform.processor() or platform.machine(),
            "avx512_bf16": "avx512_bf16" in Path("/proc/cpuinfo").read_text(),
        },
        "aims_s": {"--help and --version": 2.0, "first output of any command": 3.0},
        "cases": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
