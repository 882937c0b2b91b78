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
and denominators and rank counts are summed. The metric math is :mod:`def_jax.evaluation.metrics`.

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

from def_jax.data.schema import open_store, parse_period, store_catalogue, written_mask
from def_jax.errors import UserError
from def_jax.evaluation import bootstrap, metrics
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
from def_jax.forecast.files import FORMAT_VERSION, open_forecast
from def_jax.geo import LambertConformal
from def_jax.progress import progress

WEIGHTINGS = ("uniform", "map_factor", "coslat")
EVENT_PROBABILITY = 0.5  # an ensemble forecasts "yes" (CSI, POD, FAR) where at least half of its members exceed


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
        thresholds = {name: tuple(float(t) for t in getattr(ev, f"{name}_thresholds", ()) or ())
                      for name in ("refc", "cape")}
        samples, confidence = int(ev.get("bootstrap_samples", 1000)), float(ev.get("confidence", 0.9))
        if samples < 0:
            raise UserError(f"evaluation.bootstrap_samples: must be >= 0 (0 = no intervals); got {samples}")
        if not 0.0 < confidence < 1.0:
            raise UserError(f"evaluation.confidence: must be in (0, 1), e.g. 0.9; got {confidence}")
        return cls(bool(ev.fair_crps), {k: v for k, v in thresholds.items() if v}, windows, weighting, samples,
                   confidence, int(ev.get("bootstrap_seed", 0)))


# --- the truth: the store ---------------------------------------------------------------------------------------


class Truth:
    """The store as truth: fields by valid time, area weights, climatology, event base rates."""

    def __init__(self, path: Path, settings: Settings, log: Callable[[str], None]):
        self.path = Path(path)
        self.ds = ds = open_store(self.path)
        catalogue = store_catalogue(ds)
        self.state = [v.name for v in catalogue.by_role("state") if v.name in ds]
        self.order = {name: i for i, name in enumerate(self.state)}
        written = written_mask(ds)
        times = ds["time"].values.astype("datetime64[ns]")
        self.index = {t: i for i, t in enumerate(times) if written[i]}
        self.shape = (ds.sizes["y"], ds.sizes["x"])
        self.y, self.x = np.asarray(ds["y"].values), np.asarray(ds["x"].values)
        self.weights = self._weights(settings.weighting)  # [Y, X] mean 1
        self.dx_km = self._dx_km()
        self._clim: dict[str, Optional[np.ndarray]] = {}
        self._std: dict[str, Optional[np.ndarray]] = {}
        missing_stats = [v for v in self.state if f"{v}_mean" not in ds]
        if missing_stats:
            log(f"evaluate: the store has no statistics for {', '.join(missing_stats)} (run def-jax stats): "
                "no climatology for them")
        self.base_rates = self._base_rates(settings.thresholds, times, written, log)

    def _crs(self) -> dict:
        return dict(self.ds["crs"].attrs) if "crs" in self.ds else {}

    def _weights(self, weighting: str) -> np.ndarray:
        lat = np.asarray(self.ds["latitude"].values, np.float64)
        if weighting == "uniform":
            return np.ones(self.shape, np.float32)
        if weighting == "coslat":
            return metrics.coslat_weights(lat).astype(np.float32)
        crs = self._crs()
        if crs.get("grid_mapping_name") != "lambert_conformal_conic":
            raise UserError(f"store {self.path}: evaluation.area_weighting=map_factor needs a Lambert conformal grid; "
                            f"crs grid_mapping_name is {crs.get('grid_mapping_name')!r} (use coslat or uniform)")
        parallels = np.atleast_1d(np.asarray(crs["standard_parallel"], np.float64))
        projection = LambertConformal(lat_1=float(parallels[0]), lat_2=float(parallels[-1]),
                                      lat_0=float(crs["latitude_of_projection_origin"]),
                                      lon_0=float(crs["longitude_of_central_meridian"]),
                                      radius=float(crs.get("earth_radius", 6_371_229.0)))
        return metrics.lambert_cell_area_weights(lat, projection).astype(np.float32)

    def _dx_km(self) -> float:
        """Grid spacing for spectra: from the projection coordinates (m), else nominal from the latitude spacing."""
        if self._crs().get("grid_mapping_name") == "lambert_conformal_conic" and len(self.x) > 1:
            return float(abs(self.x[1] - self.x[0])) / 1000.0
        lat = np.asarray(self.ds["latitude"].values, np.float64)
        dlat = abs(lat[1, 0] - lat[0, 0]) if lat.ndim == 2 and lat.shape[0] > 1 else 1.0
        return float(np.radians(dlat) * 6371.229)

    def _base_rates(self, thresholds: dict, times: np.ndarray, written: np.ndarray, log) -> dict:
        """Area-weighted frequency of var ≥ threshold over the written slots of ``stats_train_period``."""
        wanted = [v for v in thresholds if v in self.order and self.ds[v].ndim == 3]
        period = self.ds.attrs.get("stats_train_period")
        if not wanted:
            return {}
        if not period:
            log(f"evaluate: store {self.path} has no stats_train_period (run def-jax stats): no climatological "
                "event probabilities, no Brier skill score")
            return {}
        start, end = parse_period(period, "stats_train_period")
        slots = np.nonzero(written & (times >= start) & (times <= end))[0]
        if len(slots) == 0:
            log(f"evaluate: no written slot in stats_train_period {period}: no climatological event probabilities")
            return {}
        w = self.weights.astype(np.float64)
        rates = {}
        for var in wanted:
            thr = np.asarray(thresholds[var])[:, None, None, None]  # [T, 1, 1, 1]
            hits = np.zeros(len(thresholds[var]))
            for i in range(0, len(slots), 24):  # a day of slots at a time
                x = np.asarray(self.ds[var].isel(time=slots[i:i + 24]).values, np.float64)  # [b, Y, X]
                hits += np.sum((x[None] >= thr) * w, axis=(1, 2, 3))
            for t, h in zip(thresholds[var], hits):
                rates[(var, t)] = float(h / (len(slots) * w.sum()))
        log(f"evaluate: climatological base rates from {len(slots)} slots of {period}")
        return rates

    def levels(self, var: str) -> Optional[np.ndarray]:
        da = self.ds[var]
        return np.asarray(self.ds[da.dims[1]].values, np.float64) if da.ndim == 4 else None

    def field(self, var: str, slot: int) -> np.ndarray:
        """[(L,) Y, X] float32 at store index ``slot``."""
        return np.asarray(self.ds[var].isel(time=slot).values, np.float32)

    def climatology(self, var: str, level_index: Optional[int]) -> Optional[float]:
        """The training-period mean ``<var>_mean`` (of one level), None without statistics."""
        if var not in self._clim:
            name = f"{var}_mean"
            self._clim[var] = np.asarray(self.ds[name].values, np.float64) if name in self.ds else None
        values = self._clim[var]
        return None if values is None else float(values if level_index is None else values[level_index])

    def spread_edges(self, var: str, level_index: Optional[int]) -> Optional[np.ndarray]:
        """Spread–error bin edges [E] of a channel: tables.SPREAD_ERROR_EDGES × its training-period ``<var>_std``
        (None without statistics, or a zero std)."""
        if var not in self._std:
            name = f"{var}_std"
            self._std[var] = np.asarray(self.ds[name].values, np.float64) if name in self.ds else None
        values = self._std[var]
        if values is None:
            return None
        std = float(values if level_index is None else values[level_index])
        return SPREAD_ERROR_EDGES * std if np.isfinite(std) and std > 0 else None


