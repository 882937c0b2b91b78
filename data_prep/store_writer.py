"""Creating the Zarr store (schema in docs/DATA.md) and writing its time slots.

* :func:`create_store` writes the skeleton -- coordinates, grid mapping, statics, attributes and empty (NaN) data
  arrays -- into a temporary directory beside the target and renames it into place, so a store either exists complete
  or not at all.
* :func:`write_slot` writes one time step's data and only then sets ``time_status`` to 1; slots are separate chunks,
  so any number of processes can write different slots at once, and a killed writer leaves its slot at 0.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import shutil
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import dask.array as dsa
import numpy as np
import xarray as xr
import zarr
import zarr.api.asynchronous as zarr_async
from zarr.core.sync import sync as zarr_sync

from def_jax import __version__
from def_jax.catalogue import Catalogue, Variable
from def_jax.data import schema
from def_jax.errors import UserError

COMPRESSIONS = ("zstd", "blosc", "none")


def common_levels(catalogue: Catalogue) -> Optional[tuple[float, ...]]:
    """The level set shared by most multi-level variables (the store's ``level`` dimension)."""
    sets = Counter(v.levels for v in catalogue.variables if v.levels is not None)
    return sets.most_common(1)[0][0] if sets else None


def _dims(var: Variable, common: Optional[tuple]) -> tuple[str, ...]:
    spatial = ("y", "x")
    if var.role == "static":
        return spatial
    if var.levels is None:
        return ("time",) + spatial
    return ("time", schema.level_dim(var.name, var.levels == common)) + spatial


def _compressors(name: str, level: int) -> Any:
    if name == "zstd":
        return [zarr.codecs.ZstdCodec(level=level)]
    if name == "blosc":
        return [zarr.codecs.BloscCodec(cname="zstd", clevel=level, shuffle="bitshuffle")]
    if name == "none":
        return None
    raise UserError(f"--compression must be one of {', '.join(COMPRESSIONS)}; got {name!r}")


def var_attrs(var: Variable, provenance: dict) -> dict:
    attrs = {"units": var.units or provenance.get("GRIB_units", ""), "long_name": var.long_name or
             provenance.get("GRIB_name", var.name), "role": var.role, "grid_mapping": schema.CRS}
    attrs.update(provenance)
    if var.min is not None:
        attrs["valid_min"] = var.min
    if var.max is not None:
        attrs["valid_max"] = var.max
    return attrs


def create_store(
    path: Path,
    *,
    catalogue: Catalogue,
    times: np.ndarray,
    latitude: np.ndarray,
    longitude: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    crs_attrs: dict,
    statics: dict[str, np.ndarray],
    provenance: dict[str, dict],
    dt_hours: int,
    attrs: dict,
    chunks: Optional[tuple[int, int]] = None,
    compression: str = "zstd",
    compression_level: int = 3,
) -> None:
    """Write the store skeleton atomically (temporary directory + rename). ``times`` is the full time axis."""
    ny, nx = latitude.shape
    cy, cx = chunks or (ny, nx)
    common = common_levels(catalogue)
    nt = len(times)
    coords = {
        "time": ("time", times.astype("datetime64[ns]")),
        "y": ("y", np.asarray(y, np.float64)),
        "x": ("x", np.asarray(x, np.float64)),
        "latitude": (("y", "x"), latitude.astype(np.float64), {"units": "degrees_north", "standard_name": "latitude"}),
        "longitude": (("y", "x"), longitude.astype(np.float64), {"units": "degrees_east",
                                                                 "standard_name": "longitude"}),
    }
    if common is not None:
        coords[schema.LEVEL] = (schema.LEVEL, np.asarray(common, np.float32), {"units": "hPa"})
    data_vars: dict[str, Any] = {schema.CRS: ((), np.int32(0), crs_attrs)}
    encoding: dict[str, dict] = {}
    compressors = _compressors(compression, compression_level)
    for var in catalogue.variables:
        dims = _dims(var, common)
        attrs_v = var_attrs(var, provenance.get(var.name, {}))
        if var.role == "static":
            data_vars[var.name] = (dims, statics[var.name].astype(np.float32), attrs_v)
            encoding[var.name] = {"chunks": (cy, cx)}
        else:
            if var.levels is not None and var.levels != common:
                coords[dims[1]] = (dims[1], np.asarray(var.levels, np.float32), {"units": "hPa"})
            shape = (nt,) + ((len(var.levels),) if var.levels is not None else ()) + (ny, nx)
            chunk = (1,) + shape[1:-2] + (cy, cx)
            data_vars[var.name] = (dims, dsa.full(shape, np.nan, dtype=np.float32, chunks=chunk), attrs_v)
            encoding[var.name] = {"chunks": chunk}
        encoding[var.name]["compressors"] = compressors
        encoding[var.name]["_FillValue"] = np.float32(np.nan)
    data_vars[schema.STATUS] = ("time", dsa.zeros(nt, dtype=np.int8, chunks=1),
                                {"long_name": "slot status", "flag_values": [0, 1, 2],
                                 "flag_meanings": "missing written failed"})
    encoding[schema.STATUS] = {"chunks": (1,)}
    encoding["time"] = {"units": "hours since 1970-01-01", "calendar": "proleptic_gregorian", "dtype": "int64"}
    ds = xr.Dataset(data_vars, coords)
    ds.attrs.update({
        "def_jax_schema": schema.SCHEMA_VERSION,
        "catalogue": catalogue.to_json(),
        "dt_hours": int(dt_hours),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "def_jax_version": __version__,
        "Conventions": "CF-1.8",
        **attrs,
    })
    tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    # Data arrays are not computed (compute=False): only metadata, coordinates and statics are written; the data
    # chunks stay absent (= NaN) until their slot is written.
    ds.to_zarr(tmp, mode="w", compute=False, encoding=encoding, consolidated=False, zarr_format=3)
    consolidate(tmp)
    os.replace(tmp, path)


def consolidate(path: Path) -> None:
    """Write the store's consolidated metadata (every array's metadata in the root ``zarr.json``), so that a plain
    ``xr.open_zarr(store)`` opens it in one read. Slot writes change no metadata; whatever adds arrays or attributes
    (``create_store``, ``def-jax stats``) calls this afterwards. (zarr-python warns that consolidated metadata is not
    yet part of the Zarr v3 specification; it is its own extension, read by xarray.)"""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part", category=UserWarning)
        zarr.consolidate_metadata(str(path))


def remove_stale_partials(path: Path) -> None:
    """Remove skeletons left by killed runs (``STORE.partial-<pid>``)."""
    for stale in path.parent.glob(f"{path.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)


def write_slot(path: Path, index: int, fields: dict[str, np.ndarray]) -> None:
    """Write one time slot's data (all non-static variables, concurrently), then mark it written."""
    zarr_sync(_write_slot(path, index, fields))  # on zarr's own event loop, as its synchronous API does


async def _write_slot(path: Path, index: int, fields: dict[str, np.ndarray]) -> None:
    group = await zarr_async.open_group(store=str(path), mode="r+")
    arrays = await asyncio.gather(*(group.getitem(name) for name in fields))
    for (name, values), arr in zip(fields.items(), arrays):
        if values.shape != arr.shape[1:]:
            raise UserError(f"store {path}: {name} has shape {values.shape}, the store expects {arr.shape[1:]}")
    await asyncio.gather(*(arr.setitem(index, values) for arr, values in zip(arrays, fields.values())))
    status = await group.getitem(schema.STATUS)
    await status.setitem(index, np.int8(schema.WRITTEN))  # only after every field is on disk


def mark_slot(path: Path, index: int, status: int) -> None:
    zarr.open_group(path, mode="r+")[schema.STATUS][index] = status


def read_status(path: Path) -> np.ndarray:
    return np.asarray(zarr.open_group(path, mode="r")[schema.STATUS][:])


def log_path(path: Path) -> Path:
    """The preparation log beside the store (``STORE.zarr`` → ``STORE.zarr.log.jsonl``; Zarr warns about foreign files
    inside a store)."""
    return path.with_name(path.name + ".log.jsonl")


def append_log(path: Path, record: dict) -> None:
    """One JSON line per slot event (append-only; each line is written whole)."""
    with open(log_path(path), "a") as f:
        f.write(json.dumps(record, default=str) + "\n")
