"""Verification metrics (DEF_METHOD §8): pure functions of arrays, no I/O.

Written with ``jax.numpy`` so they run on NumPy or JAX arrays and can be jitted (shape-like arguments such as
``member_axis``, ``event_axes``, ``fair``, ``bins`` and ``window`` are static). Results are float32 unless the inputs
are float64 with ``jax_enable_x64`` on. Elementwise scores (CRPS) are not reduced: average them with
:func:`weighted_mean` and the area weights of :func:`coslat_weights` / :func:`lambert_cell_area_weights`.

Notation: an ensemble x_1..x_M, the truth y, the ensemble mean x̄ = (1/M) Σ_m x_m; weights w; binary events o ∈ {0, 1}
and forecast probabilities p ∈ [0, 1].

* CRPS (Gneiting & Raftery 2007, eq. 21, with Ferro 2014's fair version)::

      fair:      (1/M) Σ_m |x_m − y| − 1/(2M(M−1)) Σ_{m,m'} |x_m − x_m'|
      standard:  (1/M) Σ_m |x_m − y| − 1/(2M²)     Σ_{m,m'} |x_m − x_m'|     ("nrg" in scoringrules)

  with the pair sum from the sorted members x_(1) ≤ … ≤ x_(M) in O(M log M)::

      Σ_{m,m'} |x_m − x_m'| = 2 Σ_{i=1..M} (2i − M − 1) x_(i)

* Energy score: the same with |·| replaced by the Euclidean norm over the event axes (pair term O(M²)).
* Spread/skill ratio (Fortin et al. 2014): sqrt((M+1)/M) · spread / RMSE(x̄), spread = sqrt(mean of the unbiased
  ensemble variance); 1 for a calibrated ensemble.
* Spread–error relationship: the points binned by predicted spread s, per bin sqrt((M+1)/M · mean s²) against the
  ensemble-mean RMSE in the bin (the binned spread/skill diagram of Leutbecher & Palmer 2008).
* Brier score (p − o)² and Murphy's (1973) decomposition BS = REL − RES + UNC; FSS (Roberts & Lean 2008).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from def_jax.geo import LambertConformal

# --- helpers ---------------------------------------------------------------------------------------------------


def _float_dtype(*arrays) -> jnp.dtype:
    """The inputs' floating dtype, at least float32 (float64 stays float64 when x64 is on)."""
    return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def _members_first(ensemble, truth, member_axis: int) -> tuple[jax.Array, jax.Array]:
    """ensemble with members on axis 0 [M, ...] and the truth broadcast to [...], both in a float dtype."""
    ens, y = jnp.asarray(ensemble), jnp.asarray(truth)
    dtype = _float_dtype(ens, y)
    ens = jnp.moveaxis(ens.astype(dtype), member_axis, 0)  # [M, ...]
    try:
        shape = jnp.broadcast_shapes(ens.shape[1:], y.shape)
    except ValueError:
        raise ValueError(f"truth of shape {y.shape} does not match the ensemble's {ens.shape[1:]} "
                         f"(members on axis {member_axis})") from None
    if shape != ens.shape[1:]:
        ens = jnp.broadcast_to(ens, ens.shape[:1] + shape)
    return ens, jnp.broadcast_to(y.astype(dtype), shape)


def weighted_mean(x, weights=None, axis=None) -> jax.Array:
    """Σ w·x / Σ w over ``axis`` (all axes by default); ``weights`` broadcastable to ``x`` (None: plain mean)."""
    x = jnp.asarray(x)
    x = x.astype(_float_dtype(x))
    if weights is None:
        return jnp.mean(x, axis=axis)
    w = jnp.broadcast_to(jnp.asarray(weights, x.dtype), x.shape)
    return jnp.sum(w * x, axis=axis) / jnp.sum(w, axis=axis)


# --- CRPS and energy score ---------------------------------------------------------------------------------------


