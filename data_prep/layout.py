"""NOAA's HRRR file layout: ``<root>/hrrr.YYYYMMDD/conus/hrrr.tHHz.<kind>FF.grib2`` with kind ``wrfprsf``/``wrfsfcf``.

``prepare`` pairs the files of one valid time through :func:`parse_noaa_path`; ``synth`` and ``download`` write with
:func:`noaa_path`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

KINDS = ("wrfprsf", "wrfsfcf")
_NAME = re.compile(r"hrrr\.t(?P<hh>\d{2})z\.(?P<kind>wrfprsf|wrfsfcf|wrfnatf|wrfsubhf)(?P<fxx>\d{2,3})\.grib2$")
_DAY = re.compile(r"hrrr\.(?P<day>\d{8})$")


class NoaaFile(NamedTuple):
    path: Path
    init_time: np.datetime64
    fxx: int
    kind: str

    @property
    def valid_time(self) -> np.datetime64:
        return self.init_time + np.timedelta64(self.fxx, "h")


def noaa_path(root: str | Path, init_time: np.datetime64, fxx: int, kind: str) -> Path:
    """Where NOAA (and ``synth``/``download``) put an HRRR file."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
    t = np.datetime64(init_time, "h").astype(object)
    return Path(root) / f"hrrr.{t:%Y%m%d}" / "conus" / f"hrrr.t{t:%H}z.{kind}{fxx:02d}.grib2"


def parse_noaa_path(path: str | Path) -> Optional[NoaaFile]:
    """Cycle, forecast hour and kind of a file in NOAA's layout; None if the path does not follow it."""
    path = Path(path)
    m = _NAME.match(path.name)
    if not m:
        return None
    day_dir = next((d for d in (path.parent.name, path.parent.parent.name) if _DAY.match(d)), None)
    if day_dir is None:
        return None
    day = _DAY.match(day_dir)["day"]
    init = np.datetime64(f"{day[:4]}-{day[4:6]}-{day[6:]}T{m['hh']}", "h")
    return NoaaFile(path, init, int(m["fxx"]), m["kind"])
