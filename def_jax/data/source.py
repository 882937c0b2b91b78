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

The store is read through one :class:`def_jax.data.store.StoreReader`: its metadata (times, status, level
coordinates, statistics) are read once, in the process that builds the source; the data arrays are opened lazily with
zarr in each process that reads (a Grain worker gets a pickled copy without open handles) and only the window's time
slots and the requested ``y``/``x`` region are read (chunks are one time step). With ``in_memory=True`` the states and
forcings of every slot the windows span are read once per process instead, and each window is a copy sliced from
them. Statics are read and standardized once per process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from def_jax.data import normalization as norm
from def_jax.data import windows
from def_jax.data.store import Region, StoreReader, region_slices, stride_for
from def_jax.errors import UserError


class WindowSource:
    """Random access to the valid windows of one period (a Grain ``RandomAccessDataSource``). See the module doc."""

    def __init__(self, store: str | Path, *, history: int = 1, lead_steps: int = 1,
                 period: Optional[windows.PeriodLike] = None, split: str = "", normalization: str = "global",
                 statics: Optional[Sequence[str]] = None, time_encodings: bool = True,
                 dt_hours: Optional[float] = None, in_memory: bool = False):
        if history < 1 or lead_steps < 1:
            raise UserError(f"history ({history}) and lead_steps ({lead_steps}) must be ≥ 1")
        self.store = str(store)
        self.history, self.lead_steps, self.split = int(history), int(lead_steps), split
        self.normalization = norm.check_normalization(normalization)
        self.time_encodings = bool(time_encodings)
        self.store_reader = reader = StoreReader(store)
        self.catalogue = reader.catalogue
        self.state_fields = reader.fields("state")
        self.forcing_fields = reader.fields("forcing")
        if not self.state_fields:
            raise UserError(f"store {self.store}: catalogue {self.catalogue.name!r} has no state variable")
        self.state_channels = tuple(self.catalogue.channels("state"))
        self.forcing_channels = tuple(self.catalogue.channels("forcing"))
        self.static_names = reader.static_names(statics)
        self.static_channels = reader.static_channels(self.static_names)
        self.grid_shape = reader.grid_shape
        self.times, status, store_dt = reader.times, reader.status, reader.dt_hours  # [T], [T], hours
        self.stride = stride_for(dt_hours, store_dt, self.store)
        self.dt_hours = store_dt * self.stride
        self.period = None if period is None else windows.as_period(period, f"data.{split or 'window'}_period")
        self.starts = windows.valid_window_starts(self.times, status, self.window_length, period=self.period,
                                                  stride=self.stride, dt=_hours(store_dt))  # [N]
        if self.starts.size == 0:
            raise windows.empty_split_error(split, self.period, self.times, status, history, lead_steps, self.stride)
        self.in_memory = bool(in_memory)
        self._memory: Optional[tuple] = None  # (pid, first slot, states, forcings) once read (in_memory)
        if self.in_memory:
            _check_memory(self.memory_bytes(), split, self.store)
        self.state_stats = self.forcing_stats = None
        if self.normalization == "global":
            stats = reader.load_stats(self.state_fields + self.forcing_fields)
            cs = len(self.state_channels)
            self.state_stats = norm.ChannelStats(stats.channels[:cs], stats.mean[:cs], stats.std[:cs])
            if self.forcing_fields:
                self.forcing_stats = norm.ChannelStats(stats.channels[cs:], stats.mean[cs:], stats.std[cs:])

    # --- Grain RandomAccessDataSource ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.starts.size)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """The full-grid sample of window ``index``."""
        return self.read(index)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_memory"] = None  # a process that gets a pickled source reads the period itself
        return state

    def __repr__(self) -> str:  # stable across processes: Grain checks it when restoring an iterator's state
        return (f"WindowSource(store={self.store!r}, split={self.split!r}, "
                f"period={windows.format_period(self.period)}, "
                f"history={self.history}, lead_steps={self.lead_steps}, stride={self.stride}, "
                f"normalization={self.normalization!r}, statics={list(self.static_channels)}, "
                f"time_encodings={self.time_encodings}, windows={len(self)})")

    # --- reading --------------------------------------------------------------------------------------------------

    @property
    def window_length(self) -> int:
        return self.history + self.lead_steps

    def window_times(self, index: int) -> np.ndarray:
        """Valid times [k+n] of window ``index``."""
        i = int(self.starts[index])
        return self.times[i + self.stride * np.arange(self.window_length)]

    def span(self) -> slice:
        """The store time slots the windows cover, from the first window's first slot to the last one's last."""
        return slice(int(self.starts.min()), int(self.starts.max()) + (self.window_length - 1) * self.stride + 1)

    def memory_bytes(self) -> int:
        """Bytes of the states and forcings of :meth:`span` on the full grid (what ``in_memory`` holds)."""
        channels = sum(len(f.channels) for f in self.state_fields + self.forcing_fields)
        return (self.span().stop - self.span().start) * self.grid_shape[0] * self.grid_shape[1] * channels * 4

    def read_raw(self, index: int, region: Optional[Region] = None) -> tuple[np.ndarray, np.ndarray]:
        """Physical-unit states [k+n, h, w, C_state] and forcings [k+n, h, w, C_forcing] of window ``index``
        (new arrays: :meth:`read` normalizes them in place)."""
        i = int(self.starts[index])
        if not self.in_memory:
            t_sl = slice(i, i + (self.window_length - 1) * self.stride + 1, self.stride)
            return (self.store_reader.read(self.state_fields, t_sl, region),
                    self.store_reader.read(self.forcing_fields, t_sl, region))
        if self._memory is None or self._memory[0] != os.getpid():
            span = self.span()  # read once per process, all variables at once, in physical units
            self._memory = (os.getpid(), span.start, self.store_reader.read(self.state_fields, span),
                            self.store_reader.read(self.forcing_fields, span))  # [S, H, W, Cs], [S, H, W, Cf]
        _, first, states, forcings = self._memory
        t_sl = slice(i - first, i - first + (self.window_length - 1) * self.stride + 1, self.stride)
        y_sl, x_sl = region_slices(region, self.grid_shape)
        return states[t_sl, y_sl, x_sl].copy(), forcings[t_sl, y_sl, x_sl].copy()

    def read(self, index: int, region: Optional[Region] = None) -> dict[str, np.ndarray]:
        """The normalized sample of window ``index`` (module docstring), on ``region`` = (y0, x0, h, w) or the grid."""
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range [0, {len(self)})")
        k = self.history
        states, forcings = self.read_raw(index, region)  # [k+n, h, w, Cs], [k+n, h, w, Cf]
        y_sl, x_sl = region_slices(region, self.grid_shape)
        out: dict[str, np.ndarray] = {}
        if self.normalization == "global":  # in place: the arrays are ours, and this is the hot loop
            normalize_inplace(states, self.state_stats)
            if self.forcing_stats is not None:
                normalize_inplace(forcings, self.forcing_stats)
        else:
            # in float64: a float32 mean of a field near 1e5 Pa is off by ~1e-4 of its spread
            states, mean, std = norm.spatial_standardize(states.astype(np.float64))  # mean/std [k+n, 1, 1, Cs]
            forcings = norm.spatial_standardize(forcings.astype(np.float64))[0] if forcings.shape[-1] else forcings
            mean, std = mean[:, 0, 0, :], std[:, 0, 0, :]  # [k+n, Cs]
            out.update(inputs_mean=mean[:k], inputs_std=std[:k], targets_mean=mean[k:], targets_std=std[k:])
        times = self.window_times(index)
        tf = norm.time_features(times) if self.time_encodings else np.zeros((len(times), 0), np.float32)
        out.update(
            inputs=states[:k],  # [k, h, w, Cs]
            targets=states[k:],  # [n, h, w, Cs]
            forcings=forcings,  # [k+n, h, w, Cf]
            time_features=tf,  # [k+n, 4]
            statics=self.store_reader.statics(self.static_names)[y_sl, x_sl],  # [h, w, C_static]
            time_index=np.int64(self.starts[index]),
            crop_offset=np.array([y_sl.start, x_sl.start], np.int64),
        )
        return {key: (np.ascontiguousarray(v, np.float32) if v.dtype.kind == "f" else v) for key, v in out.items()}


def _check_memory(nbytes: int, split: str, store: str) -> None:
    """``data.in_memory`` holds a period's states and forcings in each reading process: at most half of the
    machine's memory."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if nbytes > total / 2:
        raise UserError(f"data.in_memory: the {split or 'window'} period of {store} takes {nbytes / 2**30:.1f} GiB, "
                        f"more than half of this machine's {total / 2**30:.1f} GiB; set --config.data.in_memory=false "
                        "to read each window from the store")


def _hours(hours: float) -> np.timedelta64:
    return np.timedelta64(int(round(hours * 3600e9)), "ns")


def normalize_inplace(x: np.ndarray, stats: norm.ChannelStats) -> None:
    """:func:`def_jax.data.normalization.normalize` of x [..., C] float32, written into x."""
    np.subtract(x, stats.mean.astype(x.dtype), out=x)
    np.divide(x, stats.std.astype(x.dtype), out=x)


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