def ensemble_pair_sum(ensemble, *, member_axis: int = 0) -> jax.Array:
    """Σ_{m,m'} |x_m − x_m'| elementwise, by sorting: 2 Σ_i (2i − M − 1) x_(i), i = 1..M.

    The members are shifted by their minimum first (the coefficients sum to zero, so the sum is unchanged), which keeps
    float32 cancellation at the scale of the spread rather than of the values.
    """
    x = jnp.asarray(ensemble)
    x = jnp.sort(jnp.moveaxis(x.astype(_float_dtype(x)), member_axis, 0), axis=0)  # [M, ...] ascending
    m = x.shape[0]
    x = x - x[:1]
    coef = (2 * jnp.arange(1, m + 1) - m - 1).astype(x.dtype).reshape((m,) + (1,) * (x.ndim - 1))  # [M, 1, ...]
    return 2 * jnp.sum(coef * x, axis=0)


def crps_ensemble(ensemble, truth, *, member_axis: int = 0, fair: bool = True) -> jax.Array:
    """CRPS of an ensemble at every point (not reduced).

    ``(1/M) Σ_m |x_m − y| − c Σ_{m,m'} |x_m − x_m'|`` with c = 1/(2M(M−1)) (fair, unbiased for the CRPS of the
    distribution the members are drawn from; needs M ≥ 2) or c = 1/(2M²) (standard, the CRPS of the empirical
    distribution; with M = 1 it is |x − y|). The pair sum is computed in O(M log M) by :func:`ensemble_pair_sum`.

    Args:
      ensemble: [..., M, ...] with members on ``member_axis``.
      truth: broadcastable to the ensemble without its member axis.
    Returns:
      [...] the ensemble's shape without the member axis.
    """
    ens, y = _members_first(ensemble, truth, member_axis)  # [M, ...], [...]
    m = ens.shape[0]
    if fair and m < 2:
        raise ValueError("crps_ensemble: the fair estimator needs at least 2 members (got 1); use fair=False")
    skill = jnp.mean(jnp.abs(ens - y), axis=0)  # [...]
    pair = ensemble_pair_sum(ens)  # [...]
    return skill - pair / (2.0 * m * (m - 1) if fair else 2.0 * m * m)


def energy_score(ensemble, truth, *, member_axis: int = 0, event_axes: Sequence[int] | int,
                 fair: bool = True) -> jax.Array:
    """Energy score (Gneiting & Raftery 2007, eq. 22): the CRPS with the Euclidean norm ‖·‖ over ``event_axes``.

    ``(1/M) Σ_m ‖x_m − y‖ − c Σ_{m,m'} ‖x_m − x_m'‖``, c = 1/(2M(M−1)) (fair, M ≥ 2) or 1/(2M²) (standard). The pair
    term is O(M²) (one member against all at a time, so memory stays O(M · size)).

    Args:
      ensemble: [..., M, ...]; truth: broadcastable to the ensemble without its member axis.
      event_axes: axes of ``truth`` (i.e. of the ensemble without its member axis) forming the vector, e.g.
        ``(-2, -1)`` for a field [Y, X].
    Returns:
      The remaining axes [...] (a scalar when every truth axis is an event axis).
    """
    ens, y = _members_first(ensemble, truth, member_axis)  # [M, ...], [...]
    m = ens.shape[0]
    if fair and m < 2:
        raise ValueError("energy_score: the fair estimator needs at least 2 members (got 1); use fair=False")
    axes = (event_axes,) if isinstance(event_axes, int) else tuple(event_axes)
    nd = y.ndim
    axes = tuple(sorted({a % nd for a in axes}))
    rest = tuple(a for a in range(nd) if a not in axes)
    y = jnp.transpose(y, rest + axes).reshape(tuple(y.shape[a] for a in rest) + (-1,))  # [..., E]
    ens = jnp.transpose(ens, (0,) + tuple(a + 1 for a in rest + axes))
    ens = ens.reshape((m,) + y.shape)  # [M, ..., E]
    norm = lambda v: jnp.sqrt(jnp.sum(jnp.square(v), axis=-1))
    skill = jnp.mean(norm(ens - y), axis=0)  # [...]
    pair = jnp.sum(jax.lax.map(lambda xm: jnp.sum(norm(ens - xm), axis=0), ens), axis=0)  # [...]
    return skill - pair / (2.0 * m * (m - 1) if fair else 2.0 * m * m)


