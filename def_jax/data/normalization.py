"""Normalization, physical constraints and time encodings (DEF_METHOD §2). Pure array math, no I/O.

Two normalizations of state and forcing channels:

* ``global`` (default): ``(x − μ_c) / σ_c`` per channel ``c`` with the training-period statistics the store holds
  (``<var>_mean``, ``<var>_std``, written by ``def-jax stats``); :func:`denormalize` is its exact inverse.
* ``per_sample`` (the DEF authors' code): each field (one time step, one channel) is standardized over space with its
  own mean and standard deviation, the standard deviation floored at :data:`EPS`.

Statics (orography, land mask, latitude, longitude) are standardized over the grid by their own spatial mean/std.

:func:`apply_constraints` clips physical-unit states to the catalogue's ``min``/``max`` (q, CAPE, PWAT ≥ 0, CIN ≤ 0,
REFC ≥ its no-echo floor). Apply it where states leave normalized space (forecast outputs), never in a training loss.

Functions take ``xp`` (default NumPy; pass ``jax.numpy`` for JAX arrays). Arrays are channels-last: ``[..., C]``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from def_jax.catalogue import Catalogue
from def_jax.errors import UserError

NORMALIZATIONS = ("global", "per_sample")
EPS = 1e-6  # floor of spatial standard deviations (per_sample, statics)
HOURS_PER_DAY = 24.0
DAYS_PER_YEAR = 365.25
TIME_FEATURES = ("sin_hour", "cos_hour", "sin_doy", "cos_doy")


@dataclasses.dataclass(frozen=True)
class ChannelStats:
    """Per-channel mean and standard deviation (training period) of a list of channels."""

    channels: tuple[str, ...]
    mean: np.ndarray  # [C] float64
    std: np.ndarray  # [C] float64, > 0

    def __post_init__(self):
        if self.mean.shape != (len(self.channels),) or self.std.shape != (len(self.channels),):
            raise ValueError(f"stats of {len(self.channels)} channels: mean {self.mean.shape}, std {self.std.shape}")


def check_normalization(name: str) -> str:
    """``name`` if it is a known normalization, else a :class:`UserError`."""
    if name not in NORMALIZATIONS:
        raise UserError(f"data.normalization: expected one of {', '.join(NORMALIZATIONS)}; got {name!r}")
    return name


def normalize(x: Any, stats: ChannelStats, xp: Any = np) -> Any:
    """Global normalization ``(x − μ) / σ`` of ``x`` [..., C] in physical units."""
    mean = xp.asarray(stats.mean, dtype=x.dtype)  # [C]
    std = xp.asarray(stats.std, dtype=x.dtype)  # [C]
    return (x - mean) / std


def denormalize(x: Any, stats: ChannelStats, xp: Any = np) -> Any:
    """Inverse of :func:`normalize`: ``x σ + μ`` for ``x`` [..., C] in normalized units."""
    mean = xp.asarray(stats.mean, dtype=x.dtype)  # [C]
    std = xp.asarray(stats.std, dtype=x.dtype)  # [C]
    return x * std + mean


def spatial_standardize(x: Any, eps: float = EPS, xp: Any = np) -> tuple[Any, Any, Any]:
    """Standardize ``x`` [..., H, W, C] per leading index and channel over (H, W).

    Returns ``(x_normalized, mean, std)`` with ``mean``/``std`` [..., 1, 1, C] (``std`` floored at ``eps``), so that
    ``x = x_normalized · std + mean``. This is ``per_sample`` normalization (one field at a time) and the
    normalization of statics.
    """
    mean = xp.mean(x, axis=(-3, -2), keepdims=True)  # [..., 1, 1, C]
    std = xp.maximum(xp.std(x, axis=(-3, -2), keepdims=True), eps)  # [..., 1, 1, C]
    return (x - mean) / std, mean, std


def standardize_fields(x: Any) -> Any:
    """Each field of ``x`` [B, H, W, C] (JAX) standardized over (H, W): mean 0, standard deviation 1 per sample and
    channel (:func:`spatial_standardize` without its statistics). The per-sample forecasts apply it to every state
    fed back into G_φ and, with ``ensemble.corrector``, after every solver update (the DEF authors' corrector)."""
    import jax.numpy as jnp

    return spatial_standardize(x, xp=jnp)[0]


def channel_bounds(channels: Sequence[str], catalogue: Catalogue) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper physical bounds [C] of ``channels`` (−inf/+inf where the catalogue gives none)."""
    owner = {c: v for v in catalogue for c in v.channels}
    unknown = [c for c in channels if c not in owner]
    if unknown:
        raise UserError(f"channels {unknown} are not in catalogue {catalogue.name!r} "
                        f"(channels: {', '.join(catalogue.channels())})")
    lo = np.array([-np.inf if owner[c].min is None else owner[c].min for c in channels], np.float64)  # [C]
    hi = np.array([np.inf if owner[c].max is None else owner[c].max for c in channels], np.float64)  # [C]
    return lo, hi


def apply_constraints(x_physical: Any, channels: Sequence[str], catalogue: Catalogue, xp: Any = np) -> Any:
    """Clip ``x_physical`` [..., C] (physical units, ``channels`` in order) to the catalogue's ``min``/``max``."""
    if x_physical.shape[-1] != len(channels):
        raise ValueError(f"last axis of x ({x_physical.shape[-1]}) must match the {len(channels)} channels")
    lo, hi = channel_bounds(channels, catalogue)
    if np.all(np.isinf(lo)) and np.all(np.isinf(hi)):
        return x_physical
    return xp.clip(x_physical, xp.asarray(lo, dtype=x_physical.dtype), xp.asarray(hi, dtype=x_physical.dtype))


def time_features(times: np.ndarray) -> np.ndarray:
    """Time encodings [T, 4] float32 of valid times [T] (UTC): sin/cos of hour-of-day and of day-of-year.

    Hour-of-day ``h`` is fractional hours since 00 UTC (period 24 h); day-of-year ``d`` is fractional days since
    1 January 00 UTC (0 at its start; period 365.25 days). Order: :data:`TIME_FEATURES`.
    """
    t = np.asarray(times, "datetime64[ns]")  # [T]
    hour = (t - t.astype("datetime64[D]")) / np.timedelta64(1, "h")  # [T]
    doy = (t - t.astype("datetime64[Y]").astype("datetime64[ns]")) / np.timedelta64(1, "D")  # [T]
    a_hour = 2.0 * np.pi * hour / HOURS_PER_DAY
    a_doy = 2.0 * np.pi * doy / DAYS_PER_YEAR
    return np.stack([np.sin(a_hour), np.cos(a_hour), np.sin(a_doy), np.cos(a_doy)], axis=-1).astype(np.float32)
