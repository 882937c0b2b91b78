"""Metric math (DEF_METHOD §8): hand cases, limits, agreement with scoringrules and properscoring, calibration."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import properscoring as ps
import pytest
import scoringrules as sr
from scipy import stats

from def_jax.evaluation import authors_metrics, metrics, scores
from def_jax.geo import HRRR_CONUS, LambertConformal


def _pair_sum_brute(x: np.ndarray) -> np.ndarray:
    """Σ_{m,m'} |x_m − x_m'| by the O(M²) double sum (members on axis 0)."""
    return np.abs(x[:, None] - x[None, :]).sum(axis=(0, 1))


# --- CRPS -------------------------------------------------------------------------------------------------------


def test_crps_by_hand():
    # Members 1, 2, 4 and y = 0: (1/M) Σ|x − y| = 7/3; Σ_{m,m'}|x_m − x_m'| = 2 (1 + 3 + 2) = 12.
    x = jnp.array([1.0, 2.0, 4.0])
    assert float(metrics.crps_ensemble(x, 0.0)) == pytest.approx(7 / 3 - 12 / (2 * 3 * 2))  # fair: 4/3
    assert float(metrics.crps_ensemble(x, 0.0, fair=False)) == pytest.approx(7 / 3 - 12 / (2 * 9))  # 5/3
    # Two members straddling the truth: the fair CRPS is 0, the standard one 1/4.
    assert float(metrics.crps_ensemble(jnp.array([0.0, 1.0]), 0.5)) == pytest.approx(0.0)
    assert float(metrics.crps_ensemble(jnp.array([0.0, 1.0]), 0.5, fair=False)) == pytest.approx(0.25)


def test_crps_limits():
    rng = np.random.default_rng(0)
    x1, y = rng.normal(size=(1, 7)), rng.normal(size=7)
    # One member: the standard CRPS is the absolute error; the fair estimator is undefined.
    np.testing.assert_allclose(metrics.crps_ensemble(x1, y, fair=False), np.abs(x1[0] - y), rtol=1e-6)
    with pytest.raises(ValueError, match="at least 2 members"):
        metrics.crps_ensemble(x1, y)
    # Identical members: no pair term, so fair = standard = |c − y|.
    same = np.full((6, 7), 0.3)
    np.testing.assert_allclose(metrics.crps_ensemble(same, y), np.abs(0.3 - y), rtol=1e-6)
    np.testing.assert_allclose(metrics.crps_ensemble(same, y, fair=False), np.abs(0.3 - y), rtol=1e-6)
    # In general they differ by Σ|x_m − x_m'| · (1/(2M(M−1)) − 1/(2M²)).
    x = rng.normal(size=(6, 7))
    diff = metrics.crps_ensemble(x, y, fair=False) - metrics.crps_ensemble(x, y)
    np.testing.assert_allclose(diff, _pair_sum_brute(x) * (1 / 60 - 1 / 72), rtol=1e-5)


def test_sorted_pair_sum_equals_the_double_sum():
    rng = np.random.default_rng(1)
    pair_sum = jax.jit(metrics.ensemble_pair_sum, static_argnames="member_axis")
    with jax.enable_x64(True):
        for m in (1, 2, 5, 16):
            x = rng.normal(280.0, 3.0, size=(m, 4, 3))
            np.testing.assert_allclose(pair_sum(x), _pair_sum_brute(x), rtol=1e-12, atol=1e-9)
        moved = np.moveaxis(x, 0, -1)
        np.testing.assert_allclose(pair_sum(moved, member_axis=-1), _pair_sum_brute(x), rtol=1e-12, atol=1e-9)
    # float32 at temperature scale: the shift by the minimum keeps the error at the spread's scale.
    x = rng.normal(280.0, 0.5, size=(50, 200)).astype(np.float32)
    np.testing.assert_allclose(pair_sum(x), _pair_sum_brute(x.astype(np.float64)), rtol=2e-5)


def test_crps_agrees_with_scoringrules_and_properscoring():
    rng = np.random.default_rng(2)
    x, y = rng.gamma(2.0, 1.0, size=(11, 30, 4)), rng.gamma(2.0, 1.0, size=(30, 4))  # [M, ...], [...]
    with jax.enable_x64(True):
        fair = np.asarray(metrics.crps_ensemble(x, y))
        standard = np.asarray(metrics.crps_ensemble(x, y, fair=False))
        last = np.asarray(metrics.crps_ensemble(np.moveaxis(x, 0, -1), y, member_axis=-1))
    assert fair.dtype == np.float64
    np.testing.assert_allclose(fair, sr.crps_ensemble(y, x, m_axis=0, estimator="fair", backend="numpy"), atol=1e-10)
    np.testing.assert_allclose(standard, sr.crps_ensemble(y, x, m_axis=0, estimator="nrg", backend="numpy"),
                               atol=1e-10)
    np.testing.assert_allclose(standard, ps.crps_ensemble(y, np.moveaxis(x, 0, -1)), atol=1e-10)
    np.testing.assert_allclose(last, fair, atol=1e-12)
    # float32 (the default) to 1e-5 relative, and under jit.
    jitted = jax.jit(metrics.crps_ensemble, static_argnames=("member_axis", "fair"))
    np.testing.assert_allclose(jitted(x.astype(np.float32), y.astype(np.float32)), fair, rtol=1e-5, atol=1e-6)


def test_energy_score_agrees_with_scoringrules():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(9, 3, 5, 4)), rng.normal(size=(3, 5, 4))  # [M, B, Y, X], [B, Y, X]
    xs = np.moveaxis(x.reshape(9, 3, 20), 0, 1)  # scoringrules: [B, M, V]
    with jax.enable_x64(True):
        for fair, estimator in ((True, "fair"), (False, "nrg")):
            ours = metrics.energy_score(x, y, event_axes=(-2, -1), fair=fair)  # [B]
            ref = sr.es_ensemble(y.reshape(3, 20), xs, estimator=estimator, backend="numpy")
            np.testing.assert_allclose(ours, ref, rtol=1e-10)
        # One event element: the energy score is the CRPS.
        np.testing.assert_allclose(metrics.energy_score(x[..., :1, :1], y[..., :1, :1], event_axes=(-2, -1)),
                                   metrics.crps_ensemble(x[:, :, 0, 0], y[:, 0, 0]), rtol=1e-10)
    with pytest.raises(ValueError, match="at least 2 members"):
        metrics.energy_score(x[:1], y, event_axes=(-2, -1))


# --- moments, calibration -----------------------------------------------------------------------------------------


def test_rmse_mae_bias_spread_by_hand():
    ens = np.array([[1.0, 2.0], [3.0, 6.0]])  # [M=2, 2 points]; mean (2, 4)
    y = np.array([1.0, 1.0])
    w = np.array([1.0, 3.0])
    assert float(metrics.ensemble_mean_rmse(ens, y)) == pytest.approx(np.sqrt((1 + 9) / 2))
    assert float(metrics.ensemble_mean_rmse(ens, y, weights=w)) == pytest.approx(np.sqrt((1 + 27) / 4))
    assert float(metrics.mae(ens.mean(0), y, weights=w)) == pytest.approx((1 + 9) / 4)
    assert float(metrics.bias(ens.mean(0) - 4.0, y)) == pytest.approx(((-2 - 1) + (0 - 1)) / 2)
    # Unbiased variances 2 and 8.
    assert float(metrics.spread(ens)) == pytest.approx(np.sqrt(5.0))
    assert float(metrics.spread(ens, weights=w)) == pytest.approx(np.sqrt((2 + 24) / 4))
    np.testing.assert_allclose(metrics.spread(ens[:, None, :].repeat(3, 1), axis=-1), np.sqrt(5.0) * np.ones(3),
                               rtol=1e-6)
    assert float(metrics.spread_skill_ratio(1.0, 2.0, 3)) == pytest.approx(np.sqrt(4 / 3) / 2)
    with pytest.raises(ValueError, match="at least 2 members"):
        metrics.spread(ens[:1])


def _synthetic(member_std: float, m: int = 20, n: int = 40000, seed: int = 4):
    """Truth and members drawn around a random centre: calibrated when member_std is 1."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(0.0, 2.0, n)
    truth = centre + rng.normal(size=n)
    members = centre[None] + member_std * rng.normal(size=(m, n))
    return members.astype(np.float32), truth.astype(np.float32)


def _reliability_deviation(members, truth, threshold=0.5, min_count=1000) -> float:
    prob, event = np.mean(members >= threshold, axis=0), truth >= threshold
    _, _, fp, fo, count = metrics.reliability_curve(prob, event)
    full = np.asarray(count) >= min_count
    assert full.sum() >= 5
    return float(np.max(np.abs(np.asarray(fp)[full] - np.asarray(fo)[full])))


def test_calibrated_ensemble_is_flat_and_reliable():
    members, truth = _synthetic(1.0)
    m = members.shape[0]
    hist = np.asarray(metrics.rank_histogram(members, truth))
    assert hist.shape == (m + 1,) and hist.sum() == truth.size
    assert stats.chisquare(hist).pvalue > 0.001
    spread = metrics.spread(members)
    rmse = metrics.ensemble_mean_rmse(members, truth)
    assert abs(float(metrics.spread_skill_ratio(spread, rmse, m)) - 1.0) < 0.05
    assert _reliability_deviation(members, truth) < 0.05


def test_overconfident_ensemble_is_not():
    members, truth = _synthetic(0.5)
    m = members.shape[0]
    hist = np.asarray(metrics.rank_histogram(members, truth))
    assert stats.chisquare(hist).pvalue < 1e-6
    middle = hist[1:-1].mean()
    assert hist[0] > 3 * middle and hist[-1] > 3 * middle  # U-shaped
    ssr = metrics.spread_skill_ratio(metrics.spread(members), metrics.ensemble_mean_rmse(members, truth), m)
    assert float(ssr) < 0.7
    assert _reliability_deviation(members, truth) > 0.05


def test_spread_error_counts_against_numpy():
    rng = np.random.default_rng(3)
    members = rng.normal(0.0, rng.gamma(2.0, 0.5, (1, 9, 11)), (6, 9, 11)).astype(np.float32)  # [M, Y, X]
    truth = rng.normal(0.0, 1.0, (9, 11)).astype(np.float32)
    weights = rng.uniform(0.5, 1.5, (9, 11))
    edges = np.array([0.25, 0.5, 1.0, 2.0])
    got = metrics.spread_error_counts(members, truth, edges, weights=weights)
    x, y = members.astype(np.float64), truth.astype(np.float64)
    var, err2 = x.var(axis=0, ddof=1), (x.mean(axis=0) - y) ** 2
    idx = np.digitize(np.sqrt(var), edges).ravel()  # bin k: edges[k-1] <= s < edges[k]
    for name, w in (("count", np.ones_like(var)), ("weight", weights), ("variance", weights * var),
                    ("squared_error", weights * err2)):
        np.testing.assert_allclose(np.asarray(getattr(got, name)), np.bincount(idx, w.ravel(), len(edges) + 1),
                                   rtol=2e-5, err_msg=name)
    spread, rmse = metrics.spread_error_curve(got, 6)
    filled = np.bincount(idx, minlength=5) > 0
    sums = [np.bincount(idx, v.ravel(), 5)[filled] for v in (weights, weights * var, weights * err2)]
    np.testing.assert_allclose(np.asarray(spread)[filled], np.sqrt(7 / 6 * sums[1] / sums[0]), rtol=2e-5)
    np.testing.assert_allclose(np.asarray(rmse)[filled], np.sqrt(sums[2] / sums[0]), rtol=2e-5)
    assert np.isnan(np.asarray(rmse)[~filled]).all()


@pytest.mark.parametrize("truth_scale, low, high", [(1.0, 0.9, 1.12), (0.5, 0.4, 0.7)])
def test_spread_error_of_a_calibrated_ensemble_lies_on_the_diagonal(truth_scale, low, high):
    """Members and truth from N(μ, σ²) with σ varying 30-fold over the grid: in every well-filled bin of predicted
    spread, RMSE / spread ≈ 1 (with the (M+1)/M factor); a truth closer to the mean (over-dispersive) lies below."""
    rng = np.random.default_rng(4)
    m, n = 16, 120
    yy, xx = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n), indexing="ij")
    sigma = 0.05 * 30 ** (0.5 * (1 + np.sin(3 * np.pi * yy) * np.cos(2 * np.pi * xx)))  # 0.05 .. 1.5
    mu = np.sin(4 * xx)
    members = (mu + sigma * rng.standard_normal((m, n, n))).astype(np.float32)
    truth = (mu + truth_scale * sigma * rng.standard_normal((n, n))).astype(np.float32)
    counts = metrics.spread_error_counts(members, truth, 2.0 ** (np.arange(-12, 3) / 2.0))
    spread, rmse = (np.asarray(a) for a in metrics.spread_error_curve(counts, m))
    full = np.asarray(counts.count) >= 1000
    assert full.sum() >= 6
    ratio = rmse[full] / spread[full]
    assert (ratio > low).all() and (ratio < high).all(), ratio


