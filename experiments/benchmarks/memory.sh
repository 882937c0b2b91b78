#!/usr/bin/env bash
# XLA's compiled memory analysis of one training step (def-jax info --memory) for the HRRR presets at full domain and
# at crop size, with and without rematerialization; the runs recorded in docs/BENCHMARKS.md. Nothing is executed,
# but compiling full-domain programs takes minutes each on a 2-core CPU.
# Usage: experiments/benchmarks/memory.sh [OUTDIR]   (default bench_output/memory)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-bench_output/memory}
mkdir -p "$out"
run() {  # NAME ARGS...
  local name=$1; shift
  echo "### $name"
  /usr/bin/time -f "(%e s, %M KB RSS)" .venv/bin/def-jax info --memory --out="$out/$name.json" "$@"
  echo
}
run hrrr4090_crop256          --config=hrrr_4090 --batch=1
run hrrr4090_full             --config=hrrr_4090 --batch=1 --grid=1059x1799
run hrrr4090_full_noremat     --config=hrrr_4090 --batch=1 --grid=1059x1799 --config.denoiser.remat=false
run hrrr4090_full_remat_both  --config=hrrr_4090 --batch=1 --grid=1059x1799 --config.forecaster.remat=true
run production_crop512        --config=hrrr_production --batch=1
run production_full_remat     --config=hrrr_production --batch=1 --grid=1059x1799 --config.forecaster.remat=true --config.denoiser.remat=true
run production_crop512_remat  --config=hrrr_production --batch=1 --config.forecaster.remat=true --config.denoiser.remat=true
