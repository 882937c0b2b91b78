"""The channel catalogue: the one definition of what the model sees.

Preprocessing (which GRIB messages to read, how the synthetic mini-HRRR encodes them, what to download), the store
schema (variable names, units, levels), the input pipeline (which channels are state, forcing or static), the models
(channel counts) and the forecast output (units, physical constraints) all read it from here.

A catalogue is a list of :class:`Variable`. Built in: ``hrrr_expanded`` (seed 1's expanded HRRR set),
``era5_paper`` (pressure-level ERA5 for ``prepare --from-xarray``) and ``held_suarez`` (the dinosaur world of
``synth --world=held-suarez``). A user catalogue is a YAML or JSON file::

    {"variables": [{"name": "t", "shortName": "t", "typeOfLevel": "isobaricInhPa", "levels": [500, 850],
                    "units": "K", "role": "state"},
                   {"name": "apcp", "shortName": "tp", "typeOfLevel": "surface", "stepRange": "11-12",
                    "role": "forcing"}]}

Keys: ``name`` (store name), ``shortName`` and ``typeOfLevel`` (as cfgrib reports them), ``levels`` (list) or ``level``
(one value; omit for surface-like levels), optional ``stepRange``, ``units``, ``long_name``, ``role``
(``state``/``forcing``/``static``, default ``state``), ``source`` (file kind, e.g. ``wrfprsf``), ``min``/``max``
(physical bounds applied where states leave normalized space).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable, Optional

from def_jax.errors import UserError

ROLES = ("state", "forcing", "static")
HRRR_LEVELS = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000)  # hPa, DEF_METHOD §2
REFC_NO_ECHO = -10.0  # dBZ: HRRR's composite reflectivity floor (no echo)


@dataclasses.dataclass(frozen=True)
class GribCode:
    """GRIB2 identification of a field (used to write the synthetic mini-HRRR like NOAA's files).

    ``first_surface`` is ``typeOfFirstFixedSurface`` (1 ground, 10 entire atmosphere, 100 isobaric, 103 height above
    ground, 200 entire atmosphere as a single layer); the level value goes in ``scaledValueOfFirstFixedSurface``
    (in Pa for isobaric surfaces).
    """

    discipline: int
    category: int
    number: int
    first_surface: int


@dataclasses.dataclass(frozen=True)
class Variable:
    """One catalogue variable, i.e. one store variable of one or more channels (one per level)."""

    name: str
    short_name: str
    type_of_level: str
    levels: Optional[tuple[float, ...]] = None  # several levels -> a (time, level, y, x) store variable
    level: Optional[float] = None  # the single level of a (time, y, x) variable, if it needs one (2 m, 10 m)
    step_range: Optional[str] = None
    units: str = ""
    long_name: str = ""
    role: str = "state"
    source: Optional[str] = None  # HRRR file kind (wrfprsf / wrfsfcf); None = any input file
    min: Optional[float] = None  # physical lower bound (q, CAPE, PWAT >= 0; REFC >= no-echo)
    max: Optional[float] = None  # physical upper bound (CIN <= 0)
    grib: Optional[GribCode] = None
    idx_name: Optional[str] = None  # name in NOAA .idx inventories (TMP, SPFH, ...), for downloads
    idx_level: Optional[str] = None  # level text in .idx inventories; "{level}" is replaced by the level (hPa)

    def __post_init__(self):
        # Levels as floats, so that equal catalogues compare (and serialize) equal however they were written.
        if self.levels is not None:
            object.__setattr__(self, "levels", tuple(float(x) for x in self.levels))
        if self.level is not None:
            object.__setattr__(self, "level", float(self.level))
        if self.role not in ROLES:
            raise UserError(f"catalogue variable {self.name!r}: role must be one of {', '.join(ROLES)}; got {self.role!r}")
        if self.levels is not None and self.level is not None:
            raise UserError(f"catalogue variable {self.name!r}: give 'levels' or 'level', not both")
        if self.levels is not None and len(self.levels) == 0:
            raise UserError(f"catalogue variable {self.name!r}: 'levels' is empty")

    @property
    def channels(self) -> list[str]:
        """Channel names: ``name`` for a single-level variable, ``name<level>`` per level (e.g. ``t500``)."""
        if self.levels is None:
            return [self.name]
        return [f"{self.name}{level_str(lev)}" for lev in self.levels]

    @property
    def num_channels(self) -> int:
        return 1 if self.levels is None else len(self.levels)

    def filter_keys(self, level: Optional[float] = None) -> dict[str, Any]:
        """cfgrib ``filter_by_keys`` selecting this variable (one level of it, if given)."""
        keys: dict[str, Any] = {"shortName": self.short_name, "typeOfLevel": self.type_of_level}
        lev = level if level is not None else self.level
        if lev is not None:
            keys["level"] = int(lev) if float(lev).is_integer() else lev
        if self.step_range is not None:
            keys["stepRange"] = self.step_range
        return keys

    def idx_search(self, level: Optional[float] = None) -> Optional[str]:
        """The regular expression matching this variable's line in a NOAA ``.idx`` inventory (Herbie searchString)."""
        if self.idx_name is None or self.idx_level is None:
            return None
        text = self.idx_level.replace("{level}", level_str(level)) if level is not None else self.idx_level
        return f":{self.idx_name}:{_regex_escape(text)}:"

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "shortName": self.short_name, "typeOfLevel": self.type_of_level}
        if self.levels is not None:
            out["levels"] = list(self.levels)
        if self.level is not None:
            out["level"] = self.level
        for key, value in (("stepRange", self.step_range), ("units", self.units), ("long_name", self.long_name),
                           ("source", self.source), ("min", self.min), ("max", self.max),
                           ("idx_name", self.idx_name), ("idx_level", self.idx_level)):
            if value not in (None, ""):
                out[key] = value
        out["role"] = self.role
        if self.grib is not None:
            out["grib"] = dataclasses.asdict(self.grib)
        return out


