"""One open Zarr store (docs/DATA.md): its metadata, read once, and its arrays, read by time and region.

:class:`StoreReader` is the one reader of a store behind the training source
(:class:`def_jax.data.source.WindowSource`), the forecast inputs (:class:`def_jax.forecast.inputs.ForecastInputs`), the
evaluation's truth (:class:`def_jax.evaluation.truth.Truth`) and the truth panels of maps:

* metadata, read in the process that opens it: catalogue, time axis (``times`` [T], ``status`` [T], ``written`` [T],
  ``dt_hours``), grid (``grid_shape``, ``y``, ``x``, ``crs``), level coordinates (:meth:`StoreReader.levels`);
* how to read the catalogue's channels (:class:`Field`: a variable and the indices of its catalogue levels), their
  normalization statistics (:meth:`StoreReader.load_stats`, :meth:`StoreReader.channel_statistic`);
* geometry: :meth:`StoreReader.projection`, :meth:`StoreReader.area_weights`, :meth:`StoreReader.grid_spacing_km`;
* data: :meth:`StoreReader.read` (channels of fields at time slots on a region: [T, h, w, C] float32) and
  :meth:`StoreReader.statics` (standardized statics [H, W, C_static]) through zarr handles that each process opens for
  itself (a pickled reader, e.g. in a Grain worker, holds none and reopens the store on first use, as does a forked
  child); :meth:`StoreReader.field` reads one variable's slot (all its store levels) through xarray.

Levels are matched by value with one rule everywhere (:func:`match_level`): the first level within 1e-3 hPa.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import xarray as xr
import zarr
from zarr.core.sync import sync as zarr_sync

from def_jax.catalogue import Catalogue, Variable
from def_jax.data import normalization as norm
from def_jax.data import schema, windows
from def_jax.errors import UserError
from def_jax.geo import LambertConformal

COORD_STATICS = ("latitude", "longitude")
# Descriptive names the configs use (data.statics) for catalogue statics; taken "where available" (DEF_METHOD §2).
STATIC_ALIASES = {"orography": "orog", "land_mask": "lsm"}
AREA_WEIGHTINGS = ("uniform", "coslat", "map_factor")
LEVEL_TOLERANCE = 1e-3  # hPa: two levels closer than this are the same level
Region = tuple[int, int, int, int]  # (y0, x0, h, w)


# --- levels -------------------------------------------------------------------------------------------------------


def match_level(levels: Any, level: float) -> Optional[int]:
    """The index of ``level`` (hPa) in ``levels`` [L] (the first within :data:`LEVEL_TOLERANCE`), or None."""
    hit = np.flatnonzero(np.isclose(np.asarray(levels, np.float64), float(level), rtol=0.0, atol=LEVEL_TOLERANCE))
    return int(hit[0]) if hit.size else None


def level_indices(store_levels: Any, wanted: Sequence[float], where: str) -> tuple[int, ...]:
    """Indices into ``store_levels`` of the ``wanted`` levels (in the order wanted); a UserError starting with
    ``where`` (the store and variable) names any missing."""
    store_levels = np.asarray(store_levels, np.float64)
    found = [match_level(store_levels, lev) for lev in wanted]
    missing = [lev for lev, i in zip(wanted, found) if i is None]
    if missing:
        raise UserError(f"{where}: levels {missing} of the catalogue are not in the store's levels "
                        f"{store_levels.tolist()}")
    return tuple(found)


# --- fields and statistics ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Field:
    """How to read the channels of one store variable: which level indices, in catalogue order."""

    name: str
    channels: tuple[str, ...]
    levels: Optional[tuple[float, ...]]  # catalogue levels (hPa); None for a 2-D field
    level_index: Optional[tuple[int, ...]]  # their indices along the variable's level dim


def field_of(ds: Any, var: Variable, store: str) -> Field:
    """How to read catalogue variable ``var`` from the store (checks its dims: (time, [level,] y, x))."""
    if var.name not in ds:
        raise UserError(f"store {store}: catalogue variable {var.name!r} is missing from the store")
    dims = ds[var.name].dims
    expected = 3 if var.levels is None else 4
    if len(dims) != expected or dims[0] != "time" or dims[-2:] != ("y", "x"):
        raise UserError(f"store {store}: variable {var.name!r} has dims {dims}; expected "
                        f"{'(time, y, x)' if expected == 3 else '(time, level, y, x)'}")
    if var.levels is None:
        return Field(var.name, tuple(var.channels), None, None)
    level_dim = dims[1]
    idx = level_indices(ds[level_dim].values, var.levels, f"store {store}: variable {var.name!r} ({level_dim})")
    return Field(var.name, tuple(var.channels), tuple(var.levels), idx)


def state_fields(ds: Any, store: str) -> tuple[Field, ...]:
    """How to read the catalogue's state variables, in the catalogue's channel order (the models')."""
    return tuple(field_of(ds, v, store) for v in schema.store_catalogue(ds).by_role("state"))


def _require_statistics(ds: Any, fields: Sequence[Field], store: str, keys: Sequence[str]) -> None:
    missing = [schema.stat_names(f.name)[k] for f in fields for k in keys if schema.stat_names(f.name)[k] not in ds]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UserError(f"store {store}: no normalization statistics ({', '.join(missing[:3])}{more} missing); "
                        f"run `def-jax stats` first, or use --config.data.normalization=per_sample")


def channel_statistic(ds: Any, fields: Sequence[Field], store: str, key: str) -> np.ndarray:
    """One statistic (``mean``, ``std``, ``diff_mean``, ``diff_std``: :func:`schema.stat_names`) of every channel of
    ``fields`` from the store's ``<var>_<key>`` variables: [C] float64."""
    _require_statistics(ds, fields, store, (key,))
    out = []
    for f in fields:
        name = schema.stat_names(f.name)[key]
        da = ds[name]
        values = np.atleast_1d(np.asarray(da.values, np.float64))
        if f.level_index is not None:
            if da.ndim != 1:
                raise UserError(f"store {store}: {name} has dims {da.dims}; expected one level dim")
            values = values[list(level_indices(ds[da.dims[0]].values, f.levels, f"store {store}: {name}"))]
        elif values.shape != (1,):
            raise UserError(f"store {store}: {name} has shape {values.shape}; expected a scalar")
        out.append(values)
    return np.concatenate(out)  # [C]


def load_stats(ds: Any, fields: Sequence[Field], store: str) -> norm.ChannelStats:
    """Global statistics of ``fields``' channels from the store's ``<var>_mean``/``<var>_std`` variables."""
    _require_statistics(ds, fields, store, ("mean", "std"))
    mean, std = (channel_statistic(ds, fields, store, key) for key in ("mean", "std"))  # [C]
    channels = tuple(c for f in fields for c in f.channels)
    bad = [c for c, m, s in zip(channels, mean, std) if not (np.isfinite(m) and np.isfinite(s) and s >= 0)]
    if bad:
        raise UserError(f"store {store}: statistics of channels {bad} are not finite (or std < 0); "
                        f"rerun `def-jax stats`")
    std = np.where(std > 0, std, 1.0)  # a constant channel normalizes to 0 and denormalizes exactly
    return norm.ChannelStats(channels, mean, std)


def resolve_statics(requested: Optional[Sequence[str]], catalogue: Catalogue) -> tuple[str, ...]:
    """Store names of the static channels: catalogue statics then latitude, longitude (``None`` = all of them).

    Names in ``requested`` are catalogue static variables, ``latitude``/``longitude``, or the descriptive
    ``orography``/``land_mask``, which are skipped when the catalogue has no such static ("where available").
    """
    static_vars = [v.name for v in catalogue.by_role("static")]
    if requested is None:
        return tuple(static_vars) + COORD_STATICS
    out: list[str] = []
    for name in requested:
        if name in COORD_STATICS or name in static_vars:
            out.append(name)
        elif name in STATIC_ALIASES:
            if STATIC_ALIASES[name] in static_vars:
                out.append(STATIC_ALIASES[name])
        else:
            raise UserError(f"data.statics: {name!r} is neither a static variable of catalogue {catalogue.name!r} "
                            f"({', '.join(static_vars) or 'none'}) nor one of {', '.join(COORD_STATICS)}, "
                            f"{', '.join(STATIC_ALIASES)}")
    return tuple(dict.fromkeys(out))


# --- time axis ------------------------------------------------------------------------------------------------------


def store_time_axis(ds: Any) -> tuple[np.ndarray, np.ndarray, float]:
    """The store's valid times [T] (datetime64[ns]), ``time_status`` [T] and step in hours (``dt_hours``)."""
    times, status = _times(ds), _status(ds)  # [T], [T]
    return times, status, _dt_hours(ds, times)


def _times(ds: Any) -> np.ndarray:
    return np.asarray(ds["time"].values, "datetime64[ns]")  # [T]


def _status(ds: Any) -> np.ndarray:
    return np.asarray(ds[schema.STATUS].values)  # [T]


def _dt_hours(ds: Any, times: np.ndarray) -> float:
    return float(ds.attrs.get("dt_hours", 0)) or float(windows.infer_dt(times) / np.timedelta64(1, "h"))


def stride_for(dt_hours: Optional[float], store_dt: float, store: str) -> int:
    """Store steps per forecaster step: ``dt_hours`` / the store's ``dt_hours`` (a positive integer; None → 1)."""
    if dt_hours is None:
        return 1
    ratio = float(dt_hours) / store_dt
    if ratio < 1 or abs(ratio - round(ratio)) > 1e-9:
        raise UserError(f"data.dt_hours = {dt_hours} must be a positive multiple of the store's dt_hours "
                        f"({store_dt}, {store})")
    return int(round(ratio))


# --- reading --------------------------------------------------------------------------------------------------------


def region_slices(region: Optional[Region], grid_shape: tuple[int, int]) -> tuple[slice, slice]:
    """The (y, x) slices of ``region`` = (y0, x0, h, w), or of the whole grid for None."""
    if region is None:
        return slice(0, grid_shape[0]), slice(0, grid_shape[1])
    y0, x0, h, w = region
    if y0 < 0 or x0 < 0 or h < 1 or w < 1 or y0 + h > grid_shape[0] or x0 + w > grid_shape[1]:
        raise ValueError(f"region {region} (y0, x0, h, w) is not inside the grid {grid_shape}")
    return slice(y0, y0 + h), slice(x0, x0 + w)


def read_fields(arrays: Any, fields: Sequence[Field], t_sl: slice, y_sl: slice, x_sl: slice) -> np.ndarray:
    """Channels of ``fields`` at times ``t_sl`` on the region from ``arrays[name]`` (zarr arrays, (time, [level,] y,
    x)): [T, h, w, C] float32. The variables are read concurrently (zarr's asynchronous reads on its own event loop,
    as its synchronous API runs them), so that their chunks decompress together."""
    n_t = len(range(*t_sl.indices(10**12)))
    shape = (n_t, y_sl.stop - y_sl.start, x_sl.stop - x_sl.start)
    out = np.empty(shape + (sum(len(f.channels) for f in fields),), np.float32)  # [T, h, w, C]
    selections = [(t_sl, y_sl, x_sl) if f.level_index is None else (t_sl, slice(None), y_sl, x_sl) for f in fields]
    blocks = zarr_sync(_read_all([arrays[f.name].async_array for f in fields], selections))
    c = 0
    for f, block in zip(fields, blocks):
        if f.level_index is None:
            out[..., c] = block  # [T, h, w]
        else:  # block [T, L_store, h, w]
            out[..., c:c + len(f.channels)] = np.moveaxis(block[:, list(f.level_index)], 1, -1)  # [T, h, w, L]
        c += len(f.channels)
    return out


async def _read_all(arrays: Sequence[Any], selections: Sequence[tuple]) -> list[np.ndarray]:
    return await asyncio.gather(*(arr.getitem(sel) for arr, sel in zip(arrays, selections)))


class _Handles:
    """One process's open store: the zarr group, its data arrays (opened on first use, checked to be plain float32)
    and the standardized statics by requested names."""

    def __init__(self, path: str):
        self.pid = os.getpid()
        self.path = path
        self.group = zarr.open_group(path, mode="r")
        self.statics: dict[tuple[str, ...], np.ndarray] = {}
        self._arrays: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._arrays:
            arr = self.group[name]
            if "scale_factor" in arr.attrs or "add_offset" in arr.attrs:
                raise UserError(f"store {self.path}: variable {name!r} is packed (scale_factor/add_offset); "
                                f"the schema expects plain float32")
            self._arrays[name] = arr
        return self._arrays[name]


class StoreReader:
    """One open store: metadata read once, data read by time and region (module docstring). ``path`` is kept as
    given (a str)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._ds: Optional[xr.Dataset] = schema.open_store(path)
        ds = self._ds
        self.catalogue = schema.store_catalogue(ds)
        self.grid_shape = (int(ds.sizes["y"]), int(ds.sizes["x"]))
        self.times, self.status = _times(ds), _status(ds)  # [T] datetime64[ns], [T]
        self.written = schema.written_mask(ds)  # [T] bool
        self.y, self.x = np.asarray(ds["y"].values), np.asarray(ds["x"].values)  # [H], [W]
        self.crs = dict(ds[schema.CRS].attrs) if schema.CRS in ds else {}
        self._handles: Optional[_Handles] = None

    def __repr__(self) -> str:
        return f"StoreReader({self.path!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_ds"] = state["_handles"] = None  # each process opens the store itself
        return state

    @property
    def ds(self) -> xr.Dataset:
        """The store as a lazy xarray Dataset (reopened in a process that got a pickled reader)."""
        if self._ds is None:
            self._ds = schema.open_store(self.path)
        return self._ds

    @functools.cached_property
    def dt_hours(self) -> float:
        """The store's time step in hours (its ``dt_hours`` attribute, else inferred from the times)."""
        return _dt_hours(self.ds, self.times)

    # --- channels and statistics ------------------------------------------------------------------------------------

    def fields(self, role: str) -> tuple[Field, ...]:
        """How to read the catalogue variables of ``role`` (``state``, ``forcing``), in the catalogue's order."""
        return tuple(field_of(self.ds, v, self.path) for v in self.catalogue.by_role(role))

    def channel_statistic(self, fields: Sequence[Field], key: str) -> np.ndarray:
        """:func:`channel_statistic` of ``fields`` in this store: [C] float64."""
        return channel_statistic(self.ds, fields, self.path, key)

    def load_stats(self, fields: Sequence[Field]) -> norm.ChannelStats:
        """:func:`load_stats` of ``fields`` in this store."""
        return load_stats(self.ds, fields, self.path)

    def static_names(self, requested: Optional[Sequence[str]]) -> tuple[str, ...]:
        """:func:`resolve_statics` of ``requested``, each checked to be in the store."""
        names = resolve_statics(requested, self.catalogue)
        for name in names:
            if name not in self.ds:
                raise UserError(f"store {self.path}: static {name!r} is missing from the store")
        return names

    def static_channels(self, names: Sequence[str]) -> tuple[str, ...]:
        """The channel names of the statics ``names`` (a multi-level static has one per level)."""
        return tuple(c for n in names for c in (self.catalogue[n].channels if n not in COORD_STATICS else [n]))

    def levels(self, var: str) -> Optional[np.ndarray]:
        """The store levels [L] (hPa, float64) of a multi-level variable (dims (time, level, y, x)), else None."""
        da = self.ds[var]
        return np.asarray(self.ds[da.dims[1]].values, np.float64) if da.ndim == 4 else None

    def level_indices(self, var: str, wanted: Sequence[float]) -> tuple[int, ...]:
        """:func:`level_indices` of ``wanted`` in variable ``var``'s levels (the error names the store and ``var``)."""
        return level_indices(self.levels(var), wanted, f"store {self.path}: variable {var!r}")

    # --- geometry ---------------------------------------------------------------------------------------------------

    def projection(self) -> LambertConformal:
        """The Lambert conformal projection of the store's ``crs`` (a UserError for another grid mapping)."""
        return LambertConformal.from_cf(self.crs, f"store {self.path}: {schema.CRS}")

    @property
    def is_lambert(self) -> bool:
        return self.crs.get("grid_mapping_name") == "lambert_conformal_conic"

    def area_weights(self, weighting: Optional[str] = None) -> np.ndarray:
        """Area weights of the grid cells [H, W] float32, mean 1: ``uniform`` (ones), ``coslat`` (cos φ,
        :func:`~def_jax.evaluation.metrics.coslat_weights`) or ``map_factor`` ((Δ/k)² with the map scale factor k of
        the Lambert projection, :func:`~def_jax.evaluation.metrics.lambert_cell_area_weights`); None = the cells'
        areas on the sphere: ``map_factor`` on a Lambert grid, else ``coslat``."""
        from def_jax.evaluation import metrics  # the pure weight math; it imports JAX, which this module does not

        if weighting is None:
            weighting = "map_factor" if self.is_lambert else "coslat"
        lat = np.asarray(self.ds["latitude"].values, np.float64)  # [H, W]
        if weighting == "uniform":
            return np.ones(self.grid_shape, np.float32)
        if weighting == "coslat":
            return metrics.coslat_weights(lat).astype(np.float32)
        if weighting != "map_factor":
            raise ValueError(f"area weighting {weighting!r} is not one of {', '.join(AREA_WEIGHTINGS)}")
        if not self.is_lambert:
            raise UserError(f"store {self.path}: evaluation.area_weighting=map_factor needs a Lambert conformal grid; "
                            f"crs grid_mapping_name is {self.crs.get('grid_mapping_name')!r} (use coslat or uniform)")
        return metrics.lambert_cell_area_weights(lat, self.projection()).astype(np.float32)

    def grid_spacing_km(self) -> float:
        """The grid spacing in km (:func:`def_jax.data.schema.grid_spacing_km`)."""
        return schema.grid_spacing_km(self.ds)

    # --- data -------------------------------------------------------------------------------------------------------

    def handles(self) -> _Handles:
        """This process's zarr handles (opened on first use, again after a fork)."""
        if self._handles is None or self._handles.pid != os.getpid():
            self._handles = _Handles(self.path)
        return self._handles

    def read(self, fields: Sequence[Field], t: slice, region: Optional[Region] = None) -> np.ndarray:
        """The channels of ``fields`` at store time slots ``t`` on ``region`` = (y0, x0, h, w) (None: the grid):
        [T, h, w, C] float32, in physical units."""
        y_sl, x_sl = region_slices(region, self.grid_shape)
        return read_fields(self.handles(), fields, t, y_sl, x_sl)

    def statics(self, names: Sequence[str]) -> np.ndarray:
        """The statics ``names`` (:meth:`static_names`; a multi-level static gives its catalogue levels), each
        channel standardized over the full grid: [H, W, C_static] float32 (read once per process)."""
        handles, names = self.handles(), tuple(names)
        if names not in handles.statics:
            layers = []
            for name in names:
                values = np.asarray(handles.group[name][...], np.float64)
                if values.ndim == 3:  # a multi-level static: (level, y, x)
                    dim = handles.group[name].metadata.dimension_names[0]
                    idx = level_indices(handles.group[dim][...], self.catalogue[name].levels,
                                        f"store {self.path}: static {name!r}")
                    values = np.moveaxis(values[list(idx)], 0, -1)  # [H, W, L]
                else:
                    values = values[..., None]  # [H, W, 1]
                if not np.all(np.isfinite(values)):
                    raise UserError(f"store {self.path}: static {name!r} has non-finite values")
                layers.append(values)
            if layers:
                statics = norm.spatial_standardize(np.concatenate(layers, axis=-1))[0]  # [H, W, C_static]
            else:
                statics = np.zeros(self.grid_shape + (0,))
            handles.statics[names] = statics.astype(np.float32)
        return handles.statics[names]

    def field(self, var: str, slot: int) -> np.ndarray:
        """Variable ``var`` at store time index ``slot``, all its store levels: [(L,) H, W] float32, read with zarr
        (5–6× faster than through xarray for a 32×32 field); values equal to a non-NaN fill value become NaN, as
        xarray's decoding makes them (the store writer's fill value is NaN)."""
        arr = self.handles()[var]
        values = np.asarray(arr[int(slot)], np.float32)  # [(L,) H, W]
        fill = arr.metadata.fill_value
        if fill is not None and not np.isnan(fill):
            values = np.where(values == np.float32(fill), np.float32(np.nan), values)
        return values
