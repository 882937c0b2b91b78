"""Figures of an evaluation (``def-jax plot``): scores by lead time, rank histograms, reliability diagrams and maps.

Inputs are the contracts of docs/FORECASTS.md: the evaluation tables ``scores.csv``, ``rank_histogram.csv`` and
``reliability.csv`` written by ``def-jax evaluate``, and optionally one forecast file ``forecast_YYYYMMDDTHH.nc`` plus
the Zarr store (docs/DATA.md) for maps against the truth. Every figure is a PNG written atomically (temporary name in
the output directory, then ``os.replace``), drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas:
no pyplot, no global figure state.

Files (``<key>`` is ``t2m`` for a single-level variable, ``z500`` for a level of a multi-level one):

- ``spread_skill_<key>.png``: ensemble-mean RMSE and spread of ``def`` (and ``direct``), RMSE of the deterministic
  rollout and of persistence; spread/skill ratio with the line at 1.
- ``crps_<key>.png``: CRPS of every system (for single forecasts the table's CRPS is their MAE).
- ``rank_histogram_<key>.png``: rank histograms at a few leads.
- ``reliability_<var>.png``: reliability diagrams per threshold (``refc``, ``cape``), with sharpness histograms.
- ``maps_<key>_<lead>h.png``: truth, ensemble mean, spread, P(REFC ≥ 35 dBZ) and members on the grid.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import colors as mcolors
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure  # drawn without pyplot: Figure.savefig picks the Agg canvas for PNG
from matplotlib.ticker import MaxNLocator

from def_jax.errors import UserError

DPI = 110
ENSEMBLES = ("def", "direct")
SYSTEM_ORDER = ("def", "direct", "deterministic", "persistence", "climatology")
SYSTEM_STYLE = {
    "def": {"color": "C0", "label": "DEF ensemble", "marker": "o"},
    "direct": {"color": "C1", "label": "direct generative", "marker": "s"},
    "deterministic": {"color": "C2", "label": "deterministic G_φ", "marker": "^"},
    "persistence": {"color": "0.45", "label": "persistence", "marker": "v"},
    "climatology": {"color": "C5", "label": "climatology", "marker": "D"},
}
SCORES_COLUMNS = ("system", "variable", "level", "lead_hours", "score", "threshold", "window", "value")
RANK_COLUMNS = ("system", "variable", "level", "lead_hours", "rank", "count")
RELIABILITY_COLUMNS = ("system", "variable", "threshold", "lead_hours", "bin_lower", "bin_upper",
                       "forecast_probability", "observed_frequency", "count")
RELIABILITY_VARIABLES = ("refc", "cape")
MAP_VARIABLES = ("refc", "t2m")
DEFAULT_LEVEL = 500.0  # hPa: the level of multi-level variables plotted by default
REFC_EVENT = 35.0  # dBZ: the probability panel of reflectivity maps
REFC_BOUNDS = np.arange(5.0, 75.0, 5.0)  # dBZ: 5, 10, ..., 70; below 5 dBZ is masked (no echo)
REFC_COLORS = ("#04e9e7", "#019ff4", "#0300f4", "#02fd02", "#01c501", "#008e00", "#fdf802", "#e5bc00", "#fd9500",
               "#fd0000", "#d40000", "#bc0000", "#f800fd")  # NWS-style, one per 5 dBZ interval
REFC_OVER = "#9854c6"

Key = tuple[str, Optional[float]]  # (variable, level in hPa or None)
_NON_LEVEL_DIMS = ("init_time", "member", "lead_time", "time", "y", "x")


# --- public entry point -------------------------------------------------------------------------------------------


def make_plots(evaluation_dir: Path, out_dir: Path, *, forecast_path: Path | None = None, store: Path | None = None,
               lead_hours: Sequence[int] | None = None, variables: Sequence[str] | str | None = None,
               members_to_show: int = 4, log: Callable[[str], None] = print) -> list[Path]:
    """Write the evaluation figures of ``evaluation_dir`` into ``out_dir`` and return their paths.

    ``variables`` selects what is plotted (e.g. ``["t2m", "refc", "z500"]`` or ``"t2m,z500"``); by default every
    single-level variable of ``scores.csv`` plus the 500 hPa level of multi-level ones. Maps are drawn when
    ``forecast_path`` (a forecast file, or a directory of them: the first is used) is given, against the truth of
    ``store`` when that is given too, at ``lead_hours`` (default: three leads spread over the horizon).
    """
    evaluation_dir, out_dir = Path(evaluation_dir), Path(out_dir)
    scores = read_table(evaluation_dir / "scores.csv", SCORES_COLUMNS,
                        numeric=("level", "lead_hours", "threshold", "window", "value"))
    ranks = read_table(evaluation_dir / "rank_histogram.csv", RANK_COLUMNS,
                       numeric=("level", "lead_hours", "rank", "count"))
    reliability = read_table(evaluation_dir / "reliability.csv", RELIABILITY_COLUMNS,
                             numeric=("threshold", "lead_hours", "bin_lower", "bin_upper", "forecast_probability",
                                      "observed_frequency", "count"))
    keys = select_keys(scores, variables)
    forecast_file = _forecast_file(Path(forecast_path)) if forecast_path is not None else None
    meta = VariableMeta(forecast_file, Path(store) if store is not None else None)
    plan = None
    if forecast_file is not None:  # checked (variables, leads, grid) before anything is drawn
        plan = MapPlan(forecast_file, meta.store_path, keys if variables is not None else None, lead_hours, log)
    try:
        return _draw_all(evaluation_dir, out_dir, scores, ranks, reliability, keys, variables is None, meta, plan,
                         members_to_show, log)
    finally:
        if plan is not None:
            plan.close()


def _draw_all(evaluation_dir: Path, out_dir: Path, scores: pd.DataFrame, ranks: pd.DataFrame,
              reliability: pd.DataFrame, keys: list[Key], default_selection: bool, meta: VariableMeta,
              plan: Optional[MapPlan], members_to_show: int, log: Callable[[str], None]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def emit(fig: Optional[Figure], name: str) -> None:
        if fig is not None:
            written.append(save_figure(fig, out_dir / name))
            log(f"plot: wrote {out_dir / name}")

    for key in keys:
        tag = key_name(key)
        emit(spread_skill_figure(scores, key, meta), f"spread_skill_{tag}.png")
        emit(crps_figure(scores, key, meta), f"crps_{tag}.png")
        emit(rank_histogram_figure(ranks, key, meta), f"rank_histogram_{tag}.png")
    selected_names = {name for name, _ in keys}
    for var in _unique(reliability["variable"]):
        if var in RELIABILITY_VARIABLES and (var in selected_names or default_selection):
            emit(reliability_figure(reliability, var, meta), f"reliability_{var}.png")
    if plan is not None:
        for fig, name in map_figures(plan, members_to_show, meta):
            emit(fig, name)
    if not written:
        log(f"plot: nothing to plot in {evaluation_dir} for {', '.join(key_name(k) for k in keys)}")
    return written


# --- inputs -------------------------------------------------------------------------------------------------------


def read_table(path: Path, columns: Sequence[str], numeric: Sequence[str] = ()) -> pd.DataFrame:
    """Read an evaluation CSV, checking that it exists and has ``columns``; ``numeric`` columns become floats."""
    if not path.is_file():
        raise UserError(f"{path}: not found (run def-jax evaluate first)")
    try:
        df = pd.read_csv(path, dtype={"system": str, "variable": str, "score": str})
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: empty, expected a header with columns {', '.join(columns)}") from None
    except Exception as err:  # parser errors of any kind: name the file
        raise UserError(f"{path}: cannot be read as CSV: {str(err).splitlines()[0]}") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
                        f"(expected {', '.join(columns)})")
    for col in numeric:
        try:
            df[col] = pd.to_numeric(df[col]).astype(float)
        except (ValueError, TypeError):
            raise UserError(f"{path}: column {col!r} has non-numeric entries") from None
    return df


def key_name(key: Key) -> str:
    """``t2m`` or ``z500``: the channel name, used in file names."""
    name, level = key
    return name if level is None else f"{name}{_num(level)}"


def select_keys(scores: pd.DataFrame, variables: Sequence[str] | str | None) -> list[Key]:
    """The (variable, level) pairs to plot, in the order of the table."""
    available: list[Key] = []
    for var, lev in scores[["variable", "level"]].drop_duplicates().itertuples(index=False):
        key = (str(var), None if pd.isna(lev) else float(lev))
        if key not in available:
            available.append(key)
    if variables is None:
        return _default_keys(available)
    tokens = [t.strip() for t in variables.split(",")] if isinstance(variables, str) else [str(t) for t in variables]
    keys = []
    for token in filter(None, tokens):
        key = _parse_key(token, available)
        if key is None:
            raise UserError(f"plot variable {token!r}: not in scores.csv (available: "
                            f"{', '.join(key_name(k) for k in available)})")
        if key not in keys:
            keys.append(key)
    return keys


def _default_keys(available: list[Key]) -> list[Key]:
    keys: list[Key] = []
    for name, level in available:
        if level is None:
            keys.append((name, None))
            continue
        levels = [lv for n, lv in available if n == name and lv is not None]
        nearest = min(levels, key=lambda lv: (abs(lv - DEFAULT_LEVEL), lv))
        if level == nearest:
            keys.append((name, level))
    return keys


def _parse_key(token: str, available: list[Key]) -> Optional[Key]:
    if (token, None) in available:
        return (token, None)
    match = re.fullmatch(r"(.+?)(\d+(?:\.\d+)?)", token)
    if match:
        name, level = match.group(1), float(match.group(2))
        for key in available:
            if key[0] == name and key[1] is not None and math.isclose(key[1], level):
                return key
    return None


def _forecast_file(path: Path) -> Path:
    if path.is_dir():
        files = sorted(path.glob("forecast_*.nc"))
        if not files:
            raise UserError(f"{path}: no forecast_*.nc files in this directory")
        return files[0]
    if not path.is_file():
        raise UserError(f"forecast file {path}: not found")
    return path


class VariableMeta:
    """Units and long names of variables: from the forecast file, the store, or the built-in catalogue."""

    def __init__(self, forecast_path: Optional[Path], store_path: Optional[Path]):
        self.forecast_path, self.store_path = forecast_path, store_path
        self._info: dict[str, tuple[str, str]] = {}
        self._load()

    def _load(self) -> None:
        from def_jax.catalogue import load_catalogue

        for var in load_catalogue("hrrr_expanded"):
            self._info[var.name] = (var.units, var.long_name)
        if self.store_path is not None:
            from def_jax.data.schema import open_store, store_catalogue

            ds = open_store(self.store_path)
            for var in store_catalogue(ds):
                self._info[var.name] = (var.units, var.long_name)
            self._add_attrs(ds)
        if self.forecast_path is not None:
            ds = _open_forecast(self.forecast_path)
            with ds:
                self._add_attrs(ds)

    def _add_attrs(self, ds) -> None:
        for name, da in ds.data_vars.items():
            if "units" in da.attrs:
                old = self._info.get(str(name), ("", ""))
                self._info[str(name)] = (str(da.attrs["units"]), str(da.attrs.get("long_name", old[1])))

    def units(self, name: str) -> str:
        return self._info.get(name, ("", ""))[0]

    def title(self, key: Key) -> str:
        """``2 m temperature (t2m)`` or ``temperature at 500 hPa (t500)``."""
        name, level = key
        long_name = self._info.get(name, ("", ""))[1] or name
        where = f" at {_num(level)} hPa" if level is not None else ""
        return f"{long_name}{where} ({key_name(key)})"

    def unit_label(self, name: str) -> str:
        units = self.units(name)
        return f" ({units})" if units else ""


# --- score figures ------------------------------------------------------------------------------------------------


def _series(scores: pd.DataFrame, key: Key, system: str, score: str) -> Optional[pd.Series]:
    """Values of one score against lead time (NaN-free, sorted), or None when the table has none."""
    name, level = key
    rows = scores[(scores["system"] == system) & (scores["variable"] == name) & (scores["score"] == score)
                  & scores["threshold"].isna() & scores["window"].isna()]
    rows = rows[rows["level"].isna()] if level is None else rows[np.isclose(rows["level"], level)]
    rows = rows.dropna(subset=["lead_hours", "value"])
    if rows.empty:
        return None
    return rows.groupby("lead_hours")["value"].mean().sort_index()


def _systems(table: pd.DataFrame) -> list[str]:
    present = _unique(table["system"])
    return [s for s in SYSTEM_ORDER if s in present] + [s for s in present if s not in SYSTEM_ORDER]


def _style(system: str) -> dict:
    if system in SYSTEM_STYLE:
        return dict(SYSTEM_STYLE[system])
    return {"color": f"C{3 + sum(map(ord, system)) % 5}", "label": system, "marker": "x"}  # stable across runs


def _lead_axis(ax) -> None:
    ax.set_xlabel("lead time (h)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)


def spread_skill_figure(scores: pd.DataFrame, key: Key, meta: VariableMeta) -> Optional[Figure]:
    """Ensemble-mean RMSE and spread (plus single-forecast RMSE) and the spread/skill ratio against lead time."""
    systems = _systems(scores)
    ensembles = [s for s in systems if s in ENSEMBLES and _series(scores, key, s, "rmse") is not None]
    if not ensembles:
        return None
    fig = Figure(figsize=(11.5, 4.4), layout="constrained")
    ax, ax_ssr = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.45, 1.0]})
    for system in ensembles:
        style = _style(system)
        rmse, spread = _series(scores, key, system, "rmse"), _series(scores, key, system, "spread")
        ax.plot(rmse.index, rmse.values, color=style["color"], marker=style["marker"], ms=4, lw=1.8,
                label=f"{style['label']}: RMSE of the mean")
        if spread is not None:
            ax.plot(spread.index, spread.values, color=style["color"], ls="--", lw=1.8,
                    label=f"{style['label']}: spread")
        ssr = _series(scores, key, system, "ssr")
        if ssr is not None:
            ax_ssr.plot(ssr.index, ssr.values, color=style["color"], marker=style["marker"], ms=4, lw=1.8,
                        label=style["label"])
    for system in ("deterministic", "persistence"):
        rmse = _series(scores, key, system, "rmse")
        if rmse is not None:
            style = _style(system)
            ax.plot(rmse.index, rmse.values, color=style["color"], marker=style["marker"], ms=3.5, lw=1.3,
                    ls="-." if system == "deterministic" else ":", label=f"{style['label']}: RMSE")
    name = key[0]
    ax.set_ylabel(f"RMSE, spread{meta.unit_label(name)}")
    ax.set_title("RMSE and ensemble spread")
    ax.set_ylim(bottom=0)
    _lead_axis(ax)
    ax.legend(fontsize=8, loc="best")
    ax_ssr.axhline(1.0, color="k", ls="--", lw=1, label="SSR = 1 (calibrated)")
    ax_ssr.set_ylabel("spread/skill ratio (1)")
    ax_ssr.set_title("Spread/skill ratio (finite-ensemble corrected)")
    top = max([1.3] + [float(np.nanmax(line.get_ydata())) * 1.1 for line in ax_ssr.lines[:-1]])
    ax_ssr.set_ylim(0, top)
    _lead_axis(ax_ssr)
    ax_ssr.legend(fontsize=8, loc="best")
    fig.suptitle(f"Spread and skill: {meta.title(key)}", fontsize=12)
    return fig


def crps_figure(scores: pd.DataFrame, key: Key, meta: VariableMeta) -> Optional[Figure]:
    """CRPS of every system against lead time (single forecasts: the table's CRPS is their MAE)."""
    lines = [(s, _series(scores, key, s, "crps")) for s in _systems(scores)]
    lines = [(s, v) for s, v in lines if v is not None]
    if not lines:
        return None
    fig = Figure(figsize=(7.5, 4.4), layout="constrained")
    ax = fig.subplots()
    for system, values in lines:
        style = _style(system)
        label = style["label"] if system in ENSEMBLES else f"{style['label']} (CRPS = MAE)"
        ax.plot(values.index, values.values, color=style["color"], marker=style["marker"], ms=4,
                lw=1.8 if system in ENSEMBLES else 1.3, ls="-" if system in ENSEMBLES else "--", label=label)
    ax.set_ylabel(f"CRPS{meta.unit_label(key[0])}")
    ax.set_ylim(bottom=0)
    _lead_axis(ax)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"CRPS (fair): {meta.title(key)}")
    return fig


