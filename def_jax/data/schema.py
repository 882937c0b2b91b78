"""The store schema (docs/DATA.md), shared by the writers in ``data_prep`` and the readers in ``def_jax``.

Only names, constants and small readers live here (xarray/zarr/numpy; no JAX, no Grain), so that preprocessing and the
input pipeline agree on one definition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import xarray as xr

from def_jax.catalogue import Catalogue, catalogue_from_json
from def_jax.errors import UserError
from def_jax.geo import EARTH_RADIUS_GRIB6

SCHEMA_VERSION = 1
STATUS = "time_status"
MISSING, WRITTEN, FAILED = 0, 1, 2
CRS = "crs"
LEVEL = "level"


def level_dim(var_name: str, common: bool) -> str:
    """The level dimension of a multi-level variable: ``level`` when it has the store's common levels."""
    return LEVEL if common else f"{var_name}_level"


# The state channels' cross-channel power spectrum of the training period (def_jax.diffusion.spectral), written by
# def-jax stats: covariance [spectral_bin, state_channel, state_channel_2], modes [spectral_bin], bin edges (cycles per
# grid point) as spectral_bin_lower/upper, and the channel names (JSON) in the covariance's "channels" attribute.
SPECTRAL_COVARIANCE = "state_spectral_covariance"
SPECTRAL_MODES = "state_spectral_modes"


def stat_names(var_name: str) -> dict[str, str]:
    """Names of the statistics variables of a store variable."""
    return {k: f"{var_name}_{k}" for k in ("mean", "std", "diff_mean", "diff_std")}


def grid_spacing_km(ds: xr.Dataset) -> float:
    """A store's grid spacing in km: from the projection coordinates (m) on a Lambert conformal grid, else the
    latitude spacing on the sphere of GRIB's shape of the earth 6 (:data:`def_jax.geo.EARTH_RADIUS_GRIB6`)."""
    crs = dict(ds[CRS].attrs) if CRS in ds else {}
    x = np.asarray(ds["x"].values, np.float64) if "x" in ds else np.zeros(0)
    if crs.get("grid_mapping_name") == "lambert_conformal_conic" and len(x) > 1:
        return float(abs(x[1] - x[0])) / 1000.0
    lat = np.asarray(ds["latitude"].values, np.float64)
    dlat = abs(lat[1, 0] - lat[0, 0]) if lat.ndim == 2 and lat.shape[0] > 1 else 1.0
    return float(np.radians(dlat) * EARTH_RADIUS_GRIB6 / 1000.0)


def open_store(path: str | Path) -> xr.Dataset:
    """Open a store lazily and check that it is one (schema version, catalogue, status)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"store {path}: does not exist (run def-jax prepare first)")
    try:
        ds = xr.open_zarr(path, consolidated=False, decode_timedelta=False)
    except Exception as err:
        raise UserError(f"store {path}: cannot be opened as Zarr: {str(err).splitlines()[0]}") from None
    version = ds.attrs.get("def_jax_schema")
    if version != SCHEMA_VERSION:
        raise UserError(f"store {path}: def_jax_schema is {version!r}, expected {SCHEMA_VERSION}")
    if STATUS not in ds or "catalogue" not in ds.attrs:
        raise UserError(f"store {path}: missing '{STATUS}' or the 'catalogue' attribute")
    return ds


def store_catalogue(ds: xr.Dataset) -> Catalogue:
    """The catalogue the store was written with (its channel order is the order of every downstream array)."""
    return catalogue_from_json(ds.attrs["catalogue"])


def written_mask(ds: xr.Dataset) -> np.ndarray:
    """Boolean [time]: slots whose data are complete."""
    return np.asarray(ds[STATUS].values) == WRITTEN


def parse_period(text: str, what: str = "period") -> tuple[np.datetime64, np.datetime64]:
    """``START:END`` with ISO times such as ``2024-06-01T00:2024-06-10T23`` (hours may omit minutes)."""
    parts = _split_period(text)
    if parts is None:
        raise UserError(f"{what} {text!r}: expected START:END, e.g. 2024-06-01T00:2024-06-10T23")
    try:
        start, end = (np.datetime64(_complete(p), "ns") for p in parts)
    except ValueError:
        raise UserError(f"{what} {text!r}: cannot parse the times (use ISO, e.g. 2024-06-01T00)") from None
    if end < start:
        raise UserError(f"{what} {text!r}: END is before START")
    return start, end


def _split_period(text: str) -> Optional[tuple[str, str]]:
    # Split at the ':' that separates two ISO times (times themselves may contain ':').
    for i, ch in enumerate(text):
        if ch == ":" and i >= 10 and len(text) - i - 1 >= 10:
            left, right = text[:i], text[i + 1:]
            if len(left) in (10, 13, 16, 19) and len(right) in (10, 13, 16, 19):
                return left, right
    return None


def _complete(t: str) -> str:
    return t + ":00" if len(t) == 13 else t


def spectral_covariance(ds: xr.Dataset, store: str, channels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The store's state power spectrum (covariance [K, C, C], modes [K]) for ``channels`` in that order; a one-line
    error when ``def-jax stats`` has not written it or wrote it for other channels."""
    import json

    if SPECTRAL_COVARIANCE not in ds or SPECTRAL_MODES not in ds:
        raise UserError(f"store {store}: no {SPECTRAL_COVARIANCE} (denoiser.null_prior=spectral needs it): rerun "
                        f"`def-jax stats`")
    da = ds[SPECTRAL_COVARIANCE]
    stored = tuple(json.loads(da.attrs.get("channels", "[]")))
    if stored != tuple(channels):
        raise UserError(f"store {store}: {SPECTRAL_COVARIANCE} is of channels {list(stored)[:4]}…, not the "
                        f"catalogue's state channels {list(channels)[:4]}…: rerun `def-jax stats`")
    return np.asarray(da.values, np.float64), np.asarray(ds[SPECTRAL_MODES].values, np.float64)
