"""The data commands of ``def-jax``: synth, prepare, stats, download (their flags and how they map onto ``data_prep``).

Defaults come from the config's ``data`` section, so ``def-jax synth && def-jax prepare && def-jax stats`` with the
``demo`` preset builds the demo store; every flag overrides its config field.
"""

from __future__ import annotations

import os
from pathlib import Path

from absl import flags

from def_jax.cli_base import Invocation
from def_jax.errors import UserError


def _value(fv: flags.FlagValues, name: str, default=None):
    """The flag's value, or ``default`` (the config's) when the flag was not given."""
    value = fv[name].value
    return default if value is None else value


def default_grib_dir(cfg) -> Path:
    """Where the demo's GRIB files go: ``<directory of data.store>/grib``."""
    return Path(cfg.data.store).parent / "grib"


def _define_catalogue(fv: flags.FlagValues, help_text: str = "Channel catalogue (default: data.catalogue).") -> None:
    flags.DEFINE_string("catalogue", None, help_text, flag_values=fv)


def _catalogue(cfg, fv: flags.FlagValues):
    """The ``--catalogue`` (default: ``data.catalogue``) at the config's levels."""
    from def_jax.catalogue import load_catalogue

    return load_catalogue(_value(fv, "catalogue", cfg.data.catalogue), cfg.data.levels)


# --- synth ---------------------------------------------------------------------------------------------------------


# Flags that only one world reads; giving one to the other world is an error rather than silently ignored.
MINI_HRRR_ONLY = ("hours", "ny", "nx", "stride", "catalogue")
HELD_SUAREZ_ONLY = ("days", "spinup-days", "truncation", "levels", "pressure-levels", "twin")
HELD_SUAREZ_START = "2000-01-01T00"


def synth_define(fv: flags.FlagValues) -> None:
    flags.DEFINE_enum("world", "mini-hrrr", ["mini-hrrr", "held-suarez"], "mini-hrrr: the embedded mini-HRRR as "
                      "GRIB2; held-suarez: a global dry atmosphere from the dinosaur dynamical core with Held-Suarez "
                      "(1994) forcing, as netCDF on the 5.625 deg grid (needs def-jax[worlds]).", flag_values=fv)
    flags.DEFINE_string("out", None, "Output directory (NOAA layout below it). Default: <dir of data.store>/grib. "
                        "held-suarez: the netCDF file (default: <dir of data.store>/held_suarez.nc).",
                        flag_values=fv)
    flags.DEFINE_string("start", None, "First valid time, e.g. 2024-06-01T00 (default: data.synth.start; "
                        f"held-suarez: the label of the first sample after spin-up, default {HELD_SUAREZ_START}).",
                        flag_values=fv)
    flags.DEFINE_integer("hours", None, "Hours to simulate (default: data.synth.hours).", flag_values=fv)
    flags.DEFINE_integer("ny", None, "Rows of the window (default: data.grid_shape).", flag_values=fv)
    flags.DEFINE_integer("nx", None, "Columns of the window (default: data.grid_shape).", flag_values=fv)
    flags.DEFINE_integer("stride", None, "Take every N-th HRRR point; without --ny/--nx: the whole HRRR domain at "
                         "that stride (default: data.synth.stride, 0 = 1).", flag_values=fv)
    flags.DEFINE_integer("seed", None, "Random seed (default: data.synth.seed).", flag_values=fv)
    _define_catalogue(fv)
    flags.DEFINE_integer("days", 30, "held-suarez: days saved after the spin-up (every 6 h).", flag_values=fv)
    flags.DEFINE_integer("spinup-days", 200, "held-suarez: days simulated and discarded first.", flag_values=fv)
    flags.DEFINE_enum("truncation", "T42", ["T21", "T31", "T42", "T85"], "held-suarez: spectral truncation.",
                      flag_values=fv)
    flags.DEFINE_integer("levels", 10, "held-suarez: equally spaced sigma levels of the model.", flag_values=fv)
    flags.DEFINE_list("pressure-levels", None, "held-suarez: output pressure levels in hPa (default: WeatherBench's "
                      "13, 50 … 1000).", flag_values=fv)
    flags.DEFINE_bool("twin", False, "held-suarez: also run a twin perturbed by 1e-3 K and report its error growth "
                      "(doubles the cost of the saved period).", flag_values=fv)


