"""Small real GRIB2 inputs for the data tests, written with ecCodes in NOAA's HRRR layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_prep.grib_write import GribEncoder
from data_prep.layout import noaa_path
from def_jax.catalogue import Catalogue, load_catalogue
from def_jax.geo import HRRR_CONUS

SMALL_LEVELS = (500.0, 850.0)


def small_catalogue() -> Catalogue:
    """hrrr_expanded on two pressure levels (all 18 variables, 31 channels)."""
    return load_catalogue("hrrr_expanded", SMALL_LEVELS)


def field_values(name: str, level, hour: int, shape) -> np.ndarray:
    """Deterministic, distinct, smooth values per (variable, level, hour)."""
    ny, nx = shape
    yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    base = (sum(map(ord, name)) % 17) * 10.0 + (level or 0) / 100.0
    return (base + 0.5 * hour + np.sin(0.3 * yy + 0.1 * hour) + np.cos(0.2 * xx + 0.05 * (level or 0))).astype(
        np.float32)


def write_hours(root: Path, catalogue: Catalogue, start: str, hours: int, shape=(12, 16),
                skip_hours=()) -> dict:
    """Write ``hours`` hourly f00 file pairs (prs + sfc); returns {(name, level, hour): values} as encoded."""
    grid = HRRR_CONUS.subgrid(500, 900, *shape)
    t0 = np.datetime64(start, "h")
    truth = {}
    with GribEncoder(grid) as enc:
        for h in range(hours):
            if h in skip_hours:
                continue
            t = t0 + np.timedelta64(h, "h")
            msgs = {"wrfprsf": [], "wrfsfcf": []}
            for var in catalogue.variables:
                static = var.role == "static"
                for lev in (var.levels or [var.level]):
                    values = field_values(var.name, lev, 0 if static else h, shape)
                    truth[(var.name, lev, h)] = values
                    msgs[var.source].append(enc.encode(var.grib, lev, values, t))
            for kind, m in msgs.items():
                path = noaa_path(root, t, 0, kind)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"".join(m))
    return truth
