"""How close does ε_θ come to its condition? The diagnosis behind docs/RESULTS.md's "why".

DEF's condition is the state itself (c = x_0, DEF_METHOD §4), so a perfect conditional model returns c, and the
perturbation of a walk comes from λ < 1 (the unconditional model mixed in) and from the model's own error. On
validation states x (normalized units) this prints

1. the ε-loss E‖ε_θ(x_τ, τ, c) − ε‖² per noise level τ, with the condition (c = x) and without it (c = ∅), and the
   data-prediction error it implies, RMS(x̂_0 − x) = (σ_τ/α_τ)·sqrt(ε-loss);
2. one walk (the config's sampler) at several λ from B members: the shift of the members' mean from x (a bias that
   more members do not remove) and the members' spread, both RMS over grid points and channels.

    .venv/bin/python experiments/def_vs_deterministic/denoiser_check.py runs/study [STORE] [--scales 1,0.5]

Compare both with G_φ's one-hour error (validation MSE in the training log: RMS ≈ 0.12 for the demo's G_φ).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs.presets import get_config
from def_jax import parallel
from def_jax.diffusion.samplers import make_sampler
from def_jax.diffusion.schedules import make_schedule
from def_jax.forecast.inputs import ForecastInputs
from def_jax.forecast.rollout import RolloutSpec, member_keys, perturb
from def_jax.forecast.run import load_models
from def_jax.training.checkpoint import LEGACY_DEFAULTS, flatten_config
from def_jax.tuning import validation_inits

TAUS = (1, 10, 50, 100, 250, 500, 750, 900, 1000)


def trained_config(path: Path):
    """The demo preset with every field the trained ε_θ's run saved (``config.json``) put over it, so the check
    builds the network, schedule and sampler that run used; a checkpoint from before a field existed gets the field's
    legacy value (checkpoint.LEGACY_DEFAULTS)."""
    cfg = get_config("demo")
    saved = {**LEGACY_DEFAULTS, **flatten_config(json.loads(path.read_text()))}
    with cfg.unlocked():
        for name, value in saved.items():
            *parents, leaf = name.split(".")
            node = cfg
            for p in parents:
                node = node[p]
            old = node.get(leaf)
            node[leaf] = tuple(value) if isinstance(old, tuple) else value  # JSON turned tuples into lists
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("store", nargs="?", default="demo_output/mini_hrrr.zarr")
    ap.add_argument("--scales", default="1,0.5", help="guidance scales λ of the walk check")
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--states", type=int, default=8, help="validation states, 12 h apart")
    args = ap.parse_args()

    cfg = trained_config(args.workdir / "diffusion" / "config.json")
    cfg.data.store = str(args.store)
    cfg.ensemble.walks = 1
    cfg.ensemble.include_deterministic = False
    inputs = ForecastInputs(cfg.data.store, cfg.data, int(cfg.data.history))
    mesh = parallel.make_mesh(1, 1)
    models = load_models(cfg, args.workdir, inputs, mesh, log=print)
    graphdef, params = models.denoiser
    net = nnx.merge(graphdef, params)
    schedule = make_schedule(cfg.diffusion.schedule, cfg.diffusion.num_steps)
    inits = validation_inits(cfg, every_hours=12.0, max_cycles=args.states)
    x = jnp.asarray(np.stack([inputs.initial_states(np.datetime64(t, "ns"))[-1] for t in inits]))  # [N, H, W, C]
    print(f"{len(inits)} validation states from {inits[0]} (normalized units; ε has unit variance)\n")

    @jax.jit
    def eps_loss(x0, tau, key, null):
        eps = jax.random.normal(key, x0.shape)
        t = jnp.full((x0.shape[0],), tau, jnp.int32)
        x_tau = schedule.add_noise(x0, t, eps)
        c = jnp.where(null, jnp.zeros_like(x0), x0)
        return jnp.mean(jnp.square(net(x_tau, t.astype(jnp.float32), c) - eps))

    print("| τ | σ/α | ε-loss, c = x | ε-loss, c = ∅ | RMS(x̂₀ − x), c = x | RMS(x̂₀ − x), c = ∅ |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for i, tau in enumerate(TAUS):
        key = jax.random.PRNGKey(i)
        t = jnp.float32(tau / cfg.diffusion.num_steps)
        ratio = float(schedule.marginal_std(t) / schedule.marginal_alpha(t))
        cond, uncond = float(eps_loss(x, tau, key, False)), float(eps_loss(x, tau, key, True))
        print(f"| {tau} | {ratio:.3g} | {cond:.3g} | {uncond:.3g} | {ratio * cond ** 0.5:.3g} | "
              f"{ratio * uncond ** 0.5:.3g} |")

    sample = make_sampler(**cfg.sampler.to_dict())
    spec = RolloutSpec(walks=1)
    eps_net = lambda x_, tau, c: net(x_, tau, c)  # noqa: E731
    walk = jax.jit(lambda xb, keys, lam: perturb(eps_net, sample, schedule, spec, xb, keys, lam))
    m = args.members
    print(f"\nOne walk ({cfg.sampler.name}, S = {cfg.sampler.steps}, x0_clip = {cfg.sampler.x0_clip}), "
          f"{m} members per state:\n")
    print("| λ | RMS(member mean − x) (shift) | members' spread | RMS(member − x) |")
    print("| ---: | ---: | ---: | ---: |")
    for lam in (float(s) for s in args.scales.split(",")):
        shifts, spreads, errors = [], [], []
        for n in range(x.shape[0]):
            xb = jnp.broadcast_to(x[n][None], (m,) + x.shape[1:])  # [m, H, W, C]
            keys = member_keys(jax.random.PRNGKey(100 + n), jnp.arange(m, dtype=jnp.int32))
            out = np.asarray(walk(xb, keys, jnp.float32(lam)))  # [m, H, W, C]
            xn = np.asarray(x[n])
            shifts.append(np.mean(np.square(out.mean(0) - xn)))
            spreads.append(np.mean(out.var(0, ddof=1)))
            errors.append(np.mean(np.square(out - xn)))
        print(f"| {lam:g} | {np.sqrt(np.mean(shifts)):.3g} | {np.sqrt(np.mean(spreads)):.3g} | "
              f"{np.sqrt(np.mean(errors)):.3g} |")


if __name__ == "__main__":
    main()
