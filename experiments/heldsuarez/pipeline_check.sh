#!/usr/bin/env bash
# The heldsuarez preset end to end on a tiny Held–Suarez world: every command of the README in order (synth,
# prepare --from-xarray, stats, train-forecaster, train-diffusion, forecast, evaluate, plot), with U-Nets of width 8
# trained for 20 updates, on T21 with 6 sigma levels, 3 pressure levels and 40 days after a 20-day spin-up.
# A check that the lat-lon path works, not a study (experiments/heldsuarez/README.md). Usage: pipeline_check.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
D=${1:-/tmp/heldsuarez_pipeline}; rm -rf "$D"; mkdir -p "$D"
C=(--config=heldsuarez --workdir=$D/run --config.data.store=$D/hs.zarr "--config.data.levels=(250,500,850)"
   --config.data.train_period=2000-01-01T00:2000-01-30T18 --config.data.val_period=2000-01-31T00:2000-02-04T18
   --config.data.test_period=2000-02-05T00:2000-02-09T18 --config.forecaster.base_channels=8
   --config.forecaster.time_embedding_dim=32 --config.denoiser.base_channels=8 --config.denoiser.time_embedding_dim=32
   --config.training.forecaster.max_steps=20 --config.training.diffusion.max_steps=20
   --config.training.forecaster.eval_every=10 --config.training.diffusion.eval_every=10
   --config.training.forecaster.checkpoint_every=10 --config.training.diffusion.checkpoint_every=10
   --config.training.forecaster.warmup_steps=5 --config.training.diffusion.warmup_steps=5
   --config.ensemble.members=4 --config.ensemble.lead_hours=48 --config.ensemble.lead_chunk=8)
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
