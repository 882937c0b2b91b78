"""The DEF networks on top of the U-Net: the forecaster G_φ and the denoiser ε_θ (DEF_METHOD §3, §4, §6).

Inputs are the loader's batches (docs/DATA.md), channels last:

* **Forecaster** G_φ: the last ``history`` = k states [B, k, H, W, C_s], the forcings at those k times
  [B, k, H, W, C_f], the time features of the k input times and of the target time [B, k+1, 4], and the statics
  [B, H, W, C_st], concatenated along channels → the next state [B, H, W, C_s] (optionally as an increment added to
  the last input state).
* **Denoiser** ε_θ: the noisy state x_τ [B, H, W, C_s], the diffusion step τ (through the sinusoidal embedding) and a
  condition [B, H, W, C_c] → the noise ε [B, H, W, C_s]; its input is ``concat(condition, x_τ)`` (DEF_METHOD §4).
  DEF's perturbation model is conditioned on a state (C_c = C_s, :func:`def_condition`); the direct generative mode
  (§6) on the past k states, forcings, time features and statics, and in the residual variant also on G_φ(X_t)
  (:func:`direct_condition`). The null condition ∅ of classifier-free guidance is all zeros.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from def_jax.diffusion.schedules import make_schedule
from def_jax.diffusion.spectral import SpectralPrior
from def_jax.models.layers import timestep_embedding
from def_jax.models.unet import UNet, UNetConfig

TIME_FEATURES = 4  # sin/cos hour-of-day, sin/cos day-of-year


@dataclasses.dataclass(frozen=True)
class Channels:
    """Channel counts of the store's catalogue (state, forcing, static incl. lat/lon) and of time features."""

    state: int
    forcing: int
    static: int
    time: int = TIME_FEATURES

    def forecaster_inputs(self, history: int) -> int:
        return history * (self.state + self.forcing) + (history + 1) * self.time + self.static

    def direct_condition(self, history: int, residual: bool) -> int:
        return self.forecaster_inputs(history) + (self.state if residual else 0)


def _stack_time(x: jax.Array) -> jax.Array:
    """[B, T, H, W, C] → [B, H, W, T·C] (time-major channel blocks)."""
    b, t, h, w, c = x.shape
    return jnp.moveaxis(x, 1, 3).reshape(b, h, w, t * c)


def _broadcast_time_features(tf: jax.Array, h: int, w: int) -> jax.Array:
    """[B, T, F] → [B, H, W, T·F] constant over space."""
    b = tf.shape[0]
    return jnp.broadcast_to(tf.reshape(b, 1, 1, -1), (b, h, w, tf.shape[1] * tf.shape[2]))


def forecaster_input(states: jax.Array, forcings: jax.Array, time_features: jax.Array,
                     statics: jax.Array) -> jax.Array:
    """Channel concatenation of G_φ's inputs.

    Args:
      states: [B, k, H, W, C_s]; forcings: [B, k, H, W, C_f]; time_features: [B, k+1, F]; statics: [B, H, W, C_st].
    Returns:
      [B, H, W, k·C_s + k·C_f + (k+1)·F + C_st].
    """
    _, _, h, w, _ = states.shape
    return jnp.concatenate([_stack_time(states), _stack_time(forcings),
                            _broadcast_time_features(time_features, h, w), statics], axis=-1)


class Forecaster(nnx.Module):
    """G_φ: one Δt step. See the module docstring for the inputs."""

    def __init__(self, channels: Channels, history: int, config: UNetConfig, *, predict_increment: bool,
                 rngs: nnx.Rngs):
        self.history = history
        self.predict_increment = predict_increment
        self.unet = UNet(channels.forecaster_inputs(history), channels.state, config, time_conditioned=False,
                         rngs=rngs)

    def __call__(self, states: jax.Array, forcings: jax.Array, time_features: jax.Array, statics: jax.Array, *,
                 deterministic: bool = True, rngs: Optional[jax.Array] = None) -> jax.Array:
        out = self.unet(forecaster_input(states, forcings, time_features, statics), deterministic=deterministic,
                        rngs=rngs)  # [B, H, W, C_s]
        return states[:, -1] + out if self.predict_increment else out


