"""``def-jax bench authors``: def-jax against the DEF authors' stack (PyTorch + diffusers ``UNet2DModel`` +
``DPMSolverMultistepScheduler``) on this machine, side by side in one run, both pinned to the same cores with the
same number of threads.

At each size (:data:`SIZES`: the demo size and a GPU-user-representative one) and for each stack:

* **sampling**: one DEF perturbation of B members, a guided DPM-Solver++ 2M reverse diffusion of S steps (2B samples
  per network call): members × steps/s, the FLOPs of one sample's forward, achieved GFLOP/s
  (def-jax: :func:`def_jax.bench.rollout.run_unet_bench`; torch: ``bench_diffusers.py``);
* **training**: one AdamW update of the denoiser ε_θ and of the forecaster G_φ alone on the same batch
  (def-jax: :mod:`def_jax.bench.update`; torch: ``bench_diffusers.py --train-steps``).

The networks are the config's U-Nets resized to the size's widths; the torch U-Net mirrors them (widths, levels,
residual blocks, attention levels and heads, GroupNorm groups, input and output channels). What UNet2DModel cannot
mirror is listed in the result's ``notes`` (def-jax's attention gates; G_φ has no step embedding in def-jax).
ε_θ's linear skip and spectral null prior are switched off (UNet2DModel has neither; < 0.1 % of the FLOPs).

Each stack runs in its own child process under ``taskset`` (XLA sizes its thread pool from the process's CPU
affinity; torch gets ``--threads`` = the number of cores). The torch side needs its own virtual environment
(``experiments/benchmarks/authors_stack/requirements.txt``; default ``.venv-authors/bin/python``).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import ml_collections

from def_jax.errors import UserError

REPO = Path(__file__).resolve().parents[2]
TORCH_SCRIPT = REPO / "experiments" / "benchmarks" / "authors_stack" / "bench_diffusers.py"
DEFAULT_TORCH_PYTHON = REPO / ".venv-authors" / "bin" / "python"
# name: grid, members (= training batch), base width of both U-Nets
SIZES = {
    "demo": dict(grid=(64, 64), members=4, width=16),
    "large": dict(grid=(128, 128), members=2, width=64),
}
NETWORKS = ("denoiser", "forecaster")  # def-jax networks = their config sections


def matched_config(cfg: ml_collections.ConfigDict, size: str, *, steps: int, guidance_scale: float
                   ) -> ml_collections.ConfigDict:
    """The config with both U-Nets at the size's width and the sampler both stacks run (DPM-Solver++ 2M)."""
    cfg = cfg.copy_and_resolve_references()
    width = SIZES[size]["width"]
    for name in ("forecaster", "denoiser"):
        cfg[name].base_channels, cfg[name].time_embedding_dim = width, 4 * width
        if cfg[name].dtype != "float32":
            raise UserError(f"bench authors: config.{name}.dtype is {cfg[name].dtype}; the torch side runs float32")
    cfg.denoiser.linear_skip = False
    cfg.denoiser.null_prior = "white"
    s = cfg.sampler
    s.name, s.order, s.method, s.lower_order_final = "dpm_solver_pp", 2, "multistep", True
    s.spacing, s.steps = "time_uniform", int(steps)  # time_uniform: closest to diffusers' "linspace" timesteps
    cfg.ensemble.guidance_scale, cfg.ensemble.walks = float(guidance_scale), 1
    return cfg


def torch_arguments(cfg: ml_collections.ConfigDict, size: str, network: str) -> list[str]:
    """``bench_diffusers.py`` arguments mirroring ``network``'s U-Net (same input and output channels)."""
    from def_jax.models.build import config_channels, denoiser_condition_channels

    ch = config_channels(cfg)
    d = cfg[network]
    extra = (denoiser_condition_channels(cfg, ch) if network == "denoiser"
             else ch.forecaster_inputs(int(cfg.data.history)) - ch.state)
    ny, nx = SIZES[size]["grid"]
    return ["--ny", str(ny), "--nx", str(nx), "--state-channels", str(ch.state), "--condition-channels", str(extra),
            "--base-channels", str(d.base_channels), "--channel-mults", ",".join(str(m) for m in d.channel_mults),
            "--num-res-blocks", str(d.num_res_blocks),
            "--attention-levels", ",".join(str(a) for a in d.attention_levels),
            "--heads", str(d.num_heads), "--norm-groups", str(d.norm_groups), "--members", str(SIZES[size]["members"])]


