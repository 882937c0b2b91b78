"""Valid forecast windows over the store's time axis (pure NumPy).

A window of ``length = history + lead_steps`` slots starting at store time index ``i`` covers the slots
``i, i + s, …, i + (length − 1) s`` (``s`` = ``stride``, store steps per forecaster step; 1 when the forecaster's
Δt is the store's). It is valid when every one of its slots

* is written (``time_status == 1``; missing slots (0) and failed ones (2) exclude every window containing them),
* lies inside the split's period (both ends inclusive), so no window crosses a split boundary,
* is exactly ``s · dt`` after the previous one (the store's axis is regular by schema; checked anyway).

Splits (train/val/test) are disjoint periods; :func:`split_windows` refuses overlapping periods, so a validation window
can never contain a training time and vice versa.
"""

from __future__ import annotations

from typing import Mapping, Optional, Union

import numpy as np

from def_jax.errors import UserError

WRITTEN = 1  # def_jax.data.schema.WRITTEN (not imported: schema pulls in xarray; this module stays NumPy-only)
Period = tuple[np.datetime64, np.datetime64]
PeriodLike = Union[str, Period]


def as_period(period: PeriodLike, what: str = "period") -> Period:
    """A ``(start, end)`` pair of ``datetime64[ns]`` from ``START:END`` text or a pair."""
    if isinstance(period, str):
        from def_jax.data.schema import parse_period  # lazy: schema imports xarray

        return parse_period(period, what)
    start, end = (np.datetime64(p, "ns") for p in period)
    if end < start:
        raise UserError(f"{what} {format_period((start, end))}: END is before START")
    return start, end


def format_period(period: Optional[Period]) -> str:
    """``START:END`` to the hour (``None`` → ``all``)."""
    if period is None:
        return "all"
    return ":".join(str(np.datetime64(p, "h")) for p in period)


def infer_dt(times: np.ndarray) -> np.timedelta64:
    """The store's time step: the smallest positive spacing of ``times`` [T] (the axis is regular by schema)."""
    diffs = np.diff(np.asarray(times, "datetime64[ns]"))
    diffs = diffs[diffs > np.timedelta64(0, "ns")]
    if diffs.size == 0:
        raise UserError("store time axis: fewer than two distinct times; cannot infer its step (give dt_hours)")
    return diffs.min()


def valid_window_starts(times: np.ndarray, status: np.ndarray, length: int, *, period: Optional[PeriodLike] = None,
                        stride: int = 1, dt: Optional[np.timedelta64] = None) -> np.ndarray:
    """Store time indices ``i`` whose window of ``length`` slots (spaced ``stride``) is valid (module docstring).

    Args:
      times: [T] datetime64, the store's ``time`` coordinate.
      status: [T] int, the store's ``time_status`` (1 = written).
      length: slots per window, ``history + lead_steps`` (≥ 1).
      period: only slots inside ``(start, end)`` (inclusive) count; ``None`` = the whole store.
      stride: store steps between consecutive window slots (≥ 1).
      dt: the store's step; inferred from ``times`` if not given.

    Returns:
      [N] int64 window starts, increasing.
    """
    if length < 1 or stride < 1:
        raise UserError(f"window length ({length}) and stride ({stride}) must be ≥ 1")
    times = np.asarray(times, "datetime64[ns]")  # [T]
    status = np.asarray(status)  # [T]
    if times.shape != status.shape or times.ndim != 1:
        raise UserError(f"time {times.shape} and time_status {status.shape} must be 1-D of the same length")
    ok = status == WRITTEN  # [T]
    if period is not None:
        start, end = as_period(period)
        ok &= (times >= start) & (times <= end)
    span = (length - 1) * stride  # store steps from the first to the last slot
    num = times.size - span
    if num <= 0:
        return np.zeros(0, np.int64)
    if dt is None:
        dt = infer_dt(times) if times.size > 1 else np.timedelta64(1, "h")
    step = np.timedelta64(dt, "ns") * stride
    valid = ok[:num].copy()  # [N]: slot 0 of each window
    for j in range(1, length):
        lo = j * stride
        valid &= ok[lo:lo + num]
        valid &= (times[lo:lo + num] - times[lo - stride:lo - stride + num]) == step
    return np.flatnonzero(valid).astype(np.int64)


def first_overlap(periods: Mapping[str, Period]) -> Optional[tuple[str, str]]:
    """The first two of ``periods`` (split name → period) that share a time, or None."""
    names = list(periods)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            (s1, e1), (s2, e2) = periods[names[a]], periods[names[b]]
            if s1 <= e2 and s2 <= e1:
                return names[a], names[b]
    return None


def overlap_message(periods: Mapping[str, Period], a: str, b: str) -> str:
    return (f"data.{a}_period {format_period(periods[a])} overlaps data.{b}_period {format_period(periods[b])}: "
            f"splits must be disjoint (no leakage between them)")


def check_disjoint(periods: Mapping[str, Period]) -> None:
    """A UserError naming the first two of ``periods`` that overlap."""
    pair = first_overlap(periods)
    if pair:
        raise UserError(overlap_message(periods, *pair))


def split_windows(times: np.ndarray, status: np.ndarray, periods: Mapping[str, PeriodLike], *, history: int,
                  lead_steps: int = 1, stride: int = 1, dt: Optional[np.timedelta64] = None,
                  allow_empty: bool = False) -> dict[str, np.ndarray]:
    """Valid window starts of each split, e.g. ``periods = {"train": "2024-06-01T00:2024-06-10T23", ...}``.

    Raises a :class:`UserError` when periods overlap, and (unless ``allow_empty``) when a split has no valid window,
    naming the split, its period and what a window needs.
    """
    parsed = {name: as_period(p, f"data.{name}_period") for name, p in periods.items()}
    check_disjoint(parsed)
    out = {name: valid_window_starts(times, status, history + lead_steps, period=p, stride=stride, dt=dt)
           for name, p in parsed.items()}
    if not allow_empty:
        for name, starts in out.items():
            if starts.size == 0:
                raise empty_split_error(name, parsed[name], times, status, history, lead_steps, stride)
    return out


def window_counts(splits: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Number of valid windows per split."""
    return {name: int(np.size(starts)) for name, starts in splits.items()}


def empty_split_error(split: str, period: Optional[Period], times: np.ndarray, status: np.ndarray, history: int,
                      lead_steps: int, stride: int = 1) -> UserError:
    """The error for a split without any valid window: what it needs and what the store has in that period."""
    times = np.asarray(times, "datetime64[ns]")
    inside = np.ones(times.shape, bool) if period is None else (times >= period[0]) & (times <= period[1])
    written = int(np.sum(inside & (np.asarray(status) == WRITTEN)))
    name = f"split {split!r}" if split else "the selection"
    step = f", every {stride} store steps" if stride > 1 else ""
    return UserError(
        f"{name} (period {format_period(period)}) has no valid window: a sample needs {history + lead_steps} "
        f"consecutive written time steps{step} (history {history} + lead_steps {lead_steps}); the store has "
        f"{int(inside.sum())} slots in that period, {written} of them written (time_status == 1)")
