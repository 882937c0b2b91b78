"""The tables of ``def-jax evaluate``: sums accumulated over cycles and their rows in scores.csv,
rank_histogram.csv, reliability.csv and spectra.csv (column contracts in docs/FORECASTS.md), written atomically.

Pooling over cycles (see :mod:`def_jax.evaluation.evaluate`): means of per-cycle means, RMSE = sqrt(mean MSE), spread =
sqrt(mean variance), SSR from the pooled spread and RMSE; event counts and sums are added.
"""

from __future__ import annotations

import csv
import functools
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from def_jax.evaluation import metrics

SCORES_COLUMNS = ("system", "variable", "level", "lead_hours", "score", "threshold", "window", "value", "count",
                  "weighting")
RANK_COLUMNS = ("system", "variable", "level", "lead_hours", "rank", "count")
RELIABILITY_COLUMNS = ("system", "variable", "threshold", "lead_hours", "bin_lower", "bin_upper",
                       "forecast_probability", "observed_frequency", "count")
SPECTRA_COLUMNS = ("system", "variable", "level", "lead_hours", "wavenumber", "wavelength_km", "power")
SYSTEMS = ("def", "direct", "deterministic", "persistence", "climatology")
ENSEMBLES = ("def", "direct")
SCORES = ("rmse", "mae", "bias", "crps", "crps_standard", "spread", "ssr", "energy", "observed_frequency", "brier",
          "bss", "csi", "pod", "far", "fss")
RELIABILITY_BINS = 10
COUNT_SCORES = ("csi", "pod", "far", "fss")  # counts over grid points: never area-weighted


# --- accumulation over cycles -----------------------------------------------------------------------------------


class Accumulator:
    """Sums over cycles: key (system, variable, level, lead, quantity, threshold, window) → (sum, cycles)."""

    def __init__(self):
        self.sums: dict = {}
        self.counts: dict = defaultdict(int)
        self.members: dict[str, int] = {}
        self.cycles: dict[tuple, Path] = {}  # (system, init) -> file
        self.references: set = set()  # (init, variable, level, lead) whose reference scores are in

    def first_reference(self, field: tuple) -> bool:
        """True the first time a field is seen: the single forecasts (deterministic, persistence, climatology) and the
        truth's spectrum count once per field even when both a DEF and a direct forecast cover it."""
        new = field not in self.references
        self.references.add(field)
        return new

    def add(self, key: tuple, value) -> None:
        value = np.asarray(value, np.float64)
        self.sums[key] = self.sums[key] + value if key in self.sums else value.copy()
        self.counts[key] += 1

    def get(self, key: tuple):
        return (self.sums[key], self.counts[key]) if key in self.sums else (None, 0)


def level_str(level: Optional[float]) -> str:
    return "" if level is None else f"{level:g}"


def value_text(x) -> str:
    return f"{float(x):.9g}"  # float32 results exactly; float64 aggregates to 1e-9


def sort_key(system: str, var_order: dict, var: str, level, lead: int) -> tuple:
    return (SYSTEMS.index(system) if system in SYSTEMS else len(SYSTEMS), system, var_order.get(var, 1 << 20), var,
            -1.0 if level is None else level, lead)


def _mean_over_cycles(acc: Accumulator, base: tuple, qty: str) -> tuple[Optional[float], int]:
    total, n = acc.get(base + (qty, None, None))
    return (None, 0) if total is None else (float(total) / n, n)


