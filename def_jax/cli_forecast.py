"""The forecast, tune (tune-guidance), evaluate and plot commands of ``def-jax``."""

from __future__ import annotations

from pathlib import Path

from absl import flags

from def_jax import configuration
from def_jax.cli_base import Invocation, output_path, start_processes
from def_jax.errors import UserError

# flag → config field it overrides (the flags are shorthands; --config.FIELD=VALUE works as well)
FORECAST_OVERRIDES = {
    "lead_hours": "ensemble.lead_hours", "members": "ensemble.members", "walks": "ensemble.walks",
    "guidance_scale": "ensemble.guidance_scale", "sampler_steps": "sampler.steps",
    "perturbation": "ensemble.perturbation", "perturbation_scale": "ensemble.perturbation_scale",
    "format": "ensemble.format",
}
TUNE_OVERRIDES = {k: FORECAST_OVERRIDES[k] for k in ("lead_hours", "members", "sampler_steps", "perturbation")}


def forecast_define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("init", None, "Initial time(s), e.g. 2024-06-13T00 or a comma-separated list "
                        "(default: config.ensemble.init_times, else the start of data.test_period).", flag_values=fv)
    flags.DEFINE_integer("cycles", 1, "Cycles from each --init, --every hours apart.", flag_values=fv, lower_bound=1)
    flags.DEFINE_float("every", 24.0, "Hours between cycles.", flag_values=fv, lower_bound=0.0)
    flags.DEFINE_integer("lead_hours", None, "Forecast horizon in hours (config.ensemble.lead_hours).",
                         flag_values=fv, lower_bound=1)
    flags.DEFINE_integer("members", None, "Ensemble members B (config.ensemble.members).", flag_values=fv,
                         lower_bound=1)
    flags.DEFINE_integer("walks", None, "Chained perturbation walks K per step (config.ensemble.walks).",
                         flag_values=fv, lower_bound=0)
    flags.DEFINE_float("guidance_scale", None, "Classifier-free guidance scale λ (config.ensemble.guidance_scale).",
                       flag_values=fv, lower_bound=0.0)
    flags.DEFINE_integer("sampler_steps", None, "Solver steps S per reverse diffusion (config.sampler.steps).",
                         flag_values=fv, lower_bound=1)
    flags.DEFINE_enum("perturbation", None, list(configuration.choices("ensemble.perturbation")),
                      "What the members are made of (config.ensemble.perturbation): DEF's guided walks or a "
                      "baseline ensemble.", flag_values=fv)
    flags.DEFINE_float("perturbation_scale", None, "Amplitude of gaussian/correlated noise and bred vectors, × each "
                       "channel's one-step-difference std (config.ensemble.perturbation_scale).", flag_values=fv,
                       lower_bound=0.0)
    flags.DEFINE_enum("format", None, list(configuration.choices("ensemble.format")), "Forecast files "
                      "(config.ensemble.format): CF NetCDF-4, or Zarr stores that every process of a multi-host run "
                      "writes its part of and that resume after a kill.", flag_values=fv)
    flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/forecasts).", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Redo cycles whose file exists.", flag_values=fv)


def apply_overrides(cfg, fv: flags.FlagValues, table: dict[str, str]):
    """Copy the shorthand flags that were given into their config fields, then validate again."""
    for flag, path in table.items():
        value = getattr(fv, flag)
        if value is not None:
            section, name = path.rsplit(".", 1)
            node = cfg
            for part in section.split("."):
                node = node[part]
            node[name] = type(node[name])(value) if node[name] is not None else value
    return configuration.validate(cfg)


def default_init(cfg) -> str:
    if cfg.ensemble.init_times:
        return cfg.ensemble.init_times
    from def_jax.data.schema import parse_period

    return str(parse_period(cfg.data.test_period, "config.data.test_period")[0])


