#!/usr/bin/env bash
# Issue #40 on one GPU: what the checkpointing policy buys at the recipe's 2 x 2048, and long rows within 12 GiB.
# The recipe's default switches (compiled layers, loss gradient in forward, CUDA graph; the graph off where
# offloading), random E2B weights; each case in its own process, JSON per case under $OUT.
#   PART=1 bash benchmarks/run_gpu_memory.sh   # checkpoint, and 2 x 2048 with every / half / no layer checkpointed
#   PART=2 bash benchmarks/run_gpu_memory.sh   # 4 x 2048 half checkpointed; 1 x 8192 and 1 x 16384 offloaded, 12 GiB
#   PART=3 bash benchmarks/run_gpu_memory.sh   # the long rows again: 8192 as in PART=2, 16384 with FlexAttention
# Carry .gpu-site (docs/benchmarks.md). Every case checks its loss and LoRA gradients against eager layers with
# masked SDPA on its first batch (vs_today).
set -u
source "$(dirname "$0")/gpu_env.sh"
LOGS=/tmp/bench-logs; mkdir -p "$LOGS"
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-16}
TIMED=${BENCH_TIMED:-16}
case_() {  # case_ NAME TIMEOUT ARGS...
  local name=$1 t=$2; shift 2
  echo "== $name from ${SECONDS}s"
  BENCH_TIMED=$TIMED timeout -k 5 "$t" python3 benchmarks/bench_train.py case --model "$CKPT" --system medqlora \
    --recipe-lean --json "$CASES/$name.json" "$@" > "$LOGS/$name.log" 2>&1
  echo "   rc $? at ${SECONDS}s"; grep -v "it/s\]$" "$LOGS/$name.log" | tail -n 1 | cut -c1-400
  cp "$CASES/$name.json" "$OUT/" 2>/dev/null
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
build_checkpoint
if [ "${PART:-1}" = 1 ]; then
  case_ ckpt-all 220 --rows real-lengths --label "2 x 2048, every layer checkpointed (the recipe's default)"
  case_ ckpt-half 220 --rows real-lengths --checkpoint-share 0.5 --label "2 x 2048, half the layers checkpointed"
  case_ ckpt-none 220 --rows real-lengths --checkpoint-share 0 --label "2 x 2048, no layer checkpointed"
elif [ "${PART}" = 3 ]; then
  case_ long-8192 200 --rows long-tail --pack-tokens 8192 --micro-batch 1 --accumulate 4 --offload-checkpoints \
    --memory-cap-gib 12 --label "1 x 8192 long-tail rows, every layer checkpointed, inputs offloaded, 12 GiB cap"
  case_ long-16384-flex 220 --rows long-tail --pack-tokens 16384 --micro-batch 1 --accumulate 2 --offload-checkpoints \
    --attention flex --memory-cap-gib 12 --no-check \
    --label "1 x 16384 long-tail rows, FlexAttention on the full layers, inputs offloaded, 12 GiB cap"
else
  case_ mb4-half 240 --rows real-lengths --micro-batch 4 --accumulate 4 --checkpoint-share 0.5 \
    --label "4 x 2048, half the layers checkpointed, accumulation 4"
  case_ long-8192 200 --rows long-tail --pack-tokens 8192 --micro-batch 1 --accumulate 4 --offload-checkpoints \
    --memory-cap-gib 12 --label "1 x 8192 long-tail rows, every layer checkpointed, inputs offloaded, 12 GiB cap"
  case_ long-16384 200 --rows long-tail --pack-tokens 16384 --micro-batch 1 --accumulate 2 --offload-checkpoints \
    --memory-cap-gib 12 --no-check --label "1 x 16384 long-tail rows, every layer checkpointed, inputs offloaded, 12 GiB cap"
fi
echo "== done at ${SECONDS}s"
