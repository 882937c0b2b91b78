"""Bootstrap confidence intervals over forecast cycles: NumPy (and the registry's score formulas), no I/O.

Every score of ``def-jax evaluate`` pools cycles: it is a function of per-cycle sufficient statistics summed or
averaged over the cycles (:mod:`def_jax.evaluation.tables`). Resampling the cycles with replacement (Efron &
Tibshirani 1993; over forecast days, paired between forecast systems, as in Hamill 1999) therefore needs no new
verification: a resample is a row of counts c_1..c_n (how often each of the n cycles was drawn, Σ c_i = n), and every
pooled quantity becomes

    sums (Brier, contingency, FSS, reliability and spread–error counts):  Σ_i c_i s_i
    means over cycles (MSE, MAE, bias, CRPS, variance, energy):          Σ_i c_i s_i / Σ_i c_i

with i running over the cycles in which the field was scored (the pooling of each statistic is the registry's,
:data:`def_jax.evaluation.scores.STATISTICS`). One matrix product per quantity covers all R resamples (the fields'
per-cycle values [K, n] times the counts [n, R]; arrays keep the resamples last, [K, …, R], so that each field's R
values are contiguous for the percentiles). The scores follow from the pooled quantities by the registry's formulas
(:data:`def_jax.evaluation.scores.SCORES`, the same that make the tables), plus the skill ratios of each ensemble
system against the ``deterministic`` system of the same variable, level and lead (where the two were scored in the
same cycles), ``crps_over_deterministic_mae`` and ``rmse_over_deterministic_rmse``.

Pairing: one count matrix serves every system and score, so a ratio or a difference of two scores has its own
interval, from the ratio or difference in each resample. Several evaluations of the same cycles (e.g. training seeds)
are combined by computing each score per evaluation under the same resample and averaging it over the evaluations
that have it. A resample that draws none of a field's cycles, or where a score is undefined (a BSS with no event
drawn), gives NaN: the interval is taken over the other resamples.

Keys: a quantity's column is ``(system, variable, level, lead, threshold, window)``; a score is ``(system, variable,
level, lead, score, threshold, window)`` as in scores.csv (level, threshold, window None where they do not apply).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from def_jax.evaluation.scores import SCORE_STATISTICS, SCORES, STATISTICS

QUANTITIES = tuple(STATISTICS)  # the per-cycle statistics
MEAN_QUANTITIES = tuple(n for n, s in STATISTICS.items() if s.pooling == "mean")  # per-field means; others: sums
SKILL_SCORES = ("crps_over_deterministic_mae", "rmse_over_deterministic_rmse")
REFERENCE = "deterministic"  # the system the skill ratios divide by


def _slot_order(slot: tuple) -> tuple:
    """Sort key of a (variable, level, lead) slot (level None first)."""
    var, level, lead = slot
    return (var, -np.inf if level is None else level, lead)


def _column_order(key: tuple) -> tuple:
    system, var, level, lead, thr, window = key
    return _slot_order((var, level, lead)) + (system, -np.inf if thr is None else thr, window or 0)


@dataclasses.dataclass(frozen=True)
class Quantity:
    """One per-cycle statistic of many fields: column k is ``keys[k]``, sorted by (variable, level, lead) slot."""

    keys: tuple  # [K] (system, variable, level, lead, threshold, window)
    values: np.ndarray  # [n, K, *shape] float64; 0 where absent
    present: np.ndarray  # [n, K] bool: the field was scored in that cycle
    slot: np.ndarray  # [K] int: index into CycleStatistics.slots, ascending


@dataclasses.dataclass(frozen=True)
class CycleStatistics:
    """The per-cycle sufficient statistics of one evaluation (one folder of tables)."""

    inits: np.ndarray  # [n] datetime64[s], ascending: the cycles
    quantities: dict  # name (QUANTITIES) -> Quantity
    members: dict  # ensemble system -> members M (the systems not here are single forecasts)
    slots: tuple  # (variable, level, lead) of every column, in _slot_order

    @classmethod
    def from_arrays(cls, inits, quantities: dict, members: dict) -> "CycleStatistics":
        """From ``{quantity: (keys, values [n, K, *shape], present [n, K])}`` with keys (system, variable, level,
        lead, threshold, window) and the cycles' ``inits`` [n] (ascending); columns are put in slot order."""
        slots = tuple(sorted({(k[1], k[2], k[3]) for keys, _, _ in quantities.values() for k in keys},
                             key=_slot_order))
        slot_index = {s: i for i, s in enumerate(slots)}
        out = {}
        for name, (keys, values, present) in quantities.items():
            if name not in QUANTITIES or not len(keys):
                continue
            order = sorted(range(len(keys)), key=lambda j: _column_order(keys[j]))
            keys = tuple(keys[j] for j in order)
            out[name] = Quantity(keys, np.asarray(values, np.float64)[:, order], np.asarray(present, bool)[:, order],
                                 np.array([slot_index[(k[1], k[2], k[3])] for k in keys], int))
        return cls(np.asarray(inits, "datetime64[s]"), out, dict(members), slots)

    @classmethod
    def from_cycles(cls, per_cycle: dict, members: dict) -> "CycleStatistics":
        """From ``{(system, variable, level, lead, quantity, threshold, window): {init: value}}`` (values of one
        quantity share a shape; quantities outside :data:`QUANTITIES` are ignored)."""
        per_cycle = {k: v for k, v in per_cycle.items() if k[4] in QUANTITIES and v}
        inits = np.array(sorted({np.datetime64(t, "s") for v in per_cycle.values() for t in v}), "datetime64[s]")
        row = {t: i for i, t in enumerate(inits)}
        quantities = {}
        for name in QUANTITIES:
            keys = [k for k in per_cycle if k[4] == name]
            if not keys:
                continue
            shape = np.shape(next(iter(per_cycle[keys[0]].values())))
            values = np.zeros((len(inits), len(keys)) + shape)
            present = np.zeros((len(inits), len(keys)), bool)
            for j, key in enumerate(keys):
                for t, v in per_cycle[key].items():
                    i = row[np.datetime64(t, "s")]
                    values[i, j], present[i, j] = v, True
            quantities[name] = ([k[:4] + k[5:] for k in keys], values, present)
        return cls.from_arrays(inits, quantities, members)

    def take(self, inits: Sequence) -> "CycleStatistics":
        """The statistics of the cycles ``inits`` (each must be one of ``self.inits``), in that order."""
        row = {t: i for i, t in enumerate(self.inits)}
        idx = np.array([row[np.datetime64(t, "s")] for t in inits], int)
        return CycleStatistics(self.inits[idx], {name: dataclasses.replace(q, values=q.values[idx],
                                                                           present=q.present[idx])
                                                 for name, q in self.quantities.items()}, self.members, self.slots)