def level_str(level: float) -> str:
    """A level as NOAA's inventories and the channel names write it: 500, 0.5."""
    return str(int(level)) if float(level).is_integer() else str(level)


def _regex_escape(text: str) -> str:
    return "".join("\\" + c if c in r"\.^$*+?{}[]|()" else c for c in text)


@dataclasses.dataclass(frozen=True)
class Catalogue:
    """An ordered set of variables; channels are ordered by variable, then level."""

    name: str
    variables: tuple[Variable, ...]

    def __post_init__(self):
        names = [v.name for v in self.variables]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise UserError(f"catalogue {self.name!r}: duplicate variable names {dup}")
        if not self.variables:
            raise UserError(f"catalogue {self.name!r} has no variables")

    def same_variables(self, other: "Catalogue") -> bool:
        """Whether both define the same variables in the same order (names of the catalogues aside)."""
        return self.variables == other.variables

    def __getitem__(self, name: str) -> Variable:
        for v in self.variables:
            if v.name == name:
                return v
        raise KeyError(name)

    def __iter__(self):
        return iter(self.variables)

    def by_role(self, role: str) -> tuple[Variable, ...]:
        return tuple(v for v in self.variables if v.role == role)

    def channels(self, role: Optional[str] = None) -> list[str]:
        """Channel names in order, of one role or of all."""
        vs = self.variables if role is None else self.by_role(role)
        return [c for v in vs for c in v.channels]

    def num_channels(self, role: Optional[str] = None) -> int:
        return len(self.channels(role))

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "variables": [v.to_dict() for v in self.variables]}, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], name: str = "user") -> "Catalogue":
        if not isinstance(data, dict) or not isinstance(data.get("variables"), list):
            raise UserError(f"catalogue {name!r}: expected an object with a 'variables' list")
        variables = []
        for i, item in enumerate(data["variables"]):
            variables.append(_variable_from_dict(item, f"{name}: variables[{i}]"))
        return cls(name=str(data.get("name", name)), variables=tuple(variables))


