"""The tables of ``def-jax evaluate``: sums accumulated over cycles and their rows in scores.csv, skill.csv,
rank_histogram.csv, reliability.csv, spread_error.csv, spectra.csv and scores_by_cycle.csv (column contracts in
docs/FORECASTS.md), written atomically; and the reader of scores_by_cycle.csv for studies that combine evaluations.

Pooling over cycles (see :mod:`def_jax.evaluation.evaluate`): means of per-cycle means, RMSE = sqrt(mean MSE), spread =
sqrt(mean variance), SSR from the pooled spread and RMSE; event counts and sums are added (each score's formula is
its registration in :mod:`def_jax.evaluation.scores`). The Accumulator also keeps
each cycle's statistics, from which :mod:`def_jax.evaluation.bootstrap` resamples the cycles for the intervals.
"""

from __future__ import annotations

import csv
import functools
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from def_jax.errors import UserError
from def_jax.evaluation import bootstrap, metrics
from def_jax.evaluation.scores import (  # noqa: F401  (the registry's names, part of this module's API)
    COUNT_SCORES,
    RELIABILITY_BINS,
    SCORE_NAMES,
    SCORES,
    SPREAD_ERROR_BINS,
    SPREAD_ERROR_EDGES,
    STATISTICS,
)

SCORES_COLUMNS = ("system", "variable", "level", "lead_hours", "score", "threshold", "window", "value", "count",
                  "weighting", "value_low", "value_high")
SKILL_COLUMNS = ("system", "variable", "level", "lead_hours", "score", "value", "value_low", "value_high", "count",
                 "weighting")
RANK_COLUMNS = ("system", "variable", "level", "lead_hours", "rank", "count")
RELIABILITY_COLUMNS = ("system", "variable", "threshold", "lead_hours", "bin_lower", "bin_upper",
                       "forecast_probability", "observed_frequency", "count", "observed_frequency_low",
                       "observed_frequency_high")
SPREAD_ERROR_COLUMNS = ("system", "variable", "level", "lead_hours", "bin", "bin_lower", "bin_upper", "mean_spread",
                        "rmse", "rmse_low", "rmse_high", "count", "weighting")
SPECTRA_COLUMNS = ("system", "variable", "level", "lead_hours", "wavenumber", "wavelength_km", "power")
SCORES_BY_CYCLE_COLUMNS = ("system", "variable", "level", "lead_hours", "init_time", "statistic", "threshold",
                           "window", "bin", "value", "members")
# Ensemble systems: the DEF perturbation walks and the baselines named by a forecast file's `perturbation` attribute,
# and the direct generative mode. The one list of systems: plots, tuning and the study take it from here.
PERTURBATIONS = ("def", "gaussian", "correlated", "bred", "lagged")
ENSEMBLES = ("def", "direct") + PERTURBATIONS[1:]
SYSTEMS = ENSEMBLES + ("deterministic", "persistence", "climatology")
SKILL_SCORES = bootstrap.SKILL_SCORES
# The per-cycle statistics of scores_by_cycle.csv (the registry's, scores.STATISTICS): quantity → component names.
CYCLE_STATISTICS = {s.name: s.components for s in STATISTICS.values()}
BINNED = {s.name: s.bins for s in STATISTICS.values() if s.bins}  # components × bins


# --- accumulation over cycles -----------------------------------------------------------------------------------