# --- resamples and intervals -------------------------------------------------------------------------------------


def resample_counts(cycles: int, samples: int, seed: int) -> np.ndarray:
    """[samples, cycles] int: row r counts how often each cycle is drawn in resample r (``cycles`` draws with
    replacement, uniformly; Σ over a row = cycles). The same (cycles, samples, seed) give the same matrix."""
    if cycles < 1 or samples < 1:
        raise ValueError(f"resample_counts: need at least one cycle and one sample; got {cycles}, {samples}")
    draws = np.random.default_rng(seed).integers(0, cycles, size=(samples, cycles))  # [R, n] cycle indices
    flat = draws + cycles * np.arange(samples)[:, None]
    return np.bincount(flat.ravel(), minlength=samples * cycles).reshape(samples, cycles)


def percentile_interval(samples, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """The percentile interval of ``samples`` [R, ...] over axis 0: the (1 − c)/2 and (1 + c)/2 quantiles, linearly
    interpolated between order statistics (NumPy's default method), ignoring NaN (all NaN: NaN). Returns (low, high),
    each of shape [...]."""
    a = np.asarray(samples, np.float64)
    low, high = _row_intervals(np.ascontiguousarray(a.reshape(a.shape[0], -1).T), confidence)
    return low.reshape(a.shape[1:]), high.reshape(a.shape[1:])


def _row_intervals(rows: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`percentile_interval` of each row of ``rows`` [K, R] (rows are reordered in place)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"percentile_interval: confidence must be in (0, 1); got {confidence}")
    q = np.array([(1.0 - confidence) / 2, (1.0 + confidence) / 2])
    out = np.full((rows.shape[0], 2), np.nan)
    r = rows.shape[1]
    n = r - np.isnan(rows).sum(axis=1)  # [K] samples that are not NaN

    def interpolate(ordered: np.ndarray, count) -> np.ndarray:  # rows in order where it matters → [k, 2]
        count = np.broadcast_to(np.asarray(count), (len(ordered),))[:, None]  # [k, 1]
        pos = q * (count - 1)  # [k, 2]
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, count - 1)
        v_lo, v_hi = np.take_along_axis(ordered, lo, 1), np.take_along_axis(ordered, hi, 1)
        with np.errstate(invalid="ignore"):  # equal neighbours (e.g. both inf, a ratio to zero): that value
            return np.where(v_lo == v_hi, v_lo, v_lo + (pos - lo) * (v_hi - v_lo))

    full = n == r
    if full.any():  # partition: only the order statistics around the two quantiles are put in place
        sub = rows[full] if not full.all() else rows
        lo = np.floor(q * (r - 1)).astype(int)
        sub.partition(np.unique(np.concatenate([lo, np.minimum(lo + 1, r - 1)])), axis=1)
        out[full] = interpolate(sub, r)
    part = ~full & (n > 0)
    if part.any():  # sorted, NaN last: the same interpolation over the non-NaN samples of each row
        out[part] = interpolate(np.sort(rows[part], axis=1), n[part])
    return out[:, 0], out[:, 1]


