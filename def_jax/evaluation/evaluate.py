"""``def-jax evaluate``: forecast files (docs/FORECASTS.md) against the store's truth (docs/DATA.md) → CSV tables.

One forecast file (cycle) at a time, one field (variable, level, lead) at a time: a field's members [M, Y, X] are read
from the forecast file (NetCDF or Zarr), its truth from the store slot of its valid time. Leads whose valid time is
not written in the store are skipped (and counted). Systems:

* the ensemble members, as the file's ensemble system: ``direct`` when its ``mode`` starts with ``direct``, else its
  ``perturbation`` attribute (``def`` — DEF's perturbation walks, the default when the file has none —, ``gaussian``,
  ``correlated``, ``bred``, ``lagged``: tables.PERTURBATIONS);
* ``deterministic``: ``<var>_deterministic`` when the file has it;
* ``persistence``: the store's state at the initial time (when that slot is written);
* ``climatology``: the store statistics ``<var>_mean``; for events, the base rate of the training period
  (``stats_train_period``), computed once from the store.

Per-cycle quantities are accumulated so that the tables are those of the pooled cycles: means of per-cycle means
(MAE, bias, CRPS, energy), RMSE = sqrt(mean of the per-cycle MSE), spread = sqrt(mean of the per-cycle mean
variance), SSR from the aggregated spread and RMSE; Brier sums, reliability bins, contingency tables, FSS numerators
and denominators and rank counts are summed. Which statistics a field contributes, and how each score follows from
their pooled values, is the registry :mod:`def_jax.evaluation.scores`; the metric math is
:mod:`def_jax.evaluation.metrics`.

Each cycle's statistics are kept beside the sums (``scores_by_cycle.csv``): percentile bootstrap intervals over the
cycles (:mod:`def_jax.evaluation.bootstrap`, ``evaluation.bootstrap_samples`` resamples, one set of resamples for
every system and score) fill the ``value_low``/``value_high`` columns of scores.csv and skill.csv and the interval
columns of reliability.csv and spread_error.csv.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from def_jax.catalogue import level_str
from def_jax.data.store import match_level
from def_jax.errors import UserError
from def_jax.evaluation import bootstrap, metrics
from def_jax.evaluation.scores import STATISTICS, Events, Field, event_thresholds, statistics_for
from def_jax.evaluation.tables import (  # noqa: F401  (the column contracts are part of this module's API)
    ENSEMBLES,
    PERTURBATIONS,
    RANK_COLUMNS,
    RELIABILITY_BINS,
    RELIABILITY_COLUMNS,
    SCORES_BY_CYCLE_COLUMNS,
    SCORES_COLUMNS,
    SKILL_COLUMNS,
    SPECTRA_COLUMNS,
    SPREAD_ERROR_COLUMNS,
    SPREAD_ERROR_EDGES,
    SYSTEMS,
    Accumulator,
    cycle_rows,
    other_rows,
    point_scores,
    score_rows,
    skill_rows,
    spread_error_rows,
    write_csv,
)
from def_jax.evaluation.truth import Truth
from def_jax.forecast.files import FORMAT_VERSION, open_forecast
from def_jax.progress import progress

WEIGHTINGS = ("uniform", "map_factor", "coslat")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The ``evaluation`` section of the config, checked."""

    fair_crps: bool
    thresholds: dict  # variable -> thresholds (variable units)
    fss_windows: tuple[int, ...]
    weighting: str
    bootstrap_samples: int = 1000  # resamples of the cycles for the intervals (0: none)
    confidence: float = 0.9  # of the percentile intervals
    bootstrap_seed: int = 0
    channels: tuple[str, ...] = ()  # the state channels to score (catalogue names); () = all

    @classmethod
    def from_config(cls, config) -> "Settings":
        ev = config.evaluation
        windows = tuple(int(w) for w in ev.fss_windows)
        bad = [w for w in windows if w < 1 or w % 2 == 0]
        if bad:
            raise UserError(f"evaluation.fss_windows: windows must be odd numbers of grid points ≥ 1; got {bad}")
        weighting = str(ev.area_weighting)
        if weighting not in WEIGHTINGS:
            raise UserError(f"evaluation.area_weighting: expected one of {', '.join(WEIGHTINGS)}; got {weighting!r}")
        samples, confidence = int(ev.get("bootstrap_samples", 1000)), float(ev.get("confidence", 0.9))
        if samples < 0:
            raise UserError(f"evaluation.bootstrap_samples: must be >= 0 (0 = no intervals); got {samples}")
        if not 0.0 < confidence < 1.0:
            raise UserError(f"evaluation.confidence: must be in (0, 1), e.g. 0.9; got {confidence}")
        return cls(bool(ev.fair_crps), event_thresholds(config), windows, weighting, samples, confidence,
                   int(ev.get("bootstrap_seed", 0)), tuple(str(c) for c in ev.get("channels", ())))