class Accumulator:
    """Sums over cycles: key (system, variable, level, lead, quantity, threshold, window) → (sum, cycles); and, for the
    quantities of :data:`CYCLE_STATISTICS`, each cycle's own value (key → {init time: value})."""

    def __init__(self):
        self.sums: dict = {}
        self.counts: dict = defaultdict(int)
        self.by_cycle: dict = {}
        self.members: dict[str, int] = {}
        self.cycles: dict[tuple, Path] = {}  # (system, init) -> file
        self.references: set = set()  # (init, variable, level, lead) whose reference scores are in
        self.spread_edges: dict = {}  # (variable, level) -> spread–error bin edges [E] (variable units)

    def first_reference(self, field: tuple) -> bool:
        """True the first time a field is seen: the single forecasts (deterministic, persistence, climatology) and the
        truth's spectrum count once per field even when both a DEF and a direct forecast cover it."""
        new = field not in self.references
        self.references.add(field)
        return new

    def add(self, key: tuple, value, cycle=None) -> None:
        """Add one cycle's value; with ``cycle`` (its init time) it is also kept as that cycle's statistic."""
        value = np.asarray(value, np.float64)
        self.sums[key] = self.sums[key] + value if key in self.sums else value.copy()
        self.counts[key] += 1
        if cycle is not None and key[4] in CYCLE_STATISTICS:
            per = self.by_cycle.setdefault(key, {})
            per[cycle] = per[cycle] + value if cycle in per else value.copy()

    def cycle_statistics(self) -> bootstrap.CycleStatistics:
        """The per-cycle statistics, for :mod:`def_jax.evaluation.bootstrap`."""
        return bootstrap.CycleStatistics.from_cycles(self.by_cycle, self.members)

    def get(self, key: tuple):
        return (self.sums[key], self.counts[key]) if key in self.sums else (None, 0)


def level_str(level: Optional[float]) -> str:
    return "" if level is None else f"{level:g}"


def value_text(x) -> str:
    return f"{float(x):.9g}"  # float32 results exactly; float64 aggregates to 1e-9


def sort_key(system: str, var_order: dict, var: str, level, lead: int) -> tuple:
    return (SYSTEMS.index(system) if system in SYSTEMS else len(SYSTEMS), system, var_order.get(var, 1 << 20), var,
            -1.0 if level is None else level, lead)


def _pooled(acc: Accumulator, key: tuple) -> tuple[Optional[np.ndarray], int]:
    """A statistic pooled over the cycles (mean or sum, scores.STATISTICS) as [1, *components, 1] (one field, one
    "resample"), and its cycles; (None, 0) where it was not accumulated."""
    total, n = acc.get(key)
    if total is None:
        return None, 0
    value = float(total) / n if STATISTICS[key[4]].pooling == "mean" else total
    return np.asarray(value, np.float64)[None, ..., None], n


def point_scores(acc: Accumulator, settings: Any, var_order: dict) -> dict[tuple, list[tuple]]:
    """The pooled scores: (system, variable, level, lead) → [(score, threshold, window, value, cycles)], in the row
    order of scores.csv; each score of the registry (scores.SCORES) from its pooled statistics."""
    quantities = defaultdict(list)  # (system, variable, level, lead) -> [(quantity, threshold, window)]
    for key in acc.sums:
        quantities[key[:4]].append(key[4:])
    scores = {}
    for base in sorted(quantities, key=lambda b: sort_key(b[0], var_order, *b[1:])):
        system = base[0]
        members = np.array([[acc.members.get(system, np.nan)]], np.float64)  # [1, 1]
        out: list[tuple] = []  # (score, threshold, window, value, count)
        for score in SCORES:
            if not score.applies(system, system in acc.members, settings.fair_crps):
                continue
            for _, thr, window in (q for q in quantities[base] if q[0] == score.statistics[0]):
                pooled = [_pooled(acc, base + (name, thr, window)) for name in score.statistics]
                if any(p is None for p, _ in pooled):
                    continue
                values = [p for p, _ in pooled]
                if score.written_if is not None and not score.written_if(*values).item():
                    continue
                out.append((score.name, thr, window, score.compute(members, *values).item(), pooled[0][1]))
        out.sort(key=lambda r: (SCORE_NAMES.index(r[0]), -1.0 if r[1] is None else r[1], r[2] or 0))
        scores[base] = out
    return scores


def _interval_text(intervals: Optional[dict], key: tuple) -> tuple[str, str]:
    """(value_low, value_high) of a score key: empty without intervals, else the bootstrap interval's bounds."""
    if intervals is None:
        return "", ""
    low, high = intervals.get(key, (np.nan, np.nan))
    return value_text(low), value_text(high)


