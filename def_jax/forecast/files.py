"""Forecast files: one cycle's CF-1.8 dataset, as NetCDF-4 (the default) or as a Zarr store (docs/FORECASTS.md is the
contract; xarray opens either with the same variables, dimensions and attributes).

The dataset's variables are defined once (:func:`_variables`) and created by either backend: :class:`NetCDFFile`
(netCDF4; process 0 of a multi-host run writes everything) or :class:`ZarrFile` (zarr; every process writes its own
devices' members and rows, each into whole chunks). Members arrive in (member chunk × lead chunk) slabs as the rollout
produces them; then the ensemble mean, standard deviation and exceedance probabilities are computed one lead time at a
time from what was written (memory O(B·H·W·C)). A file is built under ``NAME.partial`` and renamed when complete, so
a killed run never leaves a file that looks finished. A Zarr store also records which member chunks and whether the
deterministic run are complete (attributes), so that a killed forecast resumes at the first unfinished member chunk.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

import netCDF4
import numpy as np

from def_jax.catalogue import Catalogue

FORMAT_VERSION = 1
FORMATS = {"netcdf": ".nc", "zarr": ".zarr"}
TIME_UNITS = "hours since 1970-01-01 00:00:00"
CALENDAR = "proleptic_gregorian"
EVERYTHING = slice(None)


def _hours_since_epoch(t: np.datetime64) -> float:
    return float((np.datetime64(t, "ns") - np.datetime64("1970-01-01T00:00", "ns")) / np.timedelta64(1, "h"))


def forecast_filename(init: np.datetime64, fmt: str = "netcdf") -> str:
    """``forecast_YYYYMMDDTHH.nc`` (or ``.zarr``)."""
    stamp = np.datetime_as_string(np.datetime64(init, "h"), unit="h").replace("-", "").replace(":", "")
    return f"forecast_{stamp}{FORMATS[fmt]}"


def forecast_paths(folder: Path) -> list[Path]:
    """The forecast files of a folder, NetCDF and Zarr, in time order."""
    return sorted([*Path(folder).glob("forecast_*.nc"), *Path(folder).glob("forecast_*.zarr")],
                  key=lambda p: p.name)


def open_forecast(path: Path):
    """A forecast file as an xarray Dataset (NetCDF or Zarr, by its suffix), times decoded, leads as numbers."""
    import xarray as xr

    if Path(path).suffix == ".zarr":
        return xr.open_zarr(path, consolidated=False, decode_timedelta=False)
    return xr.open_dataset(path, engine="netcdf4", decode_timedelta=False)


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


@dataclasses.dataclass
class _Variable:
    """One variable of the dataset: coordinates carry ``values``; data variables are NaN until written, stored in
    ``chunks`` (one field of a member, lead and level per chunk, rows split in ``row_chunks`` for Zarr)."""

    name: str
    dtype: str
    dims: tuple[str, ...]
    attrs: dict
    values: Optional[np.ndarray] = None
    chunks: Optional[tuple[int, ...]] = None


def _variables(*, init, lead_hours, members, layout: _Layout, grid: dict, thresholds: dict, deterministic: bool,
               rows: int) -> tuple[dict[str, int], list[_Variable]]:
    """The dimensions and variables of one cycle's dataset (docs/FORECASTS.md); data chunks hold ``rows`` rows."""
    h, w = np.shape(grid["latitude"])
    n = len(lead_hours)
    dims = {"init_time": 1, "member": members, "lead_time": n, "y": h, "x": w}
    out = []
    for dim, levels in layout.level_dims.items():
        dims[dim] = len(levels)
        out.append(_Variable(dim, "f4", (dim,), {"units": "hPa", "long_name": "pressure level", "positive": "down",
                                                 "axis": "Z"}, np.asarray(levels, np.float32)))
    t0 = _hours_since_epoch(init)
    out += [
        _Variable("init_time", "f8", ("init_time",), {"units": TIME_UNITS, "calendar": CALENDAR,
                                                      "standard_name": "forecast_reference_time",
                                                      "long_name": "initial time"}, np.asarray([t0])),
        _Variable("lead_time", "i4", ("lead_time",), {"units": "hours", "standard_name": "forecast_period",
                                                      "long_name": "lead time"},
                  np.asarray(np.round(lead_hours), np.int32)),
        _Variable("valid_time", "f8", ("init_time", "lead_time"), {"units": TIME_UNITS, "calendar": CALENDAR,
                                                                   "standard_name": "time", "long_name": "valid time"},
                  t0 + np.asarray(lead_hours, np.float64)[None]),
        _Variable("member", "i4", ("member",), {"long_name": "ensemble member (the same member index gives the same "
                                                             "sample whatever the ensemble size)"},
                  np.arange(members, dtype=np.int32)),
    ]
    for name, axis in (("y", "Y"), ("x", "X")):
        out.append(_Variable(name, "f8", (name,), {"units": "m", "axis": axis,
                                                   "standard_name": f"projection_{name}_coordinate"},
                             np.asarray(grid[name], np.float64)))
    for name, units in (("latitude", "degrees_north"), ("longitude", "degrees_east")):
        out.append(_Variable(name, "f8", ("y", "x"), {"units": units, "standard_name": name},
                             np.asarray(grid[name], np.float64)))
    out.append(_Variable("crs", "i4", (), {k: (np.asarray(v) if isinstance(v, (list, tuple)) else v)
                                           for k, v in grid["crs"].items()}, np.asarray(0, np.int32)))

    def data(name, dims_, units, long_name, lead_dims):
        chunks = (1,) * lead_dims + (rows, w)
        return _Variable(name, "f4", dims_, {"units": units, "long_name": long_name, "grid_mapping": "crs",
                                             "coordinates": "latitude longitude"}, chunks=chunks)

    for var, dim, _, _ in layout.entries:
        lev = (dim,) if dim else ()
        units, ln = var.units or "1", var.long_name or var.name
        out.append(data(var.name, ("init_time", "member", "lead_time") + lev + ("y", "x"), units, ln, 3 + len(lev)))
        for suffix, what in (("_mean", "ensemble mean of "), ("_std", "ensemble standard deviation of ")) + (
                (("_deterministic", "deterministic G_phi rollout of "),) if deterministic else ()):
            out.append(data(var.name + suffix, ("init_time", "lead_time") + lev + ("y", "x"), units, what + ln,
                            2 + len(lev)))
    for name, values in thresholds.items():
        var = next(e[0] for e in layout.entries if e[0].name == name)
        dim = f"{name}_threshold"
        dims[dim] = len(values)
        out.append(_Variable(dim, "f4", (dim,), {"units": var.units or "1",
                                                 "long_name": f"{name} exceedance threshold"},
                             np.asarray(values, np.float32)))
        p = data(f"{name}_probability", ("init_time", dim, "lead_time", "y", "x"), "1",
                 f"fraction of members with {name} >= threshold", 3)
        p.attrs["valid_range"] = np.array([0.0, 1.0], np.float32)
        out.append(p)
    return dims, out