def def_condition(state: jax.Array) -> jax.Array:
    """DEF's perturbation model is conditioned on the state itself: c = x (DEF_METHOD §4)."""
    return state


def direct_condition(states: jax.Array, forcings: jax.Array, time_features: jax.Array, statics: jax.Array,
                     forecast: Optional[jax.Array] = None) -> jax.Array:
    """The direct mode's condition (DEF_METHOD §6): G_φ's inputs, plus G_φ(X_t) [B, H, W, C_s] for the residual
    variant."""
    c = forecaster_input(states, forcings, time_features, statics)
    return c if forecast is None else jnp.concatenate([c, forecast], axis=-1)


class Denoiser(nnx.Module):
    """ε_θ(x_τ, τ, c): concat(c, x_τ) and the step τ → ε.

    With ``linear_skip`` the U-Net's output is added to a τ-modulated linear path,

        ε = U-Net(concat(c, x_τ), τ) + a(τ) ⊙ x_τ + b(τ) ⊙ P c,

    a(τ), b(τ) ∈ R^{C_s} from an MLP of the step embedding (last layer zero-initialized), P a 1×1 convolution
    (identity-initialized when C_c = C_s). For DEF's condition c = x_0 the exact answer ε = (x_τ − α_τ c)/σ_τ is this
    path with a = 1/σ_τ, b = −α_τ/σ_τ, P = I, so the network only has to learn the rest. Without it, the U-Net must
    carry all C_s independent noise channels through its first level: a width below C_s (the demo's 16 against 73
    channels) cannot represent ε, and the ε-loss stalls near 0.85 (docs/TRAINING.md).

    ``skip_coefficients="exact"`` (DEF mode, C_c = C_s) replaces the learned a, b, P by the schedule's values, per
    sample, and gives the null condition its own linear path:

        ε = U-Net(concat(c, x_τ), τ) + (x_τ − α_τ c)/σ_τ   where c is a state,
        ε = U-Net(concat(∅, x_τ), τ) + σ_τ x_τ             where c = ∅ (all zeros, as in training and guidance),

    the first being the exact solution of DEF's objective (c = x_0) and the second the best linear ε-estimate for
    zero-mean, unit-variance white data (E[ε | x_τ] = σ_τ x_τ). The learned a(τ) must reach 1/σ_τ ≈ 155 at τ = 1 and
    is shared by both cases; on the demo its unconditional ε-loss stayed above 1 (worse than predicting 0) for τ ≤ 250.

    ``null_prior`` (a :class:`~def_jax.diffusion.spectral.SpectralPrior`, with the exact skip) replaces σ_τ x_τ by
    the exact ε of a stationary Gaussian climate with the training states' cross-channel power spectrum,
    (x_τ − α_τ W_τ(x_τ))/σ_τ with W_τ its Wiener filter: the best linear ε-estimate for data with those second
    moments, so that the U-Net's unconditional job is what is not Gaussian (docs/TRAINING.md).
    """

    def __init__(self, state_channels: int, condition_channels: int, config: UNetConfig, *, rngs: nnx.Rngs,
                 linear_skip: bool = False, skip_coefficients: str = "learned", schedule: str = "cosine",
                 num_steps: int = 1000, null_prior: Optional[SpectralPrior] = None):
        if skip_coefficients not in ("learned", "exact"):
            raise ValueError(f"skip_coefficients {skip_coefficients!r}: expected 'learned' or 'exact'")
        self.exact_skip = bool(linear_skip) and skip_coefficients == "exact"
        if self.exact_skip and condition_channels != state_channels:
            raise ValueError(f"exact skip coefficients need DEF's condition (the state, {state_channels} channels); "
                             f"got {condition_channels} condition channels")
        if null_prior is not None and not self.exact_skip:
            raise ValueError("a spectral null prior needs the exact skip coefficients (linear_skip, 'exact')")
        if null_prior is not None and null_prior.channels != state_channels:
            raise ValueError(f"spectral null prior of {null_prior.channels} channels for {state_channels} state "
                             f"channels")
        self.null_prior = nnx.static(null_prior)  # static: a constant of the network's structure, not a parameter
        self.schedule_spec = (str(schedule), int(num_steps))  # static: rebuilt when traced
        self.condition_channels = condition_channels
        self.unet = UNet(condition_channels + state_channels, state_channels, config, time_conditioned=True,
                         rngs=rngs)
        self.linear_skip = linear_skip
        if linear_skip and not self.exact_skip:
            e = config.time_embedding_dim
            self.skip_mlp1 = nnx.Linear(e, e, rngs=rngs)
            self.skip_mlp2 = nnx.Linear(e, 2 * state_channels, kernel_init=nnx.initializers.zeros, rngs=rngs)
            init = (nnx.initializers.constant(jnp.eye(state_channels)[None, None])
                    if condition_channels == state_channels else nnx.initializers.lecun_normal())
            self.skip_cond = nnx.Conv(condition_channels, state_channels, (1, 1), use_bias=False, kernel_init=init,
                                      rngs=rngs)

    def __call__(self, x_tau: jax.Array, tau: jax.Array, condition: jax.Array, *, deterministic: bool = True,
                 rngs: Optional[jax.Array] = None) -> jax.Array:
        """x_tau [B, H, W, C_s], tau scalar or [B] (the discrete step τ ∈ [0, T], fractional allowed),
        condition [B, H, W, C_c] → ε [B, H, W, C_s]."""
        eps = self.unet(jnp.concatenate([condition.astype(x_tau.dtype), x_tau], axis=-1), tau,
                        deterministic=deterministic, rngs=rngs)  # [B, H, W, C_s]
        if not self.linear_skip:
            return eps
        if self.exact_skip:
            return eps + self._exact_skip(x_tau.astype(jnp.float32), tau, condition.astype(jnp.float32))
        b, c_s = x_tau.shape[0], x_tau.shape[-1]
        t = jnp.broadcast_to(jnp.asarray(tau, jnp.float32), (b,))
        ab = self.skip_mlp2(jax.nn.silu(self.skip_mlp1(timestep_embedding(t, self.skip_mlp1.in_features))))  # [B, 2C]
        a, bb = ab[:, None, None, :c_s], ab[:, None, None, c_s:]
        return eps + a * x_tau.astype(jnp.float32) + bb * self.skip_cond(condition.astype(jnp.float32))

    def _exact_skip(self, x_tau: jax.Array, tau: jax.Array, condition: jax.Array) -> jax.Array:
        """(x_τ − α_τ c)/σ_τ where the condition is a state; σ_τ x_τ (or the spectral prior's ε) where it is ∅:
        [B, H, W, C_s]."""
        schedule = make_schedule(*self.schedule_spec)
        t = jnp.broadcast_to(jnp.asarray(tau, jnp.float32), (x_tau.shape[0],)) / schedule.num_steps  # [B]
        a = schedule.marginal_alpha(t).astype(jnp.float32)  # [B]
        s = schedule.marginal_std(t).astype(jnp.float32)
        alpha, sigma = a[:, None, None, None], s[:, None, None, None]  # [B, 1, 1, 1]
        has_condition = jnp.any(condition != 0, axis=(1, 2, 3), keepdims=True)  # [B, 1, 1, 1]
        null = sigma * x_tau if self.null_prior is None else self.null_prior.eps(x_tau, a, s)
        return jnp.where(has_condition, (x_tau - alpha * condition) / sigma, null)
