"""Map geometry: the Lambert conformal conic projection of the HRRR grid, on a sphere (pure NumPy).

Snyder (1987), "Map Projections — A Working Manual", USGS PP 1395, eqs. 15-1 to 15-5 (sphere):

    n = ln(cos φ1 / cos φ2) / ln(tan(π/4 + φ2/2) / tan(π/4 + φ1/2))      (n = sin φ1 when φ1 = φ2)
    F = cos φ1 · tanⁿ(π/4 + φ1/2) / n,   ρ(φ) = R F / tanⁿ(π/4 + φ/2),   ρ0 = ρ(φ0)
    x = ρ sin θ,  y = ρ0 − ρ cos θ,  θ = n (λ − λ0)
    k = n ρ / (R cos φ)   (the map scale factor; a grid cell of side Δ covers (Δ/k)² of the sphere)

GRIB2 Lambert grids (template 3.30) give φ1 = Latin1, φ2 = Latin2, φ0 = LaD, λ0 = LoV, the first grid point and Dx/Dy;
with shapeOfTheEarth = 6 the sphere has R = 6 371 229 m (HRRR). A store keeps the projection as CF grid-mapping
attributes (:meth:`LambertConformal.cf_attrs`, read back by :meth:`LambertConformal.from_cf`); preprocessing builds
it from the GRIB keys (:meth:`LambertConformal.from_grib`). Used for the store's projection coordinates, the synthetic
mini-HRRR's sub-grids and the map-factor area weights (:meth:`def_jax.data.store.StoreReader.area_weights`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from def_jax.errors import UserError

EARTH_RADIUS_GRIB6 = 6_371_229.0  # m, GRIB2 shapeOfTheEarth = 6


@dataclasses.dataclass(frozen=True)
class LambertConformal:
    """A Lambert conformal conic projection on a sphere (angles in degrees)."""

    lat_1: float  # first standard parallel (Latin1)
    lat_2: float  # second standard parallel (Latin2)
    lat_0: float  # latitude of origin (LaD)
    lon_0: float  # central meridian (LoV), degrees east
    radius: float = EARTH_RADIUS_GRIB6

    @property
    def n(self) -> float:
        p1, p2 = np.radians(self.lat_1), np.radians(self.lat_2)
        if np.isclose(p1, p2):
            return float(np.sin(p1))
        return float(np.log(np.cos(p1) / np.cos(p2)) / np.log(np.tan(np.pi / 4 + p2 / 2) / np.tan(np.pi / 4 + p1 / 2)))

    @property
    def _rf(self) -> float:  # R·F
        p1, n = np.radians(self.lat_1), self.n
        return self.radius * np.cos(p1) * np.tan(np.pi / 4 + p1 / 2) ** n / n

    def _rho(self, lat_rad):
        return self._rf / np.tan(np.pi / 4 + lat_rad / 2) ** self.n

    def forward(self, lat, lon) -> tuple[np.ndarray, np.ndarray]:
        """(lat, lon) in degrees (lon any convention) → projection (x, y) in metres."""
        lat, lon = np.radians(np.asarray(lat, np.float64)), np.asarray(lon, np.float64)
        dlon = np.radians((lon - self.lon_0 + 180.0) % 360.0 - 180.0)
        rho, theta = self._rho(lat), self.n * dlon
        return rho * np.sin(theta), self._rho(np.radians(self.lat_0)) - rho * np.cos(theta)

    def inverse(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Projection (x, y) in metres → (lat, lon) in degrees, lon in [0, 360)."""
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        n = self.n
        dy = self._rho(np.radians(self.lat_0)) - y
        rho = np.sign(n) * np.hypot(x, dy)
        theta = np.arctan2(np.sign(n) * x, np.sign(n) * dy)
        lat = 2.0 * np.arctan((self._rf / rho) ** (1.0 / n)) - np.pi / 2
        lon = (self.lon_0 + np.degrees(theta / n)) % 360.0
        return np.degrees(lat), lon

    def scale_factor(self, lat) -> np.ndarray:
        """Map scale factor k(φ) = n ρ(φ) / (R cos φ)."""
        lat = np.radians(np.asarray(lat, np.float64))
        return self.n * self._rho(lat) / (self.radius * np.cos(lat))

    def cf_attrs(self) -> dict:
        """CF-1.x grid-mapping attributes."""
        return {
            "grid_mapping_name": "lambert_conformal_conic",
            "standard_parallel": [self.lat_1, self.lat_2] if self.lat_1 != self.lat_2 else self.lat_1,
            "longitude_of_central_meridian": self.lon_0,
            "latitude_of_projection_origin": self.lat_0,
            "earth_radius": self.radius,
        }

    @classmethod
    def from_cf(cls, attrs: dict, where: str = "crs") -> "LambertConformal":
        """The projection of CF-1.x grid-mapping attributes (:meth:`cf_attrs`; ``earth_radius`` defaults to
        :data:`EARTH_RADIUS_GRIB6`); ``where`` names them in the one-line error for another grid mapping."""
        name = attrs.get("grid_mapping_name")
        if name != "lambert_conformal_conic":
            raise UserError(f"{where}: grid_mapping_name is {name!r}, not lambert_conformal_conic")
        parallels = np.atleast_1d(np.asarray(_required(attrs, "standard_parallel", where), np.float64))
        return cls(lat_1=float(parallels[0]), lat_2=float(parallels[-1]),
                   lat_0=float(_required(attrs, "latitude_of_projection_origin", where)),
                   lon_0=float(_required(attrs, "longitude_of_central_meridian", where)),
                   radius=float(attrs.get("earth_radius", EARTH_RADIUS_GRIB6)))

    @classmethod
    def from_grib(cls, attrs: dict, where: str = "GRIB grid") -> "LambertConformal":
        """The projection of a GRIB2 Lambert grid (template 3.30) from cfgrib's ``GRIB_Latin1InDegrees``,
        ``GRIB_Latin2InDegrees``, ``GRIB_LaDInDegrees`` and ``GRIB_LoVInDegrees`` attributes, on the sphere of
        shapeOfTheEarth = 6."""
        keys = ("Latin1", "Latin2", "LaD", "LoV")
        return cls(*(float(_required(attrs, f"GRIB_{key}InDegrees", where)) for key in keys))

    @staticmethod
    def is_grib_lambert(attrs: dict) -> bool:
        """Whether cfgrib's grid attributes describe a Lambert conformal grid."""
        return attrs.get("GRIB_gridType") == "lambert" or "GRIB_LaDInDegrees" in attrs