def notes(cfg: ml_collections.ConfigDict) -> list[str]:
    out = []
    for name in ("denoiser", "forecaster"):
        d = cfg[name]
        if d.attention_gates:
            out.append(f"def-jax's {name} has attention gates on its skips; UNet2DModel has none "
                       "(1.4-1.6 % of the FLOPs at widths 16-32 on 64x64)")
        if not d.mid_attention:
            out.append(f"def-jax's {name} has no mid attention; UNet2DModel keeps its mid attention")
    out.append("def-jax's G_φ has no step embedding; the torch U-Net standing in for it gets step 0")
    out.append("FLOP counters differ: XLA's cost analysis counts every op (and the optimizer); torch's "
               "FlopCounterMode only conv/matmul/attention (forward and backward)")
    return out


def child(cfg_file: str, size: str, steps: int, repeats: int, updates: int, out: str) -> None:
    """The def-jax side, in a pinned child process: the sampler and the two updates; writes JSON to ``out``."""
    from def_jax.bench import write_json
    from def_jax.bench.rollout import run_unet_bench
    from def_jax.bench.update import run_update_bench

    cfg = pickle.loads(Path(cfg_file).read_bytes())
    ny, nx = SIZES[size]["grid"]
    b = SIZES[size]["members"]
    result = {"sample": run_unet_bench(cfg, batch=b, height=ny, width=nx, repeats=repeats, lead_steps=1),
              "train": {net: run_update_bench(cfg, net, batch=b, height=ny, width=nx, steps=updates,
                                              matmul_reference=False)  # the sampler's run measured it
                        for net in NETWORKS}}
    write_json(result, Path(out))


