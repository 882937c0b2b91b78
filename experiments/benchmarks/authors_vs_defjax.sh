#!/usr/bin/env bash
# def-jax's sampler against the DEF authors' stack (PyTorch + diffusers UNet2DModel + DPMSolverMultistepScheduler),
# one after the other on this machine, with matched settings; then a side-by-side comparison.
#
# Usage: experiments/benchmarks/authors_vs_defjax.sh [OUTDIR]      (default bench_results/authors_vs_defjax)
# Settings (environment variables, defaults in brackets):
#   CONFIG   [configs/presets.py:demo]  def-jax config; its denoiser section sets the torch U-Net too
#   GRID     [64x64]   (not the config's grid: the comparison is made on 64×64)   MEMBERS [4]   STEPS [10]   GUIDANCE [0.5]   REPEATS [3]
#   THREADS  [2]       torch threads; when below the CPU count both sides are pinned to that many cores (taskset)
#   DEFJAX_EXTRA ['']  more def-jax options, e.g. "--config.denoiser.attention=xla" (not read by the torch side)
# Needs .venv (the project) and .venv-authors (experiments/benchmarks/authors_stack/requirements.txt).
# Writes OUTDIR/defjax.json, OUTDIR/diffusers.json, their logs and OUTDIR/comparison.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT=${1:-bench_results/authors_vs_defjax}
CONFIG=${CONFIG:-configs/presets.py:demo}
GRID=${GRID:-64x64}
MEMBERS=${MEMBERS:-4}
STEPS=${STEPS:-10}
GUIDANCE=${GUIDANCE:-0.5}
REPEATS=${REPEATS:-3}
THREADS=${THREADS:-2}

PY=.venv/bin/python
DEFJAX=.venv/bin/def-jax
TORCHPY=.venv-authors/bin/python
for exe in "$PY" "$DEFJAX" "$TORCHPY"; do
  [[ -x $exe ]] || { echo "missing $exe (see experiments/benchmarks/authors_stack/README.md)" >&2; exit 2; }
done
mkdir -p "$OUT"

# --- matched settings, from the def-jax config -------------------------------------------------------------------
# Prints shell assignments: grid, state/condition channels (catalogue + statics of the config), and the denoiser's
# U-Net hyperparameters; warns (stderr) about what the diffusers UNet2DModel cannot mirror.
settings=$(CONFIG="$CONFIG" GRID="$GRID" "$PY" - <<'EOF'
import importlib.util
import os
import sys

# FILE.py:VARIANT, or just VARIANT of configs/presets.py (as the def-jax CLI takes --config).
spec, _, variant = os.environ["CONFIG"].rpartition(":") if ".py" in os.environ["CONFIG"] else \
    ("configs/presets.py", ":", os.environ["CONFIG"])
mod_spec = importlib.util.spec_from_file_location("bench_cfg", spec)
mod = importlib.util.module_from_spec(mod_spec)
mod_spec.loader.exec_module(mod)
cfg = mod.get_config(variant or None)
ny, nx = (int(v) for v in os.environ["GRID"].lower().split("x"))
try:  # the statics and time features as the training code counts them
    from def_jax.models.build import config_channels
    ch = config_channels(cfg)
except ImportError:  # fallback: catalogue only (enough for DEF mode, where the condition is the state)
    from def_jax.catalogue import load_catalogue
    from def_jax.models.networks import Channels
    cat = load_catalogue(cfg.data.catalogue, cfg.data.levels)
    ch = Channels(cat.num_channels("state"), cat.num_channels("forcing"), cat.num_channels("static"))
if cfg.diffusion.mode == "def":
    cc = ch.state  # DEF's perturbation model: the condition is the state
else:
    cc = ch.direct_condition(cfg.diffusion.direct_history, cfg.diffusion.direct_residual)
d = cfg.denoiser
warn = lambda m: print(f"warning: {m}", file=sys.stderr)
if d.attention_gates:
    warn("def-jax's denoiser has attention gates on its skips; diffusers' UNet2DModel has none (1.4-1.6 % of the "
         "FLOPs at widths 16-32 on 64x64)")
if not d.mid_attention:
    warn("def-jax's denoiser has no mid attention; UNet2DModel here keeps its mid attention")
if d.time_embedding_dim != 4 * d.base_channels:
    warn(f"time_embedding_dim {d.time_embedding_dim} != 4 × base_channels; UNet2DModel uses 4 × base")
if d.dtype != "float32":
    warn(f"def-jax denoiser dtype {d.dtype}; the torch side runs float32")
s = cfg.sampler
if (s.name, s.order, s.method) != ("dpm_solver_pp", 2, "multistep"):
    warn(f"def-jax sampler {s.name} order {s.order} {s.method}; the torch side runs DPM-Solver++ 2M")
print(f"NY={ny} NX={nx} C={ch.state} CC={cc}")
print(f"W={d.base_channels} MULTS={','.join(str(m) for m in d.channel_mults)} NRB={d.num_res_blocks}")
print(f"ATT='{','.join(str(a) for a in d.attention_levels)}' HEADS={d.num_heads} NORM_GROUPS={d.norm_groups}")
EOF
)
eval "$settings"
echo "matched settings: grid ${NY}x${NX}, C=$C, Cc=$CC, W=$W, mults=$MULTS, res blocks=$NRB, attention levels=[$ATT]," \
     "heads=$HEADS, groups=$NORM_GROUPS; B=$MEMBERS, S=$STEPS, λ=$GUIDANCE, R=$REPEATS, threads=$THREADS"

