"""What a forecast reads from the Zarr store: initial states, forcings along the horizon, statics, statistics.

Slot ``s`` of a cycle is the valid time ``init + s·Δt``: the k initial states are slots −k+1..0; the forcings G_φ
needs for forecast step n are at its input slots n−k+1..n and the time features at slots n−k+1..n+1 (computed from
the valid times, no store read). Forcings are taken from the store (they are known inputs in DEF, like the
authors' ERA5 setting); a horizon that runs past the store's written forcings is an error naming the time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from def_jax.data import normalization as norm
from def_jax.data import schema
from def_jax.data.source import WindowSource, channel_statistic, normalize_inplace, read_fields
from def_jax.errors import UserError


def _time_text(t: np.datetime64) -> str:
    return str(np.datetime_as_string(np.datetime64(t, "m"), unit="m"))


class ForecastInputs:
    """The store's side of a forecast: see the module docstring. ``history`` = k input states."""

    def __init__(self, store: str | Path, data_cfg: Any, history: int):
        if data_cfg.normalization != "global":
            raise UserError(f"config.data.normalization={data_cfg.normalization!r}: forecasts need 'global' "
                            f"normalization (per-sample statistics of future states are unknown)")
        self.source = WindowSource(store, history=history, lead_steps=1, split="forecast",
                                   normalization="global", statics=data_cfg.statics,
                                   time_encodings=data_cfg.time_encodings, dt_hours=data_cfg.dt_hours)
        self.store = str(store)
        self.history = int(history)
        src = self.source
        ds_times = src.times  # [T] store times
        self.times = ds_times
        self.step = np.timedelta64(int(round(src.dt_hours * 3600)), "s")
        self.status = np.asarray(schema.open_store(store)[schema.STATUS].values)  # [T]
        self.catalogue = src.catalogue
        self.state_channels = src.state_channels
        self.grid_shape = src.grid_shape
        self.lo, self.hi = norm.channel_bounds(self.state_channels, self.catalogue)  # [C] physical bounds

    @property
    def dt_hours(self) -> float:
        return float(self.source.dt_hours)

    def slot_times(self, init: np.datetime64, first: int, count: int) -> np.ndarray:
        """Valid times of slots first..first+count−1 [count] (datetime64[ns])."""
        return np.datetime64(init, "ns") + (first + np.arange(count)) * self.step.astype("timedelta64[ns]")

    def _indices(self, times: np.ndarray, what: str) -> np.ndarray:
        """Store indices of ``times``; an error naming the first time that is not in the store or not written."""
        idx = np.searchsorted(self.times, times)
        for t, i in zip(times, idx):
            if i >= len(self.times) or self.times[i] != t:
                raise UserError(f"store {self.store}: {what} needed at {_time_text(t)}, which is outside the store "
                                f"({_time_text(self.times[0])} to {_time_text(self.times[-1])})")
            if self.status[i] != 1:
                raise UserError(f"store {self.store}: {what} needed at {_time_text(t)}, whose slot is not written "
                                f"(time_status {int(self.status[i])})")
        return idx

    def _read(self, fields, times: np.ndarray, what: str) -> np.ndarray:
        idx = self._indices(times, what)  # consecutive, stride ≥ 1
        stride = int(idx[1] - idx[0]) if len(idx) > 1 else 1
        t_sl = slice(int(idx[0]), int(idx[-1]) + 1, stride)
        h, w = self.grid_shape
        return read_fields(self.source.reader().arrays, fields, t_sl, slice(0, h), slice(0, w))  # [T, H, W, C]

    def check_available(self, init: np.datetime64, steps: int, pre_steps: int = 0) -> None:
        """Fail before any work if an initial state or a forcing of the whole horizon is missing (names the time).
        ``pre_steps`` P: the analyses and forcings of the P steps before the initial time are needed too (bred and
        lagged ensembles)."""
        first = 1 - self.history - pre_steps
        self._indices(self.slot_times(init, first, self.history + pre_steps), "an initial state")
        if self.source.forcing_fields:
            self._indices(self.slot_times(init, first, self.history + pre_steps + steps - 1), "forcing")

    def states(self, init: np.datetime64, first: int, count: int) -> np.ndarray:
        """Normalized analyses at slots first..first+count−1: [count, H, W, C] float32."""
        x = self._read(self.source.state_fields, self.slot_times(init, first, count), "an initial state")
        normalize_inplace(x, self.source.state_stats)
        return x

    def initial_states(self, init: np.datetime64) -> np.ndarray:
        """Normalized states at slots −k+1..0: [k, H, W, C] float32."""
        return self.states(init, 1 - self.history, self.history)

    def one_step_std(self) -> np.ndarray:
        """Each state channel's standard deviation of one-step differences X(t + Δt) − X(t) over the training
        period in normalized units, ``<var>_diff_std / <var>_std`` (Δt the store's step): [C] float32, the scale of
        the baseline ensembles' noise (:mod:`def_jax.forecast.perturbations`)."""
        diff = channel_statistic(schema.open_store(self.store), self.source.state_fields, self.store, "diff_std")
        return (diff / self.source.state_stats.std).astype(np.float32)

    def grid_spacing_km(self) -> float:
        """The grid spacing (km) of the store (:func:`def_jax.data.schema.grid_spacing_km`)."""
        return schema.grid_spacing_km(schema.open_store(self.store))

    def forcings(self, init: np.datetime64, first: int, count: int) -> np.ndarray:
        """Normalized forcings at slots first..first+count−1: [count, H, W, C_f] float32 (C_f may be 0)."""
        if not self.source.forcing_fields or count == 0:
            return np.zeros((count,) + self.grid_shape + (len(self.source.forcing_channels),), np.float32)
        x = self._read(self.source.forcing_fields, self.slot_times(init, first, count), "forcing")
        normalize_inplace(x, self.source.forcing_stats)
        return x

    def time_features(self, init: np.datetime64, first: int, count: int) -> np.ndarray:
        """[count, 4] (or [count, 0] without time encodings)."""
        if not self.source.time_encodings:
            return np.zeros((count, 0), np.float32)
        return norm.time_features(self.slot_times(init, first, count))

    def statics(self) -> np.ndarray:
        """[H, W, C_st] standardized statics (with latitude, longitude)."""
        return self.source.reader().statics

    def truth(self, init: np.datetime64, first: int, count: int) -> np.ndarray:
        """Physical states at slots first..first+count−1 [count, H, W, C] (all must be written)."""
        return self._read(self.source.state_fields, self.slot_times(init, first, count), "a state")

    def to_physical(self, x: np.ndarray) -> np.ndarray:
        """Normalized [..., C] → physical units with the catalogue's constraints (q, CAPE, PWAT ≥ 0; CIN ≤ 0; REFC
        floor) applied, float32."""
        y = norm.denormalize(np.asarray(x, np.float32), self.source.state_stats)
        return np.clip(y, self.lo, self.hi).astype(np.float32)
