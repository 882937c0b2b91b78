"""Forecast files: CF-1.8 NetCDF-4 written with netCDF4, slab by slab (docs/FORECASTS.md is the contract).

The writer creates every variable up front, takes members in (member chunk × lead chunk) slabs as the rollout
produces them, then computes the ensemble mean, standard deviation and exceedance probabilities one lead time at a
time from what it wrote (memory O(B·H·W·C); HDF5 caches one chunk per variable). The file is built under ``NAME.partial`` and renamed when complete, so
a killed run never leaves a file that looks finished.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import netCDF4
import numpy as np

from def_jax.catalogue import Catalogue

FORMAT_VERSION = 1
TIME_UNITS = "hours since 1970-01-01 00:00:00"
CALENDAR = "proleptic_gregorian"


def _hours_since_epoch(t: np.datetime64) -> float:
    return float((np.datetime64(t, "ns") - np.datetime64("1970-01-01T00:00", "ns")) / np.timedelta64(1, "h"))


def forecast_filename(init: np.datetime64) -> str:
    return f"forecast_{np.datetime_as_string(np.datetime64(init, 'h'), unit='h').replace('-', '').replace(':', '')}.nc"


class _Layout:
    """Which channels of the state vector [C] go to which variable (and level dimension)."""

    def __init__(self, catalogue: Catalogue):
        self.entries = []  # (name, level_dim or None, first channel, count)
        state = catalogue.by_role("state")
        multi = [v for v in state if v.levels]
        common = multi[0].levels if multi else ()
        self.level_dims: dict[str, tuple[float, ...]] = {}
        c = 0
        for v in state:
            if v.levels:
                dim = "level" if tuple(v.levels) == tuple(common) else f"{v.name}_level"
                self.level_dims[dim] = tuple(v.levels)
                self.entries.append((v, dim, c, len(v.levels)))
            else:
                self.entries.append((v, None, c, 1))
            c += v.num_channels
        self.channels = c


class ForecastWriter:
    """One cycle's forecast file (see the module docstring).

    Args:
      path: the final file path (``forecast_YYYYMMDDTHH.nc``).
      init: initial time; lead_hours [N]; members B; catalogue: the store's (state variables in channel order).
      grid: dict with ``latitude``, ``longitude`` [H, W], ``y`` [H], ``x`` [W] and ``crs`` (attribute dict).
      thresholds: ``{"refc": (20, 35, 45), ...}`` for the exceedance probabilities (variables absent are skipped).
      attrs: global attributes (the run's settings; dicts are stored as JSON).
      deterministic: also hold the G_φ rollout (``<var>_deterministic``).
    """

    def __init__(self, path: Path, *, init: np.datetime64, lead_hours: Sequence[float], members: int,
                 catalogue: Catalogue, grid: dict, thresholds: dict[str, Sequence[float]], attrs: dict[str, Any],
                 deterministic: bool, complevel: int = 2):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.layout = _Layout(catalogue)
        self.members = int(members)
        self.deterministic = deterministic
        self.thresholds = {k: tuple(float(t) for t in v) for k, v in thresholds.items()
                           if any(e[0].name == k for e in self.layout.entries) and len(v)}
        h, w = np.shape(grid["latitude"])
        n = len(lead_hours)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.partial.exists():
            self.partial.unlink()
        ds = netCDF4.Dataset(self.partial, "w", format="NETCDF4")
        self.ds = ds
        ds.createDimension("init_time", 1)
        ds.createDimension("member", self.members)
        ds.createDimension("lead_time", n)
        ds.createDimension("y", h)
        ds.createDimension("x", w)
        for dim, levels in self.layout.level_dims.items():
            ds.createDimension(dim, len(levels))
            v = ds.createVariable(dim, "f4", (dim,))
            v[:] = np.asarray(levels, np.float32)
            v.units, v.long_name, v.positive, v.axis = "hPa", "pressure level", "down", "Z"
        it = ds.createVariable("init_time", "f8", ("init_time",))
        it[:] = [_hours_since_epoch(init)]
        it.units, it.calendar, it.standard_name, it.long_name = TIME_UNITS, CALENDAR, "forecast_reference_time", \
            "initial time"
        lt = ds.createVariable("lead_time", "i4", ("lead_time",))
        lt[:] = np.asarray(np.round(lead_hours), np.int32)
        lt.units, lt.standard_name, lt.long_name = "hours", "forecast_period", "lead time"
        vt = ds.createVariable("valid_time", "f8", ("init_time", "lead_time"))
        vt[:] = _hours_since_epoch(init) + np.asarray(lead_hours, np.float64)[None]
        vt.units, vt.calendar, vt.standard_name, vt.long_name = TIME_UNITS, CALENDAR, "time", "valid time"
        mb = ds.createVariable("member", "i4", ("member",))
        mb[:] = np.arange(self.members, dtype=np.int32)
        mb.long_name = "ensemble member (the same member index gives the same sample whatever the ensemble size)"
        for name, axis in (("y", "Y"), ("x", "X")):
            v = ds.createVariable(name, "f8", (name,))
            v[:] = np.asarray(grid[name], np.float64)
            v.units, v.axis = "m", axis
            v.standard_name = f"projection_{name}_coordinate"
        for name, units in (("latitude", "degrees_north"), ("longitude", "degrees_east")):
            v = ds.createVariable(name, "f8", ("y", "x"), zlib=True, complevel=complevel)
            v[:] = np.asarray(grid[name], np.float64)
            v.units, v.standard_name = units, name
        crs = ds.createVariable("crs", "i4", ())
        crs.setncatts({k: (np.asarray(v) if isinstance(v, (list, tuple)) else v) for k, v in grid["crs"].items()})

        def data_var(name, dims, units, long_name, chunk):
            v = ds.createVariable(name, "f4", dims, zlib=True, complevel=complevel, shuffle=True, chunksizes=chunk,
                                  fill_value=np.float32(np.nan))
            v.units, v.long_name, v.grid_mapping, v.coordinates = units, long_name, "crs", "latitude longitude"
            # every write and read covers whole chunks (one field each): a cache of one chunk is all HDF5 needs, where
            # netCDF's default (64 MiB per variable) would hold up to 64 MiB of each of the file's variables in
            # memory until the file is closed, 4 GiB and more for a full-domain HRRR forecast
            v.set_var_chunk_cache(size=4 * h * w, nelems=1, preemption=1.0)
            return v

        for var, dim, _, _ in self.layout.entries:
            lev = (dim,) if dim else ()
            lev_chunk = (1,) if dim else ()
            units, ln = var.units or "1", var.long_name or var.name
            data_var(var.name, ("init_time", "member", "lead_time") + lev + ("y", "x"), units, ln,
                     (1, 1, 1) + lev_chunk + (h, w))
            for suffix, what in (("_mean", "ensemble mean of "), ("_std", "ensemble standard deviation of ")) + (
                    (("_deterministic", "deterministic G_phi rollout of "),) if deterministic else ()):
                data_var(var.name + suffix, ("init_time", "lead_time") + lev + ("y", "x"), units, what + ln,
                         (1, 1) + lev_chunk + (h, w))
        for name, values in self.thresholds.items():
            var = next(e[0] for e in self.layout.entries if e[0].name == name)
            dim = f"{name}_threshold"
            ds.createDimension(dim, len(values))
            tv = ds.createVariable(dim, "f4", (dim,))
            tv[:] = np.asarray(values, np.float32)
            tv.units, tv.long_name = var.units or "1", f"{name} exceedance threshold"
            p = data_var(f"{name}_probability", ("init_time", dim, "lead_time", "y", "x"), "1",
                         f"fraction of members with {name} >= threshold", (1, 1, 1, h, w))
            p.valid_range = np.array([0.0, 1.0], np.float32)
        ds.setncatts({"Conventions": "CF-1.8", "def_jax_forecast": FORMAT_VERSION, **{
            k: (json.dumps(v) if isinstance(v, (dict, list, tuple)) else v) for k, v in attrs.items()
            if v is not None}})

    # --- slabs ---------------------------------------------------------------------------------------------------

    def write_members(self, members: slice, leads: slice, data: np.ndarray) -> None:
        """data [L, b, H, W, C] physical → members ``members`` at leads ``leads``."""
        for var, dim, c, count in self.layout.entries:
            block = np.moveaxis(data[..., c:c + count], 0, 1)  # [b, L, H, W, n]
            block = np.moveaxis(block, -1, 2) if dim else block[..., 0]  # [b, L, n, H, W] | [b, L, H, W]
            self.ds[var.name][0, members, leads] = block

    def write_deterministic(self, leads: slice, data: np.ndarray) -> None:
        """data [L, H, W, C] physical → ``<var>_deterministic`` at leads ``leads``."""
        for var, dim, c, count in self.layout.entries:
            block = data[..., c:c + count]  # [L, H, W, n]
            block = np.moveaxis(block, -1, 1) if dim else block[..., 0]
            self.ds[var.name + "_deterministic"][0, leads] = block

    def write_statistics(self, log=None) -> None:
        """Ensemble mean, standard deviation (ddof = 0) and exceedance probabilities, one lead time at a time."""
        n = len(self.ds.dimensions["lead_time"])
        for j in range(n):
            for var, _, _, _ in self.layout.entries:
                members = np.asarray(self.ds[var.name][0, :, j], np.float64)  # [B, (n,) H, W]
                self.ds[var.name + "_mean"][0, j] = members.mean(axis=0).astype(np.float32)
                self.ds[var.name + "_std"][0, j] = members.std(axis=0).astype(np.float32)
                if var.name in self.thresholds:
                    thr = np.asarray(self.thresholds[var.name])[:, None, None, None]  # [T, 1, 1, 1]
                    prob = (members[None] >= thr).mean(axis=1)  # [T, H, W]
                    self.ds[f"{var.name}_probability"][0, :, j] = prob.astype(np.float32)

    def close(self, complete: bool = True) -> Optional[Path]:
        """Close the file; when complete, move it to its final name (atomic) and return that path, else delete it."""
        self.ds.close()
        if not complete:
            self.partial.unlink(missing_ok=True)
            return None
        os.replace(self.partial, self.path)
        return self.path