def score_rows(acc: Accumulator, settings: Any, var_order: dict) -> list[tuple]:
    """The rows of scores.csv from the accumulated sums."""
    quantities = defaultdict(list)  # (system, variable, level, lead) -> [(quantity, threshold, window)]
    for key in acc.sums:
        quantities[key[:4]].append(key[4:])
    rows = []
    for base in sorted(quantities, key=lambda b: sort_key(b[0], var_order, *b[1:])):
        system, var, level, lead = base
        out: list[tuple] = []  # (score, threshold, window, value, count)
        mean_of = functools.partial(_mean_over_cycles, acc, base)

        mse, n = mean_of("mse")
        if mse is not None:
            out.append(("rmse", None, None, np.sqrt(mse), n))
        for qty in ("mae", "bias"):
            value, n = mean_of(qty)
            if value is not None:
                out.append((qty, None, None, value, n))
        if system in ENSEMBLES:
            fair, n_fair = mean_of("crps_fair")
            standard, n_std = mean_of("crps_standard")
            if settings.fair_crps and fair is not None:
                out.append(("crps", None, None, fair, n_fair))
            elif not settings.fair_crps and standard is not None:
                out.append(("crps", None, None, standard, n_std))
            if standard is not None:
                out.append(("crps_standard", None, None, standard, n_std))
            var_mean, n_var = mean_of("var")
            if var_mean is not None:
                spread = np.sqrt(var_mean)
                out.append(("spread", None, None, spread, n_var))
                m = acc.members[system]
                out.append(("ssr", None, None, metrics.spread_skill_ratio(spread, np.sqrt(mse), m), n_var))
            energy, n_e = mean_of("energy")
            if energy is not None:
                out.append(("energy", None, None, energy, n_e))
        else:
            mae, n = mean_of("mae")
            if mae is not None:
                out.append(("crps", None, None, mae, n))  # a single forecast's CRPS is its absolute error
        thresholds = sorted({thr for _, thr, _ in quantities[base] if thr is not None})
        for thr in thresholds:
            brier, n = acc.get(base + ("brier", thr, None))
            if brier is not None:  # sums Σ w (p − o)², Σ w, Σ w (p_clim − o)², Σ w o
                out.append(("observed_frequency", thr, None, brier[3] / brier[1], n))
                out.append(("brier", thr, None, brier[0] / brier[1], n))
                if system != "climatology" and np.isfinite(brier[2]):
                    # BSS = 1 − BS / BS_clim; NaN where it says nothing: no event observed (any forecast that
                    # never gives the event would score 1 against climatology's p_clim² > 0), or BS_clim = 0
                    defined = brier[3] > 0 and brier[2] > 0
                    out.append(("bss", thr, None, 1.0 - brier[0] / brier[2] if defined else np.nan, n))
            table, n = acc.get(base + ("contingency", thr, None))
            if table is not None:
                ct = metrics.Contingency(*table)
                for name, fn in (("csi", metrics.csi), ("pod", metrics.pod), ("far", metrics.far)):
                    out.append((name, thr, None, fn(ct), n))
            windows = sorted({w for q, t, w in quantities[base] if q == "fss" and t == thr})
            for window in windows:
                comp, n = acc.get(base + ("fss", thr, window))
                out.append(("fss", thr, window, 1.0 - comp[0] / comp[1] if comp[1] > 0 else np.nan, n))
        out.sort(key=lambda r: (SCORES.index(r[0]), -1.0 if r[1] is None else r[1], r[2] or 0))
        for score, thr, window, value, n in out:
            weighting = "uniform" if score in COUNT_SCORES else settings.weighting
            rows.append((system, var, level_str(level), lead, score, level_str(thr),
                         "" if window is None else window, value_text(value), n, weighting))
    return rows


def other_rows(acc: Accumulator, var_order: dict, dx_km: float, grid_shape: tuple) -> tuple[list, list, list]:
    """The rows of rank_histogram.csv, reliability.csv and spectra.csv."""
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
            for b in range(RELIABILITY_BINS):
                p, o = (sum_p[b] / count[b], sum_o[b] / count[b]) if count[b] > 0 else (np.nan, np.nan)
                reliability.append((system, var, level_str(thr), lead, value_text(edges[b]), value_text(edges[b + 1]),
                                    value_text(p), value_text(o), int(round(count[b]))))
        elif qty == "power":
            for k, p in enumerate(total / cycles, start=1):
                spectra.append((system, var, level_str(level), lead, k, value_text(n * dx_km / k), value_text(p)))
    return ranks, reliability, spectra


def write_csv(path: Path, columns: Sequence[str], rows: list) -> Path:
    """Write atomically: a temporary file beside ``path``, then ``os.replace``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(rows)
    os.replace(tmp, path)
    return path
