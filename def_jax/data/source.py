"""A Grain random-access source of forecast windows read from the Zarr store (docs/DATA.md).

``WindowSource(store, history=k, lead_steps=n, period=...)[j]`` is the sample of the ``j``-th valid window
(:mod:`def_jax.data.windows`) starting at store time index ``i``: a flat dict of NumPy arrays, channels last,

=================  =======================  ==========================================================================
key                shape                    content
=================  =======================  ==========================================================================
``inputs``         [k, H, W, C_state]       states X[i], …, X[i+k−1] (normalized)
``targets``        [n, H, W, C_state]       states X[i+k], …, X[i+k+n−1] (normalized)
``forcings``       [k+n, H, W, C_forcing]   forcings at all k+n times (normalized)
``time_features``  [k+n, 4]                 sin/cos hour-of-day, sin/cos day-of-year (``[k+n, 0]`` if disabled)
``statics``        [H, W, C_static]         static variables, then latitude, longitude; spatially standardized
``time_index``     () int64                 ``i``, the store time index of the window's first slot
``crop_offset``    [2] int64                (y0, x0) of the region read (0, 0 for the full grid)
=================  =======================  ==========================================================================

All float arrays are float32. With ``normalization="per_sample"`` every state and forcing field (one time, one channel)
is standardized over the sample's region, and four more keys hold the statistics of the states (to undo it):
``inputs_mean``/``inputs_std`` [k, C_state], ``targets_mean``/``targets_std`` [n, C_state]. Statics are standardized
over the full grid in both modes, then cropped.

Channel order is the store catalogue's (:meth:`Catalogue.channels` of the role: variables, then levels in catalogue
order); the levels are looked up by value in the variable's level dimension (``level`` or ``<name>_level``).

The store's metadata (times, status, level coordinates, statistics) are read once, in the process that builds the
source; the data arrays are opened lazily with zarr in each process that reads (a Grain worker gets a pickled copy
without open handles) and only the window's time slots and the requested ``y``/``x`` region are read (chunks are one
time step). Statics are read and standardized once per process.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import zarr

from def_jax.catalogue import Catalogue, Variable
from def_jax.data import normalization as norm
from def_jax.data import schema, windows
from def_jax.errors import UserError

COORD_STATICS = ("latitude", "longitude")
# Descriptive names the configs use (data.statics) for catalogue statics; taken "where available" (DEF_METHOD §2).
STATIC_ALIASES = {"orography": "orog", "land_mask": "lsm"}
Region = tuple[int, int, int, int]  # (y0, x0, h, w)


@dataclasses.dataclass(frozen=True)
class Field:
    """How to read the channels of one store variable: which level indices, in catalogue order."""

    name: str
    channels: tuple[str, ...]
    levels: Optional[tuple[float, ...]]  # catalogue levels (hPa); None for a 2-D field
    level_index: Optional[tuple[int, ...]]  # their indices along the variable's level dim


def level_indices(store_levels: np.ndarray, wanted: Sequence[float], where: str) -> tuple[int, ...]:
    """Indices into ``store_levels`` of the ``wanted`` levels (in the order wanted); a UserError names any missing."""
    store_levels = np.asarray(store_levels, np.float64)
    out, missing = [], []
    for lev in wanted:
        hit = np.flatnonzero(np.isclose(store_levels, float(lev), rtol=0.0, atol=1e-3))
        if hit.size:
            out.append(int(hit[0]))
        else:
            missing.append(lev)
    if missing:
        raise UserError(f"{where}: levels {missing} of the catalogue are not in the store's levels "
                        f"{store_levels.tolist()}")
    return tuple(out)


def _field(ds: Any, var: Variable, store: str) -> Field:
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
    return tuple(_field(ds, v, store) for v in schema.store_catalogue(ds).by_role("state"))


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


class _Reader:
    """Per-process handles: the zarr arrays and the standardized statics [H, W, C_static] of the full grid."""

    def __init__(self, src: "WindowSource"):
        self.pid = os.getpid()
        group = zarr.open_group(src.store, mode="r")
        self.arrays = {f.name: group[f.name] for f in src.state_fields + src.forcing_fields}
        for name, arr in self.arrays.items():
            if "scale_factor" in arr.attrs or "add_offset" in arr.attrs:
                raise UserError(f"store {src.store}: variable {name!r} is packed (scale_factor/add_offset); "
                                f"the schema expects plain float32")
        layers = []
        for name in src.static_names:
            values = np.asarray(group[name][...], np.float64)
            if values.ndim == 3:  # a multi-level static: (level, y, x)
                var = src.catalogue[name]
                dim = group[name].metadata.dimension_names[0]
                values = np.moveaxis(values[list(level_indices(group[dim][...], var.levels, name))], 0, -1)
            else:
                values = values[..., None]  # [H, W, 1]
            if not np.all(np.isfinite(values)):
                raise UserError(f"store {src.store}: static {name!r} has non-finite values")
            layers.append(values)
        if layers:
            statics = norm.spatial_standardize(np.concatenate(layers, axis=-1))[0]  # [H, W, C_static]
        else:
            statics = np.zeros(src.grid_shape + (0,))
        self.statics = statics.astype(np.float32)


class WindowSource:
    """Random access to the valid windows of one period (a Grain ``RandomAccessDataSource``). See the module doc."""

    def __init__(self, store: str | Path, *, history: int = 1, lead_steps: int = 1,
                 period: Optional[windows.PeriodLike] = None, split: str = "", normalization: str = "global",
                 statics: Optional[Sequence[str]] = None, time_encodings: bool = True,
                 dt_hours: Optional[float] = None):
        if history < 1 or lead_steps < 1:
            raise UserError(f"history ({history}) and lead_steps ({lead_steps}) must be ≥ 1")
        self.store = str(store)
        self.history, self.lead_steps, self.split = int(history), int(lead_steps), split
        self.normalization = norm.check_normalization(normalization)
        self.time_encodings = bool(time_encodings)
        ds = schema.open_store(store)
        self.catalogue = schema.store_catalogue(ds)
        self.state_fields = state_fields(ds, self.store)
        self.forcing_fields = tuple(_field(ds, v, self.store) for v in self.catalogue.by_role("forcing"))
        if not self.state_fields:
            raise UserError(f"store {self.store}: catalogue {self.catalogue.name!r} has no state variable")
        self.state_channels = tuple(self.catalogue.channels("state"))
        self.forcing_channels = tuple(self.catalogue.channels("forcing"))
        self.static_names = resolve_statics(statics, self.catalogue)
        for name in self.static_names:
            if name not in ds:
                raise UserError(f"store {self.store}: static {name!r} is missing from the store")
        self.static_channels = tuple(c for n in self.static_names
                                     for c in (self.catalogue[n].channels if n not in COORD_STATICS else [n]))
        self.grid_shape = (int(ds.sizes["y"]), int(ds.sizes["x"]))
        self.times, status, store_dt = store_time_axis(ds)  # [T], [T], hours
        self.stride = stride_for(dt_hours, store_dt, self.store)
        self.dt_hours = store_dt * self.stride
        self.period = None if period is None else windows.as_period(period, f"data.{split or 'window'}_period")
        self.starts = windows.valid_window_starts(self.times, status, self.window_length, period=self.period,
                                                  stride=self.stride, dt=_hours(store_dt))  # [N]
        if self.starts.size == 0:
            raise windows.empty_split_error(split, self.period, self.times, status, history, lead_steps, self.stride)
        self.state_stats = self.forcing_stats = None
        if self.normalization == "global":
            stats = load_stats(ds, self.state_fields + self.forcing_fields, self.store)
            cs = len(self.state_channels)
            self.state_stats = norm.ChannelStats(stats.channels[:cs], stats.mean[:cs], stats.std[:cs])
            if self.forcing_fields:
                self.forcing_stats = norm.ChannelStats(stats.channels[cs:], stats.mean[cs:], stats.std[cs:])
        self._reader: Optional[_Reader] = None

    # --- Grain RandomAccessDataSource ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.starts.size)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """The full-grid sample of window ``index``."""
        return self.read(index)

    def __repr__(self) -> str:  # stable across processes: Grain checks it when restoring an iterator's state
        return (f"WindowSource(store={self.store!r}, split={self.split!r}, "
                f"period={windows.format_period(self.period)}, "
                f"history={self.history}, lead_steps={self.lead_steps}, stride={self.stride}, "
                f"normalization={self.normalization!r}, statics={list(self.static_channels)}, "
                f"time_encodings={self.time_encodings}, windows={len(self)})")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_reader"] = None  # workers open the store themselves
        return state

    # --- reading --------------------------------------------------------------------------------------------------

    @property
    def window_length(self) -> int:
        return self.history + self.lead_steps

    def window_times(self, index: int) -> np.ndarray:
        """Valid times [k+n] of window ``index``."""
        i = int(self.starts[index])
        return self.times[i + self.stride * np.arange(self.window_length)]

    def reader(self) -> _Reader:
        """This process's open store (opened on first use, again after a fork)."""
        if self._reader is None or self._reader.pid != os.getpid():
            self._reader = _Reader(self)
        return self._reader

    def read_raw(self, index: int, region: Optional[Region] = None) -> tuple[np.ndarray, np.ndarray]:
        """Physical-unit states [k+n, h, w, C_state] and forcings [k+n, h, w, C_forcing] of window ``index``."""
        reader = self.reader()
        i = int(self.starts[index])
        t_sl = slice(i, i + (self.window_length - 1) * self.stride + 1, self.stride)
        y_sl, x_sl = _region_slices(region, self.grid_shape)
        return (read_fields(reader.arrays, self.state_fields, t_sl, y_sl, x_sl),
                read_fields(reader.arrays, self.forcing_fields, t_sl, y_sl, x_sl))

    def read(self, index: int, region: Optional[Region] = None) -> dict[str, np.ndarray]:
        """The normalized sample of window ``index`` (module docstring), on ``region`` = (y0, x0, h, w) or the grid."""
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range [0, {len(self)})")
        k = self.history
        states, forcings = self.read_raw(index, region)  # [k+n, h, w, Cs], [k+n, h, w, Cf]
        y_sl, x_sl = _region_slices(region, self.grid_shape)
        out: dict[str, np.ndarray] = {}
        if self.normalization == "global":  # in place: the arrays are ours, and this is the hot loop
            normalize_inplace(states, self.state_stats)
            if self.forcing_stats is not None:
                normalize_inplace(forcings, self.forcing_stats)
        else:
            states, mean, std = norm.spatial_standardize(states)  # mean/std [k+n, 1, 1, Cs]
            forcings = norm.spatial_standardize(forcings)[0] if forcings.shape[-1] else forcings
            mean, std = mean[:, 0, 0, :], std[:, 0, 0, :]  # [k+n, Cs]
            out.update(inputs_mean=mean[:k], inputs_std=std[:k], targets_mean=mean[k:], targets_std=std[k:])
        times = self.window_times(index)
        tf = norm.time_features(times) if self.time_encodings else np.zeros((len(times), 0), np.float32)
        out.update(
            inputs=states[:k],  # [k, h, w, Cs]
            targets=states[k:],  # [n, h, w, Cs]
            forcings=forcings,  # [k+n, h, w, Cf]
            time_features=tf,  # [k+n, 4]
            statics=self.reader().statics[y_sl, x_sl],  # [h, w, C_static]
            time_index=np.int64(self.starts[index]),
            crop_offset=np.array([y_sl.start, x_sl.start], np.int64),
        )
        return {key: (np.ascontiguousarray(v, np.float32) if v.dtype.kind == "f" else v) for key, v in out.items()}