def _pick_leads(leads: Iterable[float], n: int = 4) -> list[float]:
    """Up to ``n`` leads spread over the available ones (first and last included)."""
    leads = sorted(set(float(v) for v in leads))
    if len(leads) <= n:
        return leads
    idx = np.unique(np.round(np.linspace(0, len(leads) - 1, n)).astype(int))
    return [leads[i] for i in idx]


def rank_histogram_figure(ranks: pd.DataFrame, key: Key, meta: VariableMeta) -> Optional[Figure]:
    """Normalized rank histograms of the ensemble systems at a few leads, with the flat line 1/(B+1)."""
    name, level = key
    rows = ranks[(ranks["variable"] == name) & ranks["system"].isin(ENSEMBLES)]
    rows = rows[rows["level"].isna()] if level is None else rows[np.isclose(rows["level"], level)]
    rows = rows.dropna(subset=["lead_hours", "rank", "count"])
    if rows.empty:
        return None
    systems = [s for s in ENSEMBLES if s in set(rows["system"])]
    leads = _pick_leads(rows["lead_hours"])
    n_ranks = int(rows["rank"].max()) + 1
    fig = Figure(figsize=(2.9 * len(leads) + 0.8, 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(leads), sharey=True, squeeze=False)[0])
    width = 0.8 / len(systems)
    top = 1.0 / n_ranks
    for ax, lead in zip(axes, leads):
        for i, system in enumerate(systems):
            sub = rows[(rows["system"] == system) & (rows["lead_hours"] == lead)]
            counts = sub.groupby("rank")["count"].sum().reindex(range(n_ranks), fill_value=0.0)
            total = counts.sum()
            freq = counts / total if total > 0 else counts
            style = _style(system)
            ax.bar(np.arange(n_ranks) + (i - (len(systems) - 1) / 2) * width, freq.values, width=width,
                   color=style["color"], alpha=0.85, label=style["label"])
        ax.axhline(1.0 / n_ranks, color="k", ls="--", lw=1, label=f"flat: 1/(B+1) = 1/{n_ranks}")
        ax.set_title(f"lead {_num(lead)} h")
        ax.set_xlim(-0.6, n_ranks - 0.4)
        top = max(top, max((p.get_height() for p in ax.patches), default=0.0))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylim(0, 1.3 * top)  # headroom for the legend
    axes[0].set_ylabel("normalized frequency")
    axes[0].legend(fontsize=7.5, loc="upper center", ncols=2)
    fig.supxlabel(f"rank of the truth among the B = {n_ranks - 1} members", fontsize=10)
    fig.suptitle(f"Rank histogram: {meta.title(key)}", fontsize=12)
    return fig


