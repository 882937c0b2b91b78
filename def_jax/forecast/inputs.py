"""What a forecast reads from the Zarr store: initial states, forcings along the horizon, statics, statistics.

Slot ``s`` of a cycle is the valid time ``init + s·Δt``: the k initial states are slots −k+1..0; the forcings G_φ
needs for forecast step n are at its input slots n−k+1..n and the time features at slots n−k+1..n+1 (computed from
the valid times, no store read). Forcings are taken from the store (they are known inputs in DEF, like the
authors' ERA5 setting); a horizon that runs past the store's written forcings is an error naming the time.

Normalization (``data.normalization``): ``global`` normalizes with the store's training-period statistics and
:meth:`ForecastInputs.to_physical` inverts it; ``per_sample`` standardizes each field (one time, one channel) over
space with its own statistics, and outputs are converted back with the *initial* state's spatial mean and standard
deviation (:meth:`ForecastInputs.initial_reference`: each field's large-scale mean and spread persisted, the only
ones known at the initial time; the future states' own statistics would be an oracle).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from def_jax.data import normalization as norm
from def_jax.data import schema
from def_jax.data.source import normalize_inplace
from def_jax.data.store import StoreReader, stride_for
from def_jax.errors import UserError


def _time_text(t: np.datetime64) -> str:
    return str(np.datetime_as_string(np.datetime64(t, "m"), unit="m"))


class ForecastInputs:
    """The store's side of a forecast: see the module docstring. ``history`` = k input states. The channel names
    (``state_channels``, ``forcing_channels``, ``static_channels``) and ``time_encodings`` are those the networks were
    built for (:func:`def_jax.models.build.store_channels`)."""

    def __init__(self, store: str | Path, data_cfg: Any, history: int):
        self.per_sample = norm.check_normalization(data_cfg.normalization) == "per_sample"
        if history < 1:
            raise UserError(f"history ({history}) must be ≥ 1")
        self.store = str(store)
        self.history = int(history)
        self.time_encodings = bool(data_cfg.time_encodings)
        self.reader = reader = StoreReader(store)
        self.catalogue = reader.catalogue
        self.state_fields, self.forcing_fields = reader.fields("state"), reader.fields("forcing")
        if not self.state_fields:
            raise UserError(f"store {self.store}: catalogue {self.catalogue.name!r} has no state variable")
        self.state_channels = tuple(self.catalogue.channels("state"))
        self.forcing_channels = tuple(self.catalogue.channels("forcing"))
        self.static_names = reader.static_names(data_cfg.statics)
        self.static_channels = reader.static_channels(self.static_names)
        self.grid_shape = reader.grid_shape
        self.times, self.status = reader.times, reader.status  # [T] store times, [T] time_status
        self.dt_hours = float(reader.dt_hours * stride_for(data_cfg.dt_hours, reader.dt_hours, self.store))
        self.step = np.timedelta64(int(round(self.dt_hours * 3600)), "s")
        self.state_stats = self.forcing_stats = None  # per_sample: no training-period statistics needed
        if not self.per_sample:
            stats = reader.load_stats(self.state_fields + self.forcing_fields)
            cs = len(self.state_channels)
            self.state_stats = norm.ChannelStats(stats.channels[:cs], stats.mean[:cs], stats.std[:cs])
            self.forcing_stats = (norm.ChannelStats(stats.channels[cs:], stats.mean[cs:], stats.std[cs:])
                                  if self.forcing_fields else None)
        self.lo, self.hi = norm.channel_bounds(self.state_channels, self.catalogue)  # [C] physical bounds

    def slot_times(self, init: np.datetime64, first: int, count: int) -> np.ndarray:
        """Valid times of slots first..first+count−1 [count] (datetime64[ns])."""
        return np.datetime64(init, "ns") + (first + np.arange(count)) * self.step.astype("timedelta64[ns]")

    def _indices(self, times: np.ndarray, what: str) -> np.ndarray:
        """Store indices of ``times``; an error naming the first time that is not in the store or not written."""
        idx = np.searchsorted(self.times, times)
        for t, i in zip(times, idx):
            if i >= len(self.times) or self.times[i] != t:
                where = (f"which is outside the store ({_time_text(self.times[0])} to {_time_text(self.times[-1])})"
                         if t < self.times[0] or t > self.times[-1] else
                         f"which is not one of the store's times (every {self.reader.dt_hours:g} h from "
                         f"{_time_text(self.times[0])})")
                raise UserError(f"store {self.store}: {what} needed at {_time_text(t)}, {where}")
            if self.status[i] != schema.WRITTEN:
                raise UserError(f"store {self.store}: {what} needed at {_time_text(t)}, whose slot is not written "
                                f"(time_status {int(self.status[i])})")
        return idx

    def _read(self, fields, times: np.ndarray, what: str) -> np.ndarray:
        idx = self._indices(times, what)  # consecutive, stride ≥ 1
        stride = int(idx[1] - idx[0]) if len(idx) > 1 else 1
        t_sl = slice(int(idx[0]), int(idx[-1]) + 1, stride)
        return self.reader.read(fields, t_sl)  # [T, H, W, C]

    def check_available(self, init: np.datetime64, steps: int, pre_steps: int = 0) -> None:
        """Fail before any work if an initial state or a forcing of the whole horizon is missing (names the time).
        ``pre_steps`` P: the analyses and forcings of the P steps before the initial time are needed too (bred and
        lagged ensembles)."""
        first = 1 - self.history - pre_steps
        self._indices(self.slot_times(init, first, self.history + pre_steps), "an initial state")
        if self.forcing_fields:
            self._indices(self.slot_times(init, first, self.history + pre_steps + steps - 1), "forcing")

    def _normalize(self, x: np.ndarray, stats) -> np.ndarray:
        """x [T, H, W, C] physical → normalized (global: in place; per_sample: each field over space)."""
        if self.per_sample:
            return norm.spatial_standardize(x.astype(np.float64))[0].astype(np.float32)  # float64: means ~1e5 Pa
        normalize_inplace(x, stats)
        return x

    def states(self, init: np.datetime64, first: int, count: int) -> np.ndarray:
        """Normalized analyses at slots first..first+count−1: [count, H, W, C] float32."""
        x = self._read(self.state_fields, self.slot_times(init, first, count), "an initial state")
        return self._normalize(x, self.state_stats)

    def initial_reference(self, init: np.datetime64) -> tuple[np.ndarray, np.ndarray]:
        """per_sample: the spatial mean and standard deviation [C] of the state at the initial time (physical units),
        with which :meth:`to_physical` converts every lead of the cycle."""
        x = self._read(self.state_fields, self.slot_times(init, 0, 1), "an initial state")  # [1, H, W, C]
        _, mean, std = norm.spatial_standardize(x.astype(np.float64))  # [1, 1, 1, C]
        return mean.reshape(-1), std.reshape(-1)

    def initial_states(self, init: np.datetime64) -> np.ndarray:
        """Normalized states at slots −k+1..0: [k, H, W, C] float32."""
        return self.states(init, 1 - self.history, self.history)

    def one_step_std(self) -> np.ndarray:
        """Each state channel's standard deviation of one-step differences X(t + Δt) − X(t) over the training
        period in normalized units, ``<var>_diff_std / <var>_std`` (Δt the store's step): [C] float32, the scale of
        the baseline ensembles' noise (:mod:`def_jax.forecast.perturbations`)."""
        diff = self.reader.channel_statistic(self.state_fields, "diff_std")  # [C]
        return (diff / self.state_stats.std).astype(np.float32)

    def grid_spacing_km(self) -> float:
        """The grid spacing (km) of the store (:func:`def_jax.data.schema.grid_spacing_km`)."""
        return self.reader.grid_spacing_km()

    def forcings(self, init: np.datetime64, first: int, count: int) -> np.ndarray:
        """Normalized forcings at slots first..first+count−1: [count, H, W, C_f] float32 (C_f may be 0)."""
        if not self.forcing_fields or count == 0:
            return np.zeros((count,) + self.grid_shape + (len(self.forcing_channels),), np.float32)
        x = self._read(self.forcing_fields, self.slot_times(init, first, count), "forcing")
        return self._normalize(x, self.forcing_stats)

    def time_features(self, init: np.datetime64, first: int, count: int) -> np.ndarray:
        """[count, 4] (or [count, 0] without time encodings)."""
        if not self.time_encodings:
            return np.zeros((count, 0), np.float32)
        return norm.time_features(self.slot_times(init, first, count))

    def statics(self) -> np.ndarray:
        """[H, W, C_st] standardized statics (with latitude, longitude)."""
        return self.reader.statics(self.static_names)

    def truth(self, init: np.datetime64, first: int, count: int) -> np.ndarray:
        """Physical states at slots first..first+count−1 [count, H, W, C] (all must be written)."""
        return self._read(self.state_fields, self.slot_times(init, first, count), "a state")

    def to_physical(self, x: np.ndarray, reference: Optional[tuple[np.ndarray, np.ndarray]] = None) -> np.ndarray:
        """Normalized [..., C] → physical units with the catalogue's constraints (q, CAPE, PWAT ≥ 0; CIN ≤ 0; REFC
        floor) applied, float32. per_sample: ``reference`` = :meth:`initial_reference` of the cycle."""
        if self.per_sample:
            if reference is None:
                raise ValueError("per-sample normalization: to_physical needs the cycle's initial_reference")
            mean, std = reference
            y = np.asarray(x, np.float32) * std.astype(np.float32) + mean.astype(np.float32)
        else:
            y = norm.denormalize(np.asarray(x, np.float32), self.state_stats)
        return np.clip(y, self.lo, self.hi).astype(np.float32)
