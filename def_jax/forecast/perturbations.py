"""The field's simple ensembles beside DEF, as pure JAX functions (no models, no I/O): what is added to a state.

Every perturbation is in normalized units and scaled per channel by ``amplitude`` [C] = a scale × the channel's
normalized one-step-difference standard deviation (the store's ``<var>_diff_std / <var>_std``: an hour of weather).

* **gaussian** -- white noise: z ~ N(0, I) at every grid point and channel, times the amplitude.
* **correlated** -- a Gaussian random field per channel with the Gaussian covariance
  ``C(r) = exp(−r² / (2 L²))`` (L in grid points) and unit variance at every point, times the amplitude.
  It is white noise filtered in Fourier space by ``g(k) ∝ exp(−|k|² L² / 4)`` (the square root of the covariance's
  spectral density, Wiener–Khinchin), on a domain padded by 3L on each axis so that the periodic transform does not
  correlate opposite edges; ``g`` is normalized so that the mean of g² over the transform grid is 1, which makes the
  point variance exactly 1 (Parseval). L = 0 is white noise.
* **bred** (Toth & Kalnay 1993) -- a random white perturbation δ is bred over the analyses before the initial time:
  each breeding cycle runs G_φ from the analysis with and without δ and takes the difference, rescaled per channel
  to the amplitude (RMS over the grid), as the next δ. Members come in pairs ±δ (:func:`bred_sign`).
* **lagged** -- member b starts from the analysis ``b · lag`` steps before the initial time and is run by G_φ up to
  it (:func:`lag_steps_of`); member 0 is the analysis itself.

The rollout (:mod:`def_jax.forecast.rollout`) draws each member's noise from its own key, so member b is the same
whatever the ensemble size and however members are spread over devices.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

PERTURBATIONS = ("def", "gaussian", "correlated", "bred", "lagged")
NOISE = ("gaussian", "correlated")  # additive noise, before every G_φ step or at the initial time only
INITIAL = ("bred", "lagged")  # initial states only, by construction


def correlated_filter(shape: tuple[int, int], length: float) -> jax.Array:
    """The Fourier amplitude filter g [H + 2p, W + 2p] (p = ceil(3L)) of :func:`gaussian_random_field`."""
    pad = int(math.ceil(3.0 * length))
    hp, wp = shape[0] + 2 * pad, shape[1] + 2 * pad
    ky = 2.0 * jnp.pi * jnp.fft.fftfreq(hp)  # radians per grid point
    kx = 2.0 * jnp.pi * jnp.fft.fftfreq(wp)
    k2 = ky[:, None] ** 2 + kx[None, :] ** 2  # [Hp, Wp]
    g = jnp.exp(-k2 * length**2 / 4.0)
    return g / jnp.sqrt(jnp.mean(g**2))


def gaussian_random_field(key: jax.Array, shape: tuple[int, int, int], length: float) -> jax.Array:
    """Unit-variance Gaussian random fields with covariance exp(−r²/(2L²)), one per channel: [H, W, C] float32."""
    h, w, c = shape
    if length <= 0:
        return jax.random.normal(key, shape, jnp.float32)
    g = correlated_filter((h, w), length)  # [Hp, Wp]
    pad = (g.shape[0] - h) // 2
    # the transform over the last two axes: XLA:CPU's FFT rejects other layouts under vmap
    white = jax.random.normal(key, (c,) + g.shape, jnp.float32)  # [C, Hp, Wp]
    field = jnp.fft.ifft2(jnp.fft.fft2(white) * g).real[:, pad:pad + h, pad:pad + w]  # [C, H, W]
    return jnp.moveaxis(field, 0, -1).astype(jnp.float32)


def unit_noise(kind: str, key: jax.Array, shape: tuple[int, int, int], length: float = 0.0) -> jax.Array:
    """One member's noise of unit point variance: ``gaussian`` (white) or ``correlated`` (length L grid points)."""
    if kind == "gaussian":
        return jax.random.normal(key, shape, jnp.float32)
    if kind == "correlated":
        return gaussian_random_field(key, shape, length)
    raise ValueError(f"noise {kind!r}: expected one of {NOISE}")


def add_noise(kind: str, x: jax.Array, keys: jax.Array, amplitude: jax.Array, length: float = 0.0) -> jax.Array:
    """x [B, H, W, C] + amplitude [C] × member b's unit noise from keys[b]: [B, H, W, C]."""
    noise = jax.vmap(lambda k: unit_noise(kind, k, x.shape[1:], length))(keys)  # [B, H, W, C]
    return x + (amplitude * noise).astype(x.dtype)


def rescale_rms(delta: jax.Array, target: jax.Array) -> jax.Array:
    """delta [B, H, W, C] rescaled so that each member's and channel's RMS over the grid is target [C]."""
    rms = jnp.sqrt(jnp.mean(jnp.square(delta), axis=(1, 2), keepdims=True))  # [B, 1, 1, C]
    return delta * (target / jnp.maximum(rms, 1e-12))


def bred_sign(member_ids: jax.Array) -> jax.Array:
    """+1 for even members, −1 for odd ones: members 2p and 2p + 1 carry +δ_p and −δ_p. [B] float32."""
    return jnp.where(member_ids % 2 == 0, 1.0, -1.0).astype(jnp.float32)


def lag_steps_of(member_ids: jax.Array, lag: int) -> jax.Array:
    """Steps before the initial time at which lagged member b starts: b · lag. [B] int32."""
    return (member_ids * int(lag)).astype(jnp.int32)