def reliability_figure(table: pd.DataFrame, var: str, meta: VariableMeta) -> Optional[Figure]:
    """Reliability diagrams (one column per threshold, one row pair per ensemble system) with sharpness below."""
    rows = table[(table["variable"] == var) & table["system"].isin(ENSEMBLES)].dropna(subset=["threshold",
                                                                                               "lead_hours"])
    if rows.empty:
        return None
    systems = [s for s in ENSEMBLES if s in set(rows["system"])]
    thresholds = sorted(set(rows["threshold"]))
    leads = _pick_leads(rows["lead_hours"])
    cmap = matplotlib.colormaps["viridis"]
    lead_colors = {lead: cmap(0.9 * i / max(len(leads) - 1, 1)) for i, lead in enumerate(leads)}
    fig = Figure(figsize=(3.3 * len(thresholds) + 0.8, 4.7 * len(systems) + 0.5), layout="constrained")
    grid = fig.add_gridspec(2 * len(systems), len(thresholds), height_ratios=[3.0, 1.1] * len(systems))
    units = meta.units(var)
    for r, system in enumerate(systems):
        for c, thr in enumerate(thresholds):
            ax = fig.add_subplot(grid[2 * r, c])
            ax_n = fig.add_subplot(grid[2 * r + 1, c], sharex=ax)
            sub = rows[(rows["system"] == system) & np.isclose(rows["threshold"], thr)]
            _reliability_panel(ax, ax_n, sub, leads, lead_colors)
            ax.set_title(f"{_style(system)['label']}: {var} ≥ {_num(thr)} {units}".strip(), fontsize=10)
            if c == 0:
                ax.set_ylabel("observed frequency")
                ax_n.set_ylabel("count")
            ax_n.set_xlabel("forecast probability")
            ax.tick_params(labelbottom=False)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8)
    fig.suptitle(f"Reliability: {meta.title((var, None))}", fontsize=12)
    return fig