def forecast_run(inv: Invocation) -> int:
    from def_jax.forecast.run import forecast, parse_inits

    main = start_processes(inv.config)
    cfg = apply_overrides(inv.config, inv.flags, FORECAST_OVERRIDES)
    fv = inv.flags
    inits = parse_inits(fv.init, fv.cycles, fv.every, "" if fv.init else default_init(cfg))
    out = output_path(inv, "forecasts")
    files = forecast(cfg, inv.workdir, out, inits, overwrite=fv.overwrite)
    if main:
        print(f"{len(files)} forecast file(s) in {out}")
    return 0


def _forecast_files(spec: str) -> list[Path]:
    """A directory (its forecast_*.nc and forecast_*.zarr), a file, or a glob → the sorted forecast files; none is a
    user error."""
    import glob

    from def_jax.forecast.files import forecast_paths

    p = Path(spec)
    files = forecast_paths(p) if p.is_dir() and p.suffix != ".zarr" else sorted(Path(f) for f in glob.glob(spec))
    if not files:
        raise UserError(f"--forecasts={spec}: no forecast files (expected a directory of forecast_*.nc or "
                        f"forecast_*.zarr, a file or a glob; run def-jax forecast first)")
    return files


def evaluate_define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("forecasts", None, "Forecast files: a directory, a file or a glob (default: "
                        "WORKDIR/forecasts).", flag_values=fv)
    flags.DEFINE_string("truth", None, "The Zarr store with the truth (default: config.data.store).", flag_values=fv)
    flags.DEFINE_string("out", None, "Output directory for the CSV tables (default: WORKDIR/evaluation).",
                        flag_values=fv)


def evaluate_run(inv: Invocation) -> int:
    from def_jax.evaluation.evaluate import evaluate

    fv, cfg = inv.flags, inv.config
    files = _forecast_files(fv.forecasts or str(inv.workdir / "forecasts"))
    out = output_path(inv, "evaluation")
    result = evaluate(files, Path(fv.truth or cfg.data.store), out, config=cfg)
    print(f"evaluated {result['cycles']} cycle(s): " + ", ".join(str(p) for p in result["tables"].values()))
    return 0


def plot_define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("evaluation", None, "Directory of the evaluate tables (default: WORKDIR/evaluation), or "
                        "several, comma-separated, whose ensembles are overlaid (DIR1,DIR2,...).", flag_values=fv)
    flags.DEFINE_string("forecasts", None, "A forecast file or directory for the maps (default: WORKDIR/forecasts; "
                        "the first file).", flag_values=fv)
    flags.DEFINE_string("truth", None, "The Zarr store for the truth maps (default: config.data.store).",
                        flag_values=fv)
    flags.DEFINE_list("variables", None, "Variables/levels to plot, e.g. refc,t2m,z500 (default: the surface "
                      "variables and 500 hPa).", flag_values=fv)
    flags.DEFINE_list("lead_hours", None, "Lead times (h) of the maps (default: three over the horizon).",
                      flag_values=fv)
    flags.DEFINE_integer("members_to_show", 4, "Members drawn in the maps.", flag_values=fv, lower_bound=0)
    flags.DEFINE_string("out", None, "Output directory for the PNGs (default: WORKDIR/plots).", flag_values=fv)


def plot_run(inv: Invocation) -> int:
    from def_jax.evaluation.plots import make_plots

    fv, cfg = inv.flags, inv.config
    forecasts = Path(fv.forecasts) if fv.forecasts else inv.workdir / "forecasts"
    try:
        leads = [int(x) for x in fv.lead_hours] if fv.lead_hours else None
    except ValueError:
        raise UserError(f"--lead_hours: expected whole hours such as 1,6,12; got {','.join(fv.lead_hours)}") from None
    out = output_path(inv, "plots")
    folders = [Path(d.strip()) for d in fv.evaluation.split(",") if d.strip()] if fv.evaluation else []
    if fv.evaluation and not folders:
        raise UserError(f"--evaluation={fv.evaluation}: expected a directory or DIR1,DIR2,...")
    paths = make_plots(folders or inv.workdir / "evaluation", out,
                       forecast_path=forecasts if forecasts.exists() else None, store=Path(fv.truth or cfg.data.store),
                       lead_hours=leads, variables=fv.variables, members_to_show=fv.members_to_show)
    print(f"{len(paths)} figure(s) in {out}")
    return 0


