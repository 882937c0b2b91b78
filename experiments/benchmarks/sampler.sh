#!/usr/bin/env bash
# Sampler throughput on this machine (def-jax bench sampler), the runs recorded in docs/BENCHMARKS.md.
# Usage: experiments/benchmarks/sampler.sh [OUTDIR]   (default bench_output/sampler)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-bench_output/sampler}
mkdir -p "$out"
bench() {  # NAME ARGS...
  local name=$1; shift
  echo "### $name"
  .venv/bin/def-jax bench sampler --config=demo --repeats=5 --out="$out/$name.json" "$@"
  echo
}
# The demo preset: 8 members × 64×64×73, DPM-Solver++ 2M, 10 steps, conv stand-in denoiser (width 64).
bench demo_2m_conv
bench demo_2m_analytic --eps=analytic
bench demo_2s_conv --config.sampler.method=singlestep
bench demo_3m_conv --config.sampler.order=3
bench demo_ddim_conv --config.sampler.name=ddim --config.sampler.spacing=time_uniform
bench demo_adaptive_conv --config.sampler.name=dpm_solver_pp_adaptive --config.sampler.atol=0.01 --config.sampler.rtol=0.01
# Seed 2 phase 1 shape at crop size: one member of 256×256×73, 200 steps.
bench crop256_200steps_conv --batch=1 --grid=256x256 --config.sampler.steps=200
