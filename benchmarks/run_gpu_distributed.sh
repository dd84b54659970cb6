#!/usr/bin/env bash
# DDP and FSDP-QLoRA against one GPU, same machine, same run; two parts, each one device call on a warm machine:
#   PART=scaling DEVICES="2 4" bash benchmarks/run_gpu_distributed.sh   recipe setting (2 packed rows of 2048 per
#       micro-batch): one GPU on the batches N ranks share out, DDP on N (one PLE host copy per machine, and one per
#       rank), FSDP on the largest N
#   PART=fast DEVICES=4 bash benchmarks/run_gpu_distributed.sh          the speed setting (16 x 2048), exact resume
#       on N ranks (benchmarks/check_fsdp_resume.py; RESUME=0 skips it), and the merged result.json of both parts
# Strategies come from configs/ddp.yaml and configs/fsdp.yaml. speedup_vs_1 is on supervised tokens/s against one
# GPU trained on the same batches (supervised_share_gap: how far the runs' supervised shares still differ);
# host_rss_gib / host_pss_gib are rank 0's host memory.
set -u
source "$(dirname "$0")/gpu_env.sh"
case_() {  # case_ NAME ARGS...
  local name=$1; shift
  echo "== $name"
  timeout "${CASE_TIMEOUT:-200}" python3 benchmarks/bench_train.py case --model "$CKPT" --system medqlora \
    --rows real-lengths --json "$CASES/$name.json" "$@" 2>&1 | grep -v "it/s\]$" | tail -n 2
}
{
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | sort | uniq -c
  build_checkpoint
  if [ "${PART:-scaling}" = scaling ]; then
    export BENCH_TIMED=${BENCH_TIMED:-24}
    for n in ${DEVICES:-2}; do
      case_ "single-as-$n" --strategy single --devices 1 --same-rows-as "$n" --label "1 GPU, the rows of $n ranks"
      case_ "ddp-$n" --strategy ddp --devices "$n" --label "DDP, $n GPUs, one PLE host copy per machine"
    done
    case_ "ddp-$n-private" --strategy ddp --devices "$n" --ple-private --label "DDP, $n GPUs, one PLE copy per rank"
    case_ "fsdp-$n" --strategy fsdp --devices "$n" --label "FSDP, $n GPUs"
  else
    export BENCH_TIMED=${BENCH_TIMED:-6}
    for n in ${DEVICES:-4}; do
      case_ "single-as-$n-mb16" --strategy single --devices 1 --same-rows-as "$n" --micro-batch 16 \
        --label "1 GPU, 16 x 2048, the rows of $n ranks"
      case_ "ddp-$n-mb16" --strategy ddp --devices "$n" --micro-batch 16 --label "DDP, $n GPUs, 16 x 2048"
    done
    if [ "${RESUME:-1}" = 1 ]; then
      timeout 300 torchrun --nproc_per_node "$n" benchmarks/check_fsdp_resume.py "$OUT/resume.json" 2>&1 | tail -n 3
    fi
  fi
  python3 benchmarks/bench_train.py merge "$CASES"/*.json --out "$OUT/result.json" \
    --command "PART=scaling DEVICES='${SCALING_DEVICES:-2 4}' then PART=fast DEVICES='${DEVICES:-4}' bash benchmarks/run_gpu_distributed.sh"
} 2>&1 | tee "$OUT/bench-${PART:-scaling}.log"