def tune_define(fv: flags.FlagValues) -> None:
    flags.DEFINE_enum("perturbation", None, list(configuration.choices("ensemble.perturbation")),
                      "The ensemble to tune (default: config.ensemble.perturbation).", flag_values=fv)
    flags.DEFINE_list("scales", None, "Scales to try: λ for def (default config.tuning.guidance_scales), the noise "
                      "amplitude for gaussian/correlated/bred (config.tuning.perturbation_scales), the lag in steps "
                      "for lagged (config.tuning.lag_steps).", flag_values=fv)
    flags.DEFINE_list("walks", None, "def: walks K to try (default: config.tuning.walks).", flag_values=fv)
    flags.DEFINE_enum("by", None, ["spread_skill", "crps"], "Choose the setting with spread/skill nearest 1 or with "
                      "the lowest CRPS (default: config.tuning.criterion).", flag_values=fv)
    flags.DEFINE_float("every", 12.0, "Hours between the validation cycles.", flag_values=fv, lower_bound=1.0)
    flags.DEFINE_integer("max_cycles", 4, "At most this many validation cycles per setting.", flag_values=fv,
                         lower_bound=1)
    flags.DEFINE_integer("lead_hours", None, "Forecast horizon (config.ensemble.lead_hours).", flag_values=fv,
                         lower_bound=1)
    flags.DEFINE_integer("members", None, "Members B (config.ensemble.members).", flag_values=fv, lower_bound=2)
    flags.DEFINE_integer("sampler_steps", None, "Solver steps S (config.sampler.steps).", flag_values=fv,
                         lower_bound=1)
    flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/tuning, or WORKDIR/tuning_<perturbation> "
                        "for a baseline).", flag_values=fv)


def tune_run(inv: Invocation) -> int:
    from def_jax.tuning import best_overrides, tune

    main = start_processes(inv.config)
    fv = inv.flags
    cfg = apply_overrides(inv.config, fv, TUNE_OVERRIDES)
    kind = cfg.ensemble.perturbation
    default = {"def": cfg.tuning.guidance_scales, "lagged": cfg.tuning.lag_steps}.get(
        kind, cfg.tuning.perturbation_scales)
    if fv.walks and kind != "def":
        raise UserError(f"--walks: the {kind} ensemble has no walks (they are DEF's)")
    try:
        scales = [float(x) for x in (fv.scales or default)]
        walks = [int(x) for x in (fv.walks or cfg.tuning.walks)]
    except ValueError:
        raise UserError("--scales takes numbers such as 0.3,0.5 and --walks whole numbers such as 1,3") from None
    if any(s < 0 for s in scales) or any(k < 0 for k in walks):
        raise UserError("--scales and --walks must be >= 0")
    out = output_path(inv, "tuning" if kind == "def" else f"tuning_{kind}")
    result = tune(cfg, inv.workdir, out, scales=scales, walks=walks, every_hours=fv.every,
                  max_cycles=fv.max_cycles, by=fv.by or cfg.tuning.criterion)
    if not main:
        return 0
    print(f"{'ensemble':<11} {'K':>3} {'scale':>6} {'SSR':>7} {'|log SSR|':>10} {'CRPS/MAE det':>13}")
    for r in result["rows"]:
        print(f"{r['perturbation']:<11} {r['walks']:>3} {r['scale']:>6g} {r['mean_ssr']:>7.3f} "
              f"{r['mean_abs_log_ssr']:>10.3f} {r['crps_over_deterministic_mae']:>13.3f}")
    b = result["best"]
    print(f"best by {fv.by or cfg.tuning.criterion}: {best_overrides(b)} (spread/skill {b['mean_ssr']:.2f}, CRPS / "
          f"deterministic MAE {b['crps_over_deterministic_mae']:.3f}); table {result['table']}")
    return 0