def store_time_axis(ds: Any) -> tuple[np.ndarray, np.ndarray, float]:
    """The store's valid times [T] (datetime64[ns]), ``time_status`` [T] and step in hours (``dt_hours``)."""
    times = np.asarray(ds["time"].values, "datetime64[ns]")  # [T]
    status = np.asarray(ds[schema.STATUS].values)  # [T]
    dt = float(ds.attrs.get("dt_hours", 0)) or float(windows.infer_dt(times) / np.timedelta64(1, "h"))
    return times, status, dt


def _hours(hours: float) -> np.timedelta64:
    return np.timedelta64(int(round(hours * 3600e9)), "ns")


def stride_for(dt_hours: Optional[float], store_dt: float, store: str) -> int:
    """Store steps per forecaster step: ``dt_hours`` / the store's ``dt_hours`` (a positive integer; None → 1)."""
    if dt_hours is None:
        return 1
    ratio = float(dt_hours) / store_dt
    if ratio < 1 or abs(ratio - round(ratio)) > 1e-9:
        raise UserError(f"data.dt_hours = {dt_hours} must be a positive multiple of the store's dt_hours "
                        f"({store_dt}, {store})")
    return int(round(ratio))


def normalize_inplace(x: np.ndarray, stats: norm.ChannelStats) -> None:
    """:func:`def_jax.data.normalization.normalize` of x [..., C] float32, written into x."""
    np.subtract(x, stats.mean.astype(x.dtype), out=x)
    np.divide(x, stats.std.astype(x.dtype), out=x)


