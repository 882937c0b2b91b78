"""Bootstrap over forecast cycles (def_jax.evaluation.bootstrap) against the pooled tables and float64 NumPy."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from def_jax.evaluation import bootstrap
from def_jax.evaluation.tables import Accumulator, point_scores

SETTINGS = SimpleNamespace(fair_crps=True, weighting="uniform")
INITS = np.datetime64("2024-06-01T00", "s") + np.arange(6) * np.timedelta64(12, "h")
M = 5


def filled_accumulator(rng, inits=INITS, leads=(1, 2), skip=()) -> Accumulator:
    """Random per-cycle statistics of an ensemble, the deterministic rollout and climatology for t (one level) and
    refc (events at two thresholds, never at 35 dBZ and lead 2; FSS at two windows); ``skip``: (system, init) pairs
    left out."""
    acc = Accumulator()
    acc.members["def"] = M
    for init in inits:
        for var, level in (("t", 500.0), ("refc", None)):
            for lead in leads:
                for system in ("def", "deterministic", "climatology"):
                    if (system, init) in skip:
                        continue
                    base = (system, var, level, lead)
                    qty = ("mse", "mae", "bias") + (("crps_fair", "crps_standard", "var", "energy")
                                                    if system == "def" else ())
                    for q in qty:
                        value = rng.normal() if q == "bias" else rng.gamma(2.0, 1.0 + lead)
                        acc.add(base + (q, None, None), value, cycle=init)
                    if level is not None or system == "climatology":
                        continue
                    for thr in (20.0, 35.0):
                        events = float(rng.integers(0, 3)) * rng.random()  # some cycles without an event
                        events *= thr != 35.0 or lead != 2  # one field without any
                        brier = [rng.random() * 5, 100.0, rng.random() * 6, events]
                        acc.add(base + ("brier", thr, None), brier, cycle=init)
                        acc.add(base + ("contingency", thr, None), rng.integers(0, 20, 4).astype(float), cycle=init)
                        for window in (1, 3):
                            num = rng.random()
                            acc.add(base + ("fss", thr, window), [num, num + rng.random() * 3], cycle=init)
    return acc


def point_values(acc: Accumulator) -> dict:
    with jax.enable_x64(True):  # as evaluate computes them: float64 ratios of the float64 sums
        scores = point_scores(acc, SETTINGS, {"t": 0, "refc": 1})
    return {base + (s, thr, w): float(v) for base, rows in scores.items() for s, thr, w, v, _ in rows}


def assert_scores_equal(pooled: dict, expected: dict, rel: float = 1e-12) -> None:
    """Every score of ``expected`` (NaN where undefined) in ``pooled`` [1] (the skill ratios come on top)."""
    for key, value in expected.items():
        got = float(pooled[key][0])
        if np.isnan(value):
            assert np.isnan(got), key
        else:
            assert got == pytest.approx(value, rel=rel, abs=1e-14), key
    skill = {k for k in pooled if k[4] in bootstrap.SKILL_SCORES}
    assert set(pooled) - skill == set(expected)


def test_resample_counts():
    counts = bootstrap.resample_counts(7, 500, seed=3)
    assert counts.shape == (500, 7) and counts.dtype.kind == "i"
    assert (counts.sum(axis=1) == 7).all() and counts.min() >= 0
    np.testing.assert_array_equal(counts, bootstrap.resample_counts(7, 500, seed=3))
    assert not np.array_equal(counts, bootstrap.resample_counts(7, 500, seed=4))
    assert counts.mean(axis=0) == pytest.approx(np.ones(7), abs=0.12)  # each cycle drawn once on average
    # P(a cycle is never drawn) = (1 − 1/n)^n
    assert (counts == 0).mean() == pytest.approx((6 / 7) ** 7, abs=0.03)


def test_percentile_interval_matches_numpy_and_skips_nan():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 3, 4))
    a[rng.random(a.shape) < 0.2] = np.nan
    a[:, 0, 0] = np.nan
    a[:, 1, 1] = rng.normal(size=200)  # a column without NaN
    low, high = bootstrap.percentile_interval(a, 0.8)
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        ref = np.nanpercentile(a, [10, 90], axis=0)
    np.testing.assert_allclose(low, ref[0], rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(high, ref[1], rtol=1e-12, equal_nan=True)
    assert np.isnan(low[0, 0]) and np.isnan(high[0, 0])
    b = np.full((50, 2), np.inf)  # ratios to a zero denominator: inf, not NaN
    b[:, 1] = np.arange(50.0)
    b[:10, 1] = np.inf
    low, high = bootstrap.percentile_interval(b, 0.5)
    assert low.tolist() == [np.inf, np.percentile(b[:, 1], 25)]
    assert high.tolist() == [np.inf, np.percentile(b[:, 1], 75)]
    with pytest.raises(ValueError, match="confidence"):
        bootstrap.percentile_interval(a, 1.0)


def test_unit_weights_reproduce_the_pooled_tables_and_one_cycle_repeated_gives_that_cycle():
    rng = np.random.default_rng(1)
    acc = filled_accumulator(rng, skip={("deterministic", INITS[4])})  # a field missing from one cycle
    stats = acc.cycle_statistics()
    assert len(stats.inits) == len(INITS)
    n = len(INITS)
    pooled = bootstrap.pool(stats, np.ones((1, n)), chunk=1)  # chunks of one slot: pairing within a chunk
    assert_scores_equal(pooled, point_values(acc))
    assert any(np.isnan(v) for k, v in point_values(acc).items() if k[4] == "bss")  # no event at some field

    for i in (0, 4):  # the per-cycle table of cycle i alone, and the resample that draws it n times
        alone = Accumulator()
        alone.members.update(acc.members)
        for key, per in acc.by_cycle.items():
            if INITS[i] in per:
                alone.add(key, per[INITS[i]], cycle=INITS[i])
        weights = np.zeros((1, n))
        weights[0, i] = n
        repeated = bootstrap.pool(stats, weights)
        expected = point_values(alone)
        for key, values in repeated.items():
            if key in expected:
                assert values[0] == pytest.approx(expected[key], rel=1e-12, abs=1e-14) or (
                    np.isnan(expected[key]) and np.isnan(values[0])), key
            elif key[4] not in bootstrap.SKILL_SCORES:  # a field not scored in cycle i: undefined in the resample
                assert np.isnan(values[0]), key
        assert (i == 4) == np.isnan(repeated[("deterministic", "t", 500.0, 1, "rmse", None, None)][0])


def test_slots_pool_only_those_slots(monkeypatch):
    """``pool(slots=...)`` gives exactly the whole pool's values of those slots and computes no other slot."""
    rng = np.random.default_rng(5)
    stats = filled_accumulator(rng, leads=(1, 2, 3, 4)).cycle_statistics()
    weights = bootstrap.resample_counts(len(INITS), 20, seed=0)
    whole = bootstrap.pool(stats, weights)
    wanted = [("t", 500.0, 1), ("t", 500.0, 3), ("refc", None, 4)]  # not consecutive in the statistics' slot order
    computed = []
    original = bootstrap._pool_quantities
    monkeypatch.setattr(bootstrap, "_pool_quantities",
                        lambda st, w, lo, hi: computed.extend(st.slots[lo:hi + 1]) or original(st, w, lo, hi))
    part = bootstrap.pool(stats, weights, slots=wanted)
    assert sorted(computed, key=str) == sorted(wanted, key=str)
    assert set(part) == {k for k in whole if (k[1], k[2], k[3]) in wanted} and part
    for key, values in part.items():
        np.testing.assert_allclose(values, whole[key], rtol=1e-12)  # the same sums, in other block shapes
    assert list(bootstrap._runs([1, 2, 3, 7, 8, 10])) == [(1, 3), (7, 8), (10, 10)]


