#!/usr/bin/env bash
# Lean and fast on one GPU (issue #16), one device call on a 2-GPU machine (nvidia-h100-x2):
#   bash benchmarks/run_gpu_fast.sh
# GPU 0, one after another: the plain recipe written carefully (the ratios' baseline), medqlora today (eager,
# 2 x 2048), the same with the loss gradient taken in forward, and medqlora with compiled decoder layers at
# 2 x 2048 with the process capped to 6 GiB of the GPU.
# GPU 1 beside it: the literal plain recipe, compiled layers at 8 x 2048 (the candidate for a 12 GiB card), and the
# compiled-vs-eager check in fp32, where bf16 rounding cannot hide a difference.
# Compiled cases first check loss and LoRA gradients against the eager layers on their first batch (JSON:
# compiled_vs_eager). Every case reports MFU (benchmarks/flops.py).
set -u
source "$(dirname "$0")/gpu_env.sh"
export BENCH_TIMED=${BENCH_TIMED:-12} TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-8}
export TORCH_LOGS=${TORCH_LOGS:-recompiles}  # a recompile inside the timed steps shows in the log
case_() {  # case_ GPU TIMEOUT NAME ARGS...
  local gpu=$1 t=$2 name=$3; shift 3
  echo "== $name (GPU $gpu)"
  CUDA_VISIBLE_DEVICES=$gpu timeout "$t" python3 benchmarks/bench_train.py case --model "$CKPT" --rows real-lengths \
    --json "$CASES/$name.json" "$@" 2>&1 | grep -v "it/s\]$" | grep -v "^trace" | tail -n 3
}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  build_checkpoint
  {
    case_ 1 120 plain-recipe --system plain-recipe --label "plain recipe, literal (GPU 1)"
    case_ 1 330 compiled-8x2048 --system medqlora --compile --micro-batch 8 --memory-cap-gib 12 \
      --label "medqlora 8 x 2048, compiled layers, capped at 12 GiB (GPU 1)"
    BENCH_TIMED=2 case_ 1 300 check-fp32 --system medqlora --compile --compute-dtype float32 \
      --label "compiled vs eager in fp32 (GPU 1; the timing is not a result)"
  } > "$OUT/gpu1.log" 2>&1 &
  case_ 0 120 plain-careful --system plain-careful --label "plain recipe, careful"
  case_ 0 120 eager-2x2048 --system medqlora --label "medqlora 2 x 2048 (eager, today)"
  case_ 0 120 eager-2x2048-gradfwd --system medqlora --loss-grad-in-forward \
    --label "medqlora 2 x 2048, loss gradient in forward"
  case_ 0 330 compiled-2x2048-cap6 --system medqlora --compile --memory-cap-gib 6 \
    --label "medqlora 2 x 2048, compiled layers, capped at 6 GiB"
  wait
  cat "$OUT/gpu1.log"
  python3 benchmarks/bench_train.py merge "$CASES"/*.json --out "$OUT/result.json" --command "bash benchmarks/run_gpu_fast.sh"
} 2>&1 | tee "$OUT/bench-fast.log"