# --- pooling (arrays are [columns, ..., R]: each column's resamples contiguous) ------------------------------------


def _div(num, den) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _pool_quantities(stats: CycleStatistics, weights: np.ndarray, lo: int, hi: int,
                     names: Iterable[str] = SCORE_STATISTICS) -> dict:
    """Quantity → (keys, pooled [k, *shape, R], present [n, k]) for slots lo..hi; pooled is the weighted mean
    (:data:`MEAN_QUANTITIES`) or sum, NaN where the resample drew none of the field's cycles."""
    out = {}
    for name in names:
        q = stats.quantities.get(name)
        if q is None:
            continue
        a, b = np.searchsorted(q.slot, lo, "left"), np.searchsorted(q.slot, hi, "right")
        if a == b:
            continue
        present = q.present[:, a:b]
        d = present.T.astype(np.float64) @ weights.T  # [k, R]: Σ weights of the cycles with the field
        s = np.tensordot(q.values[:, a:b], weights, axes=(0, 1))  # [k, *shape, R]
        dd = d.reshape(d.shape[:1] + (1,) * (s.ndim - 2) + d.shape[1:])
        s = _div(s, dd) if name in MEAN_QUANTITIES else np.where(dd > 0, s, np.nan)
        out[name] = (q.keys[a:b], s, present)
    return out


def _scores(pooled: dict, members: dict, fair_crps: bool) -> list[tuple[list, np.ndarray]]:
    """Every score (and skill ratio) from pooled quantities, in blocks: [(score keys, values [k, R])]."""
    blocks: list = []
    by_score: dict = {}  # score -> (keys, values) of the blocks the skill ratios need

    def emit(qkeys, score, values):
        keys = [(k[0], k[1], k[2], k[3], score, k[4], k[5]) for k in qkeys]
        blocks.append((keys, values))
        by_score.setdefault(score, []).append((keys, values))

    for score in SCORES:
        if any(name not in pooled for name in score.statistics):
            continue
        qkeys, first, _ = pooled[score.statistics[0]]
        others = [{k: i for i, k in enumerate(pooled[name][0])} for name in score.statistics[1:]]
        cols = [j for j, k in enumerate(qkeys) if score.applies(k[0], k[0] in members, fair_crps)
                and all(k in other for other in others)]
        if not cols:
            continue
        values = [first[cols]] + [pooled[name][1][[other[qkeys[j]] for j in cols]]
                                  for name, other in zip(score.statistics[1:], others)]
        m = np.array([[members.get(qkeys[j][0], np.nan)] for j in cols], np.float64)  # [k, 1]
        emit([qkeys[j] for j in cols], score.name, score.compute(m, *values))
    scored = {}  # field -> the cycles it was scored in [n]
    if "mae" in pooled:
        qkeys, _, present = pooled["mae"]
        scored = {k[:4]: present[:, j] for j, k in enumerate(qkeys)}
    for score, ref_score, name in (("crps", "mae", SKILL_SCORES[0]), ("rmse", "rmse", SKILL_SCORES[1])):
        skill = _skill_block(by_score.get(score, []), by_score.get(ref_score, []), ref_score, name, members, scored)
        if skill is not None:
            blocks.append(skill)
    return blocks


