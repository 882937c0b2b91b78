"""Variance-preserving noise schedules, discrete (training) and continuous (sampling).

Forward process (DEF_METHOD §4; Ho et al. 2020, eq. 4):

    x_τ = sqrt(ᾱ_τ) x_0 + sqrt(1 − ᾱ_τ) ε,    ε ~ N(0, I),   τ ∈ {1, …, T}.

Two β schedules are built in:

* ``cosine`` (Nichol & Dhariwal 2021, eq. 17): ``ᾱ(τ) = f(τ)/f(0)``, ``f(τ) = cos²(((τ/T) + s)/(1 + s) · π/2)``,
  ``β_τ = min(1 − ᾱ(τ)/ᾱ(τ−1), β_max)`` with s = 0.008, β_max = 0.999, and ``alphas_cumprod = cumprod(1 − β)``
  (the clipping makes the last value differ from the closed form, exactly as in the reference implementation);
* ``linear`` (Ho et al. 2020): β linear from 1e-4 to 0.02 over T steps.

For continuous-time solvers the discrete schedule is extended to t ∈ (0, 1] exactly as DPM-Solver's "discrete"
``NoiseScheduleVP`` does (Lu et al. 2022, App. D): the discrete step n = τ − 1 sits at ``t_n = (n + 1)/T`` and
``log α_t`` is interpolated piecewise-linearly between those points (linearly extrapolated below t = 1/T). In
DPM-Solver's notation

    α_t = sqrt(ᾱ(t)),   σ_t = sqrt(1 − α_t²),   λ_t = log(α_t / σ_t)   (half log-SNR),

and ``inverse_lambda`` inverts λ by interpolating t against log α, which is monotone. Because continuous
``t = τ/T`` lands on the training grid, a denoiser trained on discrete τ is evaluated at ``τ = T·t`` (see
:meth:`VPSchedule.discrete_timestep`), so discrete training and continuous sampling agree.

All methods are pure ``jax.numpy`` and safe under ``jit`` and ``vmap``: a :class:`VPSchedule` is a pytree whose leaves are
the schedule arrays, so it can be passed to jitted functions as an ordinary argument.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = Any  # jax.Array or np.ndarray

SCHEDULES = ("cosine", "linear")


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """β_τ of the cosine schedule (Nichol & Dhariwal 2021, eq. 17), τ = 1..T, float64. Shape [T]."""

    def f(tau: np.ndarray) -> np.ndarray:
        return np.cos((tau / num_steps + s) / (1.0 + s) * math.pi / 2.0) ** 2

    tau = np.arange(1, num_steps + 1, dtype=np.float64)
    return np.minimum(1.0 - f(tau) / f(tau - 1.0), max_beta)


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """β_τ linear in τ from ``beta_start`` to ``beta_end`` (Ho et al. 2020), float64. Shape [T]."""
    return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)


def _interp(x: Array, xp: Array, fp: Array) -> Array:
    """Piecewise-linear interpolation through (xp, fp), xp increasing, extrapolating the end segments linearly.

    ``jnp.interp`` clamps outside [xp[0], xp[-1]]; DPM-Solver's ``interpolate_fn`` extrapolates, which matters for
    t < 1/T (e.g. ``t_end`` below the first training step) in ``marginal_log_mean_coeff``, which does the same on
    its uniform grid.
    """
    x = jnp.asarray(x)
    i = jnp.clip(jnp.searchsorted(xp, x, side="right") - 1, 0, xp.shape[0] - 2)
    x0, x1 = xp[i], xp[i + 1]
    y0, y1 = fp[i], fp[i + 1]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


@dataclasses.dataclass(frozen=True)
class VPSchedule:
    """A discrete VP schedule and its continuous-time extension (a JAX pytree).

    Attributes:
      name: ``"cosine"`` or ``"linear"`` (static).
      betas: β_τ for τ = 1..T, float64 NumPy when built by :func:`make_schedule`. Shape [T].
      alphas_cumprod: ᾱ_τ = Π_{k≤τ}(1 − β_k). Shape [T].
      log_alpha: log α at the grid points t_n = (n + 1)/T, i.e. ½ log ᾱ. Shape [T].
    """

    name: str
    betas: Array
    alphas_cumprod: Array
    log_alpha: Array

    @property
    def num_steps(self) -> int:
        """T, the number of discrete diffusion steps."""
        return self.betas.shape[0]

    @property
    def t_grid(self) -> Array:
        """Continuous times of the discrete steps, t_n = (n + 1)/T. Shape [T]."""
        n = self.num_steps
        return jnp.arange(1, n + 1, dtype=jnp.asarray(self.log_alpha).dtype) / n

    @property
    def t_min(self) -> float:
        """1/T: the continuous time of τ = 1, DPM-Solver's default end time for discrete schedules."""
        return 1.0 / self.num_steps

    # --- continuous-time VP interface (names as in Lu et al. 2022) ----------------------------------------------
    def marginal_log_mean_coeff(self, t: Array) -> Array:
        """log α_t, piecewise-linear in t between the discrete steps. Any shape.

        The grid is uniform, so the segment is found by index arithmetic, u = T·t − 1 (exact at the grid points).
        """
        log_alpha = jnp.asarray(self.log_alpha)
        u = jnp.asarray(t) * self.num_steps - 1.0  # fractional step index
        i = jnp.clip(jnp.floor(u), 0, self.num_steps - 2).astype(jnp.int32)
        return log_alpha[i] + (u - i) * (log_alpha[i + 1] - log_alpha[i])

    def marginal_alpha(self, t: Array) -> Array:
        """α_t = exp(log α_t)."""
        return jnp.exp(self.marginal_log_mean_coeff(t))

    def marginal_std(self, t: Array) -> Array:
        """σ_t = sqrt(1 − α_t²)."""
        return jnp.sqrt(-jnp.expm1(2.0 * self.marginal_log_mean_coeff(t)))

    def marginal_lambda(self, t: Array) -> Array:
        """λ_t = log α_t − log σ_t (half log-SNR), strictly decreasing in t."""
        log_alpha = self.marginal_log_mean_coeff(t)
        log_sigma = 0.5 * jnp.log(-jnp.expm1(2.0 * log_alpha))
        return log_alpha - log_sigma

    def inverse_lambda(self, lam: Array) -> Array:
        """The t with λ_t = lam: log α = −½ log(1 + e^{−2λ}), then t interpolated against log α."""
        log_alpha = -0.5 * jnp.logaddexp(0.0, -2.0 * jnp.asarray(lam))
        # log_alpha decreases with t; interpolate on the reversed (increasing) arrays.
        return _interp(log_alpha, jnp.asarray(self.log_alpha)[::-1], self.t_grid[::-1])

    # --- discrete helpers ---------------------------------------------------------------------------------------
    def discrete_timestep(self, t: Array) -> Array:
        """The (fractional) discrete step τ = T·t a denoiser trained on τ ∈ {1..T} sees at continuous time t."""
        return jnp.asarray(t) * self.num_steps

    def add_noise(self, x0: Array, tau: Array, noise: Array) -> Array:
        """Forward process x_τ = sqrt(ᾱ_τ) x0 + sqrt(1 − ᾱ_τ) ε for integer τ ∈ {1..T}.

        Args:
          x0: clean samples, [B, ...].
          tau: integer steps, [B].
          noise: ε, same shape as ``x0``.
        """
        log_alpha = jnp.asarray(self.log_alpha)[tau - 1]  # [B], ½ log ᾱ_τ
        log_alpha = log_alpha.reshape(log_alpha.shape + (1,) * (x0.ndim - log_alpha.ndim))
        # sqrt(1 − ᾱ) through expm1: exact to rounding even where ᾱ ≈ 1 (small τ).
        alpha, sigma = jnp.exp(log_alpha), jnp.sqrt(-jnp.expm1(2.0 * log_alpha))
        return (alpha * x0 + sigma * noise).astype(x0.dtype)