def _synth_held_suarez(inv: Invocation) -> int:
    cfg, fv = inv.config, inv.flags
    wrong = [f"--{name}" for name in MINI_HRRR_ONLY if fv[name].present]
    if wrong:
        raise UserError(f"{', '.join(wrong)}: mini-HRRR flag(s), not used by --world=held-suarez (see --days, "
                        "--spinup-days, --truncation, --levels)")
    try:
        from data_prep.heldsuarez import synth_held_suarez
        from def_jax.catalogue import WEATHERBENCH_LEVELS
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] != "dinosaur":
            raise
        raise UserError("--world=held-suarez needs the dinosaur dynamical core: pip install -e '.[worlds]'") from None
    text = _value(fv, "pressure-levels")
    try:
        levels = tuple(float(p) for p in text) if text else WEATHERBENCH_LEVELS
    except ValueError:
        raise UserError(f"--pressure-levels {','.join(text)}: expected hPa values such as 250,500,850") from None
    out = Path(_value(fv, "out", Path(cfg.data.store).parent / "held_suarez.nc"))
    synth_held_suarez(out, seed=_value(fv, "seed", cfg.data.synth.seed), days=fv["days"].value,
                      spinup_days=fv["spinup-days"].value, truncation=fv["truncation"].value,
                      sigma_levels=fv["levels"].value, pressure_levels=levels,
                      start=_value(fv, "start", HELD_SUAREZ_START), twin=fv["twin"].value)
    return 0


def synth_run(inv: Invocation) -> int:
    cfg, fv = inv.config, inv.flags
    if fv["world"].value == "held-suarez":
        return _synth_held_suarez(inv)
    wrong = [f"--{name}" for name in HELD_SUAREZ_ONLY if fv[name].present]
    if wrong:
        raise UserError(f"{', '.join(wrong)}: held-suarez flag(s); add --world=held-suarez")
    from data_prep.synth import synth

    s = cfg.data.synth
    stride = _value(fv, "stride", s.stride or 1)
    ny, nx = _value(fv, "ny"), _value(fv, "nx")
    if ny is None and nx is None and not fv["stride"].present:
        ny, nx = cfg.data.grid_shape
    files = synth(
        Path(_value(fv, "out", default_grib_dir(cfg))), _value(fv, "start", s.start), _value(fv, "hours", s.hours),
        _catalogue(cfg, fv), ny=ny, nx=nx, stride=stride, seed=_value(fv, "seed", s.seed),
    )
    print(f"wrote {len(files)} GRIB2 files")
    return 0


# --- prepare -------------------------------------------------------------------------------------------------------


def prepare_define(fv: flags.FlagValues) -> None:
    flags.DEFINE_multi_string("src", None, "GRIB2 file, glob or directory (repeatable). Default: the synth output "
                              "directory of the config.", flag_values=fv)
    flags.DEFINE_string("from-xarray", None, "Instead of GRIB: any xarray-readable dataset (netCDF file or glob, "
                        "Zarr store).", flag_values=fv)
    flags.DEFINE_string("var-map", None, "--from-xarray: STORE_NAME=DATASET_NAME,... for names not found "
                        "automatically.", flag_values=fv)
    flags.DEFINE_string("out", None, "The Zarr store to write or complete (default: data.store).", flag_values=fv)
    _define_catalogue(fv, "Built-in catalogue name or YAML/JSON file (default: data.catalogue).")
    flags.DEFINE_string("region", None, "Crop of the source grid, Y0:Y1,X0:X1 (index ranges, end exclusive).",
                        flag_values=fv)
    flags.DEFINE_integer("stride", 1, "Keep every N-th row and column.", flag_values=fv, lower_bound=1)
    flags.DEFINE_integer("workers", None, "Worker processes (default: all cores).", flag_values=fv, lower_bound=1)
    flags.DEFINE_enum("on-error", "fail", ["fail", "skip"], "A bad file stops the run (fail) or is recorded as a "
                      "failed slot (skip).", flag_values=fv)
    flags.DEFINE_string("scheduler", None, "dask.distributed scheduler address (tcp://host:port) to run the slots "
                        "on a cluster instead of local processes.", flag_values=fv)
    flags.DEFINE_string("chunks", None, "Spatial chunk Y,X (default: the whole grid).", flag_values=fv)
    flags.DEFINE_enum("compression", "zstd", ["zstd", "blosc", "none"], "Chunk compression.", flag_values=fv)
    flags.DEFINE_integer("dt-hours", None, "Spacing of the time axis (default: data.dt_hours).", flag_values=fv)


