"""Training objectives of the denoiser ε_θ (DEF_METHOD §4), pure functions.

* ε-prediction loss (Ho et al. 2020, eq. 14, "L_simple"): ``E_{τ, x_0, ε} ‖ε_θ(x_τ, τ, c) − ε‖²`` with
  ``x_τ = sqrt(ᾱ_τ) x_0 + sqrt(1 − ᾱ_τ) ε``, τ ~ U{1..T};
* classifier-free guidance training (Ho & Salimans 2022): with probability ``p_uncond`` per sample the condition is
  replaced by the null condition ∅ = 0.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from def_jax.diffusion.schedules import VPSchedule


def epsilon_loss(eps_pred: jax.Array, eps: jax.Array, weights: Optional[jax.Array] = None) -> jax.Array:
    """Mean of w · (ε_θ − ε)² over all elements.

    Args:
      eps_pred, eps: [B, ...] (e.g. [B, H, W, C]).
      weights: optional, broadcastable to ``eps`` (per-channel [C], area [H, W, 1], per-sample [B, 1, 1, 1]). The mean
        is normalized by the mean weight, so weights rescale contributions without changing the loss scale.
    Returns:
      A scalar in float32.
    """
    sq = jnp.square(eps_pred.astype(jnp.float32) - eps.astype(jnp.float32))
    if weights is None:
        return jnp.mean(sq)
    w = jnp.broadcast_to(jnp.asarray(weights, jnp.float32), sq.shape)
    return jnp.sum(w * sq) / jnp.sum(w)


def sample_timesteps(key: jax.Array, batch: int, num_steps: int) -> jax.Array:
    """τ ~ Uniform{1..T}, int32 [batch]."""
    return jax.random.randint(key, (batch,), 1, num_steps + 1, dtype=jnp.int32)


def noisy_sample(key: jax.Array, schedule: VPSchedule, x0: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Draw τ and ε and return ``(x_τ, τ, ε)`` for a batch x0 [B, ...] (the inputs and target of the ε-loss)."""
    k_tau, k_eps = jax.random.split(key)
    tau = sample_timesteps(k_tau, x0.shape[0], schedule.num_steps)  # [B]
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    return schedule.add_noise(x0, tau, eps), tau, eps


def apply_null_condition(condition: jax.Array, dropped: jax.Array,
                         null_condition: Optional[jax.Array] = None) -> jax.Array:
    """The condition [B, ...] with the samples where ``dropped`` [B] is True replaced by ∅ (zeros by default)."""
    null = jnp.zeros_like(condition) if null_condition is None else jnp.broadcast_to(null_condition, condition.shape)
    return jnp.where(dropped.reshape((-1,) + (1,) * (condition.ndim - 1)), null, condition)


def condition_dropout(
    key: jax.Array, condition: jax.Array, p_uncond: float, null_condition: Optional[jax.Array] = None
) -> tuple[jax.Array, jax.Array]:
    """Replace the condition of each sample by ∅ (zeros by default) with probability ``p_uncond``.

    Args:
      condition: [B, ...].
    Returns:
      ``(condition', dropped)`` with ``dropped`` a bool [B] mask of the samples that got ∅.
    """
    dropped = jax.random.bernoulli(key, p_uncond, (condition.shape[0],))  # [B]
    return apply_null_condition(condition, dropped, null_condition), dropped
