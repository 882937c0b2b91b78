#!/usr/bin/env bash
# XLA's compiled memory analysis of one training step (def-jax info --memory) for the HRRR presets at full domain and
# at crop size, with and without rematerialization, each with XLA's attention and with the chunked one (cuDNN's does
# not compile on a CPU; it builds no score matrix either); the runs recorded in docs/BENCHMARKS.md. Nothing is
# executed, but compiling a full-domain program takes one to a few minutes on a 2-core CPU.
# Usage: experiments/benchmarks/memory.sh [OUTDIR]   (default bench_output/memory)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-bench_output/memory}
mkdir -p "$out"
run() {  # NAME ARGS...: the case with XLA's attention (score matrices in memory) and with the chunked one
  local name=$1; shift
  for attention in xla chunked; do
    echo "### ${name}_$attention"
    /usr/bin/time -f "(%e s, %M KB RSS)" .venv/bin/def-jax info --memory --out="$out/${name}_$attention.json" "$@" \
      --config.forecaster.attention=$attention --config.denoiser.attention=$attention
    echo
  done
}
run hrrr4090_crop256          --config=hrrr_4090 --batch=1
run hrrr4090_full             --config=hrrr_4090 --batch=1 --grid=1059x1799
run hrrr4090_full_noremat     --config=hrrr_4090 --batch=1 --grid=1059x1799 --config.denoiser.remat=false
run hrrr4090_full_remat_both  --config=hrrr_4090 --batch=1 --grid=1059x1799 --config.forecaster.remat=true
run production_crop512        --config=hrrr_production --batch=1
run production_crop512_remat  --config=hrrr_production --batch=1 --config.forecaster.remat=true --config.denoiser.remat=true
run production_full_remat     --config=hrrr_production --batch=1 --grid=1059x1799 --config.forecaster.remat=true --config.denoiser.remat=true
.venv/bin/python experiments/benchmarks/memory_table.py "$out"   # the table of docs/BENCHMARKS.md
