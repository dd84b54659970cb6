#!/usr/bin/env bash
# The whole benchmark in one device call: random E2B checkpoint, then each case in its own process.
#   bash benchmarks/run_gpu.sh            (on the GPU machine; writes $OUT/*.json and $OUT/bench.log)
# bitsandbytes travels as a folder built by ../shared/tools/device-site.sh .gpu-site bitsandbytes==0.50.2
set -u
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD/.gpu-site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
CKPT=${CKPT:-/tmp/e2b-random}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  [ -f "$CKPT/config.json" ] || timeout 200 python3 benchmarks/bench_train.py build --out "$CKPT"
  for rows in full-2x2048 real-lengths; do
    for system in plain-recipe medqlora; do
      echo "== $system $rows"
      timeout "${CASE_TIMEOUT:-110}" python3 benchmarks/bench_train.py case --system "$system" --rows "$rows" \
        --model "$CKPT" --json "$OUT/$system-$rows.json" 2>&1 | grep -v "it/s\]$" | tail -n 25
    done
  done
  echo "== medqlora real-lengths, 8 packed rows per micro-batch"
  timeout "${CASE_TIMEOUT:-110}" python3 benchmarks/bench_train.py case --system medqlora --rows real-lengths \
    --micro-batch 8 --label medqlora-8x2048 --model "$CKPT" --json "$OUT/medqlora-8x2048-real-lengths.json" 2>&1 \
    | grep -v "it/s\]$" | tail -n 5
  python3 benchmarks/bench_train.py merge "$OUT"/*-*.json --out "$OUT/result.json" --command "bash benchmarks/run_gpu.sh"
} 2>&1 | tee "$OUT/bench.log"