_KNOWN_KEYS = {"name", "shortName", "typeOfLevel", "levels", "level", "stepRange", "units", "long_name", "role",
               "source", "min", "max", "grib", "idx_name", "idx_level"}


def _variable_from_dict(item: Any, where: str) -> Variable:
    if not isinstance(item, dict):
        raise UserError(f"catalogue {where}: expected an object, got {type(item).__name__}")
    unknown = sorted(set(item) - _KNOWN_KEYS)
    if unknown:
        raise UserError(f"catalogue {where}: unknown key(s) {unknown}; allowed: {sorted(_KNOWN_KEYS)}")
    for key in ("name", "shortName", "typeOfLevel"):
        if not isinstance(item.get(key), str) or not item[key]:
            raise UserError(f"catalogue {where}: '{key}' must be a non-empty string")
    levels = item.get("levels")
    if levels is not None and (not isinstance(levels, list) or not all(isinstance(x, (int, float)) for x in levels)):
        raise UserError(f"catalogue {where} ({item['name']}): 'levels' must be a list of numbers")
    level = item.get("level")
    if level is not None and not isinstance(level, (int, float)):
        raise UserError(f"catalogue {where} ({item['name']}): 'level' must be a number")
    grib = item.get("grib")
    try:
        grib = GribCode(**grib) if grib is not None else None
    except TypeError as err:
        raise UserError(f"catalogue {where} ({item['name']}): bad 'grib': {err}") from None
    return Variable(
        name=item["name"], short_name=item["shortName"], type_of_level=item["typeOfLevel"],
        levels=tuple(float(x) for x in levels) if levels is not None else None,
        level=float(level) if level is not None else None,
        step_range=item.get("stepRange"), units=item.get("units", ""), long_name=item.get("long_name", ""),
        role=item.get("role", "state"), source=item.get("source"), min=item.get("min"), max=item.get("max"),
        grib=grib, idx_name=item.get("idx_name"), idx_level=item.get("idx_level"),
    )


# --- built-in catalogues -----------------------------------------------------------------------------------------


