#!/usr/bin/env bash
# Evaluation speed (issue #25) on one GPU, one device call (nvidia-h200), carrying .gpu-site (bitsandbytes, datasets,
# jsonargparse: ../shared/tools/device-site.sh, see docs/benchmarks.md):
#   bash benchmarks/run_gpu_eval.sh
# builds the random E2B checkpoint, writes the benchmark-shaped files and a random adapter, times `medqlora eval`
# from its start to its exit, then measures decoding, today's path and the bf16 agreement (benchmarks/bench_eval.py);
# the merged result is $OUT/eval-speed.json (copy it to benchmarks/results/).
set -u
source "$(dirname "$0")/gpu_env.sh"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
WORK=${WORK:-/tmp/bench-eval} LOGS=$OUT/logs; mkdir -p "$LOGS"
step() {  # step NAME TIMEOUT ARGS...: bench_eval.py ARGS, output to a log, its tail shown
  local name=$1 t=$2; shift 2
  echo "== $name (${t}s at most, from ${SECONDS}s)"
  timeout -k 5 "$t" python3 benchmarks/bench_eval.py "$@" > "$LOGS/$name.log" 2>&1
  echo "   rc $? at ${SECONDS}s"; grep -v "it/s\]$\|tok/s\]$\|step/s\]$" "$LOGS/$name.log" | tail -n "${TAIL:-4}" | cut -c1-1500
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft, bitsandbytes, datasets; print(torch.__version__, transformers.__version__, peft.__version__, bitsandbytes.__version__, datasets.__version__)"
build_checkpoint
[ -f "$WORK/lengths.json" ] || step setup 240 setup --ckpt "$CKPT" --work "$WORK"
step eval "${EVAL_TIMEOUT:-300}" eval --work "$WORK" --json "$OUT/eval.json"
[ "${PATHS:-1}" = 1 ] && step paths "${PATHS_TIMEOUT:-300}" paths --work "$WORK" --json "$OUT/paths.json"
[ -f "$OUT/eval.json" ] && [ -f "$OUT/paths.json" ] &&
  python3 benchmarks/bench_eval.py merge --eval "$OUT/eval.json" --paths "$OUT/paths.json" --json "$OUT/eval-speed.json"
tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$LOGS"
