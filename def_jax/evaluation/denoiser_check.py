"""``def-jax check-denoiser``: what a trained ε_θ has learned, measured on validation states.

DEF's spread comes from the unconditional model ε_θ(·, ∅) (DEF_METHOD §5, "what a perturbation is made of"): with
the condition c = x_0 the guided data prediction is x̂_0 = λ c + (1 − λ) x̂_0(∅) when the conditional branch is exact,
so a walk moves the state part of the way toward a draw of the model's climate. This check reports, in normalized
units (ε has unit variance: an ε-loss of 1 is that of predicting 0; states have unit variance per channel):

1. the ε-loss E‖ε_θ(x_τ, τ, c) − ε‖² by τ, with the condition (as sampled: ``diffusion.conditional``) and with ∅,
   and the data-prediction error it implies, RMS(x̂_0 − x_0) = (σ_τ/α_τ)·sqrt(ε-loss);
2. unconditional samples (λ = 0, the config's sampler) against the validation states: per-channel mean and standard
   deviation, and radially averaged power spectra (their ratio by wavenumber, averaged in log over channels);
3. one guided walk from each validation state for a grid of λ: the shift of the members' mean from the state (a bias
   more members do not remove), the members' spread, RMS(member − state), and the spectrum of the perturbation
   (member − state) beside G_φ's one-step error (the size and shape a useful perturbation would have);
4. what G_φ does with one walk's perturbation: the walked members and the unperturbed state are run forward by G_φ
   (no further walks) over the ensemble's lead time, and the members' spread after n steps is set beside G_φ's own
   error after n steps (the unperturbed run against the analyses). A spread that shrinks under G_φ while its error
   grows is why an ensemble of perturbed G_φ runs falls behind its error: spread/skill < 1 at long leads.

Writes ``OUT/denoiser_check.md`` (the tables), ``denoiser_check.json`` (every number) and ``denoiser_spectra.png``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from def_jax import parallel
from def_jax.diffusion.gaussian import gaussian_eps_fn
from def_jax.diffusion.sampler_configs import sampler_from_config
from def_jax.diffusion.samplers import static_guidance
from def_jax.diffusion.schedules import make_schedule
from def_jax.errors import UserError
from def_jax.evaluation import metrics

TAUS = (1, 10, 50, 100, 250, 500, 750, 900, 1000)  # for T = 1000; scaled with T
GROWTH_SHOWN = (0, 1, 2, 3, 6, 12, 24, 48)  # steps shown in the G_φ table (and the last one)
SHOWN = ("t2m", "u10", "refc", "cape", "z500", "t850", "q850")  # channels of the per-channel tables, when present


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation over states and grid: x [N, H, W, C] → [C], [C]."""
    return x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))