def _chunks(text):
    if not text:
        return None
    try:
        cy, cx = (int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--chunks {text!r}: expected Y,X such as 256,256") from None
    if min(cy, cx) < 1:
        raise UserError(f"--chunks {text!r}: sizes must be >= 1")
    return cy, cx


def prepare_run(inv: Invocation) -> int:
    from data_prep.grib_read import Region

    cfg, fv = inv.config, inv.flags
    catalogue = _catalogue(cfg, fv)
    out = Path(_value(fv, "out", cfg.data.store))
    region = Region.parse(_value(fv, "region"), _value(fv, "stride"))
    dt = _value(fv, "dt-hours", cfg.data.dt_hours)
    if dt < 1:
        raise UserError(f"--dt-hours must be >= 1; got {dt}")
    if _value(fv, "from-xarray"):
        from data_prep.from_xarray import parse_var_map, prepare_from_xarray

        if _value(fv, "src"):
            raise UserError("give either --src (GRIB) or --from-xarray, not both")
        prepare_from_xarray(_value(fv, "from-xarray"), out, catalogue, var_map=parse_var_map(_value(fv, "var-map")),
                            region=region, dt_hours=dt, chunks=_chunks(_value(fv, "chunks")),
                            compression=_value(fv, "compression"), workers=_value(fv, "workers", os.cpu_count() or 1))
        return 0
    from data_prep.prepare import PrepareOptions, prepare

    sources = _value(fv, "src") or [str(default_grib_dir(cfg))]
    summary = prepare(PrepareOptions(
        sources=sources, out=out, catalogue=catalogue, region=region,
        workers=_value(fv, "workers", os.cpu_count() or 1), on_error=_value(fv, "on-error"),
        scheduler=_value(fv, "scheduler"), dt_hours=dt, chunks=_chunks(_value(fv, "chunks")),
        compression=_value(fv, "compression"),
    ))
    return 0 if summary["failed"] == 0 else 1


# --- stats ---------------------------------------------------------------------------------------------------------


def stats_define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("store", None, "The Zarr store (default: data.store).", flag_values=fv)
    flags.DEFINE_string("train-period", None, "START:END of the training period (default: data.train_period).",
                        flag_values=fv)


def stats_run(inv: Invocation) -> int:
    from data_prep.stats import compute_stats

    cfg, fv = inv.config, inv.flags
    compute_stats(Path(_value(fv, "store", cfg.data.store)), _value(fv, "train-period", cfg.data.train_period))
    return 0


# --- download ------------------------------------------------------------------------------------------------------


def download_define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("start", None, "First HRRR cycle (init time), e.g. 2024-06-01T00.", flag_values=fv)
    flags.DEFINE_string("end", None, "Last cycle (inclusive; default: --start).", flag_values=fv)
    flags.DEFINE_integer("every", 1, "Hours between cycles.", flag_values=fv, lower_bound=1)
    flags.DEFINE_integer("fxx", 0, "Forecast hour of the files (0 = analyses, what DEF trains on).", flag_values=fv)
    flags.DEFINE_string("out", None, "Root of NOAA's layout (default: <dir of data.store>/grib).", flag_values=fv)
    _define_catalogue(fv)
    flags.DEFINE_list("source", ["aws", "google", "azure", "nomads"], "Archives to try, in order.", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Download files that already exist again.", flag_values=fv)


def download_run(inv: Invocation) -> int:
    # Herbie must come first: its pyproj clashes with ecCodes' bundled PROJ if ecCodes is loaded before it.
    from data_prep import download as dl

    dl.import_herbie()
    cfg, fv = inv.config, inv.flags
    if not _value(fv, "start"):
        raise UserError("download needs --start (the first HRRR cycle, e.g. 2024-06-01T00)")
    times = dl.parse_times(_value(fv, "start"), _value(fv, "end") or _value(fv, "start"), _value(fv, "every"))
    written = dl.download(_catalogue(cfg, fv), times,
                          Path(_value(fv, "out", default_grib_dir(cfg))), fxx=_value(fv, "fxx"),
                          source_priority=_value(fv, "source"), overwrite=_value(fv, "overwrite"))
    print(f"downloaded {len(written)} file(s)")
    return 0