def score_rows(acc: Accumulator, settings: Any, var_order: dict, intervals: Optional[dict] = None,
               scores: Optional[dict] = None) -> list[tuple]:
    """The rows of scores.csv from the accumulated sums; ``intervals`` (score key → (low, high), from
    :func:`bootstrap.score_intervals`) fills value_low and value_high (None: left empty)."""
    rows = []
    scores = point_scores(acc, settings, var_order) if scores is None else scores
    for (system, var, level, lead), out in scores.items():
        for score, thr, window, value, n in out:
            weighting = "uniform" if score in COUNT_SCORES else settings.weighting  # counts over grid points
            rows.append((system, var, level_str(level), lead, score, level_str(thr),
                         "" if window is None else window, value_text(value), n, weighting)
                        + _interval_text(intervals, (system, var, level, lead, score, thr, window)))
    return rows


def skill_rows(acc: Accumulator, scores: dict, settings: Any, intervals: Optional[dict] = None) -> list[tuple]:
    """The rows of skill.csv from :func:`point_scores`: each ensemble system's CRPS / deterministic MAE and
    ensemble-mean RMSE / deterministic RMSE at the same variable, level and lead, where the two were scored in the
    same cycles (``count``: those cycles)."""
    cycles = lambda field: frozenset(acc.by_cycle.get(field + ("mae", None, None), {}))  # noqa: E731
    values = {base + (score,): (value, n) for base, out in scores.items()
              for score, thr, window, value, n in out if thr is None and window is None}
    rows = []
    for (system, var, level, lead), out in scores.items():
        if system not in ENSEMBLES:
            continue
        for name, (score, ref) in zip(SKILL_SCORES, (("crps", "mae"), ("rmse", "rmse"))):
            num, n = values.get((system, var, level, lead, score), (None, 0))
            den, _ = values.get(("deterministic", var, level, lead, ref), (None, 0))
            paired = cycles((system, var, level, lead)) == cycles(("deterministic", var, level, lead))
            if num is None or den is None or not paired:
                continue
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.float64(num) / np.float64(den)
            rows.append((system, var, level_str(level), lead, name, value_text(ratio))
                        + _interval_text(intervals, (system, var, level, lead, name, None, None))
                        + (n, settings.weighting))
    return rows


def other_rows(acc: Accumulator, var_order: dict, dx_km: float, grid_shape: tuple,
               reliability_intervals: Optional[dict] = None) -> tuple[list, list, list]:
    """The rows of rank_histogram.csv, reliability.csv and spectra.csv; ``reliability_intervals`` (key → (low [bins],
    high [bins]) of the observed frequency, :func:`bootstrap.bin_intervals`) fills the interval columns."""
    ranks, reliability, spectra = [], [], []
    edges = np.arange(RELIABILITY_BINS + 1) / RELIABILITY_BINS
    n = max(grid_shape)
    for key in sorted(acc.sums, key=lambda k: sort_key(k[0], var_order, *k[1:4]) + (k[4], k[5] or 0.0)):
        system, var, level, lead, qty, thr, _ = key
        total, cycles = acc.get(key)
        if qty == "ranks":
            ranks += [(system, var, level_str(level), lead, r, int(round(c))) for r, c in enumerate(total)]
        elif qty == "reliability":
            count, sum_p, sum_o = total
            bounds = None if reliability_intervals is None else reliability_intervals.get(key[:4] + key[5:])
            for b in range(RELIABILITY_BINS):
                p, o = (sum_p[b] / count[b], sum_o[b] / count[b]) if count[b] > 0 else (np.nan, np.nan)
                interval = ("", "") if reliability_intervals is None else (
                    (value_text(bounds[0][b]), value_text(bounds[1][b])) if bounds is not None else ("nan", "nan"))
                reliability.append((system, var, level_str(thr), lead, value_text(edges[b]), value_text(edges[b + 1]),
                                    value_text(p), value_text(o), int(round(count[b]))) + interval)
        elif qty == "power":
            for k, p in enumerate(total / cycles, start=1):
                spectra.append((system, var, level_str(level), lead, k, value_text(n * dx_km / k), value_text(p)))
    return ranks, reliability, spectra


