#!/usr/bin/env bash
# The heldsuarez preset end to end on a tiny Held–Suarez world: every command of the README in order (synth,
# prepare --from-xarray, stats, train-forecaster, train-diffusion, forecast, evaluate, plot), with U-Nets of width 8
# trained for 20 updates, on T21 with 6 sigma levels, 3 pressure levels and 40 days after a 20-day spin-up; then the
# authors' per-sample normalization with the corrector (both networks trained again that way, forecast, evaluate).
# A check that the lat-lon path works, not a study (experiments/heldsuarez/README.md). Usage: pipeline_check.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
D=${1:-/tmp/heldsuarez_pipeline}; rm -rf "$D"; mkdir -p "$D"
B=(--config=heldsuarez --config.data.store=$D/hs.zarr "--config.data.levels=(250,500,850)"
   --config.data.train_period=2000-01-01T00:2000-01-30T18 --config.data.val_period=2000-01-31T00:2000-02-04T18
   --config.data.test_period=2000-02-05T00:2000-02-09T18 --config.forecaster.base_channels=8
   --config.forecaster.time_embedding_dim=32 --config.denoiser.base_channels=8 --config.denoiser.time_embedding_dim=32
   --config.training.forecaster.max_steps=20 --config.training.diffusion.max_steps=20
   --config.training.forecaster.eval_every=10 --config.training.diffusion.eval_every=10
   --config.training.forecaster.checkpoint_every=10 --config.training.diffusion.checkpoint_every=10
   --config.training.forecaster.warmup_steps=5 --config.training.diffusion.warmup_steps=5
   --config.ensemble.members=4 --config.ensemble.lead_hours=48 --config.ensemble.lead_chunk=8)
C=("${B[@]}" --workdir=$D/run)
P=("${B[@]}" --workdir=$D/run_per_sample --config.data.normalization=per_sample --config.ensemble.corrector=true)
T=.venv/bin/def-jax
$T synth --world=held-suarez --out=$D/hs.nc --truncation=T21 --levels=6 --spinup-days=20 --days=40 --pressure-levels=250,500,850 --seed=3
$T prepare "${C[@]}" --from-xarray=$D/hs.nc --dt-hours=6 --workers=1
$T stats "${C[@]}"
$T train-forecaster "${C[@]}"
$T train-diffusion "${C[@]}"
$T forecast "${C[@]}" --init=2000-02-05T00 --cycles=3 --every=24
$T evaluate "${C[@]}"
$T plot "${C[@]}"
ls $D/run
# per-sample normalization: its own networks (a checkpoint records its normalization), forecasts in physical units
$T train-forecaster "${P[@]}"
$T train-diffusion "${P[@]}"
$T forecast "${P[@]}" --init=2000-02-05T00 --cycles=2 --every=24
$T evaluate "${P[@]}"
.venv/bin/python - "$D/run_per_sample" "$D/hs.zarr" <<'EOF'
"""The per-sample forecast files: their normalization attribute, finite values, and every member's z500 spatial mean
at every lead equal to the initial state's (the leads are converted with the initial statistics)."""
import sys
from pathlib import Path

import numpy as np
import xarray as xr

run, store = Path(sys.argv[1]), sys.argv[2]
files = sorted(run.glob("**/forecast_*.nc"))
assert len(files) == 2, files
truth = xr.open_zarr(store)
for path in files:
    ds = xr.open_dataset(path)
    assert ds.attrs["normalization"].startswith("per_sample") and int(ds.attrs["corrector"]) == 1, ds.attrs
    z = ds["z"].sel(level=500.0).values  # [lead, member, y, x]
    assert np.isfinite(z).all()
    init = np.datetime64(ds.attrs["init_time_iso"])
    z0 = float(truth["z"].sel(time=init, level=500.0).mean())
    np.testing.assert_allclose(z.mean(axis=(-2, -1)), z0, rtol=1e-5)  # [lead, member]
    print(f"{path.name}: z500 spatial mean {z0:.0f} at the initial time, {z.mean():.0f} over the forecast "
          f"(per-sample: the initial mean persisted), member spread {z.std(axis=1).mean():.1f}")
EOF