jax.tree_util.register_dataclass(
    VPSchedule, data_fields=["betas", "alphas_cumprod", "log_alpha"], meta_fields=["name"]
)


def make_schedule(name: str, num_steps: int = 1000, **kw: float) -> VPSchedule:
    """Build a discrete VP schedule.

    Args:
      name: ``"cosine"`` (keywords ``s=0.008``, ``max_beta=0.999``) or ``"linear"`` (keywords ``beta_start=1e-4``,
        ``beta_end=0.02``).
      num_steps: T, the number of discrete diffusion steps (≥ 2).

    Raises:
      ValueError: unknown name, unknown keyword, or a parameter outside its valid range.
    """
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    if name == "cosine":
        allowed = {"s", "max_beta"}
        _check_kw(name, kw, allowed)
        max_beta = kw.get("max_beta", 0.999)
        if not 0.0 < max_beta < 1.0:
            raise ValueError(f"max_beta must be in (0, 1), got {max_beta}")
        betas = cosine_betas(num_steps, s=kw.get("s", 0.008), max_beta=max_beta)
    elif name == "linear":
        _check_kw(name, kw, {"beta_start", "beta_end"})
        b0, b1 = kw.get("beta_start", 1e-4), kw.get("beta_end", 0.02)
        if not 0.0 < b0 <= b1 < 1.0:
            raise ValueError(f"linear schedule needs 0 < beta_start <= beta_end < 1, got {b0}, {b1}")
        betas = linear_betas(num_steps, beta_start=b0, beta_end=b1)
    else:
        raise ValueError(f"unknown noise schedule {name!r}; expected one of {', '.join(SCHEDULES)}")
    log_abar = np.cumsum(np.log1p(-betas))  # log ᾱ_τ, float64
    return VPSchedule(name=name, betas=betas, alphas_cumprod=np.exp(log_abar), log_alpha=0.5 * log_abar)


def _check_kw(name: str, kw: dict, allowed: set) -> None:
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise ValueError(f"unknown keyword(s) {unknown} for the {name} schedule; allowed: {sorted(allowed)}")