def _region_slices(region: Optional[Region], grid_shape: tuple[int, int]) -> tuple[slice, slice]:
    if region is None:
        return slice(0, grid_shape[0]), slice(0, grid_shape[1])
    y0, x0, h, w = region
    if y0 < 0 or x0 < 0 or h < 1 or w < 1 or y0 + h > grid_shape[0] or x0 + w > grid_shape[1]:
        raise ValueError(f"region {region} (y0, x0, h, w) is not inside the grid {grid_shape}")
    return slice(y0, y0 + h), slice(x0, x0 + w)


def read_fields(arrays: dict[str, Any], fields: Sequence[Field], t_sl: slice, y_sl: slice,
                 x_sl: slice) -> np.ndarray:
    """Channels of ``fields`` at times ``t_sl`` on the region: [T, h, w, C] float32."""
    n_t = len(range(*t_sl.indices(10**12)))
    shape = (n_t, y_sl.stop - y_sl.start, x_sl.stop - x_sl.start)
    out = np.empty(shape + (sum(len(f.channels) for f in fields),), np.float32)  # [T, h, w, C]
    c = 0
    for f in fields:
        arr = arrays[f.name]
        if f.level_index is None:
            out[..., c] = arr[t_sl, y_sl, x_sl]  # [T, h, w]
        else:
            block = arr[t_sl, :, y_sl, x_sl]  # [T, L_store, h, w]
            out[..., c:c + len(f.channels)] = np.moveaxis(block[:, list(f.level_index)], 1, -1)  # [T, h, w, L]
        c += len(f.channels)
    return out


def crop_region(grid_shape: tuple[int, int], crop_shape: Sequence[int],
                rng: Optional[np.random.Generator]) -> Optional[Region]:
    """A random ``(y0, x0, h, w)`` of size ``crop_shape`` inside the grid (0 in a dimension = its full extent);
    ``None`` when the crop is the full grid (no random draw then)."""
    ny, nx = grid_shape
    h, w = (int(crop_shape[0]) or ny, int(crop_shape[1]) or nx)
    if h > ny or w > nx or h < 0 or w < 0:
        raise UserError(f"data.crop_shape {tuple(crop_shape)} does not fit in the grid {grid_shape} (y, x)")
    if (h, w) == (ny, nx):
        return None
    if rng is None:
        raise ValueError("random crops need an rng (give the sampler a seed)")
    return int(rng.integers(0, ny - h + 1)), int(rng.integers(0, nx - w + 1)), h, w