def test_rank_histogram_ties():
    rank_histogram = jax.jit(metrics.rank_histogram, static_argnames="member_axis")
    members, truth = np.zeros((4, 5000), np.float32), np.zeros(5000, np.float32)  # every member equals the truth
    assert np.asarray(rank_histogram(members, truth)).tolist() == [5000, 0, 0, 0, 0]
    hist = np.asarray(rank_histogram(members, truth, key=jax.random.key(0)))
    assert hist.sum() == 5000 and stats.chisquare(hist).pvalue > 0.001
    # Three of four members tie with the truth, one is below: ranks 1..4 only.
    members = np.array([[-1.0] * 5000, [0.0] * 5000, [0.0] * 5000, [0.0] * 5000], np.float32)
    hist = np.asarray(rank_histogram(members, truth, key=jax.random.key(1)))
    assert hist[0] == 0 and min(hist[1:]) > 1000  # 1250 expected in each of ranks 1..4


# --- events ---------------------------------------------------------------------------------------------------


def test_brier_score_and_decomposition():
    assert float(metrics.brier_score(np.array([0.2, 0.9]), np.array([0, 1]))) == pytest.approx((0.04 + 0.01) / 2)
    assert float(metrics.brier_score(np.array([0.2, 0.9]), np.array([0, 1]), weights=np.array([3.0, 1.0]))) == \
        pytest.approx((3 * 0.04 + 0.01) / 4)
    rng = np.random.default_rng(5)
    prob = (rng.integers(0, 10, 5000) + 0.5) / 10  # bin centres only
    event = rng.uniform(size=5000) < np.clip(prob + 0.1 * (prob - 0.5), 0, 1)
    rel, res, unc = metrics.brier_decomposition(prob, event)
    bs = float(metrics.brier_score(prob, event))
    assert bs == pytest.approx(float(rel - res + unc), abs=1e-6)
    o = event.mean()
    assert float(unc) == pytest.approx(o * (1 - o), rel=1e-6)
    assert float(rel) > 0 and float(res) > 0
    # Probabilities spread within bins: only approximately.
    prob2 = np.clip(prob + rng.uniform(-0.05, 0.05, prob.size), 0, 1)
    rel2, res2, unc2 = metrics.brier_decomposition(prob2, event)
    assert float(metrics.brier_score(prob2, event)) != pytest.approx(float(rel2 - res2 + unc2), abs=1e-6)


