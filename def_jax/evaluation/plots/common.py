"""What every figure of ``def-jax plot`` shares: reading the evaluation tables (one or several folders), the
(variable, level) selection, units and names of variables, the style of each system, bootstrap bands and atomic PNG
output."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # drawn without pyplot: Figure.savefig picks the Agg canvas for PNG
from matplotlib.ticker import MaxNLocator

from def_jax.errors import UserError
from def_jax.evaluation.tables import ENSEMBLES, SYSTEMS

DPI = 110
# The columns the figures read from each table: a subset of its column contract (tables.py, docs/FORECASTS.md).
READ_COLUMNS = {
    "scores.csv": ("system", "variable", "level", "lead_hours", "score", "threshold", "window", "value"),
    "rank_histogram.csv": ("system", "variable", "level", "lead_hours", "rank", "count"),
    "reliability.csv": ("system", "variable", "threshold", "lead_hours", "bin_lower", "bin_upper",
                        "forecast_probability", "observed_frequency", "count"),
    "spread_error.csv": ("system", "variable", "level", "lead_hours", "bin", "mean_spread", "rmse", "count"),
    "skill.csv": ("system", "variable", "level", "lead_hours", "score", "value"),
}
INTERVAL_COLUMNS = ("value_low", "value_high", "observed_frequency_low", "observed_frequency_high", "rmse_low",
                    "rmse_high")  # optional: tables written before the bootstrap have none
DEFAULT_LEVEL = 500.0  # hPa: the level of multi-level variables plotted by default
FEW_SAMPLES = 100  # reliability and spread–error bins with fewer points are drawn hollow

# Names and styles of the systems of tables.SYSTEMS (names not listed here are drawn with their own name).
LABELS = {"def": "DEF ensemble", "direct": "direct generative", "gaussian": "Gaussian noise",
          "correlated": "correlated noise", "bred": "bred vectors", "lagged": "lagged ensemble",
          "deterministic": "deterministic G_φ", "persistence": "persistence", "climatology": "climatology"}
_ENSEMBLE_COLORS = ("C0", "C1", "C3", "C4", "C6", "C8", "C9", "#8c6d31", "#393b79", "#e7969c")  # no greys
_ENSEMBLE_MARKERS = ("o", "s", "P", "X", "*", "h", "p", "<", ">", "d")
_REFERENCE_STYLE = {"deterministic": ("C2", "^"), "persistence": ("0.45", "v"), "climatology": ("C5", "D")}
SYSTEM_STYLE = {
    **{s: {"color": _ENSEMBLE_COLORS[i % len(_ENSEMBLE_COLORS)], "label": LABELS.get(s, s),
           "marker": _ENSEMBLE_MARKERS[i % len(_ENSEMBLE_MARKERS)]} for i, s in enumerate(ENSEMBLES)},
    **{s: {"color": _REFERENCE_STYLE.get(s, ("0.3", "x"))[0], "label": LABELS.get(s, s),
           "marker": _REFERENCE_STYLE.get(s, ("0.3", "x"))[1]} for s in SYSTEMS if s not in ENSEMBLES},
}

Key = tuple[str, Optional[float]]  # (variable, level in hPa or None)


# --- systems and series ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Series:
    """One line of the figures: a system of one evaluation folder. ``name`` is its entry in the combined tables'
    ``system`` column (the system itself, or the folder's name where two folders have the same system)."""

    name: str
    system: str
    label: str
    color: str
    marker: str

    @property
    def ensemble(self) -> bool:
        return self.system in ENSEMBLES


def default_series(system: str) -> Series:
    style = SYSTEM_STYLE.get(system) or {"color": f"C{3 + sum(map(ord, system)) % 5}", "label": system,
                                         "marker": "x"}  # stable across runs
    return Series(system, system, style["label"], style["color"], style["marker"])


@dataclasses.dataclass
class Evaluation:
    """The tables of one or several evaluation folders, their ``system`` column holding series names."""

    scores: pd.DataFrame
    ranks: pd.DataFrame
    reliability: pd.DataFrame
    spread_error: Optional[pd.DataFrame]
    skill: Optional[pd.DataFrame]
    series: dict  # name -> Series, in drawing order

    def style(self, name: str) -> Series:
        return self.series.get(name) or default_series(name)

    def names(self, table: Optional[pd.DataFrame], ensembles_only: bool = False) -> list[str]:
        """The series present in ``table``, in drawing order."""
        if table is None:
            return []
        present = set(unique(table["system"]))
        names = [n for n in self.series if n in present] + sorted(present - set(self.series))
        return [n for n in names if self.style(n).ensemble] if ensembles_only else names


def read_evaluation(directory: Path) -> dict[str, Optional[pd.DataFrame]]:
    """The tables of one folder: scores, rank histogram and reliability (required); spread–error and skill (None
    when the folder has none: tables written before them)."""
    read = lambda name, numeric: read_table(directory / name, READ_COLUMNS[name], numeric)  # noqa: E731
    optional = lambda name, numeric: read(name, numeric) if (directory / name).is_file() else None  # noqa: E731
    return {
        "scores": read("scores.csv", numeric=("level", "lead_hours", "threshold", "window", "value")),
        "ranks": read("rank_histogram.csv", numeric=("level", "lead_hours", "rank", "count")),
        "reliability": read("reliability.csv", numeric=("threshold", "lead_hours", "bin_lower", "bin_upper",
                                                        "forecast_probability", "observed_frequency", "count")),
        "spread_error": optional("spread_error.csv", ("level", "lead_hours", "bin", "mean_spread", "rmse", "count")),
        "skill": optional("skill.csv", ("level", "lead_hours", "value")),
    }


def folder_labels(directories: Sequence[Path]) -> list[str]:
    """The shortest trailing parts of the paths that tell the folders apart (``seed1/evaluation``, …)."""
    parts = [Path(os.path.abspath(d)).parts for d in directories]
    for n in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-n:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(d) for d in directories]


