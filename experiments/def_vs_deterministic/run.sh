#!/usr/bin/env bash
# The DEF-vs-deterministic study on the mini-HRRR (docs/RESULTS.md): a denoiser trained 1.5× longer than the demo's,
# more test cycles, a λ sweep, a K sweep and λ chosen on validation data. Run from the repository root after
# `make demo` (it reuses the demo's store and, unless STEPS_G is set, the demo's G_φ); every stage resumes or reuses
# what is finished, so the script can be rerun after an interruption.
#   experiments/def_vs_deterministic/run.sh [WORKDIR]        (default runs/study; about an hour on a 2-core CPU)
# Environment: STEPS_G (0 = copy the demo's G_φ), STEPS_D (ε_θ updates), LEAD (hours), CYCLES, EVERY (hours).
set -euo pipefail
W=${1:-runs/study}
DJ=.venv/bin/def-jax
STORE=demo_output/mini_hrrr.zarr
C=(--config=demo "--config.data.store=$STORE" "--workdir=$W")
STEPS_G=${STEPS_G:-0}
STEPS_D=${STEPS_D:-1200}
LEAD=${LEAD:-12}
CYCLES=${CYCLES:-8}
EVERY=${EVERY:-9}
test -d "$STORE" || { echo "no $STORE: run 'make demo' first" >&2; exit 2; }
mkdir -p "$W"

# 1. G_φ: the demo's (the comparison is DEF against the same G_φ's deterministic rollout), or trained afresh;
#    then ε_θ, longer than the demo's 800 updates; then what ε_θ does to a state in one walk (denoiser_check.py)
if [ "$STEPS_G" = 0 ]; then
  test -d "$W/forecaster" || cp -r demo_output/forecaster "$W/forecaster"
else
  $DJ train-forecaster "${C[@]}" --config.training.forecaster.max_steps="$STEPS_G"
fi
$DJ train-diffusion "${C[@]}" --config.training.diffusion.max_steps="$STEPS_D"
test -s "$W/denoiser_check.md" || .venv/bin/python experiments/def_vs_deterministic/denoiser_check.py "$W" "$STORE" \
    --scales=1,0.7,0.5,0.3 > "$W/denoiser_check.md"

# 2. λ chosen on the validation period (spread/skill nearest 1), 2 cycles a day apart
$DJ tune-guidance "${C[@]}" --scales=0.3,0.5,0.7,1.0 --walks=2 --lead-hours="$LEAD" --every=24 --max_cycles=2 \
    | tee "$W/tune_guidance.txt"

# 3. test-period forecasts (CYCLES cycles EVERY hours apart: 9 h samples every third hour of the day), the λ sweep at
#    K = 2 and the K sweep at λ = 0.5
forecast() {  # NAME ARGS...
  local name=$1; shift
  $DJ forecast "${C[@]}" --init=2024-07-09T00 --cycles="$CYCLES" --every="$EVERY" --lead-hours="$LEAD" \
      --out="$W/$name/forecasts" "$@"
  $DJ evaluate "${C[@]}" --forecasts="$W/$name/forecasts" --out="$W/$name/evaluation"
}
for lam in 0.5 1.0 0.3 0.7; do forecast "lambda$lam" --walks=2 --guidance-scale="$lam"; done
for k in 1 3; do forecast "walks$k" --walks="$k" --guidance-scale=0.5; done
$DJ plot "${C[@]}" --evaluation="$W/lambda0.5/evaluation" --forecasts="$W/lambda0.5/forecasts" \
    --variables=refc,t2m,u10,z500 --out="$W/lambda0.5/plots"

# 4. the tables of docs/RESULTS.md
.venv/bin/python experiments/def_vs_deterministic/summarize.py "$W" > "$W/RESULTS_tables.md"
echo "tables in $W/RESULTS_tables.md"
