"""A small store written with xarray + zarr exactly as docs/DATA.md describes it (schema version 1), for tests.

Catalogue (user style): ``t`` on 500 and 850 hPa (state), ``cape`` (2-D state, min 0), ``pwat`` (forcing, min 0),
``orog`` (static). Hourly times from 2024-06-01T00 on a 12 × 16 Lambert grid; by default slot 10 is missing
(``time_status`` 0, never written) and slot 40 failed (2); their data are NaN (chunks not written). Statistics
(``<var>_mean``, ``<var>_std``, ``<var>_diff_mean``, ``<var>_diff_std``) are those of the written training-period slots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import xarray as xr
import zarr

from def_jax.catalogue import Catalogue
from def_jax.data.schema import parse_period

START = np.datetime64("2024-06-01T00", "ns")
TRAIN = "2024-06-01T00:2024-06-01T23"  # slots 0..23
VAL = "2024-06-02T00:2024-06-02T11"  # slots 24..35
TEST = "2024-06-02T12:2024-06-03T11"  # slots 36..59
CATALOGUE = {
    "name": "test_small",
    "variables": [
        {"name": "t", "shortName": "t", "typeOfLevel": "isobaricInhPa", "levels": [500, 850], "units": "K",
         "long_name": "temperature", "role": "state", "min": 0.0},
        {"name": "cape", "shortName": "cape", "typeOfLevel": "surface", "units": "J kg-1",
         "long_name": "surface-based CAPE", "role": "state", "min": 0.0},
        {"name": "pwat", "shortName": "pwat", "typeOfLevel": "atmosphereSingleLayer", "units": "kg m-2",
         "long_name": "precipitable water", "role": "forcing", "min": 0.0},
        {"name": "orog", "shortName": "orog", "typeOfLevel": "surface", "units": "m",
         "long_name": "orography", "role": "static"},
    ],
}
PARAM_IDS = {"t": 130, "cape": 59, "pwat": 3054, "orog": 228002}


def catalogue() -> Catalogue:
    return Catalogue.from_dict(CATALOGUE)


def _fields(rng: np.random.Generator, nt: int, ny: int, nx: int) -> dict[str, np.ndarray]:
    """Smooth-ish random physical fields; each channel has its own offset so channel mix-ups show."""
    hours = np.arange(nt)[:, None, None]
    yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    diurnal = np.sin(2 * np.pi * hours / 24.0)  # [T, 1, 1]
    t500 = 255.0 + 0.3 * yy + 2.0 * diurnal + rng.normal(0, 0.5, (nt, ny, nx))
    t850 = 285.0 - 0.5 * yy + 0.1 * xx + 4.0 * diurnal + rng.normal(0, 0.8, (nt, ny, nx))
    cape = np.abs(800.0 * (1 + diurnal) * np.exp(-((xx - 8) ** 2) / 30.0) + rng.normal(0, 50, (nt, ny, nx)))
    pwat = 25.0 + 5.0 * np.cos(2 * np.pi * hours / 24.0) + rng.gamma(2.0, 1.0, (nt, ny, nx))
    return {"t": np.stack([t500, t850], axis=1), "cape": cape, "pwat": pwat,
            "orog": 1500.0 * np.exp(-((yy - 6) ** 2 + (xx - 10) ** 2) / 20.0) + rng.uniform(0, 5, (ny, nx))}


def write_store(path: str | Path, *, nt: int = 60, ny: int = 12, nx: int = 16, missing: Sequence[int] = (10,),
                failed: Sequence[int] = (40,), stats: bool = True, level_order: Sequence[float] = (500.0, 850.0),
                seed: int = 0, train_period: str = TRAIN) -> Path:
    """Write the test store at ``path`` (overwriting) and return the path.

    ``level_order`` is the order of the store's ``level`` coordinate (the catalogue lists 500, 850), to check that
    readers look levels up by value.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    cat = catalogue()
    times = START + np.arange(nt) * np.timedelta64(1, "h")  # [T]
    status = np.ones(nt, np.int8)
    status[list(missing)] = 0
    status[list(failed)] = 2
    data = _fields(rng, nt, ny, nx)
    order = [list((500.0, 850.0)).index(float(lev)) for lev in level_order]
    data["t"] = data["t"][:, order]
    for name in ("t", "cape", "pwat"):
        data[name][status != 1] = np.nan  # never written
    y = 3000.0 * np.arange(ny) - 1.5e6
    x = 3000.0 * np.arange(nx) - 2.0e6
    lat = 30.0 + 0.027 * np.arange(ny)[:, None] + 0.001 * np.arange(nx)[None, :]  # [ny, nx]
    lon = 250.0 + 0.031 * np.arange(nx)[None, :] - 0.002 * np.arange(ny)[:, None]  # 0–360 °E as cfgrib reads HRRR

    ds = xr.Dataset(coords={
        "time": ("time", times),
        "level": ("level", np.asarray(level_order, np.float32), {"units": "hPa", "long_name": "pressure level"}),
        "y": ("y", y, {"units": "m", "standard_name": "projection_y_coordinate"}),
        "x": ("x", x, {"units": "m", "standard_name": "projection_x_coordinate"}),
    })
    ds["latitude"] = (("y", "x"), lat, {"units": "degrees_north"})
    ds["longitude"] = (("y", "x"), lon, {"units": "degrees_east"})
    ds["crs"] = ((), np.int32(0), {
        "grid_mapping_name": "lambert_conformal_conic", "standard_parallel": [38.5, 38.5],
        "longitude_of_central_meridian": 262.5, "latitude_of_projection_origin": 38.5, "earth_radius": 6371229.0,
        "GRIB_gridType": "lambert", "GRIB_LaDInDegrees": 38.5, "GRIB_LoVInDegrees": 262.5,
        "GRIB_Latin1InDegrees": 38.5, "GRIB_Latin2InDegrees": 38.5})
    for v in cat:
        dims = ("y", "x") if v.role == "static" else (("time", "level", "y", "x") if v.levels else ("time", "y", "x"))
        attrs = {"units": v.units, "long_name": v.long_name, "role": v.role, "grid_mapping": "crs",
                 "GRIB_shortName": v.short_name, "GRIB_typeOfLevel": v.type_of_level,
                 "GRIB_paramId": PARAM_IDS[v.name]}
        if v.min is not None:
            attrs["valid_min"] = v.min
        if v.max is not None:
            attrs["valid_max"] = v.max
        ds[v.name] = (dims, data[v.name].astype(np.float32), attrs)
    ds["time_status"] = ("time", status, {"long_name": "0 missing, 1 written, 2 failed"})
    if stats:
        _add_stats(ds, cat, train_period)
    ds.attrs.update({
        "def_jax_schema": 1, "catalogue": cat.to_json(), "dt_hours": 1, "source": "xarray", "region": "",
        "stride": 1, "created": "2026-11-01T00:00:00Z", "history": "tests/store_fixtures.py",
    })
    if stats:
        ds.attrs["stats_train_period"] = train_period

    zstd = [zarr.codecs.ZstdCodec(level=3)]
    encoding = {name: {"chunks": (1,) + ds[name].shape[1:], "compressors": zstd}
                for name in ("t", "cape", "pwat")}
    encoding["time_status"] = {"chunks": (1,)}
    ds.to_zarr(path, mode="w", zarr_format=3, consolidated=False, encoding=encoding)
    return path