def test_ratio_interval_against_the_exact_bootstrap_in_float64():
    """4 cycles, every one of the 4⁴ ordered draws once: the interval of CRPS(def) / MAE(deterministic) from the
    resampled ratio of means, by hand."""
    crps = np.array([0.50, 0.80, 0.35, 1.10])
    mae = np.array([0.90, 1.00, 0.70, 1.25])
    acc = Accumulator()
    acc.members["def"] = M
    for init, c, a in zip(INITS, crps, mae):
        for q, v in (("mse", 1.0), ("mae", 1.0), ("bias", 0.0), ("crps_fair", c), ("crps_standard", c),
                     ("var", 1.0)):
            acc.add(("def", "t2m", None, 6, q, None, None), v, cycle=init)
        for q, v in (("mse", 1.0), ("mae", a), ("bias", 0.0)):
            acc.add(("deterministic", "t2m", None, 6, q, None, None), v, cycle=init)
    draws = np.array(list(itertools.product(range(4), repeat=4)))  # [256, 4] cycle indices
    weights = np.stack([np.bincount(d, minlength=4) for d in draws])  # [256, 4]
    ratio = np.array([crps[d].mean() / mae[d].mean() for d in draws])
    expected = np.percentile(ratio, [5, 95])
    stats = acc.cycle_statistics()
    got = bootstrap.score_intervals(stats, weights, 0.9)[("def", "t2m", None, 6, "crps_over_deterministic_mae",
                                                          None, None)]
    np.testing.assert_allclose(got, expected, rtol=1e-13)
    point = crps.mean() / mae.mean()
    assert got[0] < point < got[1]
    unpaired = np.percentile(crps[draws].mean(1)[:, None] / mae[draws].mean(1)[None, :], [5, 95])
    assert got[1] - got[0] < unpaired[1] - unpaired[0]  # pairing: the cycles' common difficulty cancels


