#!/usr/bin/env bash
# The DEF-vs-deterministic study on the mini-HRRR (docs/RESULTS.md): longer training than the demo, more cycles,
# a λ sweep, a K sweep and λ chosen on validation data. Run from the repository root after `make demo` (it reuses
# the demo's store); every stage resumes/reuses what is finished, so the script can be rerun after an interruption.
#   experiments/def_vs_deterministic/run.sh [WORKDIR]        (default runs/study; ~1.5 h on a 2-core CPU)
set -euo pipefail
W=${1:-runs/study}
DJ=.venv/bin/def-jax
STORE=demo_output/mini_hrrr.zarr
C=(--config=demo "--config.data.store=$STORE" "--workdir=$W")
STEPS_G=${STEPS_G:-2000}
STEPS_D=${STEPS_D:-3000}
LEAD=${LEAD:-12}
test -d "$STORE" || { echo "no $STORE: run 'make demo' first" >&2; exit 2; }

# 1. longer training than the demo (1000 / 1500 updates)
$DJ train-forecaster "${C[@]}" --config.training.forecaster.max_steps=$STEPS_G
$DJ train-diffusion "${C[@]}" --config.training.diffusion.max_steps=$STEPS_D

# 2. λ (and K) chosen on the validation period: spread/skill nearest 1
$DJ tune-guidance "${C[@]}" --scales=0.3,0.5,0.7,1.0 --walks=2 --lead-hours=$LEAD --every=12 --max_cycles=4 \
    | tee "$W/tune_guidance.txt"

# 3. test-period forecasts every 6 h (13 cycles), the λ sweep at K = 2 and the K sweep at λ = 0.5
forecast() {  # NAME ARGS...
  local name=$1; shift
  $DJ forecast "${C[@]}" --init=2024-07-09T00 --cycles=13 --every=6 --lead-hours=$LEAD --out="$W/$name/forecasts" "$@"
  $DJ evaluate "${C[@]}" --forecasts="$W/$name/forecasts" --out="$W/$name/evaluation"
}
for lam in 0.3 0.5 0.7 1.0; do forecast "lambda$lam" --walks=2 --guidance-scale=$lam; done
for k in 1 4; do forecast "walks$k" --walks=$k --guidance-scale=0.5; done
$DJ plot "${C[@]}" --evaluation="$W/lambda0.5/evaluation" --forecasts="$W/lambda0.5/forecasts" \
    --variables=refc,t2m,u10,z500 --out="$W/lambda0.5/plots"

# 4. the tables of docs/RESULTS.md
.venv/bin/python experiments/def_vs_deterministic/summarize.py "$W" > "$W/RESULTS_tables.md"
echo "tables in $W/RESULTS_tables.md"
