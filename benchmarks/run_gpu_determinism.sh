#!/usr/bin/env bash
# GPU repeatability of the recipe's default (issue #26 item 3), one GPU, carrying .gpu-site (docs/benchmarks.md):
#   ONLY="default deterministic" bash benchmarks/run_gpu_determinism.sh     # two pairs of runs
#   ONLY=resume bash benchmarks/run_gpu_determinism.sh                      # a run, and one stopped and resumed
# builds the random E2B checkpoint, then benchmarks/check_determinism.py; the result is $OUT/determinism-*.json.
set -u
source "$(dirname "$0")/gpu_env.sh"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
ONLY=${ONLY:-default deterministic resume}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
build_checkpoint
echo "== checkpoint at ${SECONDS}s"
python3 benchmarks/check_determinism.py --ckpt "$CKPT" --work /tmp/det --json "$OUT/determinism-${ONLY// /-}.json" \
  --steps "${STEPS:-6}" --accumulate "${ACCUMULATE:-4}" --only $ONLY 2>&1 | grep -v "it/s\]$" | tail -n 60 | cut -c1-600
echo "== done at ${SECONDS}s"