def _reliability_panel(ax, ax_n, sub: pd.DataFrame, leads: list[float], lead_colors: dict) -> None:
    weights = sub["count"].where(sub["observed_frequency"].notna(), 0.0)
    base = float((sub["observed_frequency"].fillna(0.0) * weights).sum() / weights.sum()) if weights.sum() else np.nan
    grid = np.array([0.0, 1.0])
    ax.plot(grid, grid, color="k", lw=1, ls="--", label="perfect reliability")
    if np.isfinite(base):
        ax.plot(grid, (grid + base) / 2, color="0.5", lw=1, ls=":", label="no skill")
        ax.axhline(base, color="0.7", lw=0.8, label="base rate (observed)")
        ax.text(0.98, base + 0.015, f"base rate {base:.2f}", ha="right", va="bottom", fontsize=7, color="0.4")
    for lead in leads:
        at = sub[sub["lead_hours"] == lead].sort_values("bin_lower")
        ok = at.dropna(subset=["forecast_probability", "observed_frequency"])
        ok = ok[ok["count"] > 0]
        ax.plot(ok["forecast_probability"], ok["observed_frequency"], color=lead_colors[lead], marker="o", ms=3.5,
                lw=1.5, label=f"lead {_num(lead)} h")
        centers = (at["bin_lower"] + at["bin_upper"]) / 2
        ax_n.plot(centers, at["count"].where(at["count"] > 0), color=lead_colors[lead], drawstyle="steps-mid",
                  lw=1.2)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax_n.set_yscale("log")
    ax_n.grid(True, alpha=0.3)
    ax_n.set_title("sharpness", fontsize=8, loc="left", pad=2)