def _hrrr_expanded(levels: Iterable[float] = HRRR_LEVELS) -> Catalogue:
    """Seed 1's expanded HRRR set (DEF_METHOD §2) with HRRR's GRIB2 codes and inventory names.

    HRRR winds are grid-relative (resolutionAndComponentFlags bit 5 set; cfgrib: GRIB_uvRelativeToGrid = 1); they are
    kept so and the store records it.
    """
    lv = tuple(float(x) for x in levels)
    sfc, prs = "wrfsfcf", "wrfprsf"
    V = Variable
    return Catalogue("hrrr_expanded", (
        V("sp", "sp", "surface", units="Pa", long_name="surface pressure", source=sfc, min=0.0,
          grib=GribCode(0, 3, 0, 1), idx_name="PRES", idx_level="surface"),
        V("t2m", "2t", "heightAboveGround", level=2, units="K", long_name="2 m temperature", source=sfc, min=0.0,
          grib=GribCode(0, 0, 0, 103), idx_name="TMP", idx_level="2 m above ground"),
        V("d2m", "2d", "heightAboveGround", level=2, units="K", long_name="2 m dew point", source=sfc, min=0.0,
          grib=GribCode(0, 0, 6, 103), idx_name="DPT", idx_level="2 m above ground"),
        V("u10", "10u", "heightAboveGround", level=10, units="m s-1", long_name="10 m grid-relative u wind",
          source=sfc, grib=GribCode(0, 2, 2, 103), idx_name="UGRD", idx_level="10 m above ground"),
        V("v10", "10v", "heightAboveGround", level=10, units="m s-1", long_name="10 m grid-relative v wind",
          source=sfc, grib=GribCode(0, 2, 3, 103), idx_name="VGRD", idx_level="10 m above ground"),
        V("cape", "cape", "surface", units="J kg-1", long_name="surface-based CAPE", source=sfc, min=0.0,
          grib=GribCode(0, 7, 6, 1), idx_name="CAPE", idx_level="surface"),
        V("cin", "cin", "surface", units="J kg-1", long_name="surface-based CIN", source=sfc, max=0.0,
          grib=GribCode(0, 7, 7, 1), idx_name="CIN", idx_level="surface"),
        V("refc", "refc", "atmosphere", units="dBZ", long_name="composite reflectivity", source=sfc,
          min=REFC_NO_ECHO, grib=GribCode(0, 16, 196, 10), idx_name="REFC", idx_level="entire atmosphere"),
        V("z", "gh", "isobaricInhPa", levels=lv, units="gpm", long_name="geopotential height", source=prs,
          grib=GribCode(0, 3, 5, 100), idx_name="HGT", idx_level="{level} mb"),
        V("t", "t", "isobaricInhPa", levels=lv, units="K", long_name="temperature", source=prs, min=0.0,
          grib=GribCode(0, 0, 0, 100), idx_name="TMP", idx_level="{level} mb"),
        V("q", "q", "isobaricInhPa", levels=lv, units="kg kg-1", long_name="specific humidity", source=prs,
          min=0.0, grib=GribCode(0, 1, 0, 100), idx_name="SPFH", idx_level="{level} mb"),
        V("u", "u", "isobaricInhPa", levels=lv, units="m s-1", long_name="grid-relative u wind", source=prs,
          grib=GribCode(0, 2, 2, 100), idx_name="UGRD", idx_level="{level} mb"),
        V("v", "v", "isobaricInhPa", levels=lv, units="m s-1", long_name="grid-relative v wind", source=prs,
          grib=GribCode(0, 2, 3, 100), idx_name="VGRD", idx_level="{level} mb"),
        V("dswrf", "sdswrf", "surface", units="W m-2", long_name="downward short-wave radiation flux",
          role="forcing", source=sfc, min=0.0, grib=GribCode(0, 4, 7, 1), idx_name="DSWRF", idx_level="surface"),
        V("dlwrf", "sdlwrf", "surface", units="W m-2", long_name="downward long-wave radiation flux",
          role="forcing", source=sfc, min=0.0, grib=GribCode(0, 5, 3, 1), idx_name="DLWRF", idx_level="surface"),
        V("pwat", "pwat", "atmosphereSingleLayer", units="kg m-2", long_name="precipitable water", role="forcing",
          source=sfc, min=0.0, grib=GribCode(0, 1, 3, 200), idx_name="PWAT",
          idx_level="entire atmosphere (considered as a single layer)"),
        V("orog", "orog", "surface", units="m", long_name="orography (surface geopotential height)",
          role="static", source=sfc, grib=GribCode(0, 3, 5, 1), idx_name="HGT", idx_level="surface"),
        V("lsm", "lsm", "surface", units="1", long_name="land mask (1 = land)", role="static", source=sfc,
          min=0.0, max=1.0, grib=GribCode(2, 0, 0, 1), idx_name="LAND", idx_level="surface"),
    ))


# WeatherBench's 13 pressure levels (hPa)
WEATHERBENCH_LEVELS = (50.0, 100.0, 150.0, 200.0, 250.0, 300.0, 400.0, 500.0, 600.0, 700.0, 850.0, 925.0, 1000.0)