def test_brier_decomposition_scores_against_a_float64_derivation_from_the_points():
    """The registry's brier_reliability/resolution/uncertainty (scores.SCORES) on pooled reliability counts, fields
    and resamples batched [k, 3, bins, R], against Murphy's terms derived point by point in float64 NumPy:
    REL = mean (p̄_b(i) − ō_b(i))², RES = mean (ō_b(i) − ō)², UNC = ō (1 − ō), with b(i) the bin of point i; and
    REL − RES + UNC = the Brier score of the binned probabilities, mean (p̄_b(i) − o_i)²."""
    rng = np.random.default_rng(11)
    bins, n = 10, 4000
    counts, expected = [], []
    for m in (4, 7, 20):  # ensemble fractions j/M; with 20 members two values share a bin
        prob = rng.integers(0, m + 1, n) / m
        event = (rng.uniform(size=n) < np.clip(0.8 * prob + 0.1 * rng.uniform(size=n), 0, 1)).astype(np.float64)
        b = np.minimum(np.floor(prob * bins).astype(int), bins - 1)  # [N] bin of each point
        n_b = np.bincount(b, minlength=bins).astype(np.float64)
        s_p, s_o = np.bincount(b, prob, bins), np.bincount(b, event, bins)
        counts.append(np.stack([n_b, s_p, s_o]))  # [3, bins]
        p_bar, o_bin = (s_p / np.maximum(n_b, 1))[b], (s_o / np.maximum(n_b, 1))[b]  # [N]: the point's bin means
        o_all = event.mean()
        rel, res, unc = np.mean((p_bar - o_bin) ** 2), np.mean((o_bin - o_all) ** 2), o_all * (1 - o_all)
        assert rel - res + unc == pytest.approx(np.mean((p_bar - event) ** 2), rel=1e-12)
        expected.append((rel, res, unc))
    pooled = np.stack(counts)[..., None] * np.array([1.0, 3.0])  # [3 fields, 3, bins, R = 2]: scaling keeps the terms
    members = np.array([[4.0], [7.0], [20.0]])
    by_name = {s.name: s for s in scores.SCORES}
    for j, name in enumerate(("brier_reliability", "brier_resolution", "brier_uncertainty")):
        got = by_name[name].compute(members, pooled)  # [3, 2]
        assert got.shape == (3, 2) and got.dtype == np.float64
        np.testing.assert_allclose(got, np.repeat(np.array(expected)[:, j:j + 1], 2, axis=1), rtol=1e-12, atol=1e-15)
        assert not by_name[name].area_weighted