# --- maps ---------------------------------------------------------------------------------------------------------


def _open_forecast(path: Path):
    import xarray as xr

    try:
        return xr.open_dataset(path, engine="netcdf4", decode_timedelta=False)
    except Exception as err:
        raise UserError(f"forecast file {path}: cannot be opened: {str(err).splitlines()[0]}") from None


def reflectivity_cmap() -> tuple[mcolors.Colormap, mcolors.Normalize]:
    """A discrete dBZ colormap (5 dBZ steps, 5–70 dBZ, darker above); values below 5 dBZ are transparent."""
    cmap, norm = mcolors.from_levels_and_colors(REFC_BOUNDS, list(REFC_COLORS) + [REFC_OVER], extend="max")
    return cmap.with_extremes(under=(0, 0, 0, 0), bad=(0, 0, 0, 0)), norm


class MapPlan:
    """What to map from one forecast file: variables, leads and the truth; checked before anything is drawn."""

    def __init__(self, forecast_path: Path, store_path: Optional[Path], keys: Optional[list[Key]],
                 lead_hours: Sequence[int] | None, log: Callable[[str], None]):
        self.path = forecast_path
        self.ds = _open_forecast(forecast_path)
        try:
            self.keys = _map_keys(self.ds, keys)
            leads = [int(v) for v in np.asarray(self.ds["lead_time"].values)]
            self.leads = _map_leads(leads, lead_hours, forecast_path)
            self.truth = _TruthReader(store_path, self.ds) if store_path is not None and self.keys else None
        except BaseException:
            self.ds.close()
            raise
        if not self.keys:
            log(f"plot: no variable to map in {forecast_path}")
        elif store_path is None:
            log("plot: no store given, maps are drawn without the truth")

    def close(self) -> None:
        self.ds.close()