def spread_error_rows(acc: Accumulator, settings: Any, var_order: dict, intervals: Optional[dict] = None) -> list:
    """The rows of spread_error.csv (non-empty bins only): per bin of predicted spread, sqrt((M+1)/M · mean s²) and the
    ensemble-mean RMSE (:func:`metrics.spread_error_curve`), ``intervals`` from :func:`bootstrap.bin_intervals`."""
    keys = sorted((k for k in acc.sums if k[4] == "spread_error"), key=lambda k: sort_key(k[0], var_order, *k[1:4]))
    if not keys:
        return []
    totals = np.stack([acc.sums[k] for k in keys])  # [K, 4, bins]
    members = np.array([[acc.members[k[0]]] for k in keys], np.float64)  # [K, 1]
    spread, rmse = (np.asarray(a, np.float64) for a in metrics.spread_error_curve(
        metrics.SpreadErrorCounts(*np.moveaxis(totals, 1, 0)), members))  # [K, bins] each, in one call
    rows = []
    for i, key in enumerate(keys):
        system, var, level, lead = key[:4]
        edges = np.concatenate([[0.0], acc.spread_edges[(var, level)], [np.inf]])
        bounds = None if intervals is None else intervals.get(key[:4] + key[5:])
        for b in np.nonzero(totals[i, 0] > 0)[0]:
            interval = ("", "") if intervals is None else (
                (value_text(bounds[0][b]), value_text(bounds[1][b])) if bounds is not None else ("nan", "nan"))
            rows.append((system, var, level_str(level), lead, int(b), value_text(edges[b]), value_text(edges[b + 1]),
                         value_text(spread[i, b]), value_text(rmse[i, b])) + interval
                        + (int(round(totals[i, 0, b])), settings.weighting))
    return rows


def _time_text(t) -> str:
    return np.datetime_as_string(np.datetime64(t, "s"), unit="h")


def cycle_rows(acc: Accumulator, var_order: dict) -> list[tuple]:
    """The rows of scores_by_cycle.csv: every component of every per-cycle statistic (empty spread–error bins left
    out), one row per (system, variable, level, lead, init time, statistic, threshold, window, bin); values written
    to the last bit (repr: the shortest text that reads back as the same float64, so that pooling them is exact)."""
    rows: list = []
    quantities = list(CYCLE_STATISTICS)
    init_text: dict = {}

    def order(k: tuple) -> tuple:
        return sort_key(k[0], var_order, *k[1:4]) + (quantities.index(k[4]), k[5] or 0.0, k[6] or 0)

    for key in sorted(acc.by_cycle, key=order):
        system, var, level, lead, qty, thr, window = key
        names = CYCLE_STATISTICS[qty]
        members = acc.members.get(system, "")
        head = (system, var, level_str(level), lead)
        tail = (level_str(thr), "" if window is None else window)
        for init in sorted(acc.by_cycle[key]):
            text = init_text.get(init) or init_text.setdefault(init, _time_text(init))
            value = np.asarray(acc.by_cycle[key][init]).reshape(len(names), -1)  # [components, bins or 1]
            if qty not in BINNED:
                rows.extend(head + (text, name) + tail + ("", repr(v), members)
                            for name, v in zip(names, value[:, 0].tolist()))
                continue
            bins = np.nonzero(value[0] != 0)[0] if qty == "spread_error" else range(value.shape[1])
            for name, per_bin in zip(names, value.tolist()):
                rows.extend(head + (text, name) + tail + (int(b), repr(per_bin[b]), members) for b in bins)
    return rows


_STATISTIC = {name: (qty, i) for qty, names in CYCLE_STATISTICS.items() for i, name in enumerate(names)}


