"""``def-jax prepare --from-xarray PATH``: any xarray-readable dataset (netCDF, Zarr; e.g. ERA5 on a lat-lon grid)
into the same store schema as the GRIB path.

Variables are found by the mapping ``--var-map STORE_NAME=DATASET_NAME,...`` or else by name: the catalogue name, its
GRIB shortName, or the common long names of ERA5/WeatherBench (``temperature``, ``2m_temperature``, …). Dimensions are
recognised under their usual names (time/valid_time, level/isobaricInhPa/pressure_level/plev,
latitude/lat, longitude/lon). Latitudes are ordered south to north, like the HRRR rows. The time axis is made regular at
``dt_hours``; hours absent from the dataset are missing slots. Slots are written in blocks (by ``workers`` processes, each
opening the dataset itself), each slot marked written after its data, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import glob
import multiprocessing
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import xarray as xr

from data_prep import store_writer
from data_prep.grib_read import Region
from def_jax.catalogue import Catalogue, Variable, catalogue_from_json
from def_jax.data import schema
from def_jax.errors import UserError
from def_jax.progress import progress as progress_bar

NAME_HINTS = {
    "z": ["geopotential"], "t": ["temperature"], "q": ["specific_humidity"], "u": ["u_component_of_wind"],
    "v": ["v_component_of_wind"], "t2m": ["2m_temperature"], "u10": ["10m_u_component_of_wind"],
    "v10": ["10m_v_component_of_wind"], "tisr": ["toa_incident_solar_radiation"],
    "orog": ["orography", "geopotential_at_surface"], "lsm": ["land_sea_mask"], "sp": ["surface_pressure"],
}
DIM_HINTS = {
    "time": ["time", "valid_time"],
    "level": ["level", "isobaricInhPa", "pressure_level", "plev"],
    "latitude": ["latitude", "lat"],
    "longitude": ["longitude", "lon"],
}


def parse_var_map(text: Optional[str]) -> dict[str, str]:
    """``a=b,c=d`` → {a: b, c: d}."""
    if not text:
        return {}
    out = {}
    for item in text.split(","):
        if "=" not in item:
            raise UserError(f"--var-map item {item!r}: expected STORE_NAME=DATASET_NAME")
        key, value = (s.strip() for s in item.split("=", 1))
        out[key] = value
    return out


def open_any(path: str) -> xr.Dataset:
    """Open a Zarr store, a netCDF file or a glob of netCDF files, lazily."""
    p = Path(path)
    try:
        if p.is_dir() or p.suffix == ".zarr":
            return xr.open_zarr(p, consolidated=None)
        files = sorted(glob.glob(path))
        if not files:
            raise UserError(f"--from-xarray {path!r}: no such file")
        if len(files) == 1:
            return xr.open_dataset(files[0], chunks={})
        # variables without a time dimension (statics) are taken from the first file, not concatenated
        return xr.open_mfdataset(files, combine="by_coords", data_vars="minimal", coords="minimal",
                                 compat="override")
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"--from-xarray {path}: cannot be opened by xarray ({str(err).splitlines()[0]})") from None


def _find(names: list[str], candidates: list[str]) -> Optional[str]:
    return next((c for c in candidates if c in names), None)


def _standardize(ds: xr.Dataset, path: str) -> xr.Dataset:
    """Rename the dimensions to time/level/latitude/longitude and sort latitude south to north."""
    rename = {}
    for std, hints in DIM_HINTS.items():
        found = _find(list(ds.dims) + list(ds.coords), hints)
        if found is None and std in ("latitude", "longitude"):
            raise UserError(f"{path}: no {std} coordinate (looked for {', '.join(hints)})")
        if found is not None and found != std:
            rename[found] = std
    ds = ds.rename(rename)
    if "time" not in ds.dims:
        raise UserError(f"{path}: no time dimension (looked for {', '.join(DIM_HINTS['time'])})")
    if ds["latitude"].ndim != 1 or ds["longitude"].ndim != 1:
        raise UserError(f"{path}: --from-xarray expects 1-D latitude/longitude (a regular lat-lon grid)")
    return ds.sortby("latitude")


def _source_name(var: Variable, ds: xr.Dataset, var_map: dict[str, str], path: str) -> str:
    if var.name in var_map:
        if var_map[var.name] not in ds.data_vars:
            raise UserError(f"--var-map {var.name}={var_map[var.name]}: {path} has no variable "
                            f"{var_map[var.name]!r} (it has {', '.join(sorted(map(str, ds.data_vars)))})")
        return var_map[var.name]
    found = _find(list(ds.data_vars), [var.name, var.short_name, *NAME_HINTS.get(var.name, [])])
    if found is None:
        raise UserError(f"{path}: no variable for {var.name} (looked for {var.name}, {var.short_name}"
                        f"{', ' if NAME_HINTS.get(var.name) else ''}{', '.join(NAME_HINTS.get(var.name, []))}); "
                        f"map it with --var-map {var.name}=NAME")
    return found


def _select(da: xr.DataArray, var: Variable, name: str, path: str) -> xr.DataArray:
    """Levels in catalogue order; then dims (time, [level,] latitude, longitude) or (latitude, longitude)."""
    if var.levels is not None:
        if "level" not in da.dims:
            raise UserError(f"{path}: {name} has no level dimension but {var.name} needs levels {list(var.levels)}")
        available = da["level"].values
        missing = [lev for lev in var.levels if not np.any(np.isclose(available, lev))]
        if missing:
            raise UserError(f"{path}: {name} lacks level(s) {missing} (has {list(available)}); levels are in hPa")
        da = da.sel(level=list(var.levels), method="nearest")
    elif "level" in da.dims:
        raise UserError(f"{path}: {name} has a level dimension but {var.name} is a single-level variable")
    if var.role == "static" and "time" in da.dims:
        da = da.isel(time=0)
    order = [d for d in ("time", "level", "latitude", "longitude") if d in da.dims]
    extra = [d for d in da.dims if d not in order]
    if extra:
        raise UserError(f"{path}: {name} has unexpected dimension(s) {extra}")
    return da.transpose(*order)


def _open_arrays(path: str, catalogue: Catalogue,
                 var_map: dict[str, str]) -> tuple[xr.Dataset, dict[str, xr.DataArray]]:
    """The standardized dataset and each catalogue variable's (lazy) array in store order."""
    ds = _standardize(open_any(path), path)
    return ds, {v.name: _select(ds[_source_name(v, ds, var_map, path)], v, v.name, path) for v in catalogue.variables}


