"""Reading catalogue variables from GRIB2 files with cfgrib -- exactly what cfgrib reads, nothing more.

Pitfalls handled (ENVIRONMENT.md, checked on the real files in ../shared/data/grib):
* every variable is selected by ``shortName`` *and* ``typeOfLevel`` (a ``typeOfLevel`` filter alone silently drops
  variables whose level sets differ), plus ``level`` for single-level fields and ``stepRange`` where the catalogue asks
  (two accumulations ending at the same step would otherwise collapse into one);
* the cfgrib index goes to a private temporary directory (input folders may be read-only; ``indexpath`` must be passed
  in ``backend_kwargs``), built once per file and reused by every variable of the file;
* isobaric levels come back in descending order: they are selected by value, in catalogue order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import xarray as xr

from def_jax.catalogue import Catalogue, Variable
from def_jax.errors import UserError

# cfgrib's attributes kept as provenance on store variables ...
PROVENANCE_KEYS = ("GRIB_paramId", "GRIB_shortName", "GRIB_name", "GRIB_units", "GRIB_typeOfLevel", "GRIB_stepType",
                   "GRIB_dataType", "GRIB_uvRelativeToGrid")
# ... and the grid geometry, which goes to the store's grid-mapping variable.
GRID_KEYS = tuple(f"GRIB_{k}" for k in (
    "gridType", "gridDefinitionDescription", "Nx", "Ny", "DxInMetres", "DyInMetres", "LaDInDegrees", "LoVInDegrees",
    "Latin1InDegrees", "Latin2InDegrees", "latitudeOfFirstGridPointInDegrees", "longitudeOfFirstGridPointInDegrees",
    "latitudeOfLastGridPointInDegrees", "longitudeOfLastGridPointInDegrees", "iDirectionIncrementInDegrees",
    "jDirectionIncrementInDegrees", "latitudeOfSouthernPoleInDegrees", "longitudeOfSouthernPoleInDegrees",
    "iScansNegatively", "jScansPositively", "jPointsAreConsecutive"))


class GribReadError(UserError):
    """A file cannot be read, or lacks a catalogue variable; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Region:
    """Index crop of the source grid, ``rows y0:y1, cols x0:x1`` (end exclusive, None = to the end), and a stride."""

    y0: int = 0
    y1: Optional[int] = None
    x0: int = 0
    x1: Optional[int] = None
    stride: int = 1

    @classmethod
    def parse(cls, text: Optional[str], stride: int = 1) -> "Region":
        """``Y0:Y1,X0:X1`` (either bound may be empty), e.g. ``400:656,800:1056``."""
        if stride < 1:
            raise UserError(f"--stride must be >= 1; got {stride}")
        if not text:
            return cls(stride=stride)
        try:
            ys, xs = text.split(",")
            (y0, y1), (x0, x1) = ([int(v) if v.strip() else None for v in part.split(":")] for part in (ys, xs))
        except ValueError:
            raise UserError(f"--region {text!r}: expected Y0:Y1,X0:X1 such as 400:656,800:1056") from None
        return cls(y0 or 0, y1, x0 or 0, x1, stride)

    def apply(self, a: np.ndarray) -> np.ndarray:
        """Crop the last two axes (y, x)."""
        return a[..., self.y0:self.y1:self.stride, self.x0:self.x1:self.stride]

    def check(self, ny: int, nx: int, where: str) -> None:
        y1, x1 = self.y1 if self.y1 is not None else ny, self.x1 if self.x1 is not None else nx
        if not (0 <= self.y0 < y1 <= ny and 0 <= self.x0 < x1 <= nx):
            raise UserError(f"--region {self.describe()} does not fit the {ny}×{nx} grid of {where}")

    def describe(self) -> str:
        s = lambda v: "" if v is None else str(v)  # noqa: E731
        return f"{self.y0}:{s(self.y1)},{self.x0}:{s(self.x1)}"


def _index_path(index_dir: str, path: Path) -> str:
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    return os.path.join(index_dir, f"{key}.{{short_hash}}.idx")


def _open(path: Path, keys: dict, index_dir: str) -> xr.Dataset:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # cfgrib's xarray merge defaults
            return xr.open_dataset(path, engine="cfgrib", decode_timedelta=True,
                                   backend_kwargs={"filter_by_keys": keys, "indexpath": _index_path(index_dir, path)})
    except FileNotFoundError:
        raise GribReadError(f"{path}: no such file") from None
    except Exception as err:  # ecCodes/cfgrib raise many types for truncated or corrupt files
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise GribReadError(f"{path}: cannot be read as GRIB ({msg})") from None


def _describe(var: Variable, level: Optional[float] = None) -> str:
    lev = level if level is not None else var.level
    where = f"{var.type_of_level}" + (f" {lev:g}" if lev is not None else "")
    step = f", stepRange {var.step_range}" if var.step_range else ""
    return f"{var.name} (shortName {var.short_name} on {where}{step})"


