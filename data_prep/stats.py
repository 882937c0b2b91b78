"""``def-jax stats``: per-channel normalization statistics of the training period, in one streaming pass.

For every state and forcing channel: mean and standard deviation over all grid points and written time slots of the
period, and the same for one-step differences X(t + Δt) − X(t) (pairs of consecutive written slots, both in the
period). Statics get their spatial mean and standard deviation.

The pass reads ``block`` slots at a time; each block's count, mean and sum of squared deviations M2 (two-pass within
the block, float64) are merged into the running totals with Chan et al.'s (1979) pairwise update

    n = n_a + n_b,   δ = μ_b − μ_a,   μ = μ_a + δ n_b / n,   M2 = M2_a + M2_b + δ² n_a n_b / n,

which is exact in exact arithmetic and numerically stable; σ = sqrt(M2 / n) (population standard deviation).

Then, over at most ``spectral_slots`` slots spread evenly through the period, the cross-channel power spectrum of the
normalized state channels (:func:`def_jax.diffusion.spectral.binned_cross_spectrum`, on tiles of at most
``spectral_tile``² points): the stationary Gaussian climate that ε_θ's unconditional branch starts from
(``denoiser.null_prior = "spectral"``).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path
from typing import Callable

import numpy as np
import xarray as xr
import zarr

from data_prep import store_writer
from def_jax.catalogue import Variable
from def_jax.data import schema
from def_jax.data.source import normalize_inplace
from def_jax.data.store import load_stats, read_fields, state_fields
from def_jax.diffusion.spectral import BIN_EDGES, binned_cross_spectrum
from def_jax.errors import UserError
from def_jax.progress import progress as progress_bar


@dataclasses.dataclass
class Moments:
    """Running count, mean and M2 per channel (arrays of shape [C])."""

    n: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, channels: int) -> "Moments":
        return cls(np.zeros(channels), np.zeros(channels), np.zeros(channels))

    @classmethod
    def of(cls, x: np.ndarray) -> "Moments":
        """Moments of x [N, C, P] over N and P (samples × points), ignoring non-finite values."""
        x = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1).astype(np.float64)  # [C, N·P]
        finite = np.isfinite(x)
        n = finite.sum(axis=1).astype(np.float64)
        xs = np.where(finite, x, 0.0)
        mean = np.divide(xs.sum(axis=1), n, out=np.zeros_like(n), where=n > 0)
        m2 = np.where(finite, (x - mean[:, None]) ** 2, 0.0).sum(axis=1)
        return cls(n, mean, m2)

    def merge(self, other: "Moments") -> "Moments":
        """Chan et al. pairwise combination."""
        n = self.n + other.n
        safe = np.where(n > 0, n, 1.0)
        delta = other.mean - self.mean
        mean = self.mean + delta * other.n / safe
        m2 = self.m2 + other.m2 + delta**2 * self.n * other.n / safe
        return Moments(n, mean, m2)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.divide(self.m2, self.n, out=np.zeros_like(self.m2), where=self.n > 0))


def _as_nclp(a: np.ndarray, var: Variable) -> np.ndarray:
    """[N, (L,) Y, X] → [N, C, P]."""
    n = a.shape[0]
    return a.reshape(n, var.num_channels, -1)


def compute_stats(store: Path, period: str, block: int = 24, progress: bool = True,
                  log: Callable[[str], None] = print, spectral_slots: int = 256,
                  spectral_tile: int = 256) -> dict[str, dict[str, np.ndarray]]:
    """Statistics of every variable over ``period`` (``START:END``); also written into the store."""
    ds = schema.open_store(store)
    catalogue = schema.store_catalogue(ds)
    start, end = schema.parse_period(period, "--train-period")
    times = ds["time"].values
    written = schema.written_mask(ds)
    in_period = (times >= start) & (times <= end)
    slots = np.flatnonzero(written & in_period)
    if slots.size == 0:
        raise UserError(f"store {store}: no written time slot in the training period {period} "
                        f"(the store covers {times[0]} to {times[-1]})")
    pair_ok = written[:-1] & written[1:] & in_period[:-1] & in_period[1:]  # [T-1] valid (t, t+1) pairs
    group = zarr.open_group(store, mode="r")
    dynamic = [v for v in catalogue.variables if v.role != "static"]
    moments = {v.name: Moments.empty(v.num_channels) for v in dynamic}
    diffs = {v.name: Moments.empty(v.num_channels) for v in dynamic}
    lo, hi = int(slots[0]), int(slots[-1]) + 1
    with progress_bar(hi - lo, "stats", "slot", progress) as bar:
        for b0 in range(lo, hi, block):
            b1 = min(b0 + block + 1, hi)  # one slot of overlap for the differences across blocks
            keep = written[b0:b1] & in_period[b0:b1]
            pairs = pair_ok[b0:b1 - 1]
            own = slice(0, min(block, b1 - b0))  # the slots this block counts (the overlap belongs to the next)
            for var in dynamic:
                a = _as_nclp(np.asarray(group[var.name][b0:b1]), var)  # [n, C, P]
                moments[var.name] = moments[var.name].merge(Moments.of(a[own][keep[own]]))
                if pairs.any():
                    diffs[var.name] = diffs[var.name].merge(Moments.of((a[1:] - a[:-1])[pairs]))
            bar.update(min(block, hi - b0))
    result = {}
    for var in catalogue.variables:
        if var.role == "static":
            m = Moments.of(np.asarray(group[var.name][:])[None, None])
            result[var.name] = {"mean": m.mean, "std": m.std, "count": m.n}
            continue
        m, d = moments[var.name], diffs[var.name]
        result[var.name] = {"mean": m.mean, "std": m.std, "count": m.n, "diff_mean": d.mean, "diff_std": d.std,
                            "diff_count": d.n}
        if np.any(m.n == 0):
            raise UserError(f"store {store}: {var.name} has no finite value in the training period")
        expected = slots.size * ds.sizes["y"] * ds.sizes["x"]
        if np.any(m.n < expected):
            log(f"note: {var.name}: {int(expected * var.num_channels - m.n.sum())} non-finite values ignored")
    _write(store, ds, catalogue, result, period, int(slots.size), int(pair_ok.sum()))
    used = spectral_covariance(store, slots, spectral_slots, spectral_tile, progress)
    log(f"{store}: statistics of {len(catalogue.variables)} variables over {slots.size} slots "
        f"({int(pair_ok.sum())} one-step pairs) of {period}; the state's power spectrum from {used} of them")
    return result


def _tiles(n: int, tile: int) -> list[slice]:
    """Non-overlapping tiles of at most ``tile`` points covering [0, n) (the last one may be shorter)."""
    count = -(-n // tile)
    size = -(-n // count)
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def spectral_covariance(store: Path, slots: np.ndarray, max_slots: int, tile: int, progress: bool = True) -> int:
    """Write the state channels' cross-channel power spectrum over ``max_slots`` of ``slots`` (evenly spread),
    normalized by the statistics just written; returns the slots used."""
    ds = schema.open_store(store)
    fields = state_fields(ds, str(store))
    stats = load_stats(ds, fields, str(store))
    group = zarr.open_group(store, mode="r")
    arrays = {f.name: group[f.name] for f in fields}
    pick = np.unique(slots[np.linspace(0, len(slots) - 1, min(int(max_slots), len(slots))).round().astype(int)])
    ys, xs = _tiles(ds.sizes["y"], tile), _tiles(ds.sizes["x"], tile)
    k, c = len(BIN_EDGES) - 1, len(stats.channels)
    sums, modes = np.zeros((k, c, c)), np.zeros(k)
    with progress_bar(len(pick), "stats: spectrum", "slot", progress) as bar:
        for slot in pick:
            for y_sl in ys:
                for x_sl in xs:
                    x = read_fields(arrays, fields, slice(int(slot), int(slot) + 1), y_sl, x_sl)  # [1, h, w, C]
                    normalize_inplace(x, stats)
                    s_, m_ = binned_cross_spectrum(x)
                    sums, modes = sums + s_, modes + m_
            bar.update(1)
    cov = sums / np.maximum(modes, 1.0)[:, None, None]
    edges = np.asarray(BIN_EDGES)
    out = xr.Dataset(
        {schema.SPECTRAL_COVARIANCE: (("spectral_bin", "state_channel", "state_channel_2"), cov,
                                      {"long_name": "cross-channel power spectrum of the normalized state channels "
                                                    "(orthonormal 2-D FFT, real part, mean over the modes of each "
                                                    "radial frequency bin)",
                                       "units": "1", "channels": json.dumps(list(stats.channels)),
                                       "slots": int(len(pick)), "tile": int(tile)}),
         schema.SPECTRAL_MODES: (("spectral_bin",), modes, {"long_name": "FFT modes × slots behind each bin"})},
        coords={"spectral_bin_lower": (("spectral_bin",), edges[:-1], {"units": "cycles per grid point"}),
                "spectral_bin_upper": (("spectral_bin",), edges[1:], {"units": "cycles per grid point"})})
    out.attrs = zarr.open_group(store, mode="r").attrs.asdict()
    out.to_zarr(store, mode="a", consolidated=False)
    store_writer.consolidate(store)
    return int(len(pick))


def _write(store: Path, ds: xr.Dataset, catalogue, result: dict, period: str, n_slots: int, n_pairs: int) -> None:
    """Add ``<var>_{mean,std,diff_mean,diff_std}`` variables (float64, dims () or the variable's level dim)."""
    out = {}
    for var in catalogue.variables:
        dims = tuple(d for d in ds[var.name].dims if d not in ("time", "y", "x"))
        for key, name in schema.stat_names(var.name).items():
            if key not in result[var.name]:
                continue
            values = result[var.name][key]
            out[name] = (dims, values.reshape([ds.sizes[d] for d in dims]) if dims else values.reshape(()),
                         {"long_name": f"{key.replace('_', ' ')} of {var.name} over {period}",
                          "units": ds[var.name].attrs.get("units", "")})
    stats = xr.Dataset(out, coords={d: ds[d] for v in out.values() for d in v[0]})
    # to_zarr(mode="a") replaces the group's attributes with the dataset's: carry the store's own over.
    stats.attrs = {**zarr.open_group(store, mode="r").attrs.asdict(), "stats_train_period": period,
                   "stats_slots": n_slots, "stats_pairs": n_pairs,
                   "stats_created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    stats.to_zarr(store, mode="a", consolidated=False)
    store_writer.consolidate(store)