def _add_stats(ds: xr.Dataset, cat: Catalogue, train_period: str) -> None:
    start, end = parse_period(train_period)
    t = ds["time"].values
    in_train = (t >= start) & (t <= end) & (ds["time_status"].values == 1)  # [T]
    pairs = in_train[:-1] & in_train[1:]  # [T-1]: both slots of a difference written, in the training period
    for v in cat:
        if v.role == "static":
            continue
        x = ds[v.name].values.astype(np.float64)  # [T, (L,) y, x]
        axes = (0, 2, 3) if v.levels else (0, 1, 2)
        dims = ("level",) if v.levels else ()
        diff = (x[1:] - x[:-1])[pairs]
        for key, arr in (("mean", x[in_train].mean(axis=axes)), ("std", x[in_train].std(axis=axes)),
                         ("diff_mean", diff.mean(axis=axes)), ("diff_std", diff.std(axis=axes))):
            ds[f"{v.name}_{key}"] = (dims, np.asarray(arr, np.float64))


def manual_window(path: str | Path, start: int, length: int, region: Optional[tuple[int, int, int, int]] = None
                  ) -> dict[str, np.ndarray]:
    """Physical values read by hand with xarray: states [T, h, w, 3] (t500, t850, cape), forcings [T, h, w, 1]."""
    ds = xr.open_zarr(path, consolidated=False)
    sel = {"time": slice(start, start + length)}
    if region is not None:
        y0, x0, h, w = region
        sel.update(y=slice(y0, y0 + h), x=slice(x0, x0 + w))
    w_ds = ds.isel(sel)
    t = w_ds["t"]
    states = np.stack([t.sel(level=500.0).values, t.sel(level=850.0).values, w_ds["cape"].values], axis=-1)
    return {"states": states, "forcings": w_ds["pwat"].values[..., None], "ds": ds}