class ForecastFile:
    """One cycle's forecast (see the module docstring); the backends implement ``_create``, ``_set``, ``_get``,
    ``_close``.

    Args:
      path: the final path (``forecast_YYYYMMDDTHH.nc`` or ``.zarr``).
      init: initial time; lead_hours [N]; members B; catalogue: the store's (state variables in channel order).
      grid: dict with ``latitude``, ``longitude`` [H, W], ``y`` [H], ``x`` [W] and ``crs`` (attribute dict).
      thresholds: ``{"refc": (20, 35, 45), ...}`` for the exceedance probabilities (variables absent are skipped).
      attrs: global attributes (the run's settings; dicts are stored as JSON).
      deterministic: also hold the G_φ rollout (``<var>_deterministic``).
      rows: rows per chunk of the data variables (all of them by default).
    """

    def __init__(self, path: Path, *, init: np.datetime64, lead_hours: Sequence[float], members: int,
                 catalogue: Catalogue, grid: dict, thresholds: dict[str, Sequence[float]], attrs: dict[str, Any],
                 deterministic: bool, rows: Optional[int] = None):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.layout = _Layout(catalogue)
        self.members = int(members)
        self.n_leads = len(lead_hours)
        self.deterministic = deterministic
        self.thresholds = {k: tuple(float(t) for t in v) for k, v in thresholds.items()
                           if any(e[0].name == k for e in self.layout.entries) and len(v)}
        self.dims, self.variables = _variables(
            init=init, lead_hours=lead_hours, members=self.members, layout=self.layout, grid=grid,
            thresholds=self.thresholds, deterministic=deterministic, rows=int(rows or np.shape(grid["latitude"])[0]))
        self.attrs = {"Conventions": "CF-1.8", "def_jax_forecast": FORMAT_VERSION, **_encode_attrs(attrs)}
        self.path.parent.mkdir(parents=True, exist_ok=True)

    # --- slabs ---------------------------------------------------------------------------------------------------

    def write_members(self, members: slice, leads: slice, data: np.ndarray, rows: slice = EVERYTHING) -> None:
        """data [L, b, h, W, C] physical → members ``members`` at leads ``leads`` (rows ``rows``)."""
        for var, dim, c, count in self.layout.entries:
            block = np.moveaxis(data[..., c:c + count], 0, 1)  # [b, L, h, W, n]
            block = np.moveaxis(block, -1, 2) if dim else block[..., 0]  # [b, L, n, h, W] | [b, L, h, W]
            lev = (EVERYTHING,) if dim else ()
            self._set(var.name, (0, members, leads) + lev + (rows,), block)

    def write_deterministic(self, leads: slice, data: np.ndarray, rows: slice = EVERYTHING) -> None:
        """data [L, h, W, C] physical → ``<var>_deterministic`` at leads ``leads`` (rows ``rows``)."""
        for var, dim, c, count in self.layout.entries:
            block = data[..., c:c + count]  # [L, h, W, n]
            block = np.moveaxis(block, -1, 1) if dim else block[..., 0]
            lev = (EVERYTHING,) if dim else ()
            self._set(var.name + "_deterministic", (0, leads) + lev + (rows,), block)

    def write_statistics(self) -> None:
        """Ensemble mean, standard deviation (ddof = 0) and exceedance probabilities, one lead time at a time."""
        for j in range(self.n_leads):
            for var, _, _, _ in self.layout.entries:
                members = np.asarray(self._get(var.name, (0, EVERYTHING, j)), np.float64)  # [B, (n,) H, W]
                self._set(var.name + "_mean", (0, j), members.mean(axis=0).astype(np.float32))
                self._set(var.name + "_std", (0, j), members.std(axis=0).astype(np.float32))
                if var.name in self.thresholds:
                    thr = np.asarray(self.thresholds[var.name])[:, None, None, None]  # [T, 1, 1, 1]
                    prob = (members[None] >= thr).mean(axis=1)  # [T, H, W]
                    self._set(f"{var.name}_probability", (0, EVERYTHING, j), prob.astype(np.float32))

    def close(self, complete: bool = True) -> Optional[Path]:
        """Close; when complete, move the file to its final name (atomic) and return that path, else drop it."""
        self._close()
        if not complete:
            _remove(self.partial)
            return None
        _remove(self.path)
        os.replace(self.partial, self.path)
        return self.path

    # --- backends ------------------------------------------------------------------------------------------------

    def _set(self, name: str, key: tuple, value: np.ndarray) -> None:
        raise NotImplementedError

    def _get(self, name: str, key: tuple) -> np.ndarray:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