def _era5_paper() -> Catalogue:
    """Pressure-level ERA5 at WeatherBench's 13 levels plus near-surface fields, for ``prepare --from-xarray``.

    The DEF authors' exact 85-channel list is not part of DEF_METHOD; this is WeatherBench's standard 5.625° set
    (5 × 13 + 3 state channels, top-of-atmosphere insolation as forcing, orography and land-sea mask as statics).
    """
    lv = WEATHERBENCH_LEVELS
    V = Variable
    return Catalogue("era5_paper", (
        V("z", "z", "isobaricInhPa", levels=lv, units="m2 s-2", long_name="geopotential"),
        V("t", "t", "isobaricInhPa", levels=lv, units="K", long_name="temperature", min=0.0),
        V("q", "q", "isobaricInhPa", levels=lv, units="kg kg-1", long_name="specific humidity", min=0.0),
        V("u", "u", "isobaricInhPa", levels=lv, units="m s-1", long_name="u wind"),
        V("v", "v", "isobaricInhPa", levels=lv, units="m s-1", long_name="v wind"),
        V("t2m", "2t", "heightAboveGround", level=2, units="K", long_name="2 m temperature", min=0.0),
        V("u10", "10u", "heightAboveGround", level=10, units="m s-1", long_name="10 m u wind"),
        V("v10", "10v", "heightAboveGround", level=10, units="m s-1", long_name="10 m v wind"),
        V("tisr", "tisr", "surface", units="J m-2", long_name="TOA incident solar radiation", role="forcing",
          min=0.0),
        V("orog", "z", "surface", units="m2 s-2", long_name="surface geopotential", role="static"),
        V("lsm", "lsm", "surface", units="1", long_name="land-sea mask", role="static", min=0.0, max=1.0),
    ))


def _held_suarez(levels: Iterable[float] = WEATHERBENCH_LEVELS) -> Catalogue:
    """The dry Held–Suarez world of ``def-jax synth --world=held-suarez`` (:mod:`data_prep.heldsuarez`): geopotential,
    temperature and wind on pressure levels and surface pressure, ERA5 names and units; no forcings or statics."""
    lv = tuple(float(p) for p in levels)
    V = Variable
    return Catalogue("held_suarez", (
        V("z", "z", "isobaricInhPa", levels=lv, units="m2 s-2", long_name="geopotential"),
        V("t", "t", "isobaricInhPa", levels=lv, units="K", long_name="temperature", min=0.0),
        V("u", "u", "isobaricInhPa", levels=lv, units="m s-1", long_name="u wind"),
        V("v", "v", "isobaricInhPa", levels=lv, units="m s-1", long_name="v wind"),
        V("sp", "sp", "surface", units="Pa", long_name="surface pressure", min=0.0),
    ))


BUILTIN = {"hrrr_expanded": _hrrr_expanded, "era5_paper": _era5_paper, "held_suarez": _held_suarez}
LEVELLED = ("hrrr_expanded", "held_suarez")  # built-ins whose pressure levels ``levels`` sets


def load_catalogue(name_or_path: str, levels: Optional[Iterable[float]] = None) -> Catalogue:
    """A built-in catalogue by name (``levels`` sets the pressure levels of ``hrrr_expanded`` and ``held_suarez``), or
    a YAML/JSON file. Errors name the file or the entry and what was expected."""
    if name_or_path in BUILTIN:
        if name_or_path in LEVELLED and levels is not None:
            return BUILTIN[name_or_path](levels)
        return BUILTIN[name_or_path]()
    path = Path(name_or_path)
    if not path.exists():
        raise UserError(f"catalogue {name_or_path!r}: neither a built-in ({', '.join(BUILTIN)}) nor an existing file")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:  # parse errors of either format
        raise UserError(f"catalogue {path}: cannot parse: {str(err).splitlines()[0]}") from None
    return Catalogue.from_dict(data, name=path.stem)


def catalogue_from_json(text: str) -> Catalogue:
    """Inverse of :meth:`Catalogue.to_json` (how a store records its catalogue)."""
    data = json.loads(text)
    return Catalogue.from_dict(data, name=data.get("name", "store"))