# --- jitted per-field computations ------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("fair",))
def _ensemble_scores(members, truth, weights, key, edges, fair: bool) -> dict:
    """members [M, Y, X], truth [Y, X], weights [Y, X], spread–error edges [E] → per-field means, rank counts,
    spectra and spread–error sums."""
    mean = jnp.mean(members, axis=0)  # [Y, X]
    err = mean - truth
    wm = functools.partial(metrics.weighted_mean, weights=weights)
    out = {
        "mse": wm(jnp.square(err)), "mae": wm(jnp.abs(err)), "bias": wm(err),
        "crps_standard": wm(metrics.crps_ensemble(members, truth, fair=False)),
        "ranks": metrics.rank_histogram(members, truth, key=key),
        "power": jnp.mean(metrics.radial_power_spectrum(members, 1.0)[2], axis=0),
        "power_mean": metrics.radial_power_spectrum(mean, 1.0)[2],
        "power_truth": metrics.radial_power_spectrum(truth, 1.0)[2],
    }
    if fair:
        sw = jnp.sqrt(weights)  # ‖v‖_w = sqrt(Σ w v²): the Euclidean norm of √w·v
        out["crps_fair"] = wm(metrics.crps_ensemble(members, truth, fair=True))
        out["var"] = wm(metrics.ensemble_variance(members))
        out["energy"] = metrics.energy_score(members * sw, truth * sw, event_axes=(-2, -1), fair=True)
        out["spread_error"] = jnp.stack(metrics.spread_error_counts(members, truth, edges, weights=weights))  # [4, K]
    return out