PIN=()
if (( THREADS < $(nproc) )); then PIN=(taskset -c "0-$((THREADS - 1))"); fi

# DEFJAX_ARGS: the def-jax side: the config's U-Net denoiser (--eps=unet, the default), one guided reverse diffusion
# per member (2B samples per network call), the same solver (the demo's x0_clip adds a few elementwise ops); the linear
# skip of ε_θ (and with it the null condition's spectral prior, which needs it) is switched off because
# diffusers' UNet2DModel has none (it costs < 0.1 % of the FLOPs anyway). `--config.sampler.spacing=time_uniform` is
# closest to diffusers' "linspace" timesteps (it does not change the cost).
DEFJAX_ARGS=(
  --config="$CONFIG"
  --grid="${NY}x${NX}"
  --batch="$MEMBERS"
  --lead_steps=1
  --config.ensemble.walks=1
  --config.denoiser.linear_skip=False
  --config.denoiser.null_prior=white
  --repeats="$REPEATS"
  --config.sampler.name=dpm_solver_pp
  --config.sampler.order=2
  --config.sampler.method=multistep
  --config.sampler.lower_order_final=True
  --config.sampler.spacing=time_uniform
  --config.sampler.steps="$STEPS"
  --config.ensemble.guidance_scale="$GUIDANCE"
)
read -ra EXTRA_ARGS <<< "${DEFJAX_EXTRA:-}"
DEFJAX_ARGS+=("${EXTRA_ARGS[@]}")

echo "### def-jax: ${PIN[*]} $DEFJAX bench sampler ${DEFJAX_ARGS[*]} --out=$OUT/defjax.json"
"${PIN[@]}" "$DEFJAX" bench sampler "${DEFJAX_ARGS[@]}" --out="$OUT/defjax.json" 2>&1 | tee "$OUT/defjax.log"

TORCH_ARGS=(
  --ny "$NY" --nx "$NX" --state-channels "$C" --condition-channels "$CC"
  --base-channels "$W" --channel-mults "$MULTS" --num-res-blocks "$NRB" --attention-levels "$ATT"
  --heads "$HEADS" --norm-groups "$NORM_GROUPS"
  --members "$MEMBERS" --steps "$STEPS" --guidance-scale "$GUIDANCE" --repeats "$REPEATS" --threads "$THREADS"
)
echo
echo "### torch: ${PIN[*]} $TORCHPY experiments/benchmarks/authors_stack/bench_diffusers.py ${TORCH_ARGS[*]} --json $OUT/diffusers.json"
"${PIN[@]}" "$TORCHPY" experiments/benchmarks/authors_stack/bench_diffusers.py "${TORCH_ARGS[@]}" \
  --json "$OUT/diffusers.json" 2>&1 | tee "$OUT/diffusers.log"