# --- moments: RMSE, MAE, bias, spread ------------------------------------------------------------------------------


def rmse(forecast, truth, *, weights=None, axis=None) -> jax.Array:
    """sqrt(Σ w (f − y)² / Σ w) over ``axis`` (all by default)."""
    f, y = jnp.asarray(forecast), jnp.asarray(truth)
    return jnp.sqrt(weighted_mean(jnp.square(f - y), weights, axis))


def ensemble_mean_rmse(ensemble, truth, *, member_axis: int = 0, weights=None, axis=None) -> jax.Array:
    """RMSE of the ensemble mean: sqrt(Σ w (x̄ − y)² / Σ w); ``axis`` indexes the field without its member axis."""
    ens, y = _members_first(ensemble, truth, member_axis)
    return rmse(jnp.mean(ens, axis=0), y, weights=weights, axis=axis)


def mae(forecast, truth, *, weights=None, axis=None) -> jax.Array:
    """Σ w |f − y| / Σ w (for an ensemble pass its mean; the CRPS of a single forecast is its absolute error)."""
    f, y = jnp.asarray(forecast), jnp.asarray(truth)
    return weighted_mean(jnp.abs(f - y), weights, axis)


def bias(forecast, truth, *, weights=None, axis=None) -> jax.Array:
    """Σ w (f − y) / Σ w (positive: the forecast is too high)."""
    f, y = jnp.asarray(forecast), jnp.asarray(truth)
    return weighted_mean(f - y, weights, axis)


def ensemble_variance(ensemble, *, member_axis: int = 0) -> jax.Array:
    """Unbiased ensemble variance (1/(M−1)) Σ_m (x_m − x̄)² at every point (M ≥ 2)."""
    x = jnp.asarray(ensemble)
    if x.shape[member_axis] < 2:
        raise ValueError("ensemble variance (ddof=1) needs at least 2 members (got 1)")
    return jnp.var(x.astype(_float_dtype(x)), axis=member_axis, ddof=1)


def spread(ensemble, *, member_axis: int = 0, weights=None, axis=None) -> jax.Array:
    """sqrt(Σ w s² / Σ w) with s² the unbiased ensemble variance (ddof = 1); ``axis`` as in :func:`rmse`."""
    return jnp.sqrt(weighted_mean(ensemble_variance(ensemble, member_axis=member_axis), weights, axis))


def spread_skill_ratio(spread, rmse, members) -> jax.Array:
    """sqrt((M+1)/M) · spread / RMSE(x̄) (Fortin et al. 2014, eq. 9; spread from the unbiased variance).

    For exchangeable members and truth, E[(x̄ − y)²] = (M+1)/M · E[s²], so the ratio is 1 for a calibrated ensemble.
    """
    s, r = jnp.asarray(spread), jnp.asarray(rmse)
    m = jnp.asarray(members, _float_dtype(s, r))
    return jnp.sqrt((m + 1) / m) * s / r


class SpreadErrorCounts(NamedTuple):
    """Per bin k of predicted spread: points n_k, Σ w, Σ w s² and Σ w (x̄ − y)² (sums over points, and over cycles)."""

    count: jax.Array  # [K]
    weight: jax.Array  # [K]
    variance: jax.Array  # [K]
    squared_error: jax.Array  # [K]


