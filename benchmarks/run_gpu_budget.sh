#!/usr/bin/env bash
# Issue #40's Pareto table on one GPU (benchmarks/bench_budget.py), in device calls of under ten minutes each,
# on one warm machine (the random checkpoint and the compiled graphs stay in /tmp between calls):
#   PART=sweep bash benchmarks/run_gpu_budget.sh    # random E2B checkpoint; every candidate at 2, 4, 8 and 16 rows
#   PART=capped bash benchmarks/run_gpu_budget.sh   # the planner's pick and the best measured under each cap
#   PART=long   bash benchmarks/run_gpu_budget.sh   # 1 x 8192 and 1 x 16384 long-tail rows within 12 GiB
#   PART=all    bash benchmarks/run_gpu_budget.sh   # all three in one call, most telling runs first, until LIMIT
#   PART=capped,long SWEEP=benchmarks/results/2026-12-07-h100-budget-sweep.json bash benchmarks/run_gpu_budget.sh
#                                                   # capped and long in one process, LONG_S seconds left to long
# SWEEP=path: the sweep's JSON for capped on another machine; LIMIT: seconds the call may take (580).
# SETTINGS=2:1,2:0:-:0.5: sweep only these (micro:share[:offload[:activation budget]]).
# Inductor's cache: CACHE_OUT=1 packs it into $OUT/inductor-cache.tgz.aa, .ab, ... (15 MiB pieces, 60 MiB at most);
# carried as .inductor-cache/ it is unpacked first, so a later call on another machine skips what it compiled.
# Carry .gpu-site (docs/benchmarks.md). JSON per part under $OUT (or $KEEP).
set -u
source "$(dirname "$0")/gpu_env.sh"
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor-cache}
ls .inductor-cache/*.tgz.* >/dev/null 2>&1 && cat .inductor-cache/*.tgz.* | tar xz -C "$(dirname "$TORCHINDUCTOR_CACHE_DIR")"
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-16} BENCH_TIMED=${BENCH_TIMED:-6}
KEEP=${KEEP:-$OUT}; mkdir -p "$KEEP"  # each run is saved as it ends: a call cut short keeps it
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
build_checkpoint
bench() { (cd benchmarks && timeout -k 5 "$1" python3 bench_budget.py --model "$CKPT" "${@:2}") 2>&1 \
  | grep -v -e "it/s\]$" -e Warning -e warn | grep -e '^{' -e Error -e error | cut -c1-420; }
for part in ${PART:-sweep}; do  # PART="capped long": both in one call
  case $part in
    sweep) bench $((${LIMIT:-580} - SECONDS)) --part sweep --json "$KEEP/sweep.json" ${SETTINGS:+--settings $SETTINGS} ;;
    capped) bench $((${LIMIT:-580} - SECONDS - ${LONG_S:-0})) --part capped --sweep "${SWEEP:-$KEEP/sweep.json}" \
      --json "$KEEP/capped.json" ;;
    long) bench $((${LIMIT:-580} - SECONDS)) --part long --json "$KEEP/long.json" ;;
    all) bench $((${LIMIT:-580} - SECONDS)) --part all --deadline-s $((${LIMIT:-580} - SECONDS - 40)) \
      --json "$KEEP/all.json" ;;
    capped,long) bench $((${LIMIT:-580} - SECONDS)) --part capped,long --sweep "${SWEEP:-$KEEP/sweep.json}" \
      --deadline-s $((${LIMIT:-580} - SECONDS - 40)) --long-reserve-s "${LONG_S:-240}" --json "$KEEP/capped-long.json" ;;
  esac
done
[ "$KEEP" = "$OUT" ] || cp "$KEEP"/*.json "$OUT"/ 2>/dev/null
if [ "${CACHE_OUT:-0}" = 1 ]; then
  tar czf /tmp/inductor-cache.tgz -C "$(dirname "$TORCHINDUCTOR_CACHE_DIR")" "$(basename "$TORCHINDUCTOR_CACHE_DIR")"
  size=$(stat -c %s /tmp/inductor-cache.tgz); echo "== inductor cache $((size / 1048576)) MiB"
  [ "$size" -lt 62914560 ] && split -b 15m /tmp/inductor-cache.tgz "$OUT/inductor-cache.tgz."
fi
echo "== done at ${SECONDS}s"
