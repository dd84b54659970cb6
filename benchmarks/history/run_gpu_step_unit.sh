#!/usr/bin/env bash
# Issue #27 item 5 on one GPU: the recipe's default step before and after the step-unit refactor, in one run, on the
# same random E2B checkpoint, alternating so drift shows as noise; then the real CUDA graph against no graph.
#   git archive <before-commit> src benchmarks configs | tar -x -C .before      # the tree to compare with
#   PART=1 bash benchmarks/history/run_gpu_step_unit.sh; PART=2 bash benchmarks/history/run_gpu_step_unit.sh   (carry .gpu-site .before)
#   PART=pairs bash benchmarks/history/run_gpu_step_unit.sh     # before, after, after, before in one call (~8 minutes)
# Cases land in $CASES; each part merges what exists into $OUT/step-unit.json.
set -u
source "$(dirname "$0")/../gpu_env.sh"
ROOT=$PWD
TIMED=${BENCH_TIMED:-24}
case_() {  # case_ <before|after> <label>
  local tree=$ROOT name="$1-$2"
  [ "$1" = before ] && tree=$ROOT/.before
  echo "== $name from ${SECONDS}s"
  (cd "$tree" && PYTHONPATH="$tree/src:$ROOT/.gpu-site:$tree/benchmarks" BENCH_TIMED=$TIMED timeout -k 5 280 \
    python3 benchmarks/bench_train.py case --system medqlora --rows real-lengths --model "$CKPT" \
    --compile --loss-grad-in-forward --cuda-graph --json "$CASES/$name.json" --label "$name" > "/tmp/$name.log" 2>&1)
  echo "   rc $? at ${SECONDS}s"; grep -v "it/s\]$" "/tmp/$name.log" | tail -n 2 | cut -c1-400
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
build_checkpoint
if [ "${PART:-1}" = pairs ]; then
  case_ before a; case_ after a; case_ after b; case_ before b
elif [ "${PART:-1}" = 1 ]; then
  case_ before 1; case_ after 1
else
  case_ after 2; case_ before 2
  echo "== graph-training from ${SECONDS}s"
  timeout 150 python3 benchmarks/check_graph_training.py "$OUT/graph-training.json" 2>&1 | grep -v "it/s\]$" | tail -n 3
fi
python3 benchmarks/bench_train.py merge "$CASES"/*.json --out "$OUT/step-unit.json" \
  --command "PART=${PART:-1} bash benchmarks/history/run_gpu_step_unit.sh" 2>&1 | tail -n 2
cp "$CASES"/*.json "$OUT"/ 2>/dev/null
echo "== done at ${SECONDS}s"