def test_intervals_contain_the_estimate_and_shrink_with_more_cycles():
    """The 90 % interval of a mean over n cycles is about 2 · 1.645 s / √n wide (s: the cycles' standard deviation),
    and 16 times the cycles give about a quarter of the width, for every kind of score."""
    widths = {}
    for n in (20, 320):
        rng = np.random.default_rng(n)
        inits = np.datetime64("2024-01-01T00", "s") + np.arange(n) * np.timedelta64(6, "h")
        acc = filled_accumulator(rng, inits=inits, leads=(1,))
        intervals = bootstrap.score_intervals(acc.cycle_statistics(), bootstrap.resample_counts(n, 400, seed=0), 0.9)
        points = point_values(acc)
        for score in ("rmse", "crps", "spread", "ssr", "bias", "brier", "fss"):
            key = ("def", "refc", None, 1, score) + ((35.0, 3) if score == "fss" else (20.0, None) if score == "brier"
                                                      else (None, None))
            low, high = intervals[key]
            assert low <= points[key] <= high, key
            widths[n, score] = high - low
        for score, qty in (("crps", "crps_fair"), ("bias", "bias")):  # means: the normal approximation
            per_cycle = np.array(list(acc.by_cycle[("def", "refc", None, 1, qty, None, None)].values()))
            expected = 2 * 1.645 * per_cycle.std() / np.sqrt(n)
            assert widths[n, score] == pytest.approx(expected, rel=0.2), (n, score)
    for score in ("rmse", "crps", "spread", "ssr", "bias", "brier", "fss"):
        assert 0.12 < widths[320, score] / widths[20, score] < 0.5, score


def test_several_evaluations_are_averaged_inside_each_resample():
    rng = np.random.default_rng(5)
    seeds = [filled_accumulator(rng).cycle_statistics() for _ in range(3)]
    weights = bootstrap.resample_counts(len(INITS), 50, seed=1)
    combined = bootstrap.pool(seeds, weights)
    alone = [bootstrap.pool(s, weights) for s in seeds]
    for key in (("def", "refc", None, 2, "crps", None, None), ("def", "refc", None, 1, "fss", 35.0, 3),
                ("def", "t", 500.0, 2, "rmse_over_deterministic_rmse", None, None)):
        np.testing.assert_allclose(combined[key], np.mean([a[key] for a in alone], axis=0), rtol=1e-12)
    low, high = bootstrap.score_intervals(seeds, weights, 0.9)[("def", "t", 500.0, 1, "crps", None, None)]
    np.testing.assert_allclose([low, high], np.percentile(combined[("def", "t", 500.0, 1, "crps", None, None)],
                                                          [5, 95]), rtol=1e-12)
    other = seeds[1].take(seeds[1].inits[:4])
    with pytest.raises(ValueError, match="same cycles"):
        bootstrap.pool([seeds[0], other], weights)