def map_figures(plan: MapPlan, members_to_show: int, meta: VariableMeta) -> Iterator[tuple[Figure, str]]:
    """Map figures of one forecast file, one per variable and lead, with their file names."""
    for key in plan.keys:
        for lead in plan.leads:
            fields = _map_fields(plan.ds, key, lead, members_to_show, plan.truth)
            yield _map_figure(plan.ds, key, lead, fields, meta), f"maps_{key_name(key)}_{lead}h.png"


def _map_keys(ds, keys: Optional[list[Key]]) -> list[Key]:
    if keys is None:
        return [(v, None) for v in MAP_VARIABLES if v in ds.data_vars]
    out = []
    for name, level in keys:
        if name in ds.data_vars and (level is None or _level_index(ds[name], level) is not None):
            out.append((name, level))
    return out


def _level_index(da, level: float) -> Optional[tuple[str, int]]:
    """(level dimension, index) of ``level`` hPa in ``da`` (``level`` or ``<var>_level``), or None."""
    dim = next((d for d in da.dims if d not in _NON_LEVEL_DIMS), None)
    if dim is None:
        return None
    hit = np.nonzero(np.isclose(np.asarray(da[dim].values, dtype=float), level))[0]
    return (dim, int(hit[0])) if len(hit) else None


def _map_leads(leads: list[int], requested: Sequence[int] | None, path: Path) -> list[int]:
    if requested is None:
        if len(leads) <= 3:
            return leads
        return [leads[i] for i in np.unique(np.round(np.linspace(0, len(leads) - 1, 3)).astype(int))]
    bad = [int(h) for h in requested if int(h) not in leads]
    if bad:
        raise UserError(f"forecast file {path}: lead time(s) {bad} h not in the file "
                        f"(lead_time: {', '.join(map(str, leads))} h)")
    return [int(h) for h in requested]


class _TruthReader:
    """Truth fields of the store at a valid time on the forecast's grid."""

    def __init__(self, path: Path, forecast):
        from def_jax.data.schema import open_store, written_mask

        self.path = path
        self.ds = open_store(path)
        self.written = written_mask(self.ds)
        self.times = np.asarray(self.ds["time"].values, dtype="datetime64[ns]")
        fy, fx = np.asarray(forecast["y"].values), np.asarray(forecast["x"].values)
        try:
            iy = [int(np.abs(self.ds["y"].values - v).argmin()) for v in fy]
            ix = [int(np.abs(self.ds["x"].values - v).argmin()) for v in fx]
            tol_y = 1e-3 * max(float(np.abs(np.diff(fy)).min()) if len(fy) > 1 else 1.0, 1e-9)
            tol_x = 1e-3 * max(float(np.abs(np.diff(fx)).min()) if len(fx) > 1 else 1.0, 1e-9)
            ok = (np.abs(self.ds["y"].values[iy] - fy).max() <= tol_y
                  and np.abs(self.ds["x"].values[ix] - fx).max() <= tol_x)
        except (KeyError, ValueError):
            ok = False
        if not ok:
            raise UserError(f"store {path}: its y/x grid does not contain the forecast's grid")
        self.iy, self.ix = iy, ix

    def field(self, key: Key, valid: np.datetime64) -> tuple[Optional[np.ndarray], str]:
        """The truth [y, x], or None and the reason it is not available."""
        name, level = key
        if name not in self.ds.data_vars:
            return None, f"{name} not in the store"
        hits = np.nonzero(self.times == np.datetime64(valid, "ns"))[0]
        if len(hits) == 0 or not self.written[hits[0]]:
            return None, "valid time not written in the store"
        da = self.ds[name].isel(time=int(hits[0]))
        if level is not None:
            where = _level_index(da, level)
            if where is None:
                return None, f"{key_name(key)} not in the store"
            da = da.isel({where[0]: where[1]})
        return np.asarray(da.isel(y=self.iy, x=self.ix).values, dtype=np.float64), ""


