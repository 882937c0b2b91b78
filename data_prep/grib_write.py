"""Encoding fields as GRIB2 messages the way NOAA's HRRR files are encoded (ecCodes).

Headers follow the real HRRR files (../shared/data/grib): centre 7 (NCEP), generating process 83 (HRRR), analysis
(forecastTime 0, significance of reference time 1), Lambert conformal grid template 3.30 on the sphere of
shapeOfTheEarth 6, scanningMode 64, winds flagged grid-relative (resolutionAndComponentFlags 8), complex packing with
second-order spatial differencing. Each variable is identified by the catalogue's discipline/category/number and
first fixed surface, so cfgrib reads back the catalogue's shortName, typeOfLevel and level.
"""

from __future__ import annotations

from typing import Optional

import eccodes
import numpy as np

from def_jax.catalogue import GribCode
from def_jax.geo import LambertGrid

ISOBARIC, HEIGHT_ABOVE_GROUND = 100, 103


class GribEncoder:
    """Builds messages on one Lambert grid; :meth:`encode` returns the bytes of one message."""

    def __init__(self, grid: LambertGrid, bits_per_value: int = 16):
        proj = grid.projection
        h = eccodes.codes_grib_new_from_samples("GRIB2")
        keys = [
            ("centre", 7), ("subCentre", 0), ("significanceOfReferenceTime", 1),
            ("productionStatusOfProcessedData", 0), ("typeOfProcessedData", 1),
            ("gridType", "lambert"), ("shapeOfTheEarth", 6), ("Nx", grid.nx), ("Ny", grid.ny),
            ("latitudeOfFirstGridPointInDegrees", grid.lat_first),
            ("longitudeOfFirstGridPointInDegrees", grid.lon_first % 360.0),
            ("LaDInDegrees", proj.lat_0), ("LoVInDegrees", proj.lon_0 % 360.0),
            ("Latin1InDegrees", proj.lat_1), ("Latin2InDegrees", proj.lat_2),
            ("DxInMetres", grid.dx), ("DyInMetres", grid.dy), ("projectionCentreFlag", 0), ("scanningMode", 64),
            ("resolutionAndComponentFlags", 8),
            ("typeOfGeneratingProcess", 2), ("generatingProcessIdentifier", 83), ("indicatorOfUnitOfTimeRange", 1),
            ("forecastTime", 0),
        ]
        for key, value in keys:
            eccodes.codes_set(h, key, value)
        self._base = h
        self._bits = bits_per_value
        self._templates: dict = {}
        self.shape = (grid.ny, grid.nx)

    def close(self) -> None:
        for h in [self._base, *self._templates.values()]:
            eccodes.codes_release(h)
        self._templates.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _template(self, code: GribCode, level: Optional[float]):
        """A handle with everything but date and values set, one per (variable, level), reused across hours
        (re-setting the product keys per message would triple the encoding time)."""
        key = (code, level)
        if key not in self._templates:
            h = eccodes.codes_clone(self._base)
            for name, value in (("discipline", code.discipline), ("parameterCategory", code.category),
                                ("parameterNumber", code.number), ("typeOfFirstFixedSurface", code.first_surface)):
                eccodes.codes_set(h, name, value)
            if code.first_surface == ISOBARIC:
                eccodes.codes_set(h, "scaleFactorOfFirstFixedSurface", 0)
                eccodes.codes_set(h, "scaledValueOfFirstFixedSurface", int(round(level * 100)))  # Pa
            elif code.first_surface == HEIGHT_ABOVE_GROUND:
                eccodes.codes_set(h, "scaleFactorOfFirstFixedSurface", 0)
                eccodes.codes_set(h, "scaledValueOfFirstFixedSurface", int(round(level)))
            eccodes.codes_set(h, "packingType", "grid_complex_spatial_differencing")
            self._templates[key] = h
        return self._templates[key]

    def encode(self, code: GribCode, level: Optional[float], values: np.ndarray, valid_time: np.datetime64) -> bytes:
        """One analysis message (forecast hour 0) valid at ``valid_time``. ``values`` [ny, nx], rows south→north."""
        if values.shape != self.shape:
            raise ValueError(f"values have shape {values.shape}, the grid is {self.shape}")
        if not np.all(np.isfinite(values)):
            raise ValueError("values must be finite")
        t = np.datetime64(valid_time, "h").astype(object)
        h = self._template(code, level)
        eccodes.codes_set(h, "dataDate", int(f"{t:%Y%m%d}"))
        eccodes.codes_set(h, "dataTime", int(f"{t:%H}00"))
        # ecCodes lowers bitsPerValue to what the last field needed (0 for a constant one): reset it every time.
        eccodes.codes_set(h, "bitsPerValue", self._bits)
        eccodes.codes_set_values(h, np.ascontiguousarray(values, dtype=np.float64).ravel())
        return eccodes.codes_get_message(h)