def spread_error_counts(ensemble, truth, edges, *, member_axis: int = 0, weights=None) -> SpreadErrorCounts:
    """The spread–error relationship: points binned by their predicted spread s (unbiased std, ddof = 1; M ≥ 2).

    ``edges`` e_0 < … < e_{E−1} (the field's units) give K = E + 1 bins [0, e_0), [e_{k−1}, e_k), [e_{E−1}, ∞); per bin
    the sums of w, w s² and w (x̄ − y)² over all points (``weights`` broadcastable to the truth; None: 1). With fixed
    edges the sums of several fields (cycles) are those of the pooled points."""
    ens, y = _members_first(ensemble, truth, member_axis)  # [M, ...], [...]
    var = ensemble_variance(ens)  # [...]
    err2 = jnp.square(jnp.mean(ens, axis=0) - y)
    w = jnp.ones_like(y) if weights is None else jnp.broadcast_to(jnp.asarray(weights, y.dtype), y.shape)
    e = jnp.asarray(edges, y.dtype)
    idx = jnp.searchsorted(e, jnp.sqrt(var), side="right").ravel()  # bin k holds [e_{k−1}, e_k)
    k = e.shape[0] + 1
    total = lambda v: jnp.bincount(idx, weights=v.ravel(), length=k)  # noqa: E731
    return SpreadErrorCounts(jnp.bincount(idx, length=k), total(w), total(w * var), total(w * err2))


def spread_error_curve(counts: SpreadErrorCounts, members) -> tuple[jax.Array, jax.Array]:
    """(spread, RMSE) per bin: sqrt((M+1)/M · Σ w s² / Σ w) and sqrt(Σ w (x̄ − y)² / Σ w); NaN for empty bins.

    The factor (M+1)/M is :func:`spread_skill_ratio`'s: where the truth is exchangeable with the members,
    E[(x̄ − y)²] = (M+1)/M · E[s²], so a calibrated ensemble lies on the diagonal (up to the sampling noise of s,
    which, binned on, pulls the extreme bins' error toward the overall mean).
    """
    w = jnp.asarray(counts.weight)
    dtype = _float_dtype(w)
    m = jnp.asarray(members, dtype)
    safe = jnp.where(w > 0, w, 1).astype(dtype)
    spread_ = jnp.sqrt((m + 1) / m * jnp.asarray(counts.variance, dtype) / safe)
    error = jnp.sqrt(jnp.asarray(counts.squared_error, dtype) / safe)
    return jnp.where(w > 0, spread_, jnp.nan), jnp.where(w > 0, error, jnp.nan)


def rank_histogram(ensemble, truth, *, member_axis: int = 0, key: Optional[jax.Array] = None) -> jax.Array:
    """Counts [M+1] of the rank of y among the members, over all points.

    The rank is the number of members strictly below y. With ``key``, ties are broken at random: a truth equal to t
    members gets a rank uniform in {below, …, below + t} (needed for bounded variables, e.g. reflectivity at its
    no-echo floor). NaNs are the caller's to remove (a NaN truth counts as rank 0).
    """
    ens, y = _members_first(ensemble, truth, member_axis)  # [M, ...], [...]
    m = ens.shape[0]
    below = jnp.sum(ens < y, axis=0)  # [...]
    if key is not None:
        ties = jnp.sum(ens == y, axis=0)  # [...]
        u = jax.random.uniform(key, below.shape)
        below = below + jnp.minimum(jnp.floor(u * (ties + 1)).astype(below.dtype), ties)
    return jnp.bincount(below.ravel(), length=m + 1)


# --- probabilities of events ---------------------------------------------------------------------------------------


def brier_score(prob, event, weights=None, axis=None) -> jax.Array:
    """Σ w (p − o)² / Σ w over ``axis`` (all by default)."""
    p, o = jnp.asarray(prob), jnp.asarray(event)
    return weighted_mean(jnp.square(p - o.astype(_float_dtype(p))), weights, axis)


class ReliabilityCounts(NamedTuple):
    """Per probability bin k (of ``bins`` equal bins on [0, 1], the last one closed): n_k, Σ p, Σ o."""

    count: jax.Array  # [bins]
    sum_prob: jax.Array  # [bins]
    sum_event: jax.Array  # [bins]