# --- jitted per-field computations ------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("names", "tables"))
def _field_statistics(members, truth, weights, edges, key, names: tuple, tables: bool) -> dict:
    """members [M, Y, X] (M = 1: a single forecast), truth [Y, X], weights [Y, X], spread–error edges [E] → the
    registry's statistics ``names`` (scores.STATISTICS); with ``tables`` also the rank counts [M+1] (ties broken with
    ``key``) and the spectra [K] of the members (their mean), of the ensemble mean and of the truth."""
    field = Field(members, truth, weights, edges)
    out = {name: STATISTICS[name].compute(field) for name in names}
    if tables:
        out["ranks"] = metrics.rank_histogram(members, truth, key=key)
        out["power"] = jnp.mean(metrics.radial_power_spectrum(members, 1.0)[2], axis=0)
        out["power_mean"] = metrics.radial_power_spectrum(jnp.mean(members, axis=0), 1.0)[2]
        out["power_truth"] = metrics.radial_power_spectrum(truth, 1.0)[2]
    return out


@jax.jit
def _power(field):
    return metrics.radial_power_spectrum(field, 1.0)[2]


@functools.partial(jax.jit, static_argnames=("names", "windows", "bins"))
def _event_statistics(members, truth, weights, threshold, base_rate, names: tuple, windows: tuple, bins: int) -> dict:
    """Event ≥ threshold: members [M, Y, X] (M = 1: a single forecast), truth, weights [Y, X] → the registry's event
    statistics ``names``."""
    obs = (truth >= threshold).astype(jnp.float32)  # [Y, X]
    prob = jnp.mean((members >= threshold).astype(jnp.float32), axis=0)  # [Y, X]
    events = Events(prob, obs, weights, base_rate, windows, bins)
    return {name: STATISTICS[name].compute(events) for name in names}


# --- one cycle --------------------------------------------------------------------------------------------------


def ensemble_system(path: Path, attrs: dict) -> str:
    """The ensemble system of a forecast file: ``direct`` when its ``mode`` starts with ``direct``, else its
    ``perturbation`` attribute (default ``def``), one of tables.PERTURBATIONS."""
    if str(attrs.get("mode", "def")).startswith("direct"):
        return "direct"
    perturbation = str(attrs.get("perturbation", "def"))
    if perturbation not in PERTURBATIONS:
        raise UserError(f"{path}: perturbation {perturbation!r} is not one of {', '.join(PERTURBATIONS)}")
    return perturbation


def _open_forecast(path: Path, truth: Truth) -> xr.Dataset:
    """Open a forecast file lazily and check that it is one, on the store's grid."""
    if not (path.is_file() or (path.suffix == ".zarr" and path.is_dir())):
        raise UserError(f"{path}: forecast file not found")
    try:
        fds = open_forecast(path)
    except Exception as err:
        raise UserError(f"{path}: cannot be opened as a forecast file (NetCDF or Zarr): "
                        f"{str(err).splitlines()[0]}") from None
    try:
        version = fds.attrs.get("def_jax_forecast")
        if version is None:
            raise UserError(f"{path}: not a def-jax forecast file (no def_jax_forecast attribute)")
        if int(version) != FORMAT_VERSION:
            raise UserError(f"{path}: def_jax_forecast is {version!r}, expected {FORMAT_VERSION}")
        for name in ("init_time", "lead_time", "member", "y", "x"):
            if name not in fds.variables:
                raise UserError(f"{path}: no '{name}' variable (expected the layout of docs/FORECASTS.md)")
        if not np.issubdtype(fds["init_time"].dtype, np.datetime64):
            raise UserError(f"{path}: init_time is not a CF time (units 'hours since 1970-01-01 00:00:00')")
        ensemble_system(path, fds.attrs)
        shape = (fds.sizes["y"], fds.sizes["x"])
        if shape != truth.shape:
            raise UserError(f"{path}: grid {shape[0]}×{shape[1]} differs from the store's {truth.shape[0]}×"
                            f"{truth.shape[1]} ({truth.path})")
        for name, ref in (("y", truth.y), ("x", truth.x)):
            if not np.allclose(np.asarray(fds[name].values, np.float64), ref, rtol=1e-9, atol=1e-3):
                raise UserError(f"{path}: {name} coordinates differ from the store's ({truth.path}): "
                                "another region or stride?")
    except BaseException:
        fds.close()
        raise
    return fds