echo
"$PY" - "$OUT/defjax.json" "$OUT/diffusers.json" <<'EOF' | tee "$OUT/comparison.txt"
import json, sys

jx, th = (json.load(open(p)) for p in sys.argv[1:3])
notes = []

# def-jax: members × solver steps per second (`member_nfe_per_s` = B × NFE / run s; NFE = steps for fixed-step 2M).
jx_msps = jx.get("member_steps_per_s", jx.get("member_nfe_per_s"))
th_msps = th["member_steps_per_s"]
# def-jax FLOPs per single-sample forward: an explicit per-sample figure if the bench reports one, else the batched
# forward's FLOPs over its batch (the current bench times the forward on the [B, H, W, C] state: batch B).
if "denoiser_gflop_per_sample" in jx:
    jx_flops = jx["denoiser_gflop_per_sample"] * 1e9
elif "flops_per_sample_forward" in jx:
    jx_flops = jx["flops_per_sample_forward"]
else:
    fb = jx.get("forward_batch", jx["shape"][0])
    jx_flops = jx["flops_per_forward"] / fb
    notes.append(f"def-jax GFLOP/forward = flops_per_forward / {fb} (the batch of its timed forward)")
th_flops = th["flops_per_sample_forward"]
jx_gfs, th_gfs = jx.get("achieved_gflops_per_s", jx.get("gflops_per_s")), th["gflops_per_s"]
jx_net = jx.get("eps", jx.get("network", "?"))
if jx_net in ("conv", "analytic"):
    notes.append(f"def-jax ran its stand-in '{jx_net}' ε network, not the U-Net: the ratios compare unlike networks")
jx_guided = jx.get("guidance_scale") is not None or jx.get("guided", False)
if not jx_guided:
    notes.append("def-jax's result records no guidance: it made B-sample network calls, the torch side 2B "
                 "(classifier-free guidance); members×steps/s is then not like for like, GFLOP/s is")
notes.append("FLOP counters differ: XLA's cost analysis counts every op (incl. GroupNorm, SiLU, softmax, adds); torch's "
             "FlopCounterMode only conv/matmul/attention (same U-Net at 64×64: 1.4 % apart at width 32, 6 % at 16)")

rows = [
    ("", "def-jax (JAX/XLA)", "authors (torch+diffusers)", "def-jax / torch"),
    ("network", str(jx_net), th["model"], ""),
    ("state B×C×H×W", f"{jx['shape'][0]}×{jx['shape'][3]}×{jx['shape'][1]}×{jx['shape'][2]}",
     f"{th['members']}×{th['state_channels']}×{th['grid'][0]}×{th['grid'][1]}", ""),
    ("solver steps", str(jx.get("nfe", jx.get("steps"))), str(th["steps"]), ""),
    ("run s", f"{jx['run_s']:.4g}", f"{th['run_s']:.4g}", f"{jx['run_s'] / th['run_s']:.4g}"),
    ("members×steps/s", f"{jx_msps:.2f}", f"{th_msps:.2f}", f"{jx_msps / th_msps:.2f}×"),
    ("GFLOP/sample forward", f"{jx_flops / 1e9:.3f}", f"{th_flops / 1e9:.3f}", f"{jx_flops / th_flops:.3f}"),
    ("achieved GFLOP/s", f"{jx_gfs:.1f}", f"{th_gfs:.1f}", f"{jx_gfs / th_gfs:.2f}×"),
    ("threads / devices", f"{jx.get('machine', {}).get('backend', '?')} × {jx.get('devices', '?')}",
     f"{th['threads']} torch threads", ""),
]
widths = [max(len(r[i]) for r in rows) for i in range(4)]
for r in rows:
    print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
for n in notes:
    print(f"note: {n}")
EOF