def _read_cycle_table(path: Path):
    import pandas as pd

    if not path.is_file():
        raise UserError(f"{path}: not found (evaluate writes it; tables from before it cannot be resampled)")
    try:
        df = pd.read_csv(path, dtype={"system": str, "variable": str, "statistic": str, "init_time": str})
    except Exception as err:
        raise UserError(f"{path}: cannot be read as CSV: {str(err).splitlines()[0]}") from None
    missing = [c for c in SCORES_BY_CYCLE_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")
    for col in ("level", "lead_hours", "threshold", "window", "bin", "value", "members"):
        try:
            df[col] = pd.to_numeric(df[col]).astype(np.float64)
        except (ValueError, TypeError):
            raise UserError(f"{path}: column {col!r} has non-numeric entries") from None
    unknown = sorted(set(df["statistic"]) - set(_STATISTIC))
    if unknown:
        raise UserError(f"{path}: unknown statistic {unknown[0]!r} (expected one of {', '.join(_STATISTIC)})")
    try:
        inits = df["init_time"].to_numpy().astype("datetime64[s]")
    except ValueError:
        raise UserError(f"{path}: init_time has entries that are not times (YYYY-MM-DDTHH)") from None
    return df, inits


def read_scores_by_cycle(directories: Sequence[Path]) -> list[bootstrap.CycleStatistics]:
    """The per-cycle statistics of one or several evaluation folders (``scores_by_cycle.csv``), restricted to the
    initial times that every folder has, in the same order: ready for :func:`bootstrap.pool` and
    :func:`bootstrap.score_intervals` (several folders, e.g. training seeds: each score is averaged over the folders
    inside each resample of the shared cycles)."""
    out = []
    for directory in directories:
        path = Path(directory) / "scores_by_cycle.csv"
        df, inits = _read_cycle_table(path)
        qty_comp = [_STATISTIC[name] for name in df["statistic"]]
        df["quantity"] = [q for q, _ in qty_comp]
        df["component"] = np.array([c for _, c in qty_comp], int)
        members = {str(s): int(m) for s, m in df.dropna(subset=["members"]).groupby("system")["members"].first()
                   .items()}
        cycles, row = np.unique(inits, return_inverse=True)
        quantities = {}
        for qty, sub in df.groupby("quantity", sort=False):
            idx = sub.index.to_numpy()
            column, uniques = _factorize(sub)
            shape = (len(CYCLE_STATISTICS[qty]),) + ((BINNED[qty],) if qty in BINNED else ())
            values = np.zeros((len(cycles), len(uniques)) + shape)
            present = np.zeros((len(cycles), len(uniques)), bool)
            comp = sub["component"].to_numpy()
            if qty in BINNED:
                bins = sub["bin"].to_numpy(np.float64)
                if np.isnan(bins).any() or bins.min() < 0 or bins.max() >= BINNED[qty]:
                    raise UserError(f"{path}: {qty} rows need a bin in 0..{BINNED[qty] - 1}")
                values[row[idx], column, comp, bins.astype(int)] = sub["value"].to_numpy(np.float64)
            else:
                values[row[idx], column, comp] = sub["value"].to_numpy(np.float64)
            present[row[idx], column] = True
            quantities[qty] = (uniques, values if shape != (1,) else values[..., 0], present)
        out.append(bootstrap.CycleStatistics.from_arrays(cycles, quantities, members))
    shared = functools.reduce(np.intersect1d, [s.inits for s in out])
    if len(shared) == 0:
        raise UserError(f"{', '.join(map(str, directories))}: the evaluations have no initial time in common")
    return [s.take(shared) for s in out]


def _factorize(rows) -> tuple[np.ndarray, list[tuple]]:
    """Column index of each row's key (system, variable, level, lead, threshold, window) and the keys (NaN → None)."""
    columns = ["system", "variable", "level", "lead_hours", "threshold", "window"]
    frame = rows[columns].fillna({"level": -np.inf, "threshold": -np.inf, "window": -np.inf})
    codes = frame.groupby(columns, sort=False).ngroup().to_numpy()
    number = lambda x: None if x == -np.inf else float(x)  # noqa: E731
    keys = [(str(sy), str(v), number(lev), int(lead), number(thr), None if w == -np.inf else int(w))
            for sy, v, lev, lead, thr, w in frame.drop_duplicates().itertuples(index=False)]
    return codes, keys


def write_csv(path: Path, columns: Sequence[str], rows: list) -> Path:
    """Write atomically: a temporary file beside ``path``, then ``os.replace``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(rows)
    os.replace(tmp, path)
    return path