def _run(cmd: Sequence[str], log: Callable[[str], None]) -> None:
    log("$ " + " ".join(cmd))
    proc = subprocess.run(list(cmd), capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise UserError(f"bench authors: {' '.join(cmd[3:5])} failed (exit {proc.returncode}):\n{tail}")


def run_authors_bench(cfg: ml_collections.ConfigDict, *, sizes: Sequence[str], cores: Sequence[int],
                      torch_python: Optional[str] = None, steps: int = 10, guidance_scale: float = 0.5,
                      repeats: int = 3, updates: int = 8, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Both stacks at each size, pinned to ``cores``; see the module docstring. A JSON-able dict."""
    python = Path(torch_python) if torch_python else DEFAULT_TORCH_PYTHON
    if not (python.is_file() and os.access(python, os.X_OK)):
        raise UserError(f"bench authors: no torch interpreter at {python}: create it with `python3 -m venv "
                        f".venv-authors && .venv-authors/bin/pip install -r {TORCH_SCRIPT.parent / 'requirements.txt'}` "
                        f"or pass --torch_python")
    if shutil.which("taskset") is None:
        raise UserError("bench authors: `taskset` (util-linux) is needed to pin both stacks to the same cores")
    bad = [s for s in sizes if s not in SIZES]
    if bad:
        raise UserError(f"bench authors: --sizes {bad}: expected some of {', '.join(SIZES)}")
    available = sorted(os.sched_getaffinity(0))
    if not cores or any(c not in available for c in cores):
        raise UserError(f"bench authors: --cores {list(cores)}: expected cores of this process, {available}")
    pin = ["taskset", "-c", ",".join(str(c) for c in cores)]
    threads = str(len(cores))
    out: dict[str, Any] = {"cores": list(cores), "threads": len(cores), "steps": steps,
                           "guidance_scale": guidance_scale, "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="bench_authors_") as tmp:
        for size in sizes:
            c = matched_config(cfg, size, steps=steps, guidance_scale=guidance_scale)
            cfg_file, jx_file = Path(tmp, f"{size}.cfg"), Path(tmp, f"{size}_defjax.json")
            cfg_file.write_bytes(pickle.dumps(c))
            log(f"[{size}] def-jax: sampler and training updates on cores {list(cores)}")
            _run(pin + [sys.executable, "-m", "def_jax.bench.authors", str(cfg_file), size, str(steps), str(repeats),
                        str(updates), str(jx_file)], log)
            torch: dict[str, Any] = {}
            common = ["--threads", threads, "--repeats", str(repeats)]
            sample_file = Path(tmp, f"{size}_torch_sample.json")
            log(f"[{size}] torch + diffusers: sampler and training updates")
            _run(pin + [str(python), str(TORCH_SCRIPT)] + torch_arguments(c, size, "denoiser") + common
                 + ["--steps", str(steps), "--guidance-scale", str(guidance_scale), "--json", str(sample_file)], log)
            torch["sample"] = json.loads(sample_file.read_text())
            torch["train"] = {}
            for net in NETWORKS:
                f = Path(tmp, f"{size}_torch_train_{net}.json")
                _run(pin + [str(python), str(TORCH_SCRIPT)] + torch_arguments(c, size, net) + common
                     + ["--train-steps", str(updates), "--json", str(f)] + (["--no-time"] if net == "forecaster"
                                                                              else []), log)
                torch["train"][net] = json.loads(f.read_text())
            out["sizes"][size] = {"defjax": json.loads(jx_file.read_text()), "torch": torch,
                                  "grid": list(SIZES[size]["grid"]), "members": SIZES[size]["members"],
                                  "width": SIZES[size]["width"]}
            log(f"[{size}] def-jax ÷ torch: " + ", ".join(f"{k} {v:.2f}×" for k, v in ratios(out["sizes"][size]).items()))
    out["notes"] = notes(cfg)
    return out


def ratios(entry: dict[str, Any]) -> dict[str, float]:
    """def-jax ÷ torch throughput: members × steps/s of the sampler, samples/s of each update."""
    jx, th = entry["defjax"], entry["torch"]
    r = {"sample": jx["sample"]["member_steps_per_s"] / th["sample"]["member_steps_per_s"]}
    for net in NETWORKS:
        r[f"train_{net}"] = jx["train"][net]["samples_per_s"] / th["train"][net]["samples_per_s"]
    return r


def format_size(size: str, entry: dict[str, Any]) -> str:
    jx, th = entry["defjax"], entry["torch"]
    r = ratios(entry)
    ny, nx = entry["grid"]
    rows = [(f"{size}: {ny}×{nx}, width {entry['width']}, B = {entry['members']}", "def-jax", "torch+diffusers",
             "def-jax/torch"),
            ("sampler members×steps/s", f"{jx['sample']['member_steps_per_s']:.2f}",
             f"{th['sample']['member_steps_per_s']:.2f}", f"{r['sample']:.2f}×"),
            ("  GFLOP per sample forward", f"{jx['sample']['denoiser_gflop_per_sample']:.3f}",
             f"{th['sample']['gflop_per_sample_forward']:.3f}", ""),
            ("  achieved GFLOP/s", f"{jx['sample']['achieved_gflops_per_s']:.1f}",
             f"{th['sample']['gflops_per_s']:.1f}", "")]
    for net in NETWORKS:
        a, b = jx["train"][net], th["train"][net]
        rows += [(f"{net} AdamW update ms", f"{1e3 * a['update_s']:.1f}", f"{1e3 * b['update_s']:.1f}",
                  f"{r['train_' + net]:.2f}×"),
                 ("  GFLOP per update", f"{a['flops_per_update'] / 1e9:.2f}", f"{b['flops_per_update'] / 1e9:.2f}", "")]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def format_table(result: dict[str, Any]) -> str:
    lines = [f"pinned to cores {result['cores']} ({result['threads']} thread(s) each), S = {result['steps']}, "
             f"λ = {result['guidance_scale']}"]
    lines += [format_size(size, entry) for size, entry in result["sizes"].items()]
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)


if __name__ == "__main__":  # the pinned def-jax child of run_authors_bench
    if len(sys.argv) != 7:
        sys.exit("usage: python -m def_jax.bench.authors CONFIG_PICKLE SIZE STEPS REPEATS UPDATES OUT_JSON")
    child(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:6]), sys.argv[6])
