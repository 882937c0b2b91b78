"""Time grids for the reverse-time solvers (DPM-Solver, Lu et al. 2022, §3.3 and App. D.1).

A grid runs from ``t_start`` (default 1 = τ_T) down to ``t_end`` (default 1/T = τ_1 for a discrete schedule) in
``steps`` intervals, i.e. ``steps + 1`` points:

* ``logSNR``: uniform in λ_t (half log-SNR), t recovered with ``inverse_lambda``;
* ``time_uniform``: uniform in t;
* ``time_quadratic``: uniform in sqrt(t), i.e. finer near t_end.
"""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp

from def_jax.diffusion.schedules import VPSchedule

SPACINGS = ("logSNR", "time_uniform", "time_quadratic")


def resolve_time_range(schedule: VPSchedule, t_start: Optional[float], t_end: Optional[float]) -> tuple[float, float]:
    """Defaults and checks for the integration interval: t_start = 1, t_end = 1/T; need 0 < t_end < t_start <= 1."""
    t_start = 1.0 if t_start is None else float(t_start)
    t_end = schedule.t_min if t_end is None else float(t_end)
    if not 0.0 < t_end < t_start <= 1.0:
        raise ValueError(f"need 0 < t_end < t_start <= 1, got t_start={t_start}, t_end={t_end}")
    return t_start, t_end


def time_grid(schedule: VPSchedule, steps: int, spacing: str, t_start: float, t_end: float) -> jnp.ndarray:
    """Decreasing continuous times t_0 = t_start > … > t_steps = t_end. Shape [steps + 1]."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if spacing == "logSNR":
        lam = jnp.linspace(schedule.marginal_lambda(t_start), schedule.marginal_lambda(t_end), steps + 1)
        ts = schedule.inverse_lambda(lam)
    elif spacing == "time_uniform":
        ts = jnp.linspace(t_start, t_end, steps + 1)
    elif spacing == "time_quadratic":
        ts = jnp.linspace(t_start**0.5, t_end**0.5, steps + 1) ** 2
    else:
        raise ValueError(f"unknown time spacing {spacing!r}; expected one of {', '.join(SPACINGS)}")
    # Pin the end points exactly (inverse_lambda∘marginal_lambda and sqrt² are exact only to rounding).
    return ts.at[0].set(t_start).at[-1].set(t_end)