def reliability_counts(prob, event, bins: int = 10) -> ReliabilityCounts:
    """Counts over all points; sums of counts from several fields (cycles) are the counts of the pooled data."""
    p = jnp.asarray(prob)
    p = p.astype(_float_dtype(p)).ravel()
    o = jnp.asarray(event).astype(p.dtype).ravel()
    idx = jnp.clip(jnp.floor(p * bins).astype(jnp.int32), 0, bins - 1)  # bin k holds [k/bins, (k+1)/bins)
    return ReliabilityCounts(jnp.bincount(idx, length=bins), jnp.bincount(idx, weights=p, length=bins),
                             jnp.bincount(idx, weights=o, length=bins))


class BrierDecomposition(NamedTuple):
    reliability: jax.Array
    resolution: jax.Array
    uncertainty: jax.Array


def brier_decomposition_from_counts(counts: ReliabilityCounts, axis: int = -1) -> BrierDecomposition:
    """Murphy (1973) from binned counts (see :func:`brier_decomposition`); ``axis`` is the bins axis of the counts,
    any other axes are batch axes (e.g. fields and resamples [k, bins, R] with axis=1) and are kept."""
    dtype = _float_dtype(jnp.asarray(counts.sum_prob))
    n_k = jnp.asarray(counts.count).astype(dtype)
    sp, so = jnp.asarray(counts.sum_prob, dtype), jnp.asarray(counts.sum_event, dtype)
    total = lambda v: jnp.sum(v, axis=axis, keepdims=True)  # noqa: E731
    n = total(n_k)  # N, with the bins axis kept (size 1)
    safe = jnp.where(n_k > 0, n_k, 1)
    p_k, o_k = sp / safe, so / safe  # mean forecast probability and observed frequency per bin
    o_bar = total(so) / n
    rel = total(n_k * jnp.square(p_k - o_k)) / n
    res = total(n_k * jnp.square(o_k - o_bar)) / n
    return BrierDecomposition(*(jnp.squeeze(v, axis) for v in (rel, res, o_bar * (1 - o_bar))))


def brier_decomposition(prob, event, bins: int = 10) -> BrierDecomposition:
    """Murphy's (1973) decomposition of the (unweighted) Brier score into reliability, resolution and uncertainty.

    With n_k points in probability bin k, p̄_k their mean forecast probability, ō_k their observed frequency and ō the
    overall frequency (N points)::

        REL = (1/N) Σ_k n_k (p̄_k − ō_k)²,   RES = (1/N) Σ_k n_k (ō_k − ō)²,   UNC = ō (1 − ō)

    BS = REL − RES + UNC holds exactly when the probabilities are constant within each bin (e.g. they take only
    bin-centre values, or ensemble fractions j/M with at most one of them per bin); otherwise it is approximate, the
    difference being the within-bin variance and covariance terms of Stephenson et al. (2008).
    """
    return brier_decomposition_from_counts(reliability_counts(prob, event, bins))


def reliability_curve(prob, event, bins: int = 10):
    """The reliability diagram: ``(bin_lower, bin_upper, forecast_probability, observed_frequency, count)``.

    Bins are ``bins`` equal intervals [k/bins, (k+1)/bins) of [0, 1] (the last includes 1). ``forecast_probability``
    and ``observed_frequency`` are the mean p and the frequency of o = 1 over the points in the bin, NaN for empty bins.
    """
    counts = reliability_counts(prob, event, bins)
    return reliability_curve_from_counts(counts, bins)


def reliability_curve_from_counts(counts: ReliabilityCounts, bins: int):
    """:func:`reliability_curve` from (possibly accumulated) :class:`ReliabilityCounts`."""
    edges = np.arange(bins + 1) / bins
    n = jnp.asarray(counts.count)
    dtype = _float_dtype(jnp.asarray(counts.sum_prob))
    safe = jnp.where(n > 0, n, 1).astype(dtype)
    nan = jnp.asarray(jnp.nan, dtype)
    return (edges[:-1], edges[1:], jnp.where(n > 0, jnp.asarray(counts.sum_prob, dtype) / safe, nan),
            jnp.where(n > 0, jnp.asarray(counts.sum_event, dtype) / safe, nan), n)