def load_evaluations(directories: Sequence[Path]) -> Evaluation:
    """The tables of the folders, combined: every folder's ensemble systems (a system that more than one folder has
    is named by the folder, :func:`folder_labels`), and the single forecasts (deterministic, persistence,
    climatology) of the first folder."""
    directories = [Path(d) for d in directories]
    if not directories:
        raise UserError("plot: no evaluation folder given")
    if len(set(map(os.path.abspath, directories))) < len(directories):
        raise UserError(f"plot --evaluation: a folder is given twice ({', '.join(map(str, directories))})")
    tables = [read_evaluation(d) for d in directories]
    labels = folder_labels(directories)
    owners: dict[str, int] = {}
    for t in tables:
        for system in set(unique(t["scores"]["system"])) & set(ENSEMBLES):
            owners[system] = owners.get(system, 0) + 1
    series: dict[str, Series] = {}
    combined: dict[str, list] = {name: [] for name in tables[0]}
    extra = 0
    for i, (t, label) in enumerate(zip(tables, labels)):
        rename = {}
        for system in _ordered(unique(t["scores"]["system"])):
            if system not in ENSEMBLES:
                if i == 0:
                    series.setdefault(system, default_series(system))
                continue
            if owners[system] == 1:
                series[system] = default_series(system)
            else:
                color = _ENSEMBLE_COLORS[(len(ENSEMBLES) + extra) % len(_ENSEMBLE_COLORS)]
                marker = _ENSEMBLE_MARKERS[(len(ENSEMBLES) + extra) % len(_ENSEMBLE_MARKERS)]
                extra += 1
                series[label] = Series(label, system, label, color, marker)
                rename[system] = label
        for name, df in t.items():
            if df is None:
                continue
            keep = df["system"].isin(ENSEMBLES) | (i == 0)
            combined[name].append(df[keep].replace({"system": rename}))
    frames = {name: pd.concat(dfs, ignore_index=True) if dfs else None for name, dfs in combined.items()}
    ordered = {n: s for n, s in series.items() if s.ensemble}
    ordered.update((n, s) for n, s in series.items() if not s.ensemble)
    return Evaluation(frames["scores"], frames["ranks"], frames["reliability"], frames["spread_error"],
                      frames["skill"], ordered)


def _ordered(systems: Iterable[str]) -> list[str]:
    systems = list(systems)
    return [s for s in SYSTEMS if s in systems] + [s for s in systems if s not in SYSTEMS]


# --- inputs -------------------------------------------------------------------------------------------------------