def read_variable(var: Variable, files: Sequence[Path], index_dir: str) -> xr.DataArray:
    """The variable as cfgrib reads it, from the first of ``files`` that holds it: (y, x) or (level, y, x) with the
    catalogue's levels in catalogue order. Raises GribReadError naming the variable, level and files if absent."""
    for path in files:
        ds = _open(path, var.filter_keys(), index_dir)
        if not ds.data_vars:
            continue
        (name,) = list(ds.data_vars)
        da = ds[name]
        extra = [d for d in da.dims if d not in ("y", "x", "latitude", "longitude", var.type_of_level)]
        if extra:
            raise GribReadError(f"{path}: {_describe(var)} has several messages along {extra}; "
                                f"give the catalogue entry a stepRange")
        if var.levels is not None:
            available = np.atleast_1d(da[var.type_of_level].values)
            missing = [lev for lev in var.levels if not np.any(np.isclose(available, lev))]
            if missing:
                raise GribReadError(f"{path}: {_describe(var, missing[0])} not found (levels present: "
                                    f"{', '.join(f'{v:g}' for v in sorted(available))})")
            if da.ndim == 2:  # a single level comes back without the level dimension
                da = da.expand_dims(var.type_of_level)
            da = da.sel({var.type_of_level: list(var.levels)}, method="nearest")
        return da
    raise GribReadError(f"{_describe(var)} not found in {', '.join(str(p) for p in files)}")


@dataclasses.dataclass
class Slot:
    """One valid time read from its files: fields cropped by the region, plus the grid as cfgrib reads it."""

    fields: dict[str, np.ndarray]  # name -> [ny, nx] or [levels, ny, nx] float32
    latitude: np.ndarray  # [ny, nx] float64
    longitude: np.ndarray
    grid_attrs: dict  # GRIB geometry keys of the first variable read
    provenance: dict[str, dict]  # name -> GRIB provenance attributes
    valid_time: np.datetime64


def _grid_arrays(da: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    lat, lon = da["latitude"].values, da["longitude"].values
    if lat.ndim == 1:  # regular lat-lon grids: 1-D coordinates
        lon, lat = np.meshgrid(lon, lat)
    return lat.astype(np.float64), lon.astype(np.float64)


def read_slot(files_by_kind: dict[Optional[str], list[Path]], catalogue: Catalogue, region: Region,
              variables: Optional[Sequence[Variable]] = None) -> Slot:
    """Read every catalogue variable (or ``variables``) of one valid time.

    Args:
      files_by_kind: the slot's files grouped by HRRR file kind (``wrfprsf``/``wrfsfcf``), ``None`` for files of no
        known kind. A variable with a ``source`` kind is read from that kind's files if the slot has any, otherwise
        from all files.
    """
    all_files = [p for group in files_by_kind.values() for p in group]
    fields, provenance = {}, {}
    lat = lon = None
    grid_attrs: dict = {}
    valid_time = None
    with tempfile.TemporaryDirectory(prefix="def_jax_cfgrib_") as index_dir:
        for var in variables if variables is not None else catalogue.variables:
            files = files_by_kind.get(var.source) or all_files
            da = read_variable(var, files, index_dir)
            if lat is None:
                lat, lon = _grid_arrays(da)
                region.check(*lat.shape, where=str(files[0]))
                lat, lon = region.apply(lat), region.apply(lon)
                grid_attrs = {k: da.attrs[k] for k in GRID_KEYS if k in da.attrs}
            if "valid_time" in da.coords and valid_time is None:
                valid_time = np.datetime64(da["valid_time"].values, "ns")
            fields[var.name] = region.apply(np.asarray(da.values, dtype=np.float32))
            provenance[var.name] = {k: da.attrs[k] for k in PROVENANCE_KEYS if k in da.attrs}
            if var.step_range:
                provenance[var.name]["GRIB_stepRange"] = var.step_range
    return Slot(fields, lat, lon, grid_attrs, provenance, valid_time)


def scan_valid_time(path: Path) -> np.datetime64:
    """Valid time of a GRIB file from its first message (header only, fast); GribReadError if unreadable."""
    import eccodes

    try:
        with open(path, "rb") as f:
            h = eccodes.codes_grib_new_from_file(f)
            if h is None:
                raise GribReadError(f"{path}: no GRIB message in the file")
            try:
                date, time = eccodes.codes_get(h, "validityDate"), eccodes.codes_get(h, "validityTime")
            finally:
                eccodes.codes_release(h)
    except GribReadError:
        raise
    except Exception as err:
        raise GribReadError(f"{path}: cannot be read as GRIB ({str(err).splitlines()[0]})") from None
    d, t = f"{date:08d}", f"{time:04d}"
    return np.datetime64(f"{d[:4]}-{d[4:6]}-{d[6:]}T{t[:2]}:{t[2:]}", "ns")
