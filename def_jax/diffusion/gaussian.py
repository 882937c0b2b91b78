"""Exact quantities for Gaussian data x_0 ~ N(μ, diag(s²)), the reference problem of the samplers.

The VP marginal is p_t = N(α_t μ, α_t² s² + σ_t²), so the optimal noise prediction is

    ε*(x, t) = −σ_t ∇log p_t(x) = σ_t (x − α_t μ) / (α_t² s² + σ_t²),

and the probability-flow ODE is linear in x: its flow from t_a to t_b keeps the standardized value, i.e.
x_b = α_b μ + v_b (x_a − α_a μ)/v_a with v_t = sqrt(α_t² s² + σ_t²). Used by the demo and the sampler benchmark;
the tests derive the same formulas independently in float64 NumPy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from def_jax.diffusion.schedules import VPSchedule


def gaussian_eps_fn(schedule: VPSchedule, mean: jax.Array, std: jax.Array):
    """ε*(x, t) for data N(mean, std²) (broadcast against x)."""

    def eps_fn(x: jax.Array, t: jax.Array) -> jax.Array:
        a, s = schedule.marginal_alpha(t), schedule.marginal_std(t)
        return (s * (x - a * mean) / (a**2 * std**2 + s**2)).astype(x.dtype)

    return eps_fn


def probability_flow(schedule: VPSchedule, x: jax.Array, t_from: float, t_to: float, mean, std) -> jax.Array:
    """The exact probability-flow ODE solution at ``t_to`` starting from ``x`` at ``t_from``."""
    a0, s0 = schedule.marginal_alpha(t_from), schedule.marginal_std(t_from)
    a1, s1 = schedule.marginal_alpha(t_to), schedule.marginal_std(t_to)
    v0 = jnp.sqrt(a0**2 * std**2 + s0**2)
    v1 = jnp.sqrt(a1**2 * std**2 + s1**2)
    return a1 * mean + v1 * (x - a0 * mean) / v0