def _skill_block(scores: list, references: list, ref_score: str, name: str, members: dict,
                 scored: dict) -> Optional[tuple[list, np.ndarray]]:
    """Each ensemble's score / the deterministic system's ``ref_score`` (same variable, level, lead) where the two
    were scored in the same cycles (``scored``: field → cycles [n] bool), so that they pair; None if there is none."""
    refs = {k[1:4]: (values, i) for keys, values in references for i, k in enumerate(keys)
            if k[0] == REFERENCE and k[4] == ref_score}
    keys, num, den = [], [], []
    for block_keys, values in scores:
        for i, k in enumerate(block_keys):
            ref = refs.get(k[1:4])
            if k[0] in members and ref is not None and np.array_equal(scored.get(k[:4]),
                                                                       scored.get((REFERENCE,) + k[1:4])):
                keys.append(k[:4] + (name, None, None))
                num.append(values[i])
                den.append(ref[0][ref[1]])
    if not keys:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        return keys, np.stack(num) / np.stack(den)


def _as_list(stats) -> list[CycleStatistics]:
    stats = [stats] if isinstance(stats, CycleStatistics) else list(stats)
    if not stats:
        raise ValueError("bootstrap: no cycle statistics given")
    for s in stats[1:]:
        if not np.array_equal(s.inits, stats[0].inits):
            raise ValueError("bootstrap: evaluations combined in one resample must have the same cycles "
                             "(CycleStatistics.take the shared initial times first)")
    return stats


def _average(results: list[tuple[list, np.ndarray]]) -> tuple[list, np.ndarray]:
    """Mean over evaluations of values [K_e, ..., R] aligned by key (over the evaluations that have the key)."""
    if len(results) == 1:
        return results[0]
    union: dict = {}
    for keys, _ in results:
        for k in keys:
            union.setdefault(k, len(union))
    first = results[0][1]
    total = np.zeros((len(union),) + first.shape[1:])
    count = np.zeros(len(union))
    for keys, values in results:
        pos = np.fromiter((union[k] for k in keys), int, len(keys))
        total[pos] += values
        count[pos] += 1
    return list(union), total / count.reshape((-1,) + (1,) * (total.ndim - 1))


def _runs(ids: list[int]) -> Iterator[tuple[int, int]]:
    """(first, last) of each run of consecutive integers in the sorted ``ids``: [1, 2, 3, 7, 8] → (1, 3), (7, 8)."""
    for _, run in itertools.groupby(enumerate(ids), key=lambda pair: pair[1] - pair[0]):
        run = [i for _, i in run]
        yield run[0], run[-1]


def _chunks(stats: list[CycleStatistics], weights, chunk: int, compute,
            slots=None) -> Iterator[tuple[list, np.ndarray]]:
    """Blocks (keys, values [k, ..., R]) of ``compute(stats_e, weights, lo, hi)`` → [(keys, values)] over chunks of
    ``chunk`` slots (all systems of a slot in the same chunk, so that skill ratios pair), averaged over the
    evaluations."""
    weights = np.asarray(weights, np.float64)
    if weights.ndim != 2 or weights.shape[1] != len(stats[0].inits):
        raise ValueError(f"bootstrap: weights must be [R, {len(stats[0].inits)}] (one column per cycle); "
                         f"got {weights.shape}")
    wanted = None if slots is None else set(slots)
    every = sorted({s for st in stats for s in st.slots if wanted is None or s in wanted}, key=_slot_order)
    local = [{s: i for i, s in enumerate(st.slots)} for st in stats]
    for start in range(0, len(every), max(int(chunk), 1)):
        part = every[start:start + chunk]
        results = []
        for st, index in zip(stats, local):
            ids = sorted(index[s] for s in part if s in index)
            # each run of consecutive slot indices at once: with ``slots`` the slots between them are not computed
            blocks = [b for lo, hi in _runs(ids) for b in compute(st, weights, lo, hi)]
            blocks = [(keys, values) for keys, values in blocks if keys]
            if blocks:
                results.append(blocks)
        if len(results) == 1:
            yield from results[0]
        elif results:  # several evaluations: one block each, averaged by key
            yield _average([(sum((keys for keys, _ in blocks), []), np.concatenate([v for _, v in blocks]))
                            for blocks in results])


def pool(stats, weights, *, fair_crps: bool = True, slots: Optional[Iterable[tuple]] = None,
         chunk: int = 256) -> dict[tuple, np.ndarray]:
    """Every score under each resample: score key → values [R] (R = rows of ``weights`` [R, n]).

    ``stats`` is one :class:`CycleStatistics` or a sequence of them with the same cycles (averaged, module
    docstring); ``weights`` are cycle counts (:func:`resample_counts`; ``np.ones((1, n))`` gives the pooled point
    value of the tables); ``slots`` restricts to some (variable, level, lead); ``fair_crps`` picks the CRPS of the
    ensembles as ``evaluation.fair_crps`` does.
    """
    stats = _as_list(stats)
    compute = lambda st, w, lo, hi: _scores(_pool_quantities(st, w, lo, hi), st.members, fair_crps)  # noqa: E731
    out = {}
    for keys, values in _chunks(stats, weights, chunk, compute, slots):
        out.update(zip(keys, values))
    return out