class NetCDFFile(ForecastFile):
    """The forecast as CF NetCDF-4 (netCDF4), zlib level ``complevel`` with shuffle; created anew at every start."""

    def __init__(self, path: Path, complevel: int = 2, **kw):
        super().__init__(path, **kw)
        _remove(self.partial)
        ds = netCDF4.Dataset(self.partial, "w", format="NETCDF4")
        self.ds = ds
        for dim, size in self.dims.items():
            ds.createDimension(dim, size)
        for v in self.variables:
            if v.values is not None:
                zlib = v.dims == ("y", "x")  # latitude, longitude
                var = ds.createVariable(v.name, v.dtype, v.dims, zlib=zlib, complevel=complevel)
                var[...] = v.values
            else:
                var = ds.createVariable(v.name, v.dtype, v.dims, zlib=True, complevel=complevel, shuffle=True,
                                        chunksizes=v.chunks, fill_value=np.float32(np.nan))
                # every write and read covers whole chunks (one field each): a cache of one chunk is all HDF5
                # needs, where netCDF's default (64 MiB per variable) would hold up to 64 MiB of each of the file's
                # variables in memory until the file is closed, 4 GiB and more for a full-domain HRRR forecast
                var.set_var_chunk_cache(size=4 * int(np.prod(v.chunks)), nelems=1, preemption=1.0)
            var.setncatts(v.attrs)
        ds.setncatts(self.attrs)

    def _set(self, name, key, value):
        self.ds[name][key] = value

    def _get(self, name, key):
        return self.ds[name][key]

    def _close(self):
        self.ds.close()


