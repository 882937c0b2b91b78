#!/usr/bin/env bash
# Forecast throughput on this machine with one and two processes and with a spatial mesh (docs/BENCHMARKS.md):
# DEF forecasts of the ensemble study's models (16 members, 24 h, λ = 0.35, K = 1, 2 cycles; the second cycle's rate
# is reported, its programs already compiled), run as
#   a. one process, 2 CPU devices, members over `data` (2 × 1), pinned to cores 0-1;
#   b. two processes of one device each (launch_multihost.sh, jax.distributed on localhost, Gloo), one per core;
#   c. one process, 2 CPU devices, rows over `space` (1 × 2), pinned to cores 0-1;
#   d. the reference: one process, 1 CPU device, pinned to core 0.
# Each run writes its own files; the script checks that b's files equal a's and prints the second cycle's
# member-steps/s (writing included; its programs were compiled by the first).
#
#   experiments/benchmarks/forecast_scaling.sh [STUDY_DIR] [OUT]   (default runs/ensemble_study, bench_output/scaling)
#
# STUDY_DIR needs the study's store and seed 0's trained models (experiments/ensemble_study/run.py stages 1-3).
set -euo pipefail
cd "$(dirname "$0")/../.."
study=$(realpath "${1:-runs/ensemble_study}")
out=$(realpath -m "${2:-bench_output/scaling}")
rm -rf "$out"
mkdir -p "$out"
args=(--config="experiments/ensemble_study/config.py:$study" --workdir="$study/s0" --config.seed=0
      --config.ensemble.perturbation=def --config.ensemble.walks=1 --config.ensemble.guidance_scale=0.35
      --init=2024-07-12T00 --cycles=2 --every=30 --config.ensemble.include_deterministic=false)
devices() { echo "JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=$1 XLA_FLAGS=--xla_force_host_platform_device_count=$1"; }
rate() { grep -o "[0-9.]* member-steps/s" "$1" | tail -1; }

env $(devices 2) DEF_JAX_CACHE_DIR= taskset -c 0,1 .venv/bin/def-jax forecast "${args[@]}" --out="$out/a" \
  > "$out/a.log" 2>&1
port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
for rank in 0 1; do
  env $(devices 1) DEF_JAX_CACHE_DIR= taskset -c $rank experiments/slurm/launch_multihost.sh "127.0.0.1:$port" 2 \
    $rank forecast "${args[@]}" --out="$out/b" > "$out/b$rank.log" 2>&1 &
done
wait
env $(devices 2) DEF_JAX_CACHE_DIR= taskset -c 0,1 .venv/bin/def-jax forecast "${args[@]}" --out="$out/c" \
  --config.parallel.data_axis=1 --config.parallel.spatial_axis=2 > "$out/c.log" 2>&1
env $(devices 1) DEF_JAX_CACHE_DIR= taskset -c 0 .venv/bin/def-jax forecast "${args[@]}" --out="$out/d" \
  > "$out/d.log" 2>&1

.venv/bin/python - "$out" <<'EOF'
import sys
from pathlib import Path

import numpy as np
import xarray as xr

out = Path(sys.argv[1])
for path in sorted((out / "a").glob("*.nc")):
    with xr.open_dataset(path) as a, xr.open_dataset(out / "b" / path.name) as b:
        same = all(np.array_equal(a[v].values, b[v].values) for v in a.data_vars if v != "crs")
    print(f"{path.name}: two processes {'equal' if same else 'DIFFER FROM'} one process")
EOF
echo "a. 1 process × 2 devices, data 2 × space 1: $(rate "$out/a.log")"
echo "b. 2 processes × 1 device, data 2 × space 1: $(rate "$out/b0.log")"
echo "c. 1 process × 2 devices, data 1 × space 2: $(rate "$out/c.log")"
echo "d. 1 process × 1 device (reference):         $(rate "$out/d.log")"
