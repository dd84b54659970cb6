#!/usr/bin/env bash
# DDP and FSDP-QLoRA against one GPU, same machine, same run (a 2-GPU device kind):
#   bash benchmarks/run_gpu_distributed.sh      (writes $OUT/result.json and $OUT/bench.log)
# Each case is medqlora's default path (2 packed rows of 2048 per micro-batch, accumulation 8) on real-length
# rows; 24 timed micro-batches take in three optimizer steps, so gradient all-reduces are in the timing.
set -u
source "$(dirname "$0")/gpu_env.sh"
export BENCH_TIMED=${BENCH_TIMED:-24}
case_() {  # case_ NAME ARGS...
  local name=$1; shift
  echo "== $name"
  timeout "${CASE_TIMEOUT:-200}" python3 benchmarks/bench_train.py case --model "$CKPT" --system medqlora \
    --rows real-lengths --json "$CASES/$name.json" "$@" 2>&1 | grep -v "it/s\]$" | tail -n 6
}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  build_checkpoint
  case_ single-1 --strategy single --devices 1 --label "1 GPU"
  case_ ddp-2 --strategy ddp --devices 2 --label "DDP, 2 GPUs"
  case_ fsdp-2 --strategy fsdp --devices 2 --label "FSDP, 2 GPUs"
  python3 benchmarks/bench_train.py merge "$CASES"/single-1.json "$CASES"/ddp-2.json "$CASES"/fsdp-2.json \
    --out "$OUT/result.json" --command "bash benchmarks/run_gpu_distributed.sh"
} 2>&1 | tee "$OUT/bench.log"