def _write_block(out: Path, arrays: dict[str, xr.DataArray], variables: Sequence[Variable], region: Region,
                 chunk: Sequence[tuple[int, int]]) -> None:
    """Read the dataset's times ``j`` of ``chunk`` = [(store slot i, dataset time j), ...] at once and write slot i."""
    src = [j for _, j in chunk]
    data = {v.name: region.apply(np.asarray(arrays[v.name].isel(time=src).values, np.float32)) for v in variables}
    for k, (i, _) in enumerate(chunk):
        store_writer.write_slot(out, int(i), {name: values[k] for name, values in data.items()})


_WORKER: dict = {}  # a worker process's open dataset, by (path, catalogue, var_map)


def _worker_block(path: str, catalogue_json: str, var_map: tuple, region: tuple, out: str,
                  chunk: list[tuple[int, int]]) -> int:
    """One block in a worker process (the dataset is opened once per process)."""
    key = (path, catalogue_json, var_map)
    if key not in _WORKER:
        _WORKER.clear()
        _WORKER[key] = _open_arrays(path, catalogue_from_json(catalogue_json), dict(var_map))[1]
    variables = [v for v in catalogue_from_json(catalogue_json).variables if v.role != "static"]
    _write_block(Path(out), _WORKER[key], variables, Region(*region), chunk)
    return len(chunk)