def channel_name(var: str, level: Optional[float]) -> str:
    """The catalogue's name of a channel: ``t`` at 500 hPa → ``t500``; a single-level variable by its name."""
    return var if level is None else f"{var}{level_str(level)}"


def _level_pairs(path: Path, fds: xr.Dataset, truth: Truth, var: str, log, warned: set):
    """[(file level index, store level index, level hPa)] or [(None, None, None)] for a single-level variable."""
    da, store_levels = fds[var], truth.levels(var)
    if (da.ndim == 6) != (store_levels is not None):
        raise UserError(f"{path}: variable {var} has dims {da.dims}, which do not match the store's "
                        f"{truth.ds[var].dims}")
    if store_levels is None:
        return [(None, None, None)]
    file_levels = np.asarray(fds[da.dims[3]].values, np.float64)
    pairs = []
    for i, lev in enumerate(file_levels):
        match = match_level(store_levels, lev)
        if match is not None:
            pairs.append((i, match, float(lev)))
        elif (var, lev) not in warned:
            warned.add((var, lev))
            log(f"evaluate: {var} at {lev:g} hPa is not in the store: not evaluated")
    return pairs


def _evaluate_cycle(path: Path, truth: Truth, settings: Settings, acc: Accumulator, log, warned: set) -> tuple:
    """Accumulate one forecast file's scores; returns (leads evaluated, leads skipped)."""
    fds = _open_forecast(path, truth)
    try:
        system = ensemble_system(path, fds.attrs)
        members = int(fds.sizes["member"])
        if members < 2 and "one member" not in warned:
            warned.add("one member")
            log(f"evaluate: {path} has 1 member: no fair CRPS, spread, spread/skill or energy score")
        if acc.members.setdefault(system, members) != members:
            raise UserError(f"{path}: {members} members, but earlier {system} forecasts have {acc.members[system]}: "
                            "evaluate ensembles of different sizes separately")
        init = np.datetime64(np.asarray(fds["init_time"].values).ravel()[0], "ns")
        earlier = acc.cycles.setdefault((system, init), path)
        if earlier != path:
            raise UserError(f"{path}: a second {system} forecast from {np.datetime_as_string(init, unit='h')} "
                            f"(also in {earlier}); give each cycle once")
        leads = np.rint(np.asarray(fds["lead_time"].values, np.float64)).astype(int)
        variables = [v for v in truth.state if v in fds.data_vars]
        if not variables:
            raise UserError(f"{path}: none of the store's state variables ({', '.join(truth.state)}) is in the file")
        for v in truth.state:
            if v not in fds.data_vars and ("absent", v) not in warned:
                warned.add(("absent", v))
                log(f"evaluate: {v} is not in {path}: not evaluated")
        init_slot = truth.index.get(init)
        levels = {v: _level_pairs(path, fds, truth, v, log, warned) for v in variables}
        if settings.channels:  # evaluation.channels: the named channels only
            levels = {v: [p for p in pairs if channel_name(v, p[2]) in settings.channels]
                      for v, pairs in levels.items()}
            variables = [v for v in variables if levels[v]]
        persistence: dict[str, np.ndarray] = {}
        init_hours = int((init - np.datetime64(0, "ns")) // np.timedelta64(1, "h"))
        cycle_key = jax.random.fold_in(jax.random.key(0), init_hours)  # rank ties: reproducible per cycle
        done = skipped = 0
        for j, lead in enumerate(leads):
            slot = truth.index.get(init + np.timedelta64(int(lead), "h"))
            if slot is None:
                skipped += 1
                continue
            done += 1
            for var in variables:
                if not levels[var]:
                    continue  # none of the file's levels is in the store (logged once)
                y_all = truth.field(var, slot)  # [(L,) Y, X]
                if init_slot is not None and var not in persistence:
                    persistence[var] = truth.field(var, init_slot)
                # the scored levels of the lead at once: members [M, (L,) Y, X], and the deterministic run
                # [(L,) Y, X] when one of its levels is scored here (L = len(levels[var]), in that order)
                member_block = _lead_block(fds, var, j, levels[var])
                deterministic_block = None
                for k, (fi, si, level) in enumerate(levels[var]):
                    y = y_all if si is None else y_all[si]  # [Y, X]
                    fields = {system: member_block if fi is None else member_block[:, k]}  # [M, Y, X]
                    reference = acc.first_reference((init, var, level, int(lead)))
                    if f"{var}_deterministic" in fds and reference:
                        if deterministic_block is None:
                            deterministic_block = _lead_block(fds, f"{var}_deterministic", j, levels[var])
                        fields["deterministic"] = deterministic_block if fi is None else deterministic_block[k]
                    if var in persistence and reference:
                        persistence_field = persistence[var]
                        fields["persistence"] = persistence_field if si is None else persistence_field[si]
                    clim = truth.climatology(var, si)
                    if clim is not None and reference:
                        fields["climatology"] = np.full(truth.shape, clim, np.float32)
                    key = jax.random.fold_in(cycle_key, (truth.order[var] * 1000 + (si or 0)) * 10000 + j)
                    _accumulate_field(acc, settings, truth, fields, y, var, level, si, int(lead), key, reference,
                                      init)
        return done, skipped
    finally:
        fds.close()


def _lead_block(fds: xr.Dataset, name: str, lead_index: int, pairs: list) -> np.ndarray:
    """Variable ``name`` of a forecast file at one lead, every member, on the file levels of ``pairs``
    (:func:`_level_pairs`, in their order), in one read: [M, (L,) Y, X] for a member variable, [(L,) Y, X] for a
    deterministic one (the file's dimension order without ``init_time`` and ``lead_time``); float32."""
    da = fds[name]
    sel = {"init_time": 0, "lead_time": lead_index}
    if pairs[0][0] is not None:
        sel[da.dims[-3]] = [fi for fi, _, _ in pairs]  # the level dimension, before (y, x)
    return np.asarray(da.isel(sel).values, np.float32)


def _accumulate_field(acc: Accumulator, settings: Settings, truth: Truth, fields: dict, y: np.ndarray, var: str,
                      level: Optional[float], level_index: Optional[int], lead: int, key, reference: bool,
                      cycle: np.datetime64) -> None:
    """All scores of one field (variable, level, lead) of one cycle (``reference``: also the truth's spectrum and
    the climatological Brier score, which count once per field); ``cycle`` is its init time."""
    w = truth.weights
    add = functools.partial(acc.add, cycle=cycle)
    edges = truth.spread_edges(var, level_index)
    if edges is not None:
        acc.spread_edges.setdefault((var, level), edges)
    bins = np.float32(SPREAD_ERROR_EDGES if edges is None else edges)  # [E]; unused without statistics
    for system, f in fields.items():
        base = (system, var, level, lead)
        ensemble = system in ENSEMBLES
        members = f if f.ndim == 3 else f[None]  # [M, Y, X]
        names = statistics_for(False, ensemble, members.shape[0], edges is not None)
        s = jax.device_get(_field_statistics(members, y, w, bins, key, names=names, tables=ensemble))
        for name in names:
            add(base + (name, None, None), s[name])
        if ensemble:
            add(base + ("ranks", None, None), s["ranks"])
            add(base + ("power", None, None), s["power"])
            add((f"{system}_mean", var, level, lead, "power", None, None), s["power_mean"])
            if reference:
                add(("truth", var, level, lead, "power", None, None), s["power_truth"])
        elif system == "deterministic":
            add(base + ("power", None, None), jax.device_get(_power(f)))
    if level is not None:
        return
    for thr in settings.thresholds.get(var, ()):
        base_rate = truth.base_rates.get((var, thr), np.nan)
        for system, f in fields.items():
            if system == "climatology":
                continue
            members = f if f.ndim == 3 else f[None]  # [M, Y, X]
            names = statistics_for(True, system in ENSEMBLES, members.shape[0], edges is not None)
            e = jax.device_get(_event_statistics(members, y, w, np.float32(thr), np.float32(base_rate), names=names,
                                                 windows=settings.fss_windows, bins=RELIABILITY_BINS))
            base = (system, var, level, lead)
            for name in names:
                if STATISTICS[name].per_window:
                    for window, comp in zip(settings.fss_windows, e[name]):
                        add(base + (name, thr, window), comp)
                else:
                    add(base + (name, thr, None), e[name])
            if system in ENSEMBLES and reference and np.isfinite(base_rate):
                # the climatological forecast of the field: Brier only
                ref, den, observed = (float(x) for x in e["brier"][[2, 1, 3]])
                add(("climatology", var, level, lead, "brier", thr, None), [ref, den, ref, observed])


# --- entry point ------------------------------------------------------------------------------------------------


def evaluate(forecast_paths: list[Path], store: Path, out_dir: Path, *, config, log: Callable[[str], None] = print
             ) -> dict:
    """Score forecast files against the store and write ``scores.csv``, ``skill.csv``, ``rank_histogram.csv``,
    ``reliability.csv``, ``spread_error.csv``, ``spectra.csv`` and ``scores_by_cycle.csv`` into ``out_dir`` (layouts in
    docs/FORECASTS.md).

    Returns a summary: ``cycles``, ``leads_evaluated``, ``leads_skipped`` (valid time not written in the store),
    ``systems`` and ``tables`` (name → path).
    """
    paths = [Path(p) for p in forecast_paths]
    if not paths:
        raise UserError("evaluate: no forecast files given")
    settings = Settings.from_config(config)
    truth = Truth(Path(store), settings.weighting, settings.thresholds, log)
    if settings.channels:
        known = {c for v in truth.reader.catalogue.by_role("state") if v.name in truth.ds for c in v.channels}
        unknown = [c for c in settings.channels if c not in known]
        if unknown:
            raise UserError(f"evaluation.channels: {', '.join(unknown)} not among the store's state channels "
                            f"({', '.join(sorted(known))})")
    for path in paths:  # check every file before the long pass
        _open_forecast(path, truth).close()
    acc = Accumulator()
    warned: set = set()
    done = skipped = 0
    with progress(len(paths), "evaluate", "cycle") as bar:
        for path in paths:
            d, s = _evaluate_cycle(path, truth, settings, acc, log, warned)
            done, skipped = done + d, skipped + s
            bar.update(1)
    if skipped:
        log(f"evaluate: skipped {skipped} of {done + skipped} leads whose valid time is not written in the store")
    if not done:
        raise UserError(f"evaluate: no lead of the {len(paths)} forecast files has its valid time written in "
                        f"{truth.path}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    intervals = reliability_bounds = spread_bounds = None
    if settings.bootstrap_samples > 0:
        started = time.perf_counter()
        stats = acc.cycle_statistics()
        counts = bootstrap.resample_counts(len(stats.inits), settings.bootstrap_samples, settings.bootstrap_seed)
        intervals = bootstrap.score_intervals(stats, counts, settings.confidence, fair_crps=settings.fair_crps)
        reliability_bounds = bootstrap.bin_intervals(stats, counts, "reliability", settings.confidence)
        spread_bounds = bootstrap.bin_intervals(stats, counts, "spread_error", settings.confidence)
        log(f"evaluate: {settings.confidence:.0%} bootstrap intervals from {settings.bootstrap_samples} resamples of "
            f"the {len(stats.inits)} cycles in {time.perf_counter() - started:.1f} s")
    with jax.enable_x64(True):  # ratios of the float64 sums in float64
        scores = point_scores(acc, settings, truth.order)
        spread_error = spread_error_rows(acc, settings, truth.order, spread_bounds)
    ranks, reliability, spectra = other_rows(acc, truth.order, truth.dx_km, truth.shape, reliability_bounds)
    tables = {
        "scores": write_csv(out_dir / "scores.csv", SCORES_COLUMNS, score_rows(acc, settings, truth.order, intervals,
                                                                               scores)),
        "skill": write_csv(out_dir / "skill.csv", SKILL_COLUMNS, skill_rows(acc, scores, settings, intervals)),
        "rank_histogram": write_csv(out_dir / "rank_histogram.csv", RANK_COLUMNS, ranks),
        "reliability": write_csv(out_dir / "reliability.csv", RELIABILITY_COLUMNS, reliability),
        "spread_error": write_csv(out_dir / "spread_error.csv", SPREAD_ERROR_COLUMNS, spread_error),
        "spectra": write_csv(out_dir / "spectra.csv", SPECTRA_COLUMNS, spectra),
        "scores_by_cycle": write_csv(out_dir / "scores_by_cycle.csv", SCORES_BY_CYCLE_COLUMNS,
                                     cycle_rows(acc, truth.order)),
    }
    systems = sorted({k[0] for k in acc.sums if k[0] in SYSTEMS}, key=SYSTEMS.index)
    log(f"evaluate: {len(paths)} cycles, {done} leads, systems {', '.join(systems)}; tables in {out_dir}")
    return {"cycles": len(paths), "leads_evaluated": done, "leads_skipped": skipped, "systems": systems,
            "tables": tables}
