"""The ``def-jax`` command line.

    def-jax COMMAND [--config=configs/presets.py:VARIANT] [--config.FIELD=VALUE ...] [--workdir=DIR] [options]

Every command takes the same ``--config`` (an ml-collections file with a ``get_config(variant)``; ``--config=VARIANT``
alone means ``configs/presets.py:VARIANT``), dotted overrides of any field, and ``--workdir``. Unknown fields and invalid
values stop the command with one line naming the field; so do other user errors (missing files, bad options).

This module holds the command table (``COMMANDS``) and the parsing every command shares. Each command's own flags and
``run`` live in ``cli_data`` (synth, prepare, stats, download), ``cli_train`` (train-*, info, check-denoiser),
``cli_forecast`` (forecast, tune, evaluate, plot) and ``cli_bench`` (bench); ``cli_base`` holds what they share.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Optional

from absl import flags
from ml_collections import config_flags

from def_jax import cli_bench, cli_data, cli_forecast, cli_train, configuration
from def_jax.cli_base import PROG, Command, Invocation, no_flags
from def_jax.errors import UserError

PRESETS_FILE = Path(__file__).resolve().parent.parent / "configs" / "presets.py"
DEFAULT_CONFIG = f"{PRESETS_FILE}:demo"


# --- commands ----------------------------------------------------------------------------------------------------


def _config_define(fv: flags.FlagValues) -> None:
    flags.DEFINE_bool("flat", False, "Print one FIELD=VALUE line per field (ready to paste as overrides).", flag_values=fv)


def _config_run(inv: Invocation) -> int:
    if inv.flags.flat:
        for path, value in configuration.iter_fields(inv.config):
            print(f"--config.{path}={configuration.format_value(value)}")
    else:
        print(configuration.format_config(inv.config))
    return 0


def _demo_run(inv: Invocation) -> int:
    from def_jax import demo

    return demo.run(inv.config, inv.workdir)


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in [
        Command("config", "print the resolved configuration", _config_define, _config_run),
        Command("bench", "benchmarks: bench sampler | train | loader | prepare | authors (throughput)",
                cli_bench.bench_define,
                cli_bench.bench_run, positional=cli_bench.TARGETS, compile_cache=False),
        Command("demo", "run the end-to-end demo on the embedded mini-HRRR", no_flags, _demo_run,
                default_workdir="demo_output"),
        Command("synth", "write an embedded world: the mini-HRRR as GRIB2 (default) or a Held-Suarez atmosphere as "
                "netCDF", cli_data.synth_define, cli_data.synth_run),
        Command("prepare", "HRRR GRIB2 (or any xarray dataset) -> Zarr store", cli_data.prepare_define,
                cli_data.prepare_run),
        Command("stats", "normalization statistics of the training period", cli_data.stats_define,
                cli_data.stats_run),
        Command("download", "fetch the catalogue's HRRR messages by byte range (needs def-jax[download])",
                cli_data.download_define, cli_data.download_run, compile_cache=False),
        Command("info", "parameter count, FLOPs and memory of the models", cli_train.info_define,
                cli_train.info_run, compile_cache=False),
        Command("check-denoiser", "what a trained eps_theta learned: eps-loss by noise level with and without the "
                "condition, unconditional samples and one walk against the data", cli_train.check_denoiser_define,
                cli_train.check_denoiser_run),
        Command("train-forecaster", "train the deterministic forecaster G_phi", no_flags,
                cli_train.train_forecaster_run),
        Command("train-diffusion", "train the denoiser eps_theta (random advancement or direct mode)", no_flags,
                cli_train.train_diffusion_run),
        Command("forecast", "DEF ensemble forecasts to NetCDF", cli_forecast.forecast_define,
                cli_forecast.forecast_run),
        Command("tune", "choose an ensemble's scale (DEF's λ and K, a baseline's amplitude or lag) on validation "
                "data, by spread/skill or CRPS", cli_forecast.tune_define, cli_forecast.tune_run),
        Command("tune-guidance", "tune for DEF's λ and K (the same as tune)", cli_forecast.tune_define,
                cli_forecast.tune_run),
        Command("evaluate", "scores of forecasts against the store (CSV tables)", cli_forecast.evaluate_define,
                cli_forecast.evaluate_run, compile_cache=False),
        Command("plot", "figures of forecasts and scores (PNG)", cli_forecast.plot_define, cli_forecast.plot_run,
                compile_cache=False),
    ]
}


# --- parsing -----------------------------------------------------------------------------------------------------


def usage() -> str:
    lines = [
        f"usage: {PROG} COMMAND [--config=configs/presets.py:VARIANT] [--config.FIELD=VALUE ...] [--workdir=DIR]",
        "",
        "commands:",
    ]
    for c in COMMANDS.values():
        lines.append(f"  {c.name:<17} {c.summary}")
    lines += ["", f"{PROG} COMMAND --help lists a command's options."]
    return "\n".join(lines)


def _resolve_config_arg(args: list[str]) -> list[str]:
    """Let ``--config=VARIANT`` mean the presets file, and find ``configs/...`` from any working directory."""
    out = []
    for a in args:
        m = re.fullmatch(r"--config=(.+)", a)
        if m:
            value = m[1]
            path, _, variant = value.partition(":")
            if not path.endswith(".py") and not variant:
                value = f"{PRESETS_FILE}:{path}"
            elif not Path(path).exists() and (PRESETS_FILE.parent.parent / path).exists():
                value = f"{PRESETS_FILE.parent.parent / path}:{variant}" if variant else str(
                    PRESETS_FILE.parent.parent / path)
            elif not Path(path).exists():
                raise UserError(f"--config: no such config file {path!r}")
            a = f"--config={value}"
        out.append(a)
    return out


def _dash_flags(args: list[str], known: set[str]) -> list[str]:
    """Accept ``--lead-hours=24`` for a flag defined as ``lead_hours`` (and the other way round), GNU style."""
    out = []
    for a in args:
        m = re.fullmatch(r"--(no)?([a-z][a-z0-9_-]*)(=.*)?", a, flags=re.S)
        if m and not a.startswith("--config") and m[2] not in known:
            for alias in (m[2].replace("-", "_"), m[2].replace("_", "-")):
                if alias in known:
                    a = f"--{m[1] or ''}{alias}{m[3] or ''}"
                    break
        out.append(a)
    return out


def _override_paths(args: list[str]) -> list[str]:
    return [m[1] for a in args if (m := re.match(r"--config\.([\w.]+)", a))]


def _new_flag_values(command: Command, args: list[str]) -> flags.FlagValues:
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", default=DEFAULT_CONFIG, flag_values=fv, lock_config=True, sys_argv=[PROG] + args,
        help_string="Config file and variant, FILE.py:VARIANT (or just VARIANT of configs/presets.py).",
    )
    flags.DEFINE_string("workdir", None, "Working directory for outputs (default: runs/<preset>).", flag_values=fv)
    command.define(fv)
    return fv


def _config_spec(args: list[str]) -> str:
    specs = [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    return specs[-1] if specs else DEFAULT_CONFIG


def _check_config_args(args: list[str]) -> None:
    """Load the config file once on its own, so that a broken file, an unknown variant or an unknown
    ``--config.FIELD`` is reported in one line naming it (ml_collections names only a field's last component)."""
    path, _, variant = _config_spec(args).partition(":")
    spec = importlib.util.spec_from_file_location("_def_jax_config_check", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        base = module.get_config(variant or None)
    except Exception as err:  # the config file itself is broken: report it as such
        raise UserError(f"--config={path}:{variant}: {err}") from None
    for p in _override_paths(args):
        if not configuration.has_field(base, p):
            raise UserError(f"config.{p}: no such field{configuration.suggest_field(base, p)}")


def _load_config(command: Command, args: list[str]):
    """Parse the flags and return (flag values, validated config, positional args); user mistakes -> UserError."""
    _check_config_args(args)
    try:
        fv = _new_flag_values(command, args)
        rest = fv([PROG] + args)
        cfg = fv.config
    except flags.Error as err:
        raise UserError(str(err).splitlines()[0].replace("Error whilst parsing config file:", "").strip()) from None
    except (AttributeError, KeyError, ValueError, TypeError) as err:
        raise UserError(f"--config: {err}") from None
    return fv, configuration.validate(cfg), rest[1:]


def _setup_jax() -> None:
    """Persistent compilation cache for command-line runs (ENVIRONMENT.md: 11.5 s -> 1.2 s for a second process)."""
    cache = os.environ.get("DEF_JAX_CACHE_DIR", str(Path.home() / ".cache" / "def_jax" / "xla"))
    if not cache:
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        from def_jax import __version__

        print(f"{PROG} {__version__}")
        return 0
    name, args = argv[0], argv[1:]
    try:
        command = COMMANDS.get(name)
        if command is None:
            close = difflib.get_close_matches(name, COMMANDS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(f"unknown command {name!r}{hint}; run '{PROG} --help' for the list")
        args = _dash_flags(args, set(_new_flag_values(command, [])))
        if "-h" in args or "--help" in args:
            print(f"{PROG} {name}: {command.summary}\n")
            fv = _new_flag_values(command, [])
            print("\n".join(fv.module_help(m) for m in fv.flags_by_module_dict()).strip())
            return 0
        fv, cfg, rest = _load_config(command, _resolve_config_arg(args))
        if rest and not command.positional:
            raise UserError(f"'{name}' takes no positional arguments; got {' '.join(rest)}")
        workdir = Path(fv.workdir or command.default_workdir or Path("runs") / cfg.preset)
        if command.compile_cache:
            _setup_jax()
        return command.run(Invocation(cfg, workdir, fv, rest))
    except UserError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