def _map_fields(ds, key: Key, lead: int, members_to_show: int, truth: Optional[_TruthReader]) -> dict:
    """The panels' arrays for one variable and lead."""
    name, level = key

    def take(var_name: str):
        da = ds[var_name].isel(init_time=0).sel(lead_time=lead)
        if level is not None:
            dim, index = _level_index(da, level)
            da = da.isel({dim: index})
        return da

    members = take(name)  # [member, y, x]
    values = np.asarray(members.values, dtype=np.float64)
    mean = take(f"{name}_mean").values if f"{name}_mean" in ds else values.mean(axis=0)
    std = take(f"{name}_std").values if f"{name}_std" in ds else values.std(axis=0)
    valid = np.asarray(ds["valid_time"].isel(init_time=0).sel(lead_time=lead).values).reshape(-1)[0]
    fields = {"members": values[:max(members_to_show, 0)], "member_ids": np.asarray(ds["member"].values)
              [:max(members_to_show, 0)], "mean": np.asarray(mean, np.float64), "std": np.asarray(std, np.float64),
              "n_members": values.shape[0], "valid": valid, "truth": None, "truth_note": "no store given"}
    if truth is not None:
        fields["truth"], fields["truth_note"] = truth.field(key, valid)
    if name == "refc":
        fields["probability"] = _refc_probability(ds, lead, values)
    return fields


def _refc_probability(ds, lead: int, members: np.ndarray) -> np.ndarray:
    """P(REFC ≥ 35 dBZ): from ``refc_probability`` when the file has that threshold, else from the members."""
    if "refc_probability" in ds and "refc_threshold" in ds.coords:
        thresholds = np.asarray(ds["refc_threshold"].values, dtype=float)
        hit = np.nonzero(np.isclose(thresholds, REFC_EVENT))[0]
        if len(hit):
            da = ds["refc_probability"].isel(init_time=0, refc_threshold=int(hit[0])).sel(lead_time=lead)
            return np.asarray(da.values, np.float64)
    return (members >= REFC_EVENT).mean(axis=0)


def _time_text(t) -> str:
    return pd.Timestamp(t).strftime("%Y-%m-%d %H:%M UTC")


