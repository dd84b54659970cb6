#!/usr/bin/env bash
# DDP (and FSDP-QLoRA with WITH_FSDP=1) against one GPU, same machine, same run:
#   DEVICES="2 4" bash benchmarks/run_gpu_distributed.sh      (writes $OUT/result.json and $OUT/bench.log)
# Each case is medqlora's default path (2 packed rows of 2048 per micro-batch, accumulation 8) on real-length
# rows; 24 timed micro-batches per rank take in three optimizer steps, so gradient all-reduces are in the timing.
# speedup_vs_1 is on supervised tokens/s against one GPU trained on the same batches (supervised_share_gap: how far
# the two runs' supervised shares still differ);
# host_rss_gib / host_pss_gib are rank 0's host memory, with one PLE copy per machine and (-private) per rank.
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
  for n in ${DEVICES:-2}; do  # one GPU on the very batches the n ranks share out, so the rows are the same
    case_ "single-as-$n" --strategy single --devices 1 --same-rows-as "$n" --label "1 GPU, the rows of $n ranks"
    case_ "ddp-$n" --strategy ddp --devices "$n" --label "DDP, $n GPUs, one PLE host copy per machine"
    case_ "ddp-$n-private" --strategy ddp --devices "$n" --ple-private --label "DDP, $n GPUs, one PLE copy per rank"
    [ -n "${WITH_FSDP:-}" ] && case_ "fsdp-$n" --strategy fsdp --devices "$n" --label "FSDP, $n GPUs"
  done
  python3 benchmarks/bench_train.py merge "$CASES"/*.json --out "$OUT/result.json" \
    --command "DEVICES='${DEVICES:-2}' bash benchmarks/run_gpu_distributed.sh"
} 2>&1 | tee "$OUT/bench.log"
