#!/usr/bin/env bash
# Training throughput of the demo preset on this machine: G_φ then ε_θ on the demo store (run `make demo` or
# synth/prepare/stats first), a fixed number of steps each, in a scratch workdir. Prints the runs' own progress lines
# (steps/s) and the wall time; recorded in docs/BENCHMARKS.md.
# Usage: experiments/benchmarks/train.sh [STEPS] [WORKDIR]   (defaults 100, bench_output/train)
set -euo pipefail
cd "$(dirname "$0")/../.."
steps=${1:-100}
workdir=${2:-bench_output/train}
rm -rf "$workdir"
for model in forecaster diffusion; do
  echo "### train-$model, $steps steps"
  /usr/bin/time -f "(%e s wall, %M KB RSS)" .venv/bin/def-jax "train-$model" --config=demo --workdir="$workdir" \
    --config.training.$model.max_steps="$steps" --config.training.$model.log_every=25 \
    --config.training.$model.eval_every="$steps" --config.training.$model.checkpoint_every="$steps"
  echo
done