class Contingency(NamedTuple):
    """2×2 contingency table of a yes/no forecast against yes/no observations (counts)."""

    hits: jax.Array
    misses: jax.Array
    false_alarms: jax.Array
    correct_negatives: jax.Array


def contingency(forecast_event, observed_event) -> Contingency:
    """Counts over all points: hits (f ∧ o), misses (¬f ∧ o), false alarms (f ∧ ¬o), correct negatives (¬f ∧ ¬o)."""
    f, o = jnp.asarray(forecast_event, bool), jnp.asarray(observed_event, bool)
    count = lambda a: jnp.sum(a, dtype=jnp.int32)
    return Contingency(count(f & o), count(~f & o), count(f & ~o), count(~f & ~o))


def _ratio(num, den) -> jax.Array:
    num, den = jnp.asarray(num), jnp.asarray(den)
    dtype = _float_dtype(num, den)
    num, den = num.astype(dtype), den.astype(dtype)
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1), jnp.nan)


def csi(table: Contingency) -> jax.Array:
    """Critical success index H / (H + M + F); NaN when there is no forecast and no observed event."""
    return _ratio(table.hits, table.hits + table.misses + table.false_alarms)


def pod(table: Contingency) -> jax.Array:
    """Probability of detection H / (H + M); NaN when no event is observed."""
    return _ratio(table.hits, table.hits + table.misses)


def far(table: Contingency) -> jax.Array:
    """False alarm ratio F / (H + F); NaN when no event is forecast."""
    return _ratio(table.false_alarms, table.hits + table.false_alarms)


# --- neighbourhood verification -------------------------------------------------------------------------------------


def _box_sum(x: jax.Array, half: int, axis: int) -> jax.Array:
    """Σ_{j=i−h..i+h} x_j along ``axis``, zeros outside, from one cumulative sum: c[i+2h+1] − c[i]."""
    x = jnp.moveaxis(x, axis, -1)  # [..., N]
    n = x.shape[-1]
    c = jnp.cumsum(jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(half + 1, half)]), axis=-1)  # [..., N + 2h + 1]
    return jnp.moveaxis(c[..., 2 * half + 1:2 * half + 1 + n] - c[..., :n], -1, axis)