def test_reliability_curve_bins():
    prob = np.array([0.0, 0.05, 0.15, 0.95, 1.0])
    event = np.array([0, 1, 0, 1, 1])
    lower, upper, fp, fo, n = metrics.reliability_curve(prob, event, bins=10)
    np.testing.assert_allclose(lower, np.arange(10) / 10)
    np.testing.assert_allclose(upper, np.arange(1, 11) / 10)
    assert np.asarray(n).tolist() == [2, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    assert float(fp[0]) == pytest.approx(0.025) and float(fo[0]) == 0.5
    assert float(fp[9]) == pytest.approx(0.975) and float(fo[9]) == 1.0
    assert np.isnan(fp[5]) and np.isnan(fo[5])


def test_contingency_scores_by_hand():
    f = np.array([1, 1, 0, 0, 1], bool)
    o = np.array([1, 0, 1, 0, 0], bool)
    table = metrics.contingency(f, o)
    assert [int(v) for v in table] == [1, 1, 2, 1]  # hits, misses, false alarms, correct negatives
    assert float(metrics.csi(table)) == pytest.approx(1 / 4)
    assert float(metrics.pod(table)) == pytest.approx(1 / 2)
    assert float(metrics.far(table)) == pytest.approx(2 / 3)
    none = np.zeros(5, bool)
    assert np.isnan(metrics.far(metrics.contingency(none, o)))  # nothing forecast
    assert np.isnan(metrics.pod(metrics.contingency(f, none)))  # nothing observed
    assert np.isnan(metrics.csi(metrics.contingency(none, none)))


def _fss_brute(f: np.ndarray, o: np.ndarray, window: int) -> float:
    h = window // 2

    def fractions(a):
        pad = np.pad(a, ((h, h), (h, h)))
        out = np.zeros_like(a, dtype=np.float64)
        for i in range(a.shape[0]):
            for j in range(a.shape[1]):
                out[i, j] = pad[i:i + window, j:j + window].mean()
        return out

    pf, po = fractions(f), fractions(o)
    return 1 - np.sum((pf - po) ** 2) / (np.sum(pf ** 2) + np.sum(po ** 2))


def test_fractions_skill_score():
    fss = jax.jit(metrics.fractions_skill_score, static_argnames="window")
    components = jax.jit(metrics.fss_components, static_argnames="window")
    rng = np.random.default_rng(6)
    obs = rng.uniform(size=(17, 23)) < 0.2
    prob = np.clip(obs * 0.6 + rng.uniform(0, 0.5, obs.shape), 0, 1)
    for window in (1, 3, 9):
        assert float(fss(obs.astype(np.float32), obs, window)) == pytest.approx(1.0)
        assert float(fss(prob.astype(np.float32), obs, window)) == pytest.approx(
            _fss_brute(prob, obs.astype(float), window), rel=1e-5)
    # Window 1: the grid-point formula.
    expected = 1 - np.sum((prob - obs) ** 2) / (np.sum(prob ** 2) + np.sum(obs))
    assert float(fss(prob.astype(np.float32), obs, 1)) == pytest.approx(expected, rel=1e-6)
    # Leading axes are pooled: sums over both fields.
    both = components(np.stack([prob, prob]).astype(np.float32), np.stack([obs, obs]), 3)
    one = components(prob.astype(np.float32), obs, 3)
    np.testing.assert_allclose(both, 2 * np.asarray(one), rtol=1e-6)
    assert np.isnan(fss(np.zeros((17, 23), np.float32), np.zeros((17, 23), bool), 3))
    with pytest.raises(ValueError, match="odd"):
        metrics.fractions_skill_score(prob, obs, 4)


# --- spectra and weights ----------------------------------------------------------------------------------------


def test_power_spectrum_of_a_sinusoid_peaks_at_its_wavenumber():
    ny, nx, dx = 48, 64, 3.0
    yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    k, wavelength, power = metrics.radial_power_spectrum(np.sin(2 * np.pi * 5 * xx / nx), dx)
    assert k.tolist() == list(range(1, 33))
    np.testing.assert_allclose(wavelength, 64 * dx / k)
    assert int(k[np.argmax(power)]) == 5
    # Along the shorter axis: 6 cycles over 48 points = 8 cycles over the longer side (64 points).
    _, _, power_y = metrics.radial_power_spectrum(3.0 * np.cos(2 * np.pi * 6 * yy / ny), dx)
    assert int(k[np.argmax(power_y)]) == 8
    # Leading axes are kept; a constant has no power at k ≥ 1.
    _, _, p = metrics.radial_power_spectrum(np.stack([np.ones((ny, nx)), np.sin(2 * np.pi * 5 * xx / nx)]), dx)
    assert p.shape == (2, 32) and float(jnp.max(p[0])) < 1e-10
    np.testing.assert_allclose(p[1], power, rtol=1e-6)


def test_area_weights():
    lat = np.linspace(-80.0, 80.0, 33)
    w = metrics.coslat_weights(lat)
    assert w.mean() == pytest.approx(1.0, abs=1e-15)
    np.testing.assert_allclose(w * np.cos(np.radians(lat)).mean(), np.cos(np.radians(lat)), rtol=1e-15)
    lat2 = HRRR_CONUS.subgrid(0, 0, 30, 50, stride=35).latlon()[0]  # [30, 50] across the CONUS grid
    proj = HRRR_CONUS.projection
    w2 = metrics.lambert_cell_area_weights(lat2, proj)
    assert w2.shape == lat2.shape and w2.mean() == pytest.approx(1.0, abs=1e-12)
    k = proj.scale_factor(lat2)
    np.testing.assert_allclose(w2 * k ** 2, np.full(lat2.shape, (w2 * k ** 2).mean()), rtol=1e-12)
    # The standard parallel (k = 1) has the largest cells.
    assert np.argmax(w2.mean(axis=1)) == np.argmin(np.abs(lat2.mean(axis=1) - proj.lat_1))
    assert isinstance(proj, LambertConformal)


# --- the authors' table variants ------------------------------------------------------------------------------------


def test_authors_table_variants():
    authors_crps = jax.jit(authors_metrics.authors_table_crps, static_argnames="member_axis")
    x = np.array([[0.0, 2.0], [2.0, 2.0]])  # [M=2, 2 points]
    y = np.array([0.0, 1.0])
    # One pair (the two members): |x̄ − y| − ½ |x_1 − x_2|.
    np.testing.assert_allclose(authors_crps(x, y, jax.random.key(0)), [1.0 - 1.0, 1.0 - 0.0])
    # RMSE(x̄ − y) over the points − ½ · RMSE(x_2 − x_1).
    expected = np.sqrt((1 + 1) / 2) - 0.5 * np.sqrt((4 + 0) / 2)
    assert float(authors_metrics.authors_table_energy(x, y, event_axes=-1)) == pytest.approx(expected)
    # Five members: two disjoint random pairs; the odd one out is not used.
    rng = np.random.default_rng(7)
    x5, y5 = rng.normal(size=(5, 6)), rng.normal(size=6)
    got = np.asarray(authors_crps(x5, y5, jax.random.key(3)))
    perm = np.asarray(jax.jit(jax.random.permutation, static_argnums=1)(jax.random.key(3), 5))
    pairs = np.abs(x5[perm[0]] - x5[perm[1]]) + np.abs(x5[perm[2]] - x5[perm[3]])
    np.testing.assert_allclose(got, np.abs(x5.mean(0) - y5) - 0.5 * pairs / 2, rtol=1e-5)
