"""Reading catalogue variables from GRIB2 files: one ecCodes pass per file, with cfgrib's key handling.

Each file of a slot is read once, message by message (ecCodes); a message is decoded only when a catalogue variable
wants it. What comes out is what cfgrib reads (tests/test_prepare.py compares them on the real HRRR and NAM files):
* a variable is selected by ``shortName`` *and* ``typeOfLevel``, plus ``level`` for single-level fields and
  ``stepRange`` where the catalogue asks (two accumulations ending at the same step are different variables); two
  messages left for the same level are an error asking for a ``stepRange`` instead of a silent choice;
* values as cfgrib returns them: missing points (bitmap) as NaN, alternative row scanning undone, [Ny, Nx] in the
  file's scanning order; latitude/longitude from ecCodes (``latitudes``/``longitudes`` on projected grids,
  ``distinctLatitudes``/``distinctLongitudes`` on regular ones);
* attributes under cfgrib's names (``GRIB_<key>``), with cfgrib's rule of dropping ``undef``/``unknown`` values;
* isobaric levels are selected by value, in catalogue order (cfgrib would give them in descending order).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional, Sequence

import eccodes
import numpy as np

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


def _describe(var: Variable, level: Optional[float] = None) -> str:
    lev = level if level is not None else var.level
    where = f"{var.type_of_level}" + (f" {lev:g}" if lev is not None else "")
    step = f", stepRange {var.step_range}" if var.step_range else ""
    return f"{var.name} (shortName {var.short_name} on {where}{step})"


# cfgrib's conventions (cfgrib.dataset / cfgrib.messages), mirrored so that the store holds what cfgrib reads
MISSING_VALUE = float(np.finfo(np.float32).max)  # cfgrib sets missingValue to this, then turns it into NaN
UNIQUE_KEYS = ("paramId", "dataType", "typeOfLevel", "stepType", "uvRelativeToGrid")  # "undef"/"unknown" dropped
GRID_TYPES_1D = ("regular_ll", "regular_gg")  # latitude/longitude as 1-D dimension coordinates
GRID_TYPES_2D = ("rotated_ll", "rotated_gg", "lambert", "lambert_azimuthal_equal_area", "albers",
                 "polar_stereographic")  # latitude/longitude as 2-D coordinates of (y, x)


def _key(h, key: str) -> Any:
    """A key as cfgrib reads it (native type; arrays for multi-valued keys); None where the message lacks it."""
    try:
        if eccodes.codes_get_size(h, key) > 1:
            return eccodes.codes_get_array(h, key)
        value = eccodes.codes_get(h, key)
    except eccodes.KeyValueNotFoundError:
        return None
    return value


def _attrs(h, keys: Sequence[str]) -> dict:
    """cfgrib's ``GRIB_<key>`` attributes of a message, for the ``GRIB_``-prefixed ``keys``."""
    out = {}
    for name in keys:
        key = name[len("GRIB_"):]
        value = _key(h, key)
        if value is None or (key in UNIQUE_KEYS and value in ("undef", "unknown")):
            continue
        out[name] = value
    return out


@dataclasses.dataclass
class _Found:
    """The messages of one variable in one file: level → values [Ny, Nx] float32, and the first one's attributes."""

    fields: dict
    shape: tuple  # (Ny, Nx)
    alternative_rows: bool  # alternativeRowScanning: every other row runs backwards
    path: Path
    provenance: Optional[dict] = None  # the metadata (read_slot's ``metadata``)
    grid_attrs: Optional[dict] = None
    valid_time: Optional[np.datetime64] = None
    latlon: Optional[tuple] = None


_GEOMETRY: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # md5GridSection → (lat, lon), like cfgrib's GEOCACHE