def neighbourhood_fraction(field, window: int) -> jax.Array:
    """Mean of ``field`` [..., Y, X] over the window × window square centred on each point (``window`` odd).

    Points outside the grid count as zeros (zero padding; the divisor stays window², so fractions near the edges are
    lower). The box sums are summed-area tables taken one axis at a time (a cumulative sum along x, then along y):
    the same sums as the 2-D table's four-corner formula, with float32 cancellation bounded by one row's total.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"neighbourhood window must be an odd number of grid points ≥ 1; got {window}")
    f = jnp.asarray(field)
    f = f.astype(_float_dtype(f))
    if window == 1:
        return f
    half = window // 2
    return _box_sum(_box_sum(f, half, -1), half, -2) / float(window * window)


def fss_components(forecast, observed_event, window: int) -> tuple[jax.Array, jax.Array]:
    """(Σ (P_f − P_o)², Σ P_f² + Σ P_o²) over all points; sums over cycles give the FSS of the pooled data."""
    pf = neighbourhood_fraction(forecast, window)  # [..., Y, X]
    po = neighbourhood_fraction(jnp.asarray(observed_event).astype(pf.dtype), window)
    return jnp.sum(jnp.square(pf - po)), jnp.sum(jnp.square(pf)) + jnp.sum(jnp.square(po))


def fractions_skill_score(prob_or_binary_forecast, observed_event, window: int) -> jax.Array:
    """Fractions skill score (Roberts & Lean 2008): FSS = 1 − Σ (P_f − P_o)² / (Σ P_f² + Σ P_o²).

    P_f and P_o are the neighbourhood fractions (:func:`neighbourhood_fraction`, zero padding at the edges) of the
    forecast (a binary event field or an ensemble probability) and of the observed binary events over the last two
    axes, in a square of ``window`` grid points (1 = grid-point scale); sums run over all points and leading axes.
    NaN when neither field has any event (undefined).
    """
    return fss_from_components(*fss_components(prob_or_binary_forecast, observed_event, window))


def fss_from_components(numerator, denominator) -> jax.Array:
    """1 − Σ (P_f − P_o)² / (Σ P_f² + Σ P_o²) from (pooled) :func:`fss_components`; NaN where the denominator is 0."""
    num, den = jnp.asarray(numerator), jnp.asarray(denominator)
    return jnp.where(den > 0, 1 - num / jnp.where(den > 0, den, 1), jnp.nan)


# --- spectra ---------------------------------------------------------------------------------------------------


def _radial_bins(ny: int, nx: int) -> tuple[np.ndarray, int]:
    """Integer wavenumber of each 2-D FFT mode (cycles per the longer side), flattened [ny*nx], and its maximum."""
    n = max(ny, nx)
    ky, kx = np.fft.fftfreq(ny) * n, np.fft.fftfreq(nx) * n  # cycles per n grid lengths
    k = np.rint(np.hypot(ky[:, None], kx[None, :])).astype(np.int32).ravel()  # [ny*nx]
    kmax = n // 2
    return np.minimum(k, kmax + 1), kmax


def radial_power_spectrum(field, dx_km: float):
    """Radially averaged power spectrum of ``field`` [..., Y, X] over its last two axes.

    F̂ = FFT2(field); each mode (k_y, k_x) gets the wavenumber |k| = sqrt(k_y² + k_x²) in cycles per L = max(Y, X)·dx,
    rounded to an integer. ``power(k)`` is the mean of |F̂|² / (YX)² over the modes of wavenumber k (so a sinusoid of
    amplitude A puts A²/4 in each of its two modes; Σ over all modes of |F̂|²/(YX)² is the mean square, by Parseval).

    Returns:
      ``(wavenumber [K], wavelength_km [K], power [..., K])`` for k = 1..max(Y, X)//2 (the mean, k = 0, and the
      corners beyond the Nyquist circle are left out); wavelength = L / k.
    """
    f = jnp.asarray(field)
    f = f.astype(_float_dtype(f))
    ny, nx = f.shape[-2:]
    k, kmax = _radial_bins(ny, nx)
    power = jnp.square(jnp.abs(jnp.fft.fft2(f))) / float(ny * nx) ** 2  # [..., Y, X]
    flat = jnp.moveaxis(power.reshape(power.shape[:-2] + (ny * nx,)), -1, 0)  # [Y*X, ...]
    sums = jax.ops.segment_sum(flat, jnp.asarray(k), num_segments=kmax + 2)  # [K + 2, ...]
    modes = np.bincount(k, minlength=kmax + 2)[1:kmax + 1].astype(np.float64)  # [K], every k ≤ kmax has modes
    modes = modes.reshape((-1,) + (1,) * (flat.ndim - 1))
    wavenumber = np.arange(1, kmax + 1)
    return wavenumber, max(ny, nx) * float(dx_km) / wavenumber, jnp.moveaxis(sums[1:kmax + 1] / modes, 0, -1)


# --- area weights ----------------------------------------------------------------------------------------------


def coslat_weights(lat) -> np.ndarray:
    """cos φ / mean(cos φ) for latitudes φ (degrees) of a regular lat-lon grid (any shape; mean 1)."""
    c = np.cos(np.radians(np.asarray(lat, np.float64)))
    return c / c.mean()


def lambert_cell_area_weights(lat, projection: LambertConformal) -> np.ndarray:
    """Cell areas of a regular grid on a conformal projection: a cell of side Δ covers (Δ/k)² of the sphere, so the
    weight is k(φ)⁻² / mean(k⁻²) with the map scale factor k of :meth:`LambertConformal.scale_factor` (mean 1)."""
    a = 1.0 / np.square(projection.scale_factor(lat))
    return a / a.mean()
