#!/usr/bin/env bash
# The whole benchmark in one device call: random E2B checkpoint, then each case in its own process.
#   bash benchmarks/run_gpu.sh            (on the GPU machine; writes $OUT/*.json and $OUT/bench.log)
# The ratio cases run one after another on GPU 0; with a second GPU, variants (VARIANTS=1) run beside them
# on GPU 1 and are labelled so.
set -u
source "$(dirname "$0")/gpu_env.sh"
export BENCH_TIMED=${BENCH_TIMED:-12}
T=${CASE_TIMEOUT:-150}
case_() {  # case_ GPU NAME ARGS...: one case, its JSON at $CASES/NAME.json, its log's tail in bench.log
  local gpu=$1 name=$2; shift 2
  echo "== $name (GPU $gpu)"
  CUDA_VISIBLE_DEVICES=$gpu timeout "$T" python3 benchmarks/bench_train.py case --model "$CKPT" \
    --json "$CASES/$name.json" "$@" 2>&1 | grep -v "it/s\]$" | grep -v "^trace" | tail -n 4
}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  build_checkpoint
  if [ "${VARIANTS:-0}" = 1 ]; then
    {
      T=240 case_ 1 variant-16x2048-flex --system medqlora --rows real-lengths --micro-batch 16 \
        --attention flex_attention --label "medqlora-16x2048-flex (GPU 1)"
      CUDA_VISIBLE_DEVICES=1 BENCH_TIMED=10 timeout "$T" python3 benchmarks/bench_train.py case --model "$CKPT" \
        --system medqlora --rows full-2x2048 --trace --json "$CASES/trace.json" > "$OUT/trace.log" 2>&1
    } > "$OUT/variants.log" 2>&1 &
  fi
  for rows in full-2x2048 real-lengths; do
    case_ 0 "plain-recipe-$rows" --system plain-recipe --rows "$rows"
    case_ 0 "medqlora-$rows" --system medqlora --rows "$rows"
  done
  case_ 0 medqlora-16x2048-real-lengths --system medqlora --rows real-lengths --micro-batch 16 \
    --label medqlora-16x2048
  wait
  python3 benchmarks/bench_train.py merge "$CASES"/plain-recipe-*.json "$CASES"/medqlora-*.json "$CASES"/variant-*.json \
    --out "$OUT/result.json" --command "VARIANTS=${VARIANTS:-0} bash benchmarks/run_gpu.sh"
} 2>&1 | tee "$OUT/bench.log"
