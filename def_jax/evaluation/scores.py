"""The scores of ``def-jax evaluate``, one registration each: the per-field statistics and the scores made of them.

A :class:`Statistic` is what one field (variable, level, lead; per threshold for events) of one cycle contributes: a
JAX function of the field (:class:`Field` or :class:`Events`) traced into the jitted per-field functions of
:mod:`~def_jax.evaluation.evaluate`, pooled over cycles as a mean (the per-field means) or a sum (counts and sums),
and kept per cycle under its named components (``scores_by_cycle.csv``). A :class:`Score` is a score of scores.csv:
the pooled statistics it is made of and the formula that turns them into the score. The same formula serves the
pooled tables (:func:`def_jax.evaluation.tables.point_scores`) and every bootstrap resample
(:mod:`def_jax.evaluation.bootstrap`). The split follows weatherbench2's metrics: per-chunk statistics, then the
score from their aggregate.

Adding a score: its math in :mod:`~def_jax.evaluation.metrics`, then one :class:`Score` in :data:`SCORES` (and a
:class:`Statistic` in :data:`STATISTICS` when it needs one that is not accumulated yet).

Formulas take the members M of the system [k, 1] (NaN for single forecasts) and the pooled statistics, each
[k, *components, R]: k fields (columns), the statistic's components (and bins), R resamples (1 for the tables); they
return [k, R] and run in float64 (under ``jax.enable_x64``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from def_jax.evaluation import metrics

EVENT_PROBABILITY = 0.5  # an ensemble forecasts "yes" (CSI, POD, FAR) where at least half of its members exceed


def event_thresholds(config) -> dict[str, tuple[float, ...]]:
    """Variable → its event thresholds (the variable's units) from every ``evaluation.<variable>_thresholds`` of the
    config (configs/presets.py: ``refc_thresholds``, ``cape_thresholds``), in the config's key order; empty ones
    are left out. The one source of the thresholded variables: evaluate, the forecast files' exceedance
    probabilities and (through the tables) the plots."""
    ev, suffix = config.evaluation, "_thresholds"
    out = {}
    for name in ev.keys():
        if name.endswith(suffix) and len(name) > len(suffix) and ev[name]:
            out[name[:-len(suffix)]] = tuple(float(t) for t in ev[name])
    return out


# --- the inputs of the per-field statistics (traced inside jit) --------------------------------------------------


class Field(NamedTuple):
    """One field of one system: members [M, Y, X] (M = 1: a single forecast), truth [Y, X], area weights [Y, X]
    (mean 1) and spread–error bin edges [E] (variable units)."""

    members: jax.Array
    truth: jax.Array
    weights: jax.Array
    edges: jax.Array

    def weighted_mean(self, x) -> jax.Array:
        return metrics.weighted_mean(x, weights=self.weights)

    def error(self) -> jax.Array:
        """x̄ − y [Y, X]."""
        return jnp.mean(self.members, axis=0) - self.truth


class Events(NamedTuple):
    """One event (variable ≥ threshold) of one field: forecast probability p [Y, X] (fraction of members), observed
    event o [Y, X] in {0, 1}, weights [Y, X], climatological probability (the base rate; NaN without one), FSS windows
    and reliability bins (static)."""

    prob: jax.Array
    observed: jax.Array
    weights: jax.Array
    base_rate: jax.Array
    windows: tuple
    bins: int


def _brier_sums(e: Events) -> jax.Array:
    """[4]: Σ w (p − o)², Σ w, Σ w (p_clim − o)², Σ w o."""
    w, o = e.weights, e.observed
    return jnp.stack([jnp.sum(w * jnp.square(e.prob - o)), jnp.sum(w), jnp.sum(w * jnp.square(e.base_rate - o)),
                      jnp.sum(w * o)])


def _energy(f: Field) -> jax.Array:
    sw = jnp.sqrt(f.weights)  # ‖v‖_w = sqrt(Σ w v²): the Euclidean norm of √w·v
    return metrics.energy_score(f.members * sw, f.truth * sw, event_axes=(-2, -1), fair=True)


# --- per-field statistics ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Statistic:
    """A per-field statistic, accumulated over cycles (key: system, variable, level, lead, name, threshold, window).

    ``needs``: which forecasts have it: ``forecast`` (every system), ``ensemble`` (the ensemble systems), ``spread``
    (ensembles of ≥ 2 members), ``spread_bins`` (those, where the store has the channel's std for the bin edges).
    """

    name: str
    components: tuple[str, ...]  # their names in scores_by_cycle.csv
    pooling: str  # "mean" (a per-field mean: pooled = mean over cycles) or "sum" (pooled = sum over cycles)
    compute: Callable  # Field or Events -> [*components, (bins)] (one component: a scalar)
    needs: str = "forecast"
    event: bool = False  # per threshold, from Events
    bins: Optional[int] = None  # components × bins
    per_window: bool = False  # one value per FSS window: compute gives [W, *components]


RELIABILITY_BINS = 10
# Spread–error bin edges in units of the channel's training-period standard deviation (`<var>_std` of the store):
# octaves from 2⁻¹⁰ σ to 4 σ, the same for every cycle, lead and system, so bins pool exactly over cycles.
SPREAD_ERROR_EDGES = 2.0 ** np.arange(-10, 3)  # [13] edges → 14 bins, the first [0, σ/1024), the last [4σ, ∞)
SPREAD_ERROR_BINS = len(SPREAD_ERROR_EDGES) + 1

STATISTICS: dict[str, Statistic] = {s.name: s for s in (
    Statistic("mse", ("mse",), "mean", lambda f: f.weighted_mean(jnp.square(f.error()))),
    Statistic("mae", ("mae",), "mean", lambda f: f.weighted_mean(jnp.abs(f.error()))),
    Statistic("bias", ("bias",), "mean", lambda f: f.weighted_mean(f.error())),
    Statistic("crps_fair", ("crps_fair",), "mean",
              lambda f: f.weighted_mean(metrics.crps_ensemble(f.members, f.truth, fair=True)), "spread"),
    Statistic("crps_standard", ("crps_standard",), "mean",
              lambda f: f.weighted_mean(metrics.crps_ensemble(f.members, f.truth, fair=False)), "ensemble"),
    Statistic("var", ("variance",), "mean", lambda f: f.weighted_mean(metrics.ensemble_variance(f.members)),
              "spread"),
    Statistic("energy", ("energy",), "mean", _energy, "spread"),
    Statistic("brier", ("brier_sum", "weight_sum", "brier_climatology_sum", "event_sum"), "sum", _brier_sums,
              event=True),
    Statistic("contingency", ("hits", "misses", "false_alarms", "correct_negatives"), "sum",
              lambda e: jnp.stack(metrics.contingency(e.prob >= EVENT_PROBABILITY, e.observed > 0.5)), event=True),
    Statistic("fss", ("fss_numerator", "fss_denominator"), "sum",
              lambda e: jnp.stack([jnp.stack(metrics.fss_components(e.prob, e.observed, w)) for w in e.windows]),
              event=True, per_window=True),  # [W, 2]
    Statistic("reliability", ("reliability_count", "reliability_probability_sum", "reliability_event_sum"), "sum",
              lambda e: jnp.stack([c.astype(jnp.float32) for c in metrics.reliability_counts(e.prob, e.observed,
                                                                                                 e.bins)]),
              "ensemble", event=True, bins=RELIABILITY_BINS),
    Statistic("spread_error", ("spread_error_count", "spread_error_weight_sum", "spread_error_variance_sum",
                               "spread_error_squared_error_sum"), "sum",
              lambda f: jnp.stack(metrics.spread_error_counts(f.members, f.truth, f.edges, weights=f.weights)),
              "spread_bins", bins=SPREAD_ERROR_BINS),  # [4, K]
)}


def statistics_for(event: bool, ensemble: bool, members: int, spread_bins: bool) -> tuple[str, ...]:
    """The names of the field (``event`` False) or event statistics a forecast has: ``ensemble`` system or single
    forecast, its ``members``, and whether the spread–error bin edges are known."""
    have = {"forecast"}
    if ensemble:
        have.add("ensemble")
        if members >= 2:
            have.add("spread")
            if spread_bins:
                have.add("spread_bins")
    return tuple(s.name for s in STATISTICS.values() if s.event == event and s.needs in have)


# --- scores from pooled statistics -------------------------------------------------------------------------------


def _div(num, den):
    """num / den, NaN where den ≤ 0 (or NaN)."""
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), jnp.nan)


def _bss(members, b):
    """1 − BS / BS_clim; NaN where it says nothing: no event observed (any forecast that never gives the event would
    score 1 against climatology's p_clim² > 0), or BS_clim = 0."""
    defined = (b[:, 3] > 0) & (b[:, 2] > 0)
    return jnp.where(defined, 1.0 - _div(b[:, 0], b[:, 2]), jnp.nan)


def _contingency(c) -> metrics.Contingency:
    return metrics.Contingency(c[:, 0], c[:, 1], c[:, 2], c[:, 3])


def _murphy(c) -> metrics.BrierDecomposition:
    """Murphy's (1973) decomposition from pooled reliability counts [k, 3, bins, R] (count, Σ p, Σ o per bin)."""
    return metrics.brier_decomposition_from_counts(metrics.ReliabilityCounts(c[:, 0], c[:, 1], c[:, 2]), axis=1)


@dataclasses.dataclass(frozen=True)
class Score:
    """A score of scores.csv: ``formula(members [k, 1], *pooled statistics [k, *components, R]) → [k, R]``.

    ``systems``: which systems have it: ``all``, ``ensembles``, ``single`` (one forecast: deterministic,
    persistence, climatology) or ``forecasts`` (all but climatology). ``fair_crps``: only when
    ``evaluation.fair_crps`` is this (None: either). ``written_if``: the tables write a field's row only where this
    holds of its pooled statistics (None: always).
    """

    name: str
    statistics: tuple[str, ...]  # the pooled statistics it is made of; the first one's cycles are the row's count
    formula: Callable
    systems: str = "all"
    fair_crps: Optional[bool] = None
    area_weighted: bool = True  # False: counts over grid points (its weighting is "uniform")
    written_if: Optional[Callable] = None

    def applies(self, system: str, ensemble: bool, fair_crps: bool) -> bool:
        if self.fair_crps is not None and self.fair_crps != fair_crps:
            return False
        return {"all": True, "ensembles": ensemble, "single": not ensemble,
                "forecasts": system != "climatology"}[self.systems]

    def compute(self, members, *pooled) -> np.ndarray:
        """The score [k, R] in float64 (``members`` [k, 1], ``pooled`` [k, *components, R] each)."""
        with jax.enable_x64(True), np.errstate(divide="ignore", invalid="ignore"):
            return np.array(self.formula(np.asarray(members, np.float64), *pooled), np.float64)  # writable


_same = lambda members, s: s  # noqa: E731  (the pooled mean is the score)

SCORES: tuple[Score, ...] = (
    Score("rmse", ("mse",), lambda m, mse: jnp.sqrt(mse)),
    Score("mae", ("mae",), _same),
    Score("bias", ("bias",), _same),
    Score("crps", ("crps_fair",), _same, "ensembles", fair_crps=True),
    Score("crps", ("crps_standard",), _same, "ensembles", fair_crps=False),
    Score("crps", ("mae",), _same, "single"),  # a single forecast's CRPS is its absolute error
    Score("crps_standard", ("crps_standard",), _same, "ensembles"),
    Score("spread", ("var",), lambda m, var: jnp.sqrt(var), "ensembles"),
    Score("ssr", ("var", "mse"), lambda m, var, mse: metrics.spread_skill_ratio(jnp.sqrt(var), jnp.sqrt(mse), m),
          "ensembles"),
    Score("energy", ("energy",), _same, "ensembles"),
    Score("observed_frequency", ("brier",), lambda m, b: _div(b[:, 3], b[:, 1])),
    Score("brier", ("brier",), lambda m, b: _div(b[:, 0], b[:, 1])),
    Score("bss", ("brier",), _bss, "forecasts", written_if=lambda b: np.isfinite(b[:, 2])),
    Score("brier_reliability", ("reliability",), lambda m, c: _murphy(c).reliability, area_weighted=False),
    Score("brier_resolution", ("reliability",), lambda m, c: _murphy(c).resolution, area_weighted=False),
    Score("brier_uncertainty", ("reliability",), lambda m, c: _murphy(c).uncertainty, area_weighted=False),
    Score("csi", ("contingency",), lambda m, c: metrics.csi(_contingency(c)), area_weighted=False),
    Score("pod", ("contingency",), lambda m, c: metrics.pod(_contingency(c)), area_weighted=False),
    Score("far", ("contingency",), lambda m, c: metrics.far(_contingency(c)), area_weighted=False),
    Score("fss", ("fss",), lambda m, c: metrics.fss_from_components(c[:, 0], c[:, 1]), area_weighted=False),
)
SCORE_NAMES = tuple(dict.fromkeys(s.name for s in SCORES))  # the row order of scores.csv
COUNT_SCORES = tuple(dict.fromkeys(s.name for s in SCORES if not s.area_weighted))  # never area-weighted
SCORE_STATISTICS = tuple(n for n in STATISTICS if any(n in s.statistics for s in SCORES))  # what scores are made of
