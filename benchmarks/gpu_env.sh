# Sourced by the benchmark scripts: outputs, import paths, the random E2B checkpoint and the per-case JSON folder.
# bitsandbytes travels as a folder built by ../shared/tools/device-site.sh .gpu-site bitsandbytes==0.50.2
OUT=${OUT:-benchmarks/out}
CKPT=${CKPT:-/tmp/e2b-random}
CASES=${CASES:-/tmp/bench-cases}  # one JSON per case; only the merged result.json goes to $OUT
mkdir -p "$OUT" "$CASES"
export PYTHONPATH="$PWD/src:$PWD/.gpu-site:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false
build_checkpoint() {  # the real E2B architecture with random weights, saved once
  [ -f "$CKPT/config.json" ] || timeout 200 python3 benchmarks/bench_train.py build --out "$CKPT"
}
