#!/usr/bin/env bash
# Lean and fast on one GPU (issue #16): every case one after another on one idle GPU (nvidia-h100-x1), in two
# device calls on the same warm machine (the checkpoint and inductor's cache stay in /tmp between them):
#   PART=a bash benchmarks/history/run_gpu_fast.sh   # the ratio cases: plain-careful, eager and compiled 2 x 2048
#   PART=b bash benchmarks/history/run_gpu_fast.sh   # compiled 8 x 2048 under a 12 GiB cap, the new paths against today's
#                                            # in fp32, and who holds the peak of compiled 2 x 2048
#   PART=c bash benchmarks/history/run_gpu_fast.sh   # run 23: the optimizer step alone, then compiled 2 x 2304 at
#                                            # accumulation 7, compiled and eager 2 x 2048 (16 timed steps each,
#                                            # so every case times whole accumulation windows)
#   PART=d bash benchmarks/history/run_gpu_fast.sh   # run 24, the table: the recipe's default (compiled) and eager 2 x 2048
#                                            # over 48 micro-batches (6 optimizer steps), plain-careful over 24
#   PART=e bash benchmarks/history/run_gpu_fast.sh   # run 25: where the compiled 2 x 2048 step leaves the GPU idle
#                                            # (profiler trace, gpu_gaps.py), and compiled 8 x 2048 under 12 GiB
#   PART=f bash benchmarks/history/run_gpu_fast.sh   # run 29: the micro-batch CUDA graph against run 24's default, 2 x 2048
#   PART=g bash benchmarks/history/run_gpu_fast.sh   # run 30, the table: the CUDA-graphed default, eager and plain-careful
#   PART=h bash benchmarks/history/run_gpu_fast.sh   # run 31: the graph against today in fp32, graphed 8 x 2048 under
#                                            # 12 GiB and 4 x 2048 under 6 GiB (both ran out of memory)
#   PART=i bash benchmarks/history/run_gpu_fast.sh   # run 32: graphed 8 x 2048 (expandable segments) and 4 x 2048 under
#                                            # 12 GiB, and the graphed step under the profiler
# ONLY="name ..." runs just the named cases of a part (all of part b takes two calls of 560 s).
# then merge both parts' case files here (bench_train.py merge). Cases run alone: a compilation beside a CPU-bound
# case slowed it by a third in an earlier run (docs/benchmarks.md, run 17).
# Cases with a new path first check loss and LoRA gradients against today's path on their first batch (JSON:
# vs_today, with the graph counts before and after the timed steps). Every case reports MFU.
set -u
source "$(dirname "$0")/../gpu_env.sh"
CASES=$OUT/cases LOGS=/tmp/bench-logs; mkdir -p "$CASES" "$LOGS"  # cases under $OUT: a call cut off still returns them
export BENCH_TIMED=${BENCH_TIMED:-12} TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-16}
export TORCH_LOGS=${TORCH_LOGS:-recompiles}  # a recompile inside the timed steps shows in the log
DEADLINE=$((SECONDS + ${BUDGET_S:-560}))  # no case runs past this
EXPANDABLE=expandable_segments:True  # the capped cases: segments grow in place instead of fragmenting
case_() {  # case_ TIMEOUT NAME ARGS...: output to a file, so compile workers a timeout orphans cannot hold a pipe
  local t=$1 name=$2 left=$((DEADLINE - SECONDS)); shift 2
  [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]] && return  # ONLY="name ...": just these cases
  (( t > left )) && t=$left
  (( t < 30 )) && { echo "== $name skipped: ${left}s left"; return; }
  echo "== $name (${t}s at most, from ${SECONDS}s)"
  timeout -k 5 "$t" python3 benchmarks/bench_train.py case --model "$CKPT" --rows real-lengths \
    --json "$CASES/$name.json" "$@" > "$LOGS/$name.log" 2>&1
  echo "   rc $? at ${SECONDS}s"; grep -v "it/s\]$" "$LOGS/$name.log" | grep -v "^trace" | tail -n 3 | cut -c1-1500
}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  build_checkpoint
  if [ "${PART:-a}" = c ]; then
    echo "== optimizer-step"; timeout 100 python3 benchmarks/optimizer_step.py --json "$CASES/optimizer-step.json" \
      > "$LOGS/optimizer-step.log" 2>&1; echo "   rc $? at ${SECONDS}s"; tail -n 1 "$LOGS/optimizer-step.log" | cut -c1-600
    PYTORCH_CUDA_ALLOC_CONF=$EXPANDABLE BENCH_TIMED=14 case_ 200 compiled-2x2304-acc7-cap6 --system medqlora \
      --compile --loss-grad-in-forward --pack-tokens 2304 --accumulate 7 --memory-cap-gib 6 \
      --label "medqlora 2 x 2304 at accumulation 7 (the recipe's tokens per optimizer step), compiled, capped at 6 GiB"
    PYTORCH_CUDA_ALLOC_CONF=$EXPANDABLE BENCH_TIMED=16 case_ 200 compiled-2x2048-gradfwd-cap6 --system medqlora \
      --compile --loss-grad-in-forward --memory-cap-gib 6 \
      --label "medqlora 2 x 2048, compiled layers + loss gradient in forward (the recipe's default), capped at 6 GiB"
    BENCH_TIMED=16 case_ 100 eager-2x2048 --system medqlora --label "medqlora 2 x 2048, eager (the default until run 22)"
  elif [ "${PART:-a}" = d ]; then
    PYTORCH_CUDA_ALLOC_CONF=$EXPANDABLE BENCH_TIMED=48 case_ 240 compiled-2x2048-cap6 --system medqlora \
      --compile --loss-grad-in-forward --memory-cap-gib 6 \
      --label "medqlora 2 x 2048, the recipe's default (compiled layers, loss gradient in forward), capped at 6 GiB"
    BENCH_TIMED=48 case_ 140 eager-2x2048 --system medqlora --label "medqlora 2 x 2048, eager (the default until run 22)"
    BENCH_TIMED=24 case_ 160 plain-careful --system plain-careful --label "plain recipe, careful"
  elif [ "${PART:-a}" = e ]; then
    BENCH_TIMED=3 case_ 200 profile-compiled-2x2048 --system medqlora --compile --loss-grad-in-forward --profile \
      --label "compiled 2 x 2048 under the profiler: where the GPU waits (the timing is not a result)"
    PYTORCH_CUDA_ALLOC_CONF=$EXPANDABLE BENCH_TIMED=24 case_ 240 compiled-8x2048-cap12 --system medqlora --compile \
      --loss-grad-in-forward --micro-batch 8 --accumulate 2 --memory-cap-gib 12 \
      --label "medqlora 8 x 2048 at accumulation 2, compiled layers + loss gradient in forward, capped at 12 GiB"
  elif [ "${PART:-a}" = f ]; then
    BENCH_TIMED=48 case_ 300 graphed-2x2048-cap6 --system medqlora --compile --loss-grad-in-forward --cuda-graph \
      --memory-cap-gib 6 --label "medqlora 2 x 2048, compiled layers + loss gradient in forward + micro-batch CUDA graph, capped at 6 GiB"
    PYTORCH_CUDA_ALLOC_CONF=$EXPANDABLE BENCH_TIMED=48 case_ 240 compiled-2x2048-cap6 --system medqlora \
      --compile --loss-grad-in-forward --memory-cap-gib 6 \
      --label "medqlora 2 x 2048, compiled layers + loss gradient in forward (run 24's default), capped at 6 GiB"
  elif [ "${PART:-a}" = g ]; then
    BENCH_TIMED=48 case_ 240 graphed-2x2048-cap6 --system medqlora --compile --loss-grad-in-forward --cuda-graph \
      --memory-cap-gib 6 --label "medqlora 2 x 2048, the recipe's default (compiled layers, loss gradient in forward, micro-batch CUDA graph), capped at 6 GiB"
    BENCH_TIMED=48 case_ 140 eager-2x2048 --system medqlora --label "medqlora 2 x 2048, eager (the default until run 22)"
    BENCH_TIMED=24 case_ 170 plain-careful --system plain-careful --label "plain recipe, careful"
  elif [ "${PART:-a}" = h ]; then
    BENCH_TIMED=2 case_ 200 check-fp32-graphed --system medqlora --compile --loss-grad-in-forward --cuda-graph \
      --compute-dtype float32 --label "micro-batch CUDA graph + compiled layers + loss gradient in forward vs today in fp32 (timing not a result)"
    BENCH_TIMED=24 case_ 220 graphed-8x2048-cap12 --system medqlora --compile --loss-grad-in-forward --cuda-graph \
      --micro-batch 8 --accumulate 2 --memory-cap-gib 12 \
      --label "medqlora 8 x 2048 at accumulation 2, compiled layers + loss gradient in forward + CUDA graph, capped at 12 GiB"
    BENCH_TIMED=32 case_ 160 graphed-4x2048-cap6 --system medqlora --compile --loss-grad-in-forward --cuda-graph \
      --micro-batch 4 --accumulate 4 --memory-cap-gib 6 \
      --label "medqlora 4 x 2048 at accumulation 4, compiled layers + loss gradient in forward + CUDA graph, capped at 6 GiB"
  elif [ "${PART:-a}" = i ]; then
    PYTORCH_CUDA_ALLOC_CONF=$EXPANDABLE BENCH_TIMED=24 case_ 220 graphed-8x2048-cap12 --system medqlora --compile \
      --loss-grad-in-forward --cuda-graph --micro-batch 8 --accumulate 2 --memory-cap-gib 12 \
      --label "medqlora 8 x 2048 at accumulation 2, compiled layers + loss gradient in forward + CUDA graph, capped at 12 GiB"
    BENCH_TIMED=32 case_ 180 graphed-4x2048-cap12 --system medqlora --compile --loss-grad-in-forward --cuda-graph \
      --micro-batch 4 --accumulate 4 --memory-cap-gib 12 \
      --label "medqlora 4 x 2048 at accumulation 4, compiled layers + loss gradient in forward + CUDA graph, capped at 12 GiB"
    BENCH_TIMED=3 case_ 150 profile-graphed-2x2048 --system medqlora --compile --loss-grad-in-forward --cuda-graph \
      --profile --label "graphed 2 x 2048 under the profiler: where the GPU's time goes (the timing is not a result)"
  elif [ "${PART:-a}" = a ]; then
    case_ 100 eager-2x2048 --system medqlora --label "medqlora 2 x 2048 (eager, today)"
    PYTORCH_CUDA_ALLOC_CONF=$EXPANDABLE case_ 200 compiled-2x2048-gradfwd-cap6 --system medqlora --compile \
      --loss-grad-in-forward --memory-cap-gib 6 \
      --label "medqlora 2 x 2048, compiled layers + loss gradient in forward, capped at 6 GiB"
    case_ 100 plain-careful --system plain-careful --label "plain recipe, careful"
    PYTORCH_CUDA_ALLOC_CONF=$EXPANDABLE case_ 100 eager-2x2048-expandable --system medqlora \
      --label "medqlora 2 x 2048 (eager, today) with expandable segments"
  else
    PYTORCH_CUDA_ALLOC_CONF=$EXPANDABLE case_ 200 compiled-8x2048-gradfwd-cap12 --system medqlora --compile \
      --loss-grad-in-forward --micro-batch 8 --memory-cap-gib 12 \
      --label "medqlora 8 x 2048, compiled layers + loss gradient in forward, capped at 12 GiB"
    BENCH_TIMED=2 case_ 200 check-fp32 --system medqlora --compile --loss-grad-in-forward \
      --compute-dtype float32 --label "compiled layers + loss gradient in forward vs today in fp32 (timing not a result)"
    BENCH_TIMED=2 case_ 200 check-fp32-math --system medqlora --compile --loss-grad-in-forward \
      --compute-dtype float32 --sdpa-math --label "the same check, SDPA's math backend on both paths"
    BENCH_TIMED=2 case_ 100 check-fp32-gradfwd --system medqlora --loss-grad-in-forward --compute-dtype float32 \
      --label "loss gradient in forward vs today in fp32 (the timing is not a result)"
    PYTORCH_CUDA_ALLOC_CONF=$EXPANDABLE BENCH_TIMED=2 case_ 150 memory-compiled-2x2048 --system medqlora \
      --compile --loss-grad-in-forward --memory-report "$OUT/memory-compiled-2x2048.json" \
      --label "who holds the peak of compiled 2 x 2048 (the timing is not a result)"
  fi
  tar -czf "$OUT/logs-${PART:-a}.tgz" -C "$LOGS" .  # every case's full log (recompiles), one file (8 come back)
} 2>&1 | tee "$OUT/bench-fast-${PART:-a}.log"