class ZarrFile(ForecastFile):
    """The forecast as a Zarr store (zarr format 3, xarray's dimension names, zstd), written by every process of a
    multi-host run: process 0 creates it (``create``), the others open it, and each writes its own members and rows,
    whole chunks each (``rows`` = the rows of one device of the mesh's ``space`` axis).

    A store left by a killed run resumes when its settings match (:meth:`resumable`): ``done_member_chunks`` and
    ``deterministic_done`` record what is complete.
    """

    def __init__(self, path: Path, *, create: bool, **kw):
        import zarr

        super().__init__(path, **kw)
        if not create:
            self.group = zarr.open_group(self.partial, mode="r+")
            return
        _remove(self.partial)
        group = zarr.open_group(self.partial, mode="w", zarr_format=3)
        codecs = zarr.codecs.ZstdCodec(level=3)
        for v in self.variables:
            shape = tuple(self.dims[d] for d in v.dims)
            if v.values is not None:
                arr = group.create_array(v.name, shape=shape, dtype=v.dtype, dimension_names=v.dims)
                arr[...] = v.values
            else:
                arr = group.create_array(v.name, shape=shape, dtype=v.dtype, chunks=v.chunks, fill_value=np.nan,
                                         compressors=[codecs], dimension_names=v.dims)
            arr.attrs.update(_json_attrs(v.attrs))
        group.attrs.update(_json_attrs({**self.attrs, "done_member_chunks": [], "deterministic_done": False}))
        self.group = group

    @staticmethod
    def resumable(path: Path, attrs: dict) -> Optional[dict]:
        """The progress of a partial store at ``path`` whose settings (``attrs``: members, config, member_chunk …)
        equal these, or None when there is none to resume."""
        import zarr

        partial = Path(path).with_name(Path(path).name + ".partial")
        if not partial.is_dir():
            return None
        try:
            saved = dict(zarr.open_group(partial, mode="r").attrs)
        except Exception:  # noqa: BLE001 -- a store killed while being created: start again
            return None
        wanted = _json_attrs(_encode_attrs({k: v for k, v in attrs.items() if k != "created"}))
        if any(saved.get(k) != v for k, v in wanted.items()):
            return None
        return {"done_member_chunks": list(saved.get("done_member_chunks", [])),
                "deterministic_done": bool(saved.get("deterministic_done", False))}

    def record(self, *, member_chunk: Optional[int] = None, deterministic: bool = False) -> None:
        """Mark a member chunk (its first member index) or the deterministic run as complete (process 0)."""
        if member_chunk is not None:
            done = list(self.group.attrs.get("done_member_chunks", []))
            self.group.attrs["done_member_chunks"] = sorted(set(done) | {int(member_chunk)})
        if deterministic:
            self.group.attrs["deterministic_done"] = True

    def close(self, complete: bool = True) -> Optional[Path]:
        """As :meth:`ForecastFile.close`, except that an incomplete store stays: the next run resumes it."""
        return super().close(True) if complete else None

    def _set(self, name, key, value):
        self.group[name][key] = value

    def _get(self, name, key):
        return self.group[name][key]

    def _close(self):
        pass


def _encode_attrs(attrs: dict) -> dict:
    """Global attributes as the file stores them: dicts, lists and tuples as JSON text; None left out."""
    return {k: (json.dumps(v) if isinstance(v, (dict, list, tuple)) else v) for k, v in attrs.items()
            if v is not None}


def _json_attrs(attrs: dict) -> dict:
    """Attributes as JSON values (Zarr stores attributes as JSON)."""
    out = {}
    for k, v in attrs.items():
        if isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out