def _grid_latlon(h, shape: tuple, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """latitude, longitude [Ny, Nx] float64 of a message's grid, as cfgrib builds its coordinates (computed once per
    grid definition and process)."""
    md5 = eccodes.codes_get_string(h, "md5GridSection")
    if md5 not in _GEOMETRY:
        if len(_GEOMETRY) >= 4:
            _GEOMETRY.clear()
        _GEOMETRY[md5] = _compute_latlon(h, eccodes.codes_get_string(h, "gridType"), shape, path)
    return _GEOMETRY[md5]


def _compute_latlon(h, grid_type: str, shape: tuple, path: Path) -> tuple[np.ndarray, np.ndarray]:
    if grid_type in GRID_TYPES_1D:
        lon, lat = np.meshgrid(eccodes.codes_get_array(h, "distinctLongitudes"),
                               eccodes.codes_get_array(h, "distinctLatitudes"))
    elif grid_type in GRID_TYPES_2D:
        lat = eccodes.codes_get_array(h, "latitudes").reshape(shape)
        lon = eccodes.codes_get_array(h, "longitudes").reshape(shape)
    else:
        raise GribReadError(f"{path}: gridType {grid_type!r} is not a grid of rows and columns (supported: "
                            f"{', '.join(GRID_TYPES_1D + GRID_TYPES_2D)})")
    return np.asarray(lat, np.float64), np.asarray(lon, np.float64)


def _values(h, entry: _Found, var: Variable) -> np.ndarray:
    """The message's values [Ny, Nx] float32 as cfgrib returns them (missing points NaN)."""
    eccodes.codes_set(h, "missingValue", MISSING_VALUE)
    values = eccodes.codes_get_values(h)  # [Ny·Nx] float64
    if values.size != entry.shape[0] * entry.shape[1]:
        raise GribReadError(f"{entry.path}: {_describe(var)} has messages on different grids")
    values = values.reshape(entry.shape)
    if entry.alternative_rows:
        values = values.copy()
        values[1::2, :] = values[1::2, ::-1]
    out = values.astype(np.float32)
    out[out == np.float32(MISSING_VALUE)] = np.nan
    return out


def _valid_time(h) -> np.datetime64:
    d, t = f"{eccodes.codes_get_long(h, 'validityDate'):08d}", f"{eccodes.codes_get_long(h, 'validityTime'):04d}"
    return np.datetime64(f"{d[:4]}-{d[4:6]}-{d[6:]}T{t[:2]}:{t[2:]}", "ns")


def _scan_file(path: Path, wanted: Sequence[Variable], metadata: bool) -> dict[str, _Found]:
    """One pass over the messages of ``path``: the messages of every ``wanted`` variable it holds (name → found).
    ``metadata``: also each variable's attributes and valid time, and the grid's latitude/longitude."""
    by_key: dict[tuple[str, str], list[Variable]] = {}
    for var in wanted:
        by_key.setdefault((var.short_name, var.type_of_level), []).append(var)
    found: dict[str, _Found] = {}
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise GribReadError(f"{path}: no such file") from None
    # multi-field messages (NCEP packs u and v in one) are read field by field, from a clean ecCodes state, as
    # cfgrib does
    eccodes.codes_grib_multi_support_on()
    try:
        eccodes.codes_grib_multi_support_reset_file(f)
        _scan_messages(f, path, by_key, found, metadata)
    finally:
        eccodes.codes_grib_multi_support_off()
        f.close()
    return found


def _unreadable(path: Path, err: Exception) -> GribReadError:
    """The one-line error for a file ecCodes cannot read (truncated, corrupt): the file and ecCodes' first line."""
    msg = str(err).splitlines()[0] if str(err) else type(err).__name__
    return GribReadError(f"{path}: cannot be read as GRIB ({msg})")


def _scan_messages(f, path: Path, by_key: dict, found: dict, metadata: bool) -> None:
    """Every message of the open file ``f``: the candidates' messages into ``found`` (:func:`_take`)."""
    while True:
        try:
            h = eccodes.codes_grib_new_from_file(f)
        except Exception as err:  # ecCodes raises several types for truncated or corrupt files
            raise _unreadable(path, err) from None
        if h is None:
            break
        try:
            candidates = by_key.get((eccodes.codes_get_string(h, "shortName"),
                                     eccodes.codes_get_string(h, "typeOfLevel")))
            if candidates:
                _take(h, path, candidates, found, metadata)
        except GribReadError:
            raise
        except Exception as err:
            raise _unreadable(path, err) from None
        finally:
            eccodes.codes_release(h)


def _close(a: float, b: float) -> bool:
    """``np.isclose`` of two floats (rtol 1e-5, atol 1e-8) without its array overhead."""
    return abs(a - b) <= 1e-8 + 1e-5 * abs(b)


def _take(h, path: Path, candidates: Sequence[Variable], found: dict, metadata: bool) -> None:
    """Keep message ``h`` for the candidate variables (same shortName and typeOfLevel) whose level and stepRange it
    matches."""
    level = eccodes.codes_get_double(h, "level")
    step_range = None
    for var in candidates:
        if var.step_range is not None:
            step_range = step_range or eccodes.codes_get_string(h, "stepRange")
            if step_range != var.step_range:
                continue
        if var.level is not None and not _close(level, var.level):
            continue
        if var.levels is not None and not any(_close(level, lev) for lev in var.levels):
            continue
        entry = found.get(var.name)
        if entry is None:
            shape = (eccodes.codes_get_long(h, "Ny"), eccodes.codes_get_long(h, "Nx"))
            entry = found[var.name] = _Found({}, shape, bool(_key(h, "alternativeRowScanning")), path)
            if metadata:
                entry.provenance, entry.grid_attrs = _attrs(h, PROVENANCE_KEYS), _attrs(h, GRID_KEYS)
                entry.valid_time = _valid_time(h)
                entry.latlon = _grid_latlon(h, shape, path)
        if level in entry.fields:
            raise GribReadError(f"{path}: {_describe(var, level if var.levels is not None else None)} has several "
                                f"messages; give the catalogue entry a stepRange")
        entry.fields[level] = _values(h, entry, var)


@dataclasses.dataclass
class Slot:
    """One valid time read from its files: fields cropped by the region, plus the grid as cfgrib reads it."""

    fields: dict[str, np.ndarray]  # name -> [ny, nx] or [levels, ny, nx] float32
    latitude: Optional[np.ndarray]  # [ny, nx] float64; this and the rest None without read_slot's ``metadata``
    longitude: Optional[np.ndarray]
    grid_attrs: Optional[dict]  # GRIB geometry keys of the first variable read
    provenance: Optional[dict[str, dict]]  # name -> GRIB provenance attributes
    valid_time: Optional[np.datetime64]


def _field(var: Variable, entry: _Found) -> np.ndarray:
    """The variable's array: [Ny, Nx], or [levels, Ny, Nx] in catalogue order (each level matched by value)."""
    if var.levels is None:
        if len(entry.fields) > 1:
            raise GribReadError(f"{entry.path}: {_describe(var)} has messages on several levels "
                                f"({', '.join(f'{v:g}' for v in entry.fields)}); give the catalogue entry a level")
        (values,) = entry.fields.values()
        return values
    available = np.array(list(entry.fields), np.float64)
    missing = [lev for lev in var.levels if not np.any(np.isclose(available, lev))]
    if missing:
        raise GribReadError(f"{entry.path}: {_describe(var, missing[0])} not found (levels present: "
                            f"{', '.join(f'{v:g}' for v in sorted(available))})")
    keys = list(entry.fields)
    return np.stack([entry.fields[keys[int(np.argmin(np.abs(available - lev)))]] for lev in var.levels])


def read_slot(files_by_kind: dict[Optional[str], list[Path]], catalogue: Catalogue, region: Region,
              variables: Optional[Sequence[Variable]] = None, metadata: bool = True) -> Slot:
    """Read every catalogue variable (or ``variables``) of one valid time, each file in one pass.

    Args:
      files_by_kind: the slot's files grouped by HRRR file kind (``wrfprsf``/``wrfsfcf``), ``None`` for files of no
        known kind. A variable with a ``source`` kind is read from that kind's files if the slot has any, otherwise
        from all files; from the first of them that holds it.
      metadata: also the attributes, the valid time and the grid's latitude/longitude (False: the fields only,
        which is all that a slot after the first needs).
    """
    variables = list(variables if variables is not None else catalogue.variables)
    all_files = [p for group in files_by_kind.values() for p in group]
    search = {var.name: files_by_kind.get(var.source) or all_files for var in variables}
    scanned: dict[Path, dict[str, _Found]] = {}
    fields, provenance = {}, {}
    first: Optional[_Found] = None
    for var in variables:
        entry = None
        for path in search[var.name]:
            if path not in scanned:
                wanted = [v for v in variables if v.name not in fields and path in search[v.name]]
                scanned[path] = _scan_file(path, wanted, metadata)
            entry = scanned[path].get(var.name)
            if entry is not None:
                break
        if entry is None:
            raise GribReadError(f"{_describe(var)} not found in {', '.join(str(p) for p in search[var.name])}")
        if first is None:
            first = entry
            region.check(*entry.shape, where=str(entry.path))
        fields[var.name] = region.apply(_field(var, entry))
        provenance[var.name] = dict(entry.provenance or {})
        if var.step_range:
            provenance[var.name]["GRIB_stepRange"] = var.step_range
    if first is None:
        raise GribReadError("no catalogue variable to read")
    lat, lon = (region.apply(a) for a in first.latlon) if metadata else (None, None)
    return Slot(fields, lat, lon, first.grid_attrs, provenance if metadata else None, first.valid_time)


def scan_valid_time(path: Path) -> np.datetime64:
    """Valid time of a GRIB file from its first message (header only, fast); GribReadError if unreadable."""
    try:
        with open(path, "rb") as f:
            h = eccodes.codes_grib_new_from_file(f)
            if h is None:
                raise GribReadError(f"{path}: no GRIB message in the file")
            try:
                return _valid_time(h)
            finally:
                eccodes.codes_release(h)
    except GribReadError:
        raise
    except Exception as err:
        raise _unreadable(path, err) from None