def _map_figure(ds, key: Key, lead: int, fields: dict, meta: VariableMeta) -> Figure:
    """Panels: truth, ensemble mean, spread, P(REFC ≥ 35 dBZ) for refc, then members."""
    name = key[0]
    units = str(ds[name].attrs.get("units", meta.units(name)))
    lon = ((np.asarray(ds["longitude"].values, np.float64) + 180.0) % 360.0) - 180.0
    lat = np.asarray(ds["latitude"].values, np.float64)
    corners = (_corners(lon), _corners(lat))
    is_refc = name == "refc"
    mode = str(ds.attrs.get("mode", "def"))
    ens = "DEF ensemble" if mode == "def" else f"{mode} samples"
    panels = [("truth (store)", fields["truth"], "value"),
              (f"{ens} mean (B = {fields['n_members']})", fields["mean"], "value"),
              ("ensemble spread (std)", fields["std"], "spread")]
    if is_refc:
        panels.append((f"P(refc ≥ {_num(REFC_EVENT)} dBZ)", fields["probability"], "probability"))
    panels += [(f"member {int(b)}", m, "value") for b, m in zip(fields["member_ids"], fields["members"])]

    if is_refc:
        value_cmap, value_norm = reflectivity_cmap()
    else:
        stack = [a for a in [fields["truth"], fields["mean"], *fields["members"]] if a is not None]
        lo, hi = np.nanpercentile(np.stack(stack), [1, 99])
        value_cmap, value_norm = matplotlib.colormaps["RdYlBu_r"], mcolors.Normalize(lo, hi if hi > lo else lo + 1)
    spread_hi = float(np.nanpercentile(fields["std"], 99)) if np.isfinite(fields["std"]).any() else 1.0
    spread_norm = mcolors.Normalize(0.0, spread_hi if spread_hi > 0 else 1.0)

    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    # Equal-ish aspect through the figure size (set_aspect on shared axes fights the constrained layout): a panel's
    # map area is ~3 in wide and 3 in × (north-south / east-west extent) high, plus title, ticks and colorbar.
    panel_h = 3.0 * float(np.clip(_aspect(lon, lat), 0.3, 2.0)) + 0.95
    fig = Figure(figsize=(3.3 * ncols + 0.3, panel_h * nrows + 0.7), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    value_axes = []  # truth, mean and members share one colorbar
    for i, (ax, (title, data, kind)) in enumerate(zip(axes, panels)):
        if kind == "value":
            cmap, norm, label, extend = value_cmap, value_norm, f"{name} ({units})", "max" if is_refc else "both"
        elif kind == "spread":
            cmap, norm, label, extend = matplotlib.colormaps["magma_r"], spread_norm, f"std ({units})", "max"
        else:
            cmap = matplotlib.colormaps["YlGnBu"]
            norm, label, extend = mcolors.Normalize(0.0, 1.0), "probability (1); 0 not shaded", "neither"
        mask_below = REFC_BOUNDS[0] if is_refc and kind == "value" else (1e-6 if kind == "probability" else None)
        _map_panel(ax, corners, data, cmap, norm, fields["truth_note"] if i == 0 else "", mask_below=mask_below)
        if kind == "value":
            value_axes.append(ax)
        elif data is not None:
            _colorbar(fig, ScalarMappable(norm, cmap), ax, label, extend, shrink=0.9, aspect=30)
        ax.set_title(title, fontsize=9.5)
        if i % ncols == 0:
            ax.set_ylabel("latitude (°N)", fontsize=8.5)
        if i + ncols >= len(panels):  # the lowest panel of its column: x tick labels and label
            ax.set_xlabel("longitude (°E)", fontsize=8.5)
            ax.xaxis.set_tick_params(labelbottom=True)
        ax.tick_params(labelsize=7.5)
    for ax in axes[len(panels):]:
        fig.delaxes(ax)
    cbar = _colorbar(fig, ScalarMappable(value_norm, value_cmap), value_axes,
                     f"{name} ({units}): truth, ensemble mean{' and members' if len(fields['members']) else ''}",
                     "max" if is_refc else "both",
                     shrink=0.55, aspect=55)
    if is_refc:
        cbar.set_ticks(REFC_BOUNDS)
    axes[0].set_xlim(float(np.nanmin(corners[0])), float(np.nanmax(corners[0])))  # shared by all panels
    axes[0].set_ylim(float(np.nanmin(corners[1])), float(np.nanmax(corners[1])))
    init = np.asarray(ds["init_time"].values)[0]
    fig.suptitle(f"{meta.title(key)}: init {_time_text(init)}, lead +{lead} h, valid {_time_text(fields['valid'])}",
                 fontsize=11.5)
    return fig


def _aspect(lon: np.ndarray, lat: np.ndarray) -> float:
    lon_span = float(np.nanmax(lon) - np.nanmin(lon)) * math.cos(math.radians(float(np.nanmean(lat))))
    lat_span = float(np.nanmax(lat) - np.nanmin(lat))
    return lat_span / lon_span if lon_span > 0 else 1.0


def _corners(a: np.ndarray) -> np.ndarray:
    """Cell corners [ny+1, nx+1] of a 2-D coordinate of cell centres (linear extrapolation at the edges)."""
    if min(a.shape) < 2:
        raise UserError(f"forecast grid {a.shape}: maps need at least 2 points along y and x")
    a = np.concatenate([2 * a[:1] - a[1:2], a, 2 * a[-1:] - a[-2:-1]], axis=0)
    a = np.concatenate([2 * a[:, :1] - a[:, 1:2], a, 2 * a[:, -1:] - a[:, -2:-1]], axis=1)
    return 0.25 * (a[:-1, :-1] + a[1:, :-1] + a[:-1, 1:] + a[1:, 1:])


def _map_panel(ax, corners: tuple[np.ndarray, np.ndarray], data, cmap, norm, note: str,
               mask_below: Optional[float] = None) -> None:
    """One pcolormesh on the cell corners of the 2-D longitude/latitude grid, with the domain outline."""
    lon, lat = corners
    edge = np.concatenate([np.stack([lon[0], lat[0]], 1), np.stack([lon[:, -1], lat[:, -1]], 1),
                           np.stack([lon[-1, ::-1], lat[-1, ::-1]], 1), np.stack([lon[::-1, 0], lat[::-1, 0]], 1)])
    ax.plot(edge[:, 0], edge[:, 1], color="0.35", lw=0.8, zorder=3)
    ax.set_facecolor("#f4f4f4")
    if data is None:
        ax.text(0.5, 0.5, f"truth not available\n({note})", ha="center", va="center", transform=ax.transAxes,
                fontsize=8.5, color="0.3")
        return
    masked = np.ma.masked_invalid(data)
    if mask_below is not None:
        masked = np.ma.masked_less(masked, mask_below)
    ax.pcolormesh(lon, lat, masked, cmap=cmap, norm=norm, shading="flat", rasterized=True)


def _colorbar(fig: Figure, mappable: ScalarMappable, ax, label: str, extend: str, shrink: float, aspect: float):
    """A horizontal colorbar below ``ax`` (one axes or a list of them)."""
    cbar = fig.colorbar(mappable, ax=ax, orientation="horizontal", shrink=shrink, pad=0.02, aspect=aspect,
                        extend=extend)
    cbar.set_label(label, fontsize=8.5)
    cbar.ax.tick_params(labelsize=7.5)
    return cbar


# --- output -------------------------------------------------------------------------------------------------------


def save_figure(fig: Figure, path: Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as PNG at ``path`` atomically (temporary file in the same directory, then ``os.replace``)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png.partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=dpi)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _unique(values: Iterable) -> list[str]:
    out: list[str] = []
    for v in values:
        if isinstance(v, str) and v not in out:
            out.append(v)
    return out