@jax.jit
def _single_scores(forecast, truth, weights) -> dict:
    """forecast, truth, weights [Y, X] → MSE, MAE, bias (the CRPS of a single forecast is its MAE)."""
    err = forecast - truth
    wm = functools.partial(metrics.weighted_mean, weights=weights)
    return {"mse": wm(jnp.square(err)), "mae": wm(jnp.abs(err)), "bias": wm(err)}


@jax.jit
def _power(field):
    return metrics.radial_power_spectrum(field, 1.0)[2]


@functools.partial(jax.jit, static_argnames=("windows", "bins"))
def _event_scores(members, truth, weights, threshold, base_rate, windows: tuple, bins: int) -> dict:
    """Event ≥ threshold: members [M, Y, X] (M = 1: a single forecast), truth, weights [Y, X]."""
    obs = (truth >= threshold).astype(jnp.float32)  # [Y, X]
    prob = jnp.mean((members >= threshold).astype(jnp.float32), axis=0)  # [Y, X]
    return {
        # Σ w (p − o)², Σ w, Σ w (p_clim − o)², Σ w o
        "brier": jnp.stack([jnp.sum(weights * jnp.square(prob - obs)), jnp.sum(weights),
                            jnp.sum(weights * jnp.square(base_rate - obs)), jnp.sum(weights * obs)]),
        "contingency": jnp.stack(metrics.contingency(prob >= EVENT_PROBABILITY, obs > 0.5)),
        "fss": jnp.stack([jnp.stack(metrics.fss_components(prob, obs, w)) for w in windows]),  # [W, 2]
        "reliability": jnp.stack([c.astype(jnp.float32) for c in metrics.reliability_counts(prob, obs, bins)]),
    }


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
        match = np.nonzero(np.isclose(store_levels, lev))[0]
        if len(match):
            pairs.append((i, int(match[0]), float(lev)))
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
                y_all = truth.field(var, slot)  # [(L,) Y, X]
                if init_slot is not None and var not in persistence:
                    persistence[var] = truth.field(var, init_slot)
                for fi, si, level in levels[var]:
                    sel = {"init_time": 0, "lead_time": j}
                    if fi is not None:
                        sel[fds[var].dims[3]] = fi
                    y = y_all if si is None else y_all[si]  # [Y, X]
                    fields = {system: np.asarray(fds[var].isel(sel).values, np.float32)}  # [M, Y, X]
                    reference = acc.first_reference((init, var, level, int(lead)))
                    if f"{var}_deterministic" in fds and reference:
                        fields["deterministic"] = np.asarray(fds[f"{var}_deterministic"].isel(sel).values, np.float32)
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
    for system, f in fields.items():
        base = (system, var, level, lead)
        if system in ENSEMBLES:
            bins = np.float32(SPREAD_ERROR_EDGES if edges is None else edges)  # [E]; unused without statistics
            s = jax.device_get(_ensemble_scores(f, y, w, key, bins, fair=f.shape[0] >= 2))
            for qty in ("mse", "mae", "bias", "crps_standard", "crps_fair", "var", "energy"):
                if qty in s:
                    add(base + (qty, None, None), s[qty])
            if "spread_error" in s and edges is not None:
                add(base + ("spread_error", None, None), s["spread_error"])
            add(base + ("ranks", None, None), s["ranks"])
            add(base + ("power", None, None), s["power"])
            add((f"{system}_mean", var, level, lead, "power", None, None), s["power_mean"])
            if reference:
                add(("truth", var, level, lead, "power", None, None), s["power_truth"])
        else:
            s = jax.device_get(_single_scores(f, y, w))
            for qty in ("mse", "mae", "bias"):
                add(base + (qty, None, None), s[qty])
            if system == "deterministic":
                add(base + ("power", None, None), jax.device_get(_power(f)))
    if level is not None:
        return
    for thr in settings.thresholds.get(var, ()):
        base_rate = truth.base_rates.get((var, thr), np.nan)
        for system, f in fields.items():
            if system == "climatology":
                continue
            e = jax.device_get(_event_scores(f if f.ndim == 3 else f[None], y, w, np.float32(thr),
                                             np.float32(base_rate), settings.fss_windows, RELIABILITY_BINS))
            base = (system, var, level, lead)
            add(base + ("brier", thr, None), e["brier"])
            add(base + ("contingency", thr, None), e["contingency"])
            for window, comp in zip(settings.fss_windows, e["fss"]):
                add(base + ("fss", thr, window), comp)
            if system in ENSEMBLES:
                add(base + ("reliability", thr, None), e["reliability"])
                if reference and np.isfinite(base_rate):  # the climatological forecast of the field: Brier only
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
    truth = Truth(Path(store), settings, log)
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
