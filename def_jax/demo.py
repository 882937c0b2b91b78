"""``def-jax demo``: the end-to-end demo on the embedded mini-HRRR, in ~20 minutes on a 2-core CPU.

synth → prepare → stats (six weeks of hourly 32×32 mini-HRRR as real GRIB2, into a Zarr store) → train G_φ → train
ε_θ → a check of the sampler against an exact solution → DEF forecasts every 12 h through the test period → evaluate →
plot → ``report.md``. A rerun reuses every finished stage: the GRIB files (same generator settings), the store's written
slots and statistics, finished training runs and forecast files; the tables, figures and report are remade.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from def_jax.catalogue import load_catalogue
from def_jax.diffusion.gaussian import gaussian_eps_fn, probability_flow
from def_jax.diffusion.sampler_configs import sampler_from_config
from def_jax.diffusion.schedules import make_schedule


def _section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 100 - len(title)))


def check_sampler_on_gaussian(cfg: ml_collections.ConfigDict, members: int, shape: tuple[int, ...]) -> list[tuple]:
    """Run the configured sampler on Gaussian data whose probability-flow solution is exact; return the errors."""
    schedule = make_schedule(cfg.diffusion.schedule, cfg.diffusion.num_steps)
    rng = np.random.default_rng(cfg.seed)
    mean = jnp.asarray(rng.uniform(-1.0, 1.0, shape[-1]), jnp.float32)
    std = jnp.asarray(rng.uniform(0.3, 2.0, shape[-1]), jnp.float32)
    x_T = jax.random.normal(jax.random.key(cfg.seed), (members, *shape))
    t_end = cfg.sampler.t_end or schedule.t_min
    exact = probability_flow(schedule, x_T, 1.0, t_end, mean, std)
    rows = []
    for steps in (cfg.sampler.steps, 2 * cfg.sampler.steps, 4 * cfg.sampler.steps, 8 * cfg.sampler.steps):
        overrides = cfg.sampler.to_dict() | {"steps": steps, "denoise_to_zero": False}
        sample = sampler_from_config(overrides)
        x = sample(gaussian_eps_fn(schedule, mean, std), x_T, schedule, jax.random.key(1))
        rows.append((steps, float(jnp.max(jnp.abs(x - exact))), float(jnp.sqrt(jnp.mean((x - exact) ** 2)))))
    return rows


def event_frequencies(store, periods: dict[str, str], thresholds, variable: str = "refc") -> dict:
    """The fraction of grid points at or above each threshold of ``variable`` over the written slots of each period.

    ``store`` a prepared Zarr store, ``periods`` names to ``START:END`` (e.g. the config's train/val/test periods),
    ``thresholds`` in the variable's units. Returns ``{name: {threshold: fraction}}`` (NaN for a period without written
    slots), read a block of times at a time.
    """
    import xarray as xr

    from def_jax.data.schema import STATUS, parse_period

    ds = xr.open_zarr(store, consolidated=False)
    times, written = ds["time"].values, ds[STATUS].values == 1
    out = {}
    for name, text in periods.items():
        start, end = parse_period(text, f"the {name} period")
        index = np.nonzero(written & (times >= start) & (times <= end))[0]
        counts, points = np.zeros(len(thresholds)), 0
        for i in range(0, len(index), 256):
            values = ds[variable].isel(time=index[i:i + 256]).values  # [t, y, x]
            counts += [np.count_nonzero(values >= t) for t in thresholds]
            points += values.size
        out[name] = {float(t): (float(c / points) if points else float("nan")) for t, c in zip(thresholds, counts)}
    return out


def data_stages(cfg: ml_collections.ConfigDict, workdir: Path) -> None:
    """synth → prepare → stats → one training batch, each stage skipped when its output is already complete."""
    import json
    import os

    import xarray as xr

    from data_prep.prepare import PrepareOptions, prepare
    from data_prep.stats import compute_stats
    from data_prep.synth import synth
    from data_prep.synth_dynamics import WORLD_VERSION
    from def_jax.data.pipeline import make_loader, source_from_config

    catalogue = load_catalogue(cfg.data.catalogue, cfg.data.levels)
    grib, store = workdir / "grib", workdir / Path(cfg.data.store).name
    s, (ny, nx) = cfg.data.synth, cfg.data.grid_shape
    wanted = {"world_version": WORLD_VERSION, "start": str(np.datetime64(s.start, "h")), "hours": s.hours,
              "seed": s.seed, "ny": ny, "nx": nx, "stride": s.stride or 1}
    meta = grib / "synth.json"
    if meta.exists() and {k: json.loads(meta.read_text()).get(k) for k in wanted} == wanted:
        print(f"synth: reusing {grib} ({s.hours} h of {ny}×{nx} mini-HRRR)")
    else:
        synth(grib, s.start, s.hours, catalogue, ny=ny, nx=nx, stride=s.stride or 1, seed=s.seed)
        if store.exists():  # made from other GRIB files: the demo owns its outputs, so start them afresh
            import shutil

            print(f"synth settings changed: removing {store} and the runs and forecasts made from it")
            shutil.rmtree(store)
            store.with_name(store.name + ".log.jsonl").unlink(missing_ok=True)
            for stale in ("forecaster", "diffusion", "forecasts", "evaluation", "plots"):
                shutil.rmtree(workdir / stale, ignore_errors=True)
    prepare(PrepareOptions(sources=[str(grib)], out=store, catalogue=catalogue, workers=os.cpu_count() or 1,
                           dt_hours=cfg.data.dt_hours))
    if xr.open_zarr(store, consolidated=False).attrs.get("stats_train_period") == cfg.data.train_period:
        print(f"stats: reusing the statistics of {cfg.data.train_period}")
    else:
        compute_stats(store, cfg.data.train_period)
    check = cfg.data.copy_and_resolve_references()
    check.in_memory = False  # one batch from the store: training reads the period into memory itself
    source = source_from_config(check, "train", store=str(store))
    loader = make_loader(source, batch_size=cfg.training.forecaster.batch_size, seed=cfg.seed,
                         crop_shape=tuple(cfg.data.crop_shape), worker_count=cfg.data.workers)
    with iter(loader) as it:
        batch = next(it)
    print(f"loader: {len(source)} training windows; a batch: " +
          ", ".join(f"{k} {tuple(v.shape)}" for k, v in batch.items() if k in ("inputs", "targets", "forcings",
                                                                             "statics", "time_features")))
    periods = {"train": cfg.data.train_period, "validation": cfg.data.val_period, "test": cfg.data.test_period}
    thresholds = tuple(cfg.evaluation.refc_thresholds)
    freq = event_frequencies(store, periods, thresholds)
    rows = {f"{name} {text}": freq[name] for name, text in periods.items()}
    width = max(len(label) for label in rows) + 2
    print("the mini-HRRR's storms: composite reflectivity at or above each threshold, % of points")
    print(f"{'period':<{width}}" + "".join(f"{f'≥ {t:g} dBZ':>10}" for t in thresholds))
    for label, row in rows.items():
        print(f"{label:<{width}}" + "".join(f"{100 * row[float(t)]:>10.2f}" for t in thresholds))


def training_stages(cfg: ml_collections.ConfigDict, workdir: Path) -> None:
    """G_φ then ε_θ on the demo store; a finished run (its last checkpoint at max_steps) is reused as is."""
    from def_jax.training.logging import read_metrics
    from def_jax.training.loop import train

    cfg = cfg.copy_and_resolve_references()
    cfg.data.store = str(workdir / Path(cfg.data.store).name)
    for kind in ("forecaster", "diffusion"):
        train(kind, cfg, workdir)
        val = [r for r in read_metrics(workdir / kind) if r["split"] == "val"]
        if not val:
            continue
        last = val[-1]
        if kind == "forecaster":
            print(f"G_φ after {last['step']} updates: validation MSE {last['loss']:.4f} (normalized units) against "
                  f"{last['persistence_mse']:.4f} for persistence ({100 * (1 - last['loss'] / last['persistence_mse']):.0f} % "
                  f"lower)")
        else:
            print(f"ε_θ after {last['step']} updates: validation ε-loss {last['loss']:.4f} (1.0 = predicting no noise)")


def demo_inits(cfg: ml_collections.ConfigDict, every_hours: int = 12) -> list[np.datetime64]:
    """Initial times every ``every_hours`` through the test period whose whole horizon stays inside it."""
    from def_jax.data.schema import parse_period

    start, end = parse_period(cfg.data.test_period, "config.data.test_period")
    step, lead = np.timedelta64(every_hours, "h"), np.timedelta64(int(cfg.ensemble.lead_hours), "h")
    inits = []
    t = start
    while t + lead <= end:
        inits.append(t)
        t = t + step
    return inits


# The simple ensemble the demo judges DEF against: spatially correlated noise before every G_φ step, at the amplitude
# the ensemble study chose on validation data (docs/RESULTS.md)
BASELINE = {"perturbation": "correlated", "perturbation_scale": 0.5}


def forecast_stages(cfg: ml_collections.ConfigDict, workdir: Path) -> dict:
    """forecast (DEF, then the baseline ensemble) → evaluate → plot; finished forecast files are reused, the tables
    and figures are remade."""
    from def_jax.evaluation.evaluate import evaluate
    from def_jax.evaluation.plots import make_plots
    from def_jax.forecast.run import forecast

    cfg = cfg.copy_and_resolve_references()
    cfg.data.store = str(workdir / Path(cfg.data.store).name)
    inits = demo_inits(cfg)
    e = cfg.ensemble
    print(f"{len(inits)} cycles ({str(inits[0])[:13]} to {str(inits[-1])[:13]}, every 12 h), {e.lead_hours} h each: "
          f"B = {e.members} members, K = {e.walks} walks, λ = {e.guidance_scale}, {cfg.sampler.name} with "
          f"S = {cfg.sampler.steps} steps")
    files = forecast(cfg, workdir, workdir / "forecasts", inits)
    base = cfg.copy_and_resolve_references()
    base.ensemble.update(BASELINE)
    base.ensemble.include_deterministic = False  # the same G_φ rollout as DEF's files
    print(f"the baseline: {BASELINE['perturbation']} noise of {BASELINE['perturbation_scale']} × each channel's "
          f"one-hour change before every G_φ step, {e.members} members")
    baseline_files = forecast(base, workdir, workdir / f"forecasts_{BASELINE['perturbation']}", inits)
    _section("6. evaluate: scores of DEF, the baseline, the deterministic rollout, persistence and climatology")
    result = evaluate(files + baseline_files, Path(cfg.data.store), workdir / "evaluation", config=cfg)
    _section("7. plot")
    figures = make_plots(workdir / "evaluation", workdir / "plots", forecast_path=stormiest(files, cfg),
                         store=Path(cfg.data.store), variables=list(REPORT_VARIABLES), log=lambda m: None)
    print(f"{len(figures)} figures in {workdir / 'plots'}")
    return {"files": files, "evaluation": result, "figures": figures, "inits": inits, "cfg": cfg}


REPORT_VARIABLES = ("refc", "t2m", "u10", "cape", "z500")


def stormiest(files: list, cfg: ml_collections.ConfigDict) -> Path:
    """The forecast whose verifying truth has the most points of REFC ≥ 35 dBZ (the maps show that cycle)."""
    import xarray as xr

    store = xr.open_zarr(cfg.data.store, consolidated=False)
    counts = []
    for f in files:
        with xr.open_dataset(f) as ds:
            times = ds.valid_time.values[0]
        counts.append(int((store["refc"].sel(time=times).values >= 35.0).sum()))
    return Path(files[int(np.argmax(counts))])


def run(cfg: ml_collections.ConfigDict, workdir: Path) -> int:
    import time

    from def_jax.report import write_report

    t_start = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"def-jax demo  (preset {cfg.preset}, outputs in {workdir}/)")

    _section("1. data: synth → prepare → stats → loader (six weeks of hourly mini-HRRR)")
    data_stages(cfg, workdir)

    _section("2. training: G_φ (forecaster), then ε_θ (denoiser, random advancement)")
    training_stages(cfg, workdir)

    grid = tuple(cfg.data.grid_shape)
    channels = load_catalogue(cfg.data.catalogue, cfg.data.levels).num_channels("state")
    _section("3. diffusion core: the sampler against the exact probability-flow solution of Gaussian data")
    s = cfg.sampler
    print(f"{s.name}, order {s.order} {s.method}, {s.spacing} spacing, {cfg.diffusion.schedule} schedule, "
          f"T = {cfg.diffusion.num_steps}; {cfg.ensemble.members} members of {grid[0]}×{grid[1]}×{channels}")
    rows = check_sampler_on_gaussian(cfg, cfg.ensemble.members, (*grid, channels))
    print(f"{'steps':>6}  {'max |error|':>12}  {'RMS error':>10}")
    for steps, max_err, rms in rows:
        print(f"{steps:>6}  {max_err:>12.2e}  {rms:>10.2e}")
    if s.name != "dpm_solver_pp_adaptive" and not rows[-1][1] < rows[0][1]:
        print("error: the sampler does not converge to the exact solution as steps increase")
        return 1

    _section("4-5. forecast: DEF ensembles through the test period")
    out = forecast_stages(cfg, workdir)

    _section("8. report")
    report = write_report(workdir, out["cfg"], out["inits"], [Path(p) for p in out["figures"]],
                          minutes=(time.perf_counter() - t_start) / 60)
    print(f"wrote {report}")
    print(f"\nThe demo finished in {(time.perf_counter() - t_start) / 60:.1f} min. Read {report} first.")
    return 0
