"""Maps of one forecast file (``maps_<key>_<lead>h.png``): truth from the store, ensemble mean, spread,
P(REFC ≥ 35 dBZ) and members on the forecast's 2-D latitude/longitude grid."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import colors as mcolors
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure

from def_jax.data.store import StoreReader, match_level
from def_jax.errors import UserError
from def_jax.evaluation.plots.common import LABELS, Key, VariableMeta, key_name, num, open_forecast
from def_jax.evaluation.plots.zonal import zonal_figure
from def_jax.forecast.files import forecast_paths

MAP_VARIABLES = ("refc", "t2m")
REFC_EVENT = 35.0  # dBZ: the probability panel of reflectivity maps
REFC_BOUNDS = np.arange(5.0, 75.0, 5.0)  # dBZ: 5, 10, ..., 70; below 5 dBZ is masked (no echo)
REFC_COLORS = ("#04e9e7", "#019ff4", "#0300f4", "#02fd02", "#01c501", "#008e00", "#fdf802", "#e5bc00", "#fd9500",
               "#fd0000", "#d40000", "#bc0000", "#f800fd")  # NWS-style, one per 5 dBZ interval
REFC_OVER = "#9854c6"
_NON_LEVEL_DIMS = ("init_time", "member", "lead_time", "time", "y", "x")


def forecast_file(path: Path) -> Path:
    if path.is_dir() and path.suffix != ".zarr":
        files = forecast_paths(path)
        if not files:
            raise UserError(f"{path}: no forecast_*.nc or forecast_*.zarr files in this directory")
        return files[0]
    if not path.exists():
        raise UserError(f"forecast file {path}: not found")
    return path


def reflectivity_cmap() -> tuple[mcolors.Colormap, mcolors.Normalize]:
    """A discrete dBZ colormap (5 dBZ steps, 5–70 dBZ, darker above); values below 5 dBZ are transparent."""
    cmap, norm = mcolors.from_levels_and_colors(REFC_BOUNDS, list(REFC_COLORS) + [REFC_OVER], extend="max")
    return cmap.with_extremes(under=(0, 0, 0, 0), bad=(0, 0, 0, 0)), norm


class MapPlan:
    """What to map from one forecast file: variables, leads and the truth; checked before anything is drawn."""

    def __init__(self, forecast_path: Path, store_path: Optional[Path], keys: Optional[list[Key]],
                 lead_hours: Sequence[int] | None, log: Callable[[str], None],
                 default_keys: Sequence[Key] = ()):
        self.path = forecast_path
        self.ds = open_forecast(forecast_path)
        try:
            # the requested keys; else MAP_VARIABLES, or (a catalogue without them) the tables' default keys
            self.keys = _map_keys(self.ds, keys) or ([] if keys is not None else _map_keys(self.ds, list(default_keys)))
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
    latlon = is_latlon(plan.ds)
    for key in plan.keys:
        for lead in plan.leads:
            fields = _map_fields(plan.ds, key, lead, members_to_show, plan.truth)
            yield _map_figure(plan.ds, key, lead, fields, meta), f"maps_{key_name(key)}_{lead}h.png"
            if latlon:
                all_members = _map_fields(plan.ds, key, lead, fields["n_members"], plan.truth)
                yield zonal_figure(plan.ds, key, lead, all_members, meta), f"zonal_{key_name(key)}_{lead}h.png"


def _map_keys(ds, keys: Optional[list[Key]]) -> list[Key]:
    if keys is None:
        return [(v, None) for v in MAP_VARIABLES if v in ds.data_vars]
    out = []
    for name, level in keys:
        if name in ds.data_vars and (level is None or _level_index(ds[name], level) is not None):
            out.append((name, level))
    return out


def _level_index(da, level: float) -> Optional[tuple[str, int]]:
    """(level dimension, index) of ``level`` hPa in a forecast variable ``da`` (``level`` or ``<var>_level``), or
    None (levels matched by :func:`def_jax.data.store.match_level`)."""
    dim = next((d for d in da.dims if d not in _NON_LEVEL_DIMS), None)
    if dim is None:
        return None
    index = match_level(da[dim].values, level)
    return None if index is None else (dim, index)


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
        self.path = path
        self.store = StoreReader(path)
        fy, fx = np.asarray(forecast["y"].values), np.asarray(forecast["x"].values)
        y, x = self.store.y, self.store.x  # [Y], [X] store coordinates
        try:
            iy = [int(np.abs(y - v).argmin()) for v in fy]
            ix = [int(np.abs(x - v).argmin()) for v in fx]
            tol_y = 1e-3 * max(float(np.abs(np.diff(fy)).min()) if len(fy) > 1 else 1.0, 1e-9)
            tol_x = 1e-3 * max(float(np.abs(np.diff(fx)).min()) if len(fx) > 1 else 1.0, 1e-9)
            ok = np.abs(y[iy] - fy).max() <= tol_y and np.abs(x[ix] - fx).max() <= tol_x
        except (KeyError, ValueError):
            ok = False
        if not ok:
            raise UserError(f"store {path}: its y/x grid does not contain the forecast's grid")
        self.iy, self.ix = iy, ix

    def field(self, key: Key, valid: np.datetime64) -> tuple[Optional[np.ndarray], str]:
        """The truth [y, x], or None and the reason it is not available."""
        name, level = key
        if name not in self.store.ds.data_vars:
            return None, f"{name} not in the store"
        hits = np.nonzero(self.store.times == np.datetime64(valid, "ns"))[0]
        if len(hits) == 0 or not self.store.written[hits[0]]:
            return None, "valid time not written in the store"
        da = self.store.ds[name].isel(time=int(hits[0]))
        if level is not None:
            levels = self.store.levels(name)
            index = None if levels is None else match_level(levels, level)
            if index is None:
                return None, f"{key_name(key)} not in the store"
            da = da.isel({da.dims[0]: index})
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
    lon = plot_longitudes(ds["longitude"].values)
    lat = np.asarray(ds["latitude"].values, np.float64)
    corners = (_corners(lon), _corners(lat))
    is_refc = name == "refc"
    mode = str(ds.attrs.get("mode", "def"))
    perturbation = str(ds.attrs.get("perturbation", "def"))
    ens = LABELS.get(perturbation, perturbation) if mode == "def" else f"{mode} samples"
    panels = [("truth (store)", fields["truth"], "value"),
              (f"{ens} mean (B = {fields['n_members']})", fields["mean"], "value"),
              ("ensemble spread (std)", fields["std"], "spread")]
    if is_refc:
        panels.append((f"P(refc ≥ {num(REFC_EVENT)} dBZ)", fields["probability"], "probability"))
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


def plot_longitudes(lon) -> np.ndarray:
    """Longitudes [y, x] continuous along each row (no jump at the date line or at 0°/360°, so that a global grid's
    cells stay contiguous), in −180 … 180 where the grid lies within one such span."""
    lon = np.degrees(np.unwrap(np.radians(np.asarray(lon, np.float64)), axis=-1))
    if np.nanmin(lon) >= 180.0:
        lon = lon - 360.0
    return lon


def is_latlon(ds) -> bool:
    """Whether the forecast's grid is a regular latitude-longitude one (latitude constant along x, longitude along
    y): the grids of ``prepare --from-xarray``."""
    lat, lon = np.asarray(ds["latitude"].values), np.asarray(ds["longitude"].values)
    return lat.ndim == 2 and bool(np.allclose(lat, lat[:, :1]) and np.allclose(lon, lon[:1, :]))


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