def read_table(path: Path, columns: Sequence[str], numeric: Sequence[str] = ()) -> pd.DataFrame:
    """Read an evaluation CSV, checking that it exists and has ``columns``; ``numeric`` columns (and the optional
    interval columns) become floats."""
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
    for col in list(numeric) + [c for c in INTERVAL_COLUMNS if c in df.columns]:
        try:
            df[col] = pd.to_numeric(df[col]).astype(float)
        except (ValueError, TypeError):
            raise UserError(f"{path}: column {col!r} has non-numeric entries") from None
    return df


def key_name(key: Key) -> str:
    """``t2m`` or ``z500``: the channel name, used in file names."""
    name, level = key
    return name if level is None else f"{name}{num(level)}"


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


def open_forecast(path: Path):
    from def_jax.forecast.files import open_forecast as open_file  # the forecast file format's one reader

    try:
        return open_file(path)
    except Exception as err:
        raise UserError(f"forecast file {path}: cannot be opened: {str(err).splitlines()[0]}") from None


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
            ds = open_forecast(self.forecast_path)
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
        where = f" at {num(level)} hPa" if level is not None else ""
        return f"{long_name}{where} ({key_name(key)})"

    def unit_label(self, name: str) -> str:
        units = self.units(name)
        return f" ({units})" if units else ""


# --- table selections and axes ------------------------------------------------------------------------------------


def rows_of(table: pd.DataFrame, key: Key, **match) -> pd.DataFrame:
    """The rows of one (variable, level) and of ``column=value`` matches (None: the column is empty)."""
    name, level = key
    rows = table[table["variable"] == name]
    if "level" in rows.columns:
        rows = rows[rows["level"].isna()] if level is None else rows[np.isclose(rows["level"], level)]
    for column, value in match.items():
        if value is None:
            rows = rows[rows[column].isna()]
        elif isinstance(value, float):
            rows = rows[np.isclose(rows[column], value)]
        else:
            rows = rows[rows[column] == value]
    return rows


def series_frame(table: pd.DataFrame, key: Key, system: str, score: str, threshold=None,
                 window=None) -> Optional[pd.DataFrame]:
    """``value`` (and ``value_low``, ``value_high`` where the table has them) of one score against lead time
    (NaN-free, sorted by lead), or None when the table has none."""
    rows = rows_of(table, key, system=system, score=score,
                   **({"threshold": threshold, "window": window} if "threshold" in table.columns else {}))
    rows = rows.dropna(subset=["lead_hours", "value"])
    if rows.empty:
        return None
    columns = [c for c in ("value", "value_low", "value_high") if c in rows.columns]
    return rows.groupby("lead_hours")[columns].mean().sort_index()


def series(table: pd.DataFrame, key: Key, system: str, score: str, **kw) -> Optional[pd.Series]:
    """Values of one score against lead time (NaN-free, sorted), or None when the table has none."""
    frame = series_frame(table, key, system, score, **kw)
    return None if frame is None else frame["value"]


def band(ax, frame: Optional[pd.DataFrame], color, x=None, alpha: float = 0.18) -> None:
    """Shade the bootstrap interval [value_low, value_high] of ``frame`` (nothing where it has none)."""
    if frame is None or "value_low" not in frame.columns or "value_high" not in frame.columns:
        return
    ok = frame["value_low"].notna() & frame["value_high"].notna()
    if ok.any():
        xs = np.asarray(frame.index if x is None else x)[ok.to_numpy()]
        ax.fill_between(xs, frame["value_low"][ok], frame["value_high"][ok], color=color, alpha=alpha, lw=0)


def lead_axis(ax) -> None:
    ax.set_xlabel("lead time (h)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)


def pick_leads(leads: Iterable[float], n: int = 4) -> list[float]:
    """Up to ``n`` leads spread over the available ones (first and last included)."""
    leads = sorted(set(float(v) for v in leads))
    if len(leads) <= n:
        return leads
    idx = np.unique(np.round(np.linspace(0, len(leads) - 1, n)).astype(int))
    return [leads[i] for i in idx]


def interval_note(table: Optional[pd.DataFrame], column: str = "value_low") -> str:
    """`` (shaded: bootstrap interval over cycles)`` when ``table`` has intervals, else empty."""
    if table is not None and column in table.columns and table[column].notna().any():
        return "; shaded: bootstrap interval over cycles"
    return ""


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


def num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def unique(values: Iterable) -> list[str]:
    out: list[str] = []
    for v in values:
        if isinstance(v, str) and v not in out:
            out.append(v)
    return out