def prepare_from_xarray(path: str, out: Path, catalogue: Catalogue, *, var_map: Optional[dict[str, str]] = None,
                        region: Optional[Region] = None, dt_hours: int = 1, chunks: Optional[tuple[int, int]] = None,
                        compression: str = "zstd", block: int = 24, workers: int = 1, progress: bool = True,
                        log: Callable[[str], None] = print) -> dict:
    """Write (or complete) the store ``out`` from the dataset at ``path``; returns slot counts. Blocks of ``block``
    times are read and written by ``workers`` processes (each opens the dataset itself)."""
    var_map = var_map or {}
    region = region or Region()
    unknown = sorted(set(var_map) - {v.name for v in catalogue.variables})
    if unknown:
        raise UserError(f"--var-map names {unknown}, which are not in catalogue {catalogue.name!r}")
    ds, arrays = _open_arrays(path, catalogue, var_map)
    lat1, lon1 = ds["latitude"].values.astype(np.float64), ds["longitude"].values.astype(np.float64)
    lon2, lat2 = np.meshgrid(lon1, lat1)
    region.check(*lat2.shape, where=path)
    lat2, lon2 = region.apply(lat2), region.apply(lon2)
    times = ds["time"].values.astype("datetime64[ns]")
    step = np.timedelta64(dt_hours, "h")
    axis = np.arange(times.min(), times.max() + step, step)
    if np.any((times - times.min()) % step):
        raise UserError(f"{path}: times are not on a {dt_hours}-hourly axis; set --dt-hours")
    store_writer.remove_stale_partials(out)
    if out.exists():
        existing = schema.open_store(out)
        if catalogue_from_json(existing.attrs["catalogue"]).to_json() != catalogue.to_json() or \
                not np.array_equal(existing["time"].values, axis):
            raise UserError(f"store {out} exists with another catalogue or time axis; use a new --out")
    else:
        statics = {v.name: region.apply(np.asarray(arrays[v.name].values, np.float32))
                   for v in catalogue.by_role("static")}
        provenance = {v.name: {"source_variable": arrays[v.name].name, "source_units":
                               str(arrays[v.name].attrs.get("units", ""))} for v in catalogue.variables}
        store_writer.create_store(
            out, catalogue=catalogue, times=axis, latitude=lat2, longitude=lon2,
            x=lon2[0, :], y=lat2[:, 0],
            crs_attrs={"grid_mapping_name": "latitude_longitude", "earth_radius": 6371229.0},
            statics=statics, provenance=provenance, dt_hours=dt_hours,
            attrs={"source": "xarray", "source_path": str(path), "region": region.describe(),
                   "stride": region.stride, "history": f"def-jax prepare --from-xarray {path}"},
            chunks=chunks, compression=compression,
        )
        log(f"created {out}: {len(axis)} slots × {catalogue.num_channels()} channels on a "
            f"{lat2.shape[0]}×{lat2.shape[1]} lat-lon grid")
    status = store_writer.read_status(out)
    index = np.searchsorted(axis, times)
    todo = [(i, j) for j, i in enumerate(index) if status[i] != schema.WRITTEN]
    dynamic = [v for v in catalogue.variables if v.role != "static"]
    blocks = [[(int(i), int(j)) for i, j in todo[b:b + block]] for b in range(0, len(todo), block)]
    with progress_bar(len(todo), "prepare", "slot", progress) as bar:
        if workers <= 1 or len(blocks) <= 1:
            for chunk in blocks:
                _write_block(out, arrays, dynamic, region, chunk)
                bar.update(len(chunk))
        else:
            args = (path, catalogue.to_json(), tuple(sorted(var_map.items())), dataclasses.astuple(region), str(out))
            # spawn: the parent may have JAX initialized, and forking a multithreaded process is unsafe
            with cf.ProcessPoolExecutor(min(workers, len(blocks)),
                                        mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = [pool.submit(_worker_block, *args, chunk) for chunk in blocks]
                try:
                    for fut in cf.as_completed(futures):
                        bar.update(fut.result())
                except cf.process.BrokenProcessPool:
                    raise UserError("a prepare worker process died (killed or out of memory); the store is "
                                    "resumable, rerun") from None
                finally:
                    for fut in futures:
                        fut.cancel()
    summary = {"written": len(todo), "already": len(times) - len(todo), "missing": len(axis) - len(times),
               "failed": 0, "slots": len(axis)}
    log(f"{out}: {summary['written']} slot(s) written now, {summary['already']} before, {summary['missing']} "
        f"missing, of {summary['slots']}")
    return summary
