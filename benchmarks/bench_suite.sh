#!/usr/bin/env bash
# The README's test command timed as on a CPU without AVX512-BF16 (issue #39), on this machine:
#   bash benchmarks/bench_suite.sh [pytest args]            # ISA=AVX2 for an AVX2-only CPU; JSON=path to record it
# oneDNN is capped below its BF16 instructions (ONEDNN_MAX_CPU_ISA=AVX512_CORE: bf16 matmuls convert to fp32, as on
# Skylake to Ice Lake Xeons; AVX2: PyTorch's own bf16 GEMM, as on AMD Zen 2 and 3) and bitsandbytes is told the CPU
# lacks AVX512-BF16 (no_avx512bf16/sitecustomize.py), in every process the suite starts.
set -u
cd "$(dirname "$0")/.."
export ONEDNN_MAX_CPU_ISA=${ISA:-AVX512_CORE} PYTHONPATH="$PWD/benchmarks/no_avx512bf16${PYTHONPATH:+:$PYTHONPATH}"
.venv/bin/python -c "import torch, bitsandbytes.functional as F
print('cores', torch.get_num_threads(), '| oneDNN bf16', torch.ops.mkldnn._is_mkldnn_bf16_supported(),
      '| bitsandbytes AVX512-BF16', F.has_avx512bf16())" 2>/dev/null
start=$SECONDS
# the signal tests need Ctrl-C's default action, which a shell's background job (`&`) would have ignored
.venv/bin/python -c "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])" \
  .venv/bin/python -m pytest -q -p no:cacheprovider "$@" | tee /tmp/bench_suite.$$.log
status=${PIPESTATUS[0]}
seconds=$((SECONDS - start))
echo "== the suite took $((seconds / 60)) min $((seconds % 60)) s (exit $status)"
if [ -n "${JSON:-}" ]; then
  .venv/bin/python - "$JSON" "$seconds" "$status" "$(tail -n 1 /tmp/bench_suite.$$.log)" <<'PY'
import json, os, platform, sys
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
json.dump({"command": "bash benchmarks/bench_suite.sh", "onednn_max_cpu_isa": os.environ["ONEDNN_MAX_CPU_ISA"],
           "bitsandbytes_avx512bf16": False, "cpu": cpu, "cores": os.cpu_count(), "seconds": int(sys.argv[2]),
           "exit": int(sys.argv[3]), "summary": sys.argv[4]}, open(sys.argv[1], "w"), indent=2)
PY
fi
rm -f /tmp/bench_suite.$$.log
exit "$status"