def _required(attrs: dict, key: str, where: str):
    if key not in attrs:
        raise UserError(f"{where}: no {key!r} attribute (needed for the Lambert conformal projection)")
    return attrs[key]


@dataclasses.dataclass(frozen=True)
class LambertGrid:
    """A regular grid on a Lambert projection: first point (south-west corner) and spacing, rows south to north."""

    projection: LambertConformal
    lat_first: float
    lon_first: float
    dx: float  # metres
    dy: float
    nx: int
    ny: int

    def xy(self) -> tuple[np.ndarray, np.ndarray]:
        """1-D projection coordinates x [nx], y [ny] (metres)."""
        x0, y0 = self.projection.forward(self.lat_first, self.lon_first)
        return x0 + self.dx * np.arange(self.nx), y0 + self.dy * np.arange(self.ny)

    def latlon(self) -> tuple[np.ndarray, np.ndarray]:
        """2-D latitude, longitude [ny, nx] (degrees, lon in [0, 360))."""
        x, y = self.xy()
        return self.projection.inverse(*np.meshgrid(x, y))

    def subgrid(self, y0: int, x0: int, ny: int, nx: int, stride: int = 1) -> "LambertGrid":
        """Rows y0, y0+stride, … (ny of them) and columns likewise, as a grid of its own."""
        if min(y0, x0) < 0 or y0 + (ny - 1) * stride >= self.ny or x0 + (nx - 1) * stride >= self.nx:
            raise ValueError(f"sub-grid rows {y0}+{ny}×{stride}, cols {x0}+{nx}×{stride} exceed {self.ny}×{self.nx}")
        x, y = self.xy()
        lat, lon = self.projection.inverse(x[x0], y[y0])
        return dataclasses.replace(self, lat_first=float(lat), lon_first=float(lon), dx=self.dx * stride,
                                   dy=self.dy * stride, nx=nx, ny=ny)


# NOAA HRRR CONUS (GRIB2 keys of the real files, e.g. ../shared/data/grib/subset_20201214_hrrr.t00z.wrfsfcf12.grib2)
HRRR_CONUS = LambertGrid(
    projection=LambertConformal(lat_1=38.5, lat_2=38.5, lat_0=38.5, lon_0=262.5),
    lat_first=21.138123, lon_first=237.280472, dx=3000.0, dy=3000.0, nx=1799, ny=1059,
)
