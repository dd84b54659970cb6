#!/usr/bin/env bash
# The headline table on one GPU, rerun by one command: the recipe's default (the switches of
# configs/gemma4-e2b-medical.yaml's model.lean, read from the YAML), the same with masked SDPA attention (the default
# before issue #28), eager layers, TRL's SFTTrainer (the peer trainer: packing, padding-free, its chunked loss; the
# `bench` extra) and the careful plain recipe on the very rows medqlora's default times, on one random E2B checkpoint,
# each case alone; then one merged JSON ($OUT/headline.json) and docs/benchmarks.png redrawn from it.
#   bash benchmarks/headline.sh            # everything (~12 minutes on an H200)
#   PART=1 bash benchmarks/headline.sh     # the checkpoint and both default cases           } under the device
#   PART=2 bash benchmarks/headline.sh     # eager, TRL, plain-careful, merge and plot        } tool's 10-minute cap
#   PART=flex bash benchmarks/headline.sh  # the default with FlexAttention on the full layers beside the default;
#                                          # merged into $OUT/headline-flex.json (not the plot)
# Carry .gpu-site (bitsandbytes, datasets, jsonargparse, trl: ../shared/tools/device-site.sh). Every case with a new
# path first checks its loss and LoRA gradients against eager layers with masked SDPA on its first batch (vs_today).
set -u
source "$(dirname "$0")/gpu_env.sh"
LOGS=/tmp/bench-logs; mkdir -p "$LOGS"
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-16}
TIMED=${BENCH_TIMED:-24}  # micro-batches timed: whole accumulation windows of 8
case_() {  # case_ NAME TIMEOUT ARGS...
  local name=$1 t=$2; shift 2
  echo "== $name from ${SECONDS}s"
  BENCH_TIMED=$TIMED timeout -k 5 "$t" python3 benchmarks/bench_train.py case --model "$CKPT" --rows real-lengths \
    --json "$CASES/$name.json" "$@" > "$LOGS/$name.log" 2>&1
  echo "   rc $? at ${SECONDS}s"; grep -v "it/s\]$" "$LOGS/$name.log" | tail -n 1 | cut -c1-600
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [ "${PART:-all}" = flex ]; then
  build_checkpoint
  case_ default-flex 300 --system medqlora --recipe-lean --attention flex \
    --label "medqlora, the recipe's default with FlexAttention on the full layers (model.lean.attention: flex)"
  case_ default 280 --system medqlora --recipe-lean --label "medqlora, the recipe's default (configs/gemma4-e2b-medical.yaml)"
  python3 benchmarks/bench_train.py merge "$CASES"/default-flex.json "$CASES"/default.json \
    --out "$OUT/headline-flex.json" --command "PART=flex bash benchmarks/headline.sh" > /dev/null
  cp "$CASES"/*.json "$OUT"/ 2>/dev/null; echo "== done at ${SECONDS}s"; exit 0
fi
if [ "${PART:-all}" != 2 ]; then
  build_checkpoint
  case_ default 280 --system medqlora --recipe-lean --label "medqlora, the recipe's default (configs/gemma4-e2b-medical.yaml)"
  case_ default-masked-sdpa 280 --system medqlora --recipe-lean --attention sdpa \
    --label "medqlora, the recipe's default with masked SDPA attention (the default until issue #28)"
fi
if [ "${PART:-all}" != 1 ]; then
  case_ eager 200 --system medqlora --label "medqlora, eager layers (no speed switch)"
  case_ trl 240 --system trl --label "TRL SFTTrainer (packing, padding-free, chunked loss, 8-bit AdamW)"
  case_ plain-careful 240 --system plain-careful \
    --label "plain recipe, careful (transformers + PEFT + bitsandbytes), on the rows medqlora's default times"
  python3 benchmarks/bench_train.py merge "$CASES"/*.json --out "$OUT/headline.json" \
    --command "bash benchmarks/headline.sh" > /dev/null
  python3 benchmarks/plot.py "$OUT/headline.json" docs/benchmarks.png \
    || echo "no matplotlib here: python benchmarks/plot.py $OUT/headline.json docs/benchmarks.png where it is"
fi
cp "$CASES"/*.json "$OUT"/ 2>/dev/null
echo "== done at ${SECONDS}s"