def channel_spectra(x: np.ndarray, dx_km: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean radially averaged power spectrum per channel: x [N, H, W, C] → (wavenumber [K], wavelength_km [K],
    power [C, K])."""
    k, wavelength, power = metrics.radial_power_spectrum(jnp.moveaxis(jnp.asarray(x), -1, 1), dx_km)  # [N, C, K]
    return np.asarray(k), np.asarray(wavelength), np.asarray(power).mean(axis=0)


def log_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """exp(mean over channels of log(a/b)): the typical ratio of two per-channel spectra [C, K] → [K]."""
    return np.exp(np.mean(np.log(np.maximum(a, 1e-30) / np.maximum(b, 1e-30)), axis=0))


def check_denoiser(cfg: Any, workdir: Path, out_dir: Path, *, scales: Sequence[float] = (1.0, 0.7, 0.5, 0.3),
                   states: int = 8, members: int = 4, every_hours: float = 12.0,
                   log: Callable[[str], None] = print) -> dict:
    """Run the check (module docstring) on ``states`` validation states of ``data.val_period``; return the numbers."""
    from def_jax.forecast.ensemble import Ensemble
    from def_jax.forecast.inputs import ForecastInputs
    from def_jax.forecast.rollout import RolloutSpec, member_keys, perturb
    from def_jax.forecast.run import load_models
    from def_jax.tuning import validation_inits

    if cfg.diffusion.mode != "def":
        raise UserError("check-denoiser measures DEF's perturbation model; config.diffusion.mode is "
                        f"{cfg.diffusion.mode!r}")
    if members < 2:
        raise UserError(f"--members: need at least 2 to measure a spread; got {members}")
    cfg = cfg.copy_and_resolve_references()
    cfg.ensemble.perturbation, cfg.ensemble.walks = "def", 1
    cfg.ensemble.include_deterministic = True
    inputs = ForecastInputs(cfg.data.store, cfg.data, int(cfg.data.history))
    mesh = parallel.make_mesh(1, 1, devices=jax.devices()[:1])
    models = load_models(cfg, Path(workdir), inputs, mesh, log)
    net = nnx.merge(*models.denoiser)
    forecaster = nnx.merge(*models.forecaster)
    schedule = make_schedule(cfg.diffusion.schedule, cfg.diffusion.num_steps)
    dx_km = inputs.grid_spacing_km()
    inits = [np.datetime64(t, "ns") for t in validation_inits(cfg, every_hours, states)]
    k = int(cfg.data.history)
    window = [inputs.states(t, 1 - k, k + 1) for t in inits]  # [k+1, H, W, C]: the inputs and the next state
    x = np.stack([w[k - 1] for w in window])  # [N, H, W, C] the validation states
    nxt = np.stack([w[k] for w in window])
    channels = list(inputs.state_channels)
    log(f"check-denoiser: {len(inits)} validation states from {inits[0]}, {members} members, λ = "
        f"{', '.join(f'{s:g}' for s in scales)} (normalized units)")

    # 1. ε-loss by τ ------------------------------------------------------------------------------------------------
    exact = cfg.diffusion.conditional == "exact"

    @jax.jit
    def eps_losses(x0, tau, key):
        eps = jax.random.normal(key, x0.shape)
        t = jnp.full((x0.shape[0],), tau, jnp.int32)
        x_tau = schedule.add_noise(x0, t, eps)
        tf = t.astype(jnp.float32)
        if exact:
            pred_c = gaussian_eps_fn(schedule, x0, 0.0)(x_tau, tf[0] / schedule.num_steps)
        else:
            pred_c = net(x_tau, tf, x0)
        pred_null = net(x_tau, tf, jnp.zeros_like(x0))
        return jnp.mean(jnp.square(pred_c - eps)), jnp.mean(jnp.square(pred_null - eps))

    taus = sorted({max(1, int(round(t * schedule.num_steps / 1000))) for t in TAUS})
    loss_rows = []
    for i, tau in enumerate(taus):
        t = jnp.float32(tau / schedule.num_steps)
        ratio = float(schedule.marginal_std(t) / schedule.marginal_alpha(t))
        c, null = (float(v) for v in eps_losses(jnp.asarray(x), tau, jax.random.PRNGKey(i)))
        loss_rows.append({"tau": tau, "sigma_over_alpha": ratio, "eps_loss_c": c, "eps_loss_null": null,
                          "x0_rms_error_c": ratio * c**0.5, "x0_rms_error_null": ratio * null**0.5})

    # 2./3. walks at each λ (λ = 0: unconditional samples) ---------------------------------------------------------
    sample = sampler_from_config(cfg.sampler)
    ensemble = Ensemble.from_config(cfg)
    eps_net = lambda x_, tau, c_: net(x_, tau, c_)  # noqa: E731
    programs: dict[RolloutSpec, Callable] = {}

    def walk(xb, keys, lam):
        spec = RolloutSpec(walks=1, static_guidance=static_guidance(lam), conditional=ensemble.conditional)
        if spec not in programs:
            programs[spec] = jax.jit(lambda a, b_, s: perturb(eps_net, sample, schedule, spec, a, b_, s))
        return np.asarray(programs[spec](xb, keys, jnp.float32(lam)))

    kw, wavelength, data_power = channel_spectra(x, dx_km)
    g_step = jax.jit(lambda s, f, tf, st: forecaster(s, f, tf, st))
    statics = jnp.asarray(inputs.statics())
    errors = []
    for t in inits:
        f = inputs.forcings(t, 1 - k, k)[None]  # [1, k, H, W, C_f]
        tf = inputs.time_features(t, 1 - k, k + 1)[None]
        s_in = inputs.states(t, 1 - k, k)[None]
        errors.append(np.asarray(g_step(s_in, f, tf, statics[None]))[0])
    g_error = np.stack(errors) - nxt  # [N, H, W, C]
    _, _, g_power = channel_spectra(g_error, dx_km)
    walk_rows, samples, perturbation_power, walked = [], None, {}, {}
    for lam in [0.0] + [float(s) for s in scales]:
        outs = []
        for n in range(x.shape[0]):
            xb = np.broadcast_to(x[n][None], (members,) + x.shape[1:])
            keys = member_keys(jax.random.PRNGKey(1000 + n), jnp.arange(members, dtype=jnp.int32))
            outs.append(walk(jnp.asarray(xb), keys, lam))
        out = np.stack(outs)  # [N, M, H, W, C]
        if lam == 0.0:
            samples = out.reshape((-1,) + x.shape[1:])
            continue
        walked[lam] = out
        pert = (out - x[:, None]).reshape((-1,) + x.shape[1:])  # [N·M, H, W, C]
        _, _, power = channel_spectra(pert, dx_km)
        perturbation_power[lam] = power
        walk_rows.append({"guidance_scale": lam,
                          "shift": float(np.sqrt(np.mean(np.square(out.mean(1) - x)))),
                          "spread": float(np.sqrt(np.mean(out.var(1, ddof=1)))),
                          "rms_member_minus_state": float(np.sqrt(np.mean(np.square(out - x[:, None])))),
                          "perturbation_over_g_phi_error_power": log_ratio(power, g_power).tolist()})
    s_mean, s_std = _channel_stats(samples)
    d_mean, d_std = _channel_stats(x)
    _, _, sample_power = channel_spectra(samples, dx_km)
    spectrum_ratio = log_ratio(sample_power, data_power)  # [K]
    per_channel = [{"channel": ch, "data_mean": float(d_mean[i]), "sample_mean": float(s_mean[i]),
                    "data_std": float(d_std[i]), "sample_std": float(s_std[i])} for i, ch in enumerate(channels)]
    varying = d_std > 1e-6  # channels that are constant over the validation states have no ratio
    std_ratio = s_std[varying] / d_std[varying]
    summary = {"channels_compared": int(varying.sum()),"mean_difference_rms": float(np.sqrt(np.mean(np.square(s_mean - d_mean)))),
               "std_ratio_geometric_mean": float(np.exp(np.mean(np.log(np.maximum(std_ratio, 1e-12))))),
               "std_ratio_min": float(std_ratio.min()), "std_ratio_max": float(std_ratio.max()),
               "g_phi_one_step_rms_error": float(np.sqrt(np.mean(np.square(g_error))))}
    # 4. G_φ run forward from the walked members ----------------------------------------------------------------
    steps = max(1, int(round(float(cfg.ensemble.lead_hours) / inputs.dt_hours)))
    growth = _growth_under_forecaster(g_step, inputs, inits, k, steps, walked, statics)
    log(f"check-denoiser: G_φ run {steps} steps from each walk's members")
    result = {"states": [str(np.datetime_as_string(t, unit="h")) for t in inits], "members": members,
              "conditional": cfg.diffusion.conditional, "sampler": cfg.sampler.to_dict(),
              "eps_loss": loss_rows, "samples": {"summary": summary, "per_channel": per_channel,
                                                  "wavenumber": kw.tolist(), "wavelength_km": wavelength.tolist(),
                                                  "power_ratio_to_data": spectrum_ratio.tolist()},
              "walks": walk_rows, "growth": growth}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "denoiser_check.json").write_text(json.dumps(result, indent=1) + "\n")
    text = format_report(result)
    (out_dir / "denoiser_check.md").write_text(text)
    _figure(out_dir / "denoiser_spectra.png", wavelength, data_power, sample_power, g_power, perturbation_power)
    log(text)
    log(f"check-denoiser: wrote {out_dir / 'denoiser_check.md'}, denoiser_check.json, denoiser_spectra.png")
    return result


def _growth_under_forecaster(g_step: Callable, inputs: Any, inits: list, k: int, steps: int,
                             walked: dict[float, np.ndarray], statics: jax.Array) -> dict:
    """Item 4 of the module docstring: G_φ run ``steps`` steps from each λ's walked members and from the state.

    ``walked[λ]`` [N, M, H, W, C] are the members of one walk from each of the N states at ``inits``; the walked state
    replaces the newest of G_φ's k input states, as in the rollout. Returns the members' spread
    sqrt(mean over states and grid of the members' variance) after n = 0..steps steps per λ, and G_φ's RMS error
    (the unperturbed run against the analyses) after n = 1..steps.
    """
    lams = sorted(walked)
    spread = {lam: np.zeros(steps + 1) for lam in lams}
    error = np.zeros(steps + 1)
    for i, t in enumerate(inits):
        window = inputs.states(t, 1 - k, k)  # [k, H, W, C]
        truth = inputs.states(t, 1, steps)  # [steps, H, W, C]
        members = [walked[lam][i] for lam in lams]  # each [M, H, W, C]
        m = members[0].shape[0]
        s = np.broadcast_to(window[None], (m * len(lams) + 1,) + window.shape).copy()  # [B, k, H, W, C]
        s[:-1, -1] = np.concatenate(members)  # the unperturbed state is the last row
        s = jnp.asarray(s)
        b = s.shape[0]
        for n in range(steps + 1):
            if n:
                forcings = inputs.forcings(t, n - k, k)  # [k, H, W, C_f] at the input times of step n
                features = inputs.time_features(t, n - k, k + 1)  # [k + 1, F]
                f = jnp.broadcast_to(jnp.asarray(forcings)[None], (b,) + forcings.shape)
                tf = jnp.broadcast_to(jnp.asarray(features)[None], (b,) + features.shape)
                nxt = g_step(s, f, tf, jnp.broadcast_to(statics[None], (b,) + statics.shape))  # [B, H, W, C]
                s = jnp.concatenate([s[:, 1:], nxt[:, None]], axis=1)
                error[n] += float(jnp.mean(jnp.square(nxt[-1] - truth[n - 1])))
            newest = np.asarray(s[:, -1])  # [B, H, W, C]
            for j, lam in enumerate(lams):
                spread[lam][n] += float(newest[j * m:(j + 1) * m].var(axis=0, ddof=1).mean())
    n_states = len(inits)
    return {"steps": list(range(steps + 1)),
            "g_phi_rms_error": [None] + np.sqrt(error[1:] / n_states).tolist(),
            "spread": [{"guidance_scale": lam, "spread": np.sqrt(spread[lam] / n_states).tolist()} for lam in lams]}


def format_report(r: dict) -> str:
    """The markdown tables of a :func:`check_denoiser` result."""
    s = r["samples"]
    lines = [f"# What ε_θ learned ({len(r['states'])} validation states from {r['states'][0]}, conditional branch: "
             f"{r['conditional']})", "",
             "## ε-loss by noise level (1 = predicting no noise)", "",
             "| τ | σ/α | ε-loss, c = x | ε-loss, c = ∅ | RMS(x̂₀ − x), c = x | RMS(x̂₀ − x), c = ∅ |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in r["eps_loss"]:
        lines.append(f"| {row['tau']} | {row['sigma_over_alpha']:.3g} | {row['eps_loss_c']:.3g} | "
                     f"{row['eps_loss_null']:.3g} | {row['x0_rms_error_c']:.3g} | {row['x0_rms_error_null']:.3g} |")
    sm = s["summary"]
    lines += ["", "## Unconditional samples (λ = 0) against the validation states", "",
              f"RMS over channels of the mean difference {sm['mean_difference_rms']:.3g}; standard deviation ratio "
              f"samples/data over the {sm['channels_compared']} channels that vary: geometric mean {sm['std_ratio_geometric_mean']:.3g} (min {sm['std_ratio_min']:.3g}, "
              f"max {sm['std_ratio_max']:.3g}).", "",
              "| channel | data mean | sample mean | data std | sample std |", "| --- | ---: | ---: | ---: | ---: |"]
    for row in s["per_channel"]:
        if row["channel"] in SHOWN:
            lines.append(f"| {row['channel']} | {row['data_mean']:.3g} | {row['sample_mean']:.3g} | "
                         f"{row['data_std']:.3g} | {row['sample_std']:.3g} |")
    lines += ["", "Power spectrum of the samples ÷ the data's (geometric mean over channels), by wavelength:", "",
              "| wavelength (km) | " + " | ".join(f"{w:.0f}" for w in s["wavelength_km"]) + " |",
              "| --- | " + " | ".join("---:" for _ in s["wavelength_km"]) + " |",
              "| samples / data | " + " | ".join(f"{v:.3g}" for v in s["power_ratio_to_data"]) + " |", "",
              f"## One walk per state, {r['members']} members (G_φ's one-step RMS error: "
              f"{sm['g_phi_one_step_rms_error']:.3g})", "",
              "| λ | RMS(member mean − x) (shift) | members' spread | RMS(member − x) |",
              "| ---: | ---: | ---: | ---: |"]
    for row in r["walks"]:
        lines.append(f"| {row['guidance_scale']:g} | {row['shift']:.3g} | {row['spread']:.3g} | "
                     f"{row['rms_member_minus_state']:.3g} |")
    lines += ["", "Power spectrum of the perturbation (member − x) ÷ G_φ's one-step error's (geometric mean over "
              "channels), by wavelength:", "",
              "| λ | " + " | ".join(f"{w:.0f} km" for w in s["wavelength_km"]) + " |",
              "| ---: | " + " | ".join("---:" for _ in s["wavelength_km"]) + " |"]
    for row in r["walks"]:
        lines.append(f"| {row['guidance_scale']:g} | " + " | ".join(
            f"{v:.3g}" for v in row["perturbation_over_g_phi_error_power"]) + " |")
    g = r["growth"]
    shown = [n for n in g["steps"] if n in GROWTH_SHOWN or n == g["steps"][-1]]
    lines += ["", "## G_φ run forward from one walk (no further walks)", "",
              "The members' spread after n G_φ steps, beside G_φ's own RMS error after n steps (the unperturbed run "
              "against the analyses). Spread that shrinks while the error grows cannot keep an ensemble of perturbed "
              "G_φ runs calibrated.", "",
              "| n (steps) | " + " | ".join(str(n) for n in shown) + " |",
              "| --- | " + " | ".join("---:" for _ in shown) + " |",
              "| G_φ RMS error | " + " | ".join("–" if n == 0 else f"{g['g_phi_rms_error'][n]:.3g}" for n in shown)
              + " |"]
    for row in sorted(g["spread"], key=lambda q: -q["guidance_scale"]):
        lines.append(f"| spread, λ = {row['guidance_scale']:g} | " + " | ".join(
            f"{row['spread'][n]:.3g}" for n in shown) + " |")
    return "\n".join(lines) + "\n"


def _figure(path: Path, wavelength, data_power, sample_power, g_power, perturbation_power: dict) -> None:
    """Spectra (geometric means over channels) of the data, the unconditional samples, G_φ's error and the walks'
    perturbations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def gmean(p):
        return np.exp(np.mean(np.log(np.maximum(p, 1e-30)), axis=0))

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    ax.loglog(wavelength, gmean(data_power), "k-", lw=2, label="validation states")
    ax.loglog(wavelength, gmean(sample_power), "k--", lw=1.5, label="unconditional samples (λ = 0)")
    ax.loglog(wavelength, gmean(g_power), color="tab:red", lw=1.5, label="G_φ one-step error")
    for lam, p in sorted(perturbation_power.items(), reverse=True):
        ax.loglog(wavelength, gmean(p), lw=1, label=f"walk perturbation, λ = {lam:g}")
    ax.invert_xaxis()
    ax.set_xlabel("wavelength (km)")
    ax.set_ylabel("power (normalized units², geometric mean over channels)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