def score_intervals(stats, weights, confidence: float, *, fair_crps: bool = True,
                    chunk: int = 256) -> dict[tuple, tuple[float, float]]:
    """score key → (low, high): the percentile interval of every score over the resamples ``weights``."""
    stats = _as_list(stats)
    compute = lambda st, w, lo, hi: _scores(_pool_quantities(st, w, lo, hi), st.members, fair_crps)  # noqa: E731
    out = {}
    for keys, values in _chunks(stats, weights, chunk, compute):
        low, high = _row_intervals(values, confidence)
        out.update(zip(keys, zip(low.tolist(), high.tolist())))
    return out


def _binned(st: CycleStatistics, weights, lo: int, hi: int, quantity: str) -> list[tuple[list, np.ndarray]]:
    """[(keys, [k, bins, R])]: per bin the observed frequency Σ o / n (``reliability``: count, Σ p, Σ o) or the RMSE
    of the ensemble mean sqrt(Σ w e² / Σ w) (``spread_error``: count, Σ w, Σ w s², Σ w e²); NaN where the resample
    has no point in the bin, and for the bins empty in every cycle (not computed)."""
    num, den = {"reliability": (2, 0), "spread_error": (3, 1)}.get(quantity, (None, None))
    if num is None:
        raise ValueError(f"bin_intervals: quantity {quantity!r} is not binned (reliability or spread_error)")
    q = st.quantities.get(quantity)
    a, b = (0, 0) if q is None else (np.searchsorted(q.slot, lo, "left"), np.searchsorted(q.slot, hi, "right"))
    if a == b:
        return []
    x = q.values[:, a:b][:, :, [num, den]]  # [n, k, 2, bins]
    filled = x[:, :, 1].sum(axis=0) > 0  # [k, bins]: a point in some cycle
    out = np.full(filled.shape + (weights.shape[0],), np.nan)  # [k, bins, R]
    sums = np.tensordot(np.moveaxis(x, 2, -1)[:, filled], weights, axes=(0, 1))  # [f, 2, R]: the bins with points
    ratio = _div(sums[:, 0], sums[:, 1])
    out[filled] = ratio if quantity == "reliability" else np.sqrt(ratio)
    return [(list(q.keys[a:b]), out)]


def bin_intervals(stats, weights, quantity: str, confidence: float,
                  chunk: int = 64) -> dict[tuple, tuple[np.ndarray, np.ndarray]]:
    """Per-bin intervals: key (system, variable, level, lead, threshold, window) → (low [bins], high [bins]) of the
    observed frequency (``reliability``) or of the ensemble-mean RMSE (``spread_error``) in each bin."""
    stats = _as_list(stats)
    out = {}
    for keys, values in _chunks(stats, weights, chunk, lambda st, w, lo, hi: _binned(st, w, lo, hi, quantity)):
        k, bins, r = values.shape
        low, high = _row_intervals(values.reshape(k * bins, r), confidence)
        out.update((key, (low[i * bins:(i + 1) * bins], high[i * bins:(i + 1) * bins])) for i, key in enumerate(keys))
    return out


def binned_sums(stats, weights, quantity: str, system: str, variable: str, level: Optional[float],
                threshold: Optional[float] = None) -> list[np.ndarray]:
    """A binned quantity (``reliability``: count, Σ p, Σ o; ``spread_error``: count, Σ w, Σ w s², Σ w e²) of one
    system and field, summed over every lead, under each resample: one array [R, components, bins] per evaluation
    in ``stats`` (``weights`` [R, n]; np.ones((1, n)) gives the pooled sums). Empty (zeros) where the field has no
    such quantity."""
    out = []
    for st in _as_list(stats):
        q = st.quantities.get(quantity)
        cols = [] if q is None else [j for j, k in enumerate(q.keys) if k[0] == system and k[1] == variable
                                     and k[2] == level and (threshold is None or k[4] == threshold)]
        if not cols:
            shape = (weights.shape[0],) + (q.values.shape[2:] if q is not None else (0, 0))
            out.append(np.zeros(shape))
            continue
        x = q.values[:, cols].sum(axis=1)  # [n, components, bins]
        out.append(np.tensordot(weights, x, axes=(1, 0)))  # [R, components, bins]
    return out
