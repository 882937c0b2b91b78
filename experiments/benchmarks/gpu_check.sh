#!/usr/bin/env bash
# The GPU check: what def-jax does on one NVIDIA GPU, in one short run, after the README's CUDA install
# (.venv/bin/pip install "jax[cuda12]==0.10.2"). Sized to stay within 8 minutes on one GPU; not yet run on one (the
# CPU test runs it at 32² on its session store). For the hrrr_4090 preset (bf16) on 256² and 512² crops:
#   * bench sampler: one direct-mode sample and the rollout of B members: members × steps/s, achieved TFLOP/s;
#   * bench train of G_φ and of ε_θ, each in its own process: updates/s, samples/s, achieved TFLOP/s;
#   * each process's peak device memory (memory_stats) beside def-jax info --memory's estimate of the training step
#     (--nocompiled: the estimate alone; the bench train processes run the compiled steps);
#   * the attention implementation each network ran (auto: cuDNN's fused kernel for bf16 on NVIDIA GPUs).
# The windows bench train reads come from a small synthetic store made first (synth → prepare → stats, on the CPUs).
# Writes OUT/gpu_check.json (the summary) beside each command's JSON and log, and prints a table.
#
#   experiments/benchmarks/gpu_check.sh [OUT]            (default bench_output/gpu_check)
#
# Environment: CONFIG (hrrr_4090), SIZES ("256 512"), MEMBERS (4), SAMPLER_STEPS (20), TRAIN_STEPS (10),
# LEAD_STEPS (2), EXTRA (def-jax flags added to every command). tests/test_experiments.py runs it on the CPU at a tiny
# size so that it keeps working.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-bench_output/gpu_check}
config=${CONFIG:-hrrr_4090}
read -r -a sizes <<< "${SIZES:-256 512}"
members=${MEMBERS:-4}
sampler_steps=${SAMPLER_STEPS:-20}
train_steps=${TRAIN_STEPS:-10}
lead_steps=${LEAD_STEPS:-2}
read -r -a extra <<< "${EXTRA:-}"
dj=.venv/bin/def-jax
mkdir -p "$out"
start=$(date +%s)
say() { echo "[gpu_check $(( $(date +%s) - start )) s] $*"; }

.venv/bin/python -c 'import jax; print("backend:", jax.default_backend()); print("devices:", jax.devices())' \
  | tee "$out/devices.txt"

largest=0
for s in "${sizes[@]}"; do (( s > largest )) && largest=$s; done
store="$out/store.zarr"
period=2024-06-01T00:2024-06-01T11
if [[ ! -f "$out/store.ready" ]]; then  # 20 hours of the mini-HRRR world on a grid of the largest crop
  say "store: synth → prepare → stats at ${largest}×${largest}"
  $dj synth --config="$config" "${extra[@]}" --start=2024-06-01T00 --hours=20 --ny="$largest" --nx="$largest" \
    --out="$out/grib" > "$out/store.log" 2>&1
  $dj prepare --config="$config" "${extra[@]}" --src="$out/grib" --out="$store" --workers="$(nproc)" \
    >> "$out/store.log" 2>&1
  $dj stats --config="$config" "${extra[@]}" --store="$store" --train-period="$period" >> "$out/store.log" 2>&1
  touch "$out/store.ready"
fi
# the store's first 12 hours train, the next 6 validate (a window of hrrr_4090 spans 5 hours), the last 2 test
data=(--config.data.store="$store" --config.data.train_period="$period"
      --config.data.val_period=2024-06-01T12:2024-06-01T17 --config.data.test_period=2024-06-01T18:2024-06-01T19)

for s in "${sizes[@]}"; do
  grid=(--config.data.grid_shape="$s,$s" --config.data.crop_shape="$s,$s")
  say "bench sampler ${s}²"
  $dj bench sampler --config="$config" "${extra[@]}" "${data[@]}" "${grid[@]}" --grid="${s}x$s" --batch="$members" \
    --repeats=2 --lead_steps="$lead_steps" --config.sampler.steps="$sampler_steps" \
    --out="$out/sampler_$s.json" > "$out/sampler_$s.log" 2>&1
  for model in forecaster diffusion; do
    say "bench train $model ${s}²"
    $dj bench train --config="$config" "${extra[@]}" "${data[@]}" "${grid[@]}" --model="$model" \
      --steps="$train_steps" --out="$out/train_${model}_$s.json" > "$out/train_${model}_$s.log" 2>&1
  done
  say "info --memory ${s}²"
  $dj info --config="$config" "${extra[@]}" "${data[@]}" "${grid[@]}" --memory --nocompiled --grid="${s}x$s" \
    --out="$out/info_$s.json" > "$out/info_$s.log" 2>&1
done

.venv/bin/python - "$out" "${sizes[@]}" <<'EOF'
"""Summary of the GPU check: OUT/gpu_check.json and a table."""
import json
import sys
from pathlib import Path

out, sizes = Path(sys.argv[1]), [int(s) for s in sys.argv[2:]]
load = lambda name: json.loads((out / name).read_text())  # noqa: E731
rows = []
for s in sizes:
    sampler = load(f"sampler_{s}.json")
    info = {r["model"]: r for r in load(f"info_{s}.json")["reports"]}
    rows.append({"size": s, "what": f"sampler ({sampler['mode']}, B={sampler['members']}, S={sampler['steps']})",
                 "rate": f"{sampler['member_steps_per_s']:.1f} members×steps/s",
                 "tflops": sampler["achieved_gflops_per_s"] / 1e3, "attention": sampler["attention"],
                 "peak_gb": sampler["peak_device_memory_gb"], "estimate_gb": None})
    for model in ("forecaster", "diffusion"):
        r = load(f"train_{model}_{s}.json")["models"][0]
        rows.append({"size": s, "what": f"train {model} (batch {r['batch_size']}×{r['grad_accum']})",
                     "rate": f"{r['updates_per_s']:.2f} updates/s", "tflops": r["achieved_gflops_per_s"] / 1e3,
                     "attention": r["attention"], "peak_gb": r["peak_device_memory_gb"],
                     "estimate_gb": info[model].get("memory_estimate_gb")})
summary = {"devices": (out / "devices.txt").read_text().strip().splitlines(), "rows": rows}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
fmt = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
print(f"{'crop':>5}  {'what':<44} {'rate':<26} {'TFLOP/s':>8} {'attention':<9} {'peak GiB':>8} {'info GiB':>8}")
for r in rows:
    print(f"{r['size']:>5}  {r['what']:<44} {r['rate']:<26} {r['tflops']:>8.3f} {r['attention']:<9} "
          f"{fmt(r['peak_gb']):>8} {fmt(r['estimate_gb']):>8}")
print(f"wrote {out / 'gpu_check.json'}")
EOF
say "done"
