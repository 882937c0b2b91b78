"""The algebra of the reverse-time solvers, as scalar coefficients of linear combinations.

Every solver step used here maps the current state and a few data predictions ``m = x̂_0(x, t)`` to the next state
linearly:

    x_next = A · x + Σ_k B_k · m_k (+ C · z,  z ~ N(0, I) for the stochastic samplers),

so a solver is fully described by per-step scalars that depend only on the schedule and the time grid. Computing them
up front (vectorized over steps) keeps the ``lax.scan`` bodies to one network call plus a few fused multiply-adds, and
lets one scan body serve warm-up, main and lower-order final steps alike (one copy of the network in the program).

Notation (DPM-Solver++, Lu et al. 2022b, arXiv:2211.01095): α_t, σ_t, λ_t = log(α_t/σ_t); a step from s to t has
``h = λ_t − λ_s > 0`` and ``φ_1(h) = e^{−h} − 1``. All formulas are the "dpmsolver" variants of the reference code.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from def_jax.diffusion.schedules import VPSchedule

# -------------------------------------------------------------------------------------------------------------------
# Multistep DPM-Solver++ (Lu et al. 2022b, Alg. 2 for order 2; App. for order 3)
# -------------------------------------------------------------------------------------------------------------------


def multistep_orders(steps: int, order: int, lower_order_final: bool) -> list[int]:
    """Order used at each of the ``steps`` multistep updates.

    Warm-up: step i (1-based) can use at most i previous data predictions, so order min(order, i). With
    ``lower_order_final`` and fewer than 15 steps (the threshold of diffusers' DPMSolverMultistepScheduler, which the
    DEF authors' stack uses), the last steps drop to order min(order, steps + 1 − i) for stability.
    """
    orders = [min(order, i) for i in range(1, steps + 1)]
    if lower_order_final and steps < 15:
        orders = [min(o, steps + 1 - i) for i, o in enumerate(orders, start=1)]
    return orders


def multistep_coefficients(schedule: VPSchedule, ts: jnp.ndarray, orders: list[int]):
    """Coefficients of x_i = A_i x_{i−1} + Σ_k B_ik m_{i−1−k} for the steps t_{i−1} → t_i, i = 1..N.

    With r_0 = h_{i−1}/h_i, r_1 = h_{i−2}/h_i and D1_0 = (m_0 − m_1)/r_0:
      order 1 (= DDIM):  x_t = (σ_t/σ_s) x − α_t φ_1 m_0
      order 2 (2M):      x_t = (σ_t/σ_s) x − α_t φ_1 m_0 − ½ α_t φ_1 D1_0            (DPM-Solver++ eq. 13 form)
      order 3 (3M):      x_t = (σ_t/σ_s) x − α_t φ_1 m_0 + α_t φ_2 D1 − α_t φ_3 D2
                         with D1_1 = (m_1 − m_2)/r_1, D1 = D1_0 + r_0/(r_0 + r_1) (D1_0 − D1_1),
                         D2 = (D1_0 − D1_1)/(r_0 + r_1), φ_2 = φ_1/h + 1, φ_3 = φ_2/h − ½.

    Args:
      ts: decreasing times, shape [N + 1].
      orders: static order per step, length N.
    Returns:
      A: [N]; B: [N, 3] (columns: m_{i−1}, m_{i−2}, m_{i−3}).
    """
    n = ts.shape[0] - 1
    lam = schedule.marginal_lambda(ts)  # [N+1]
    alpha, sigma = schedule.marginal_alpha(ts), schedule.marginal_std(ts)
    i = np.arange(1, n + 1)
    h = lam[i] - lam[i - 1]  # [N]
    # Step sizes of the previous two intervals; where they don't exist (warm-up) use h so that everything stays
    # finite -- those coefficients are never selected.
    h0 = jnp.where(i >= 2, lam[i - 1] - lam[np.maximum(i - 2, 0)], h)
    h1 = jnp.where(i >= 3, lam[np.maximum(i - 2, 0)] - lam[np.maximum(i - 3, 0)], h)
    r0, r1 = (h0 / h)[:, None], (h1 / h)[:, None]  # [N, 1]
    phi1 = jnp.expm1(-h)
    phi2 = phi1 / h + 1.0
    phi3 = phi2 / h - 0.5
    a_phi1, a_phi2, a_phi3 = [(alpha[i] * p)[:, None] for p in (phi1, phi2, phi3)]  # [N, 1]

    m0, m1, m2 = np.eye(3)  # coefficient vectors of m_{i-1}, m_{i-2}, m_{i-3}
    b1 = -a_phi1 * m0
    d1_0 = (m0 - m1) / r0
    b2 = b1 - 0.5 * a_phi1 * d1_0
    d1_1 = (m1 - m2) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    b3 = b1 + a_phi2 * d1 - a_phi3 * d2

    o = np.asarray(orders)[:, None]
    B = jnp.where(o == 1, b1, jnp.where(o == 2, b2, b3))  # [N, 3]
    A = sigma[i] / sigma[i - 1]
    return A, B


# -------------------------------------------------------------------------------------------------------------------
# Singlestep DPM-Solver++ (2S, 3S) -- also the building blocks of the adaptive solver
# -------------------------------------------------------------------------------------------------------------------


def singlestep_orders(steps: int, order: int) -> list[int]:
    """Orders of the singlestep solver spending exactly ``steps`` network evaluations (DPM-Solver's "fast" recipe).

    order 2: ⌊N/2⌋ steps of 2S, then one 1st-order step if N is odd;
    order 3: 3S steps, finishing with (2S, 1), (1) or (2) as N mod 3 is 0, 1 or 2.
    """
    if order == 1:
        return [1] * steps
    if order == 2:
        return [2] * (steps // 2) + [1] * (steps % 2)
    k, rem = steps // 3 + 1, steps % 3
    if rem == 0:
        return [3] * (k - 2) + [2, 1]
    if rem == 1:
        return [3] * (k - 1) + [1]
    return [3] * (k - 1) + [2]


DEFAULT_R = {2: (0.5, None), 3: (1.0 / 3.0, 2.0 / 3.0)}


def singlestep_coefficients(schedule: VPSchedule, s: jnp.ndarray, t: jnp.ndarray, order: int, r1=None, r2=None):
    """Stages of one singlestep step s → t of the given order, vectorized over K steps.

    Stage j evaluates m_j = x̂_0(y_j, τ_j) at y_j = a_j x + Σ_k b_jk m_k; the step ends at x_t = A x + Σ_k B_k m_k.
      order 1: x_t = (σ_t/σ_s) x − α_t φ_1(h) m_0
      order 2 (r1):  y_1 = (σ_{s1}/σ_s) x − α_{s1} φ_1(r1 h) m_0,                λ_{s1} = λ_s + r1 h
                     x_t = (σ_t/σ_s) x − α_t φ_1 m_0 − (1/(2 r1)) α_t φ_1 (m_1 − m_0)
      order 3 (r1, r2): y_1 as above;
                     y_2 = (σ_{s2}/σ_s) x − α_{s2} φ_1(r2 h) m_0 + (r2/r1) α_{s2} φ_22 (m_1 − m_0),
                           φ_22 = φ_1(r2 h)/(r2 h) + 1
                     x_t = (σ_t/σ_s) x − α_t φ_1 m_0 + (1/r2) α_t φ_2 (m_2 − m_0),   φ_2 = φ_1/h + 1

    Args:
      s, t: start and end times, shape [K].
      order: 1, 2 or 3 (static); r1, r2 default to (½) for order 2 and (⅓, ⅔) for order 3.
    Returns:
      dict with stage_t [K, 3], stage_a [K, 3], stage_b [K, 3, 3], A [K], B [K, 3]; stages beyond ``order`` are
      padding (time s, no contribution).
    """
    dr1, dr2 = DEFAULT_R.get(order, (None, None))
    r1 = dr1 if r1 is None else r1
    r2 = dr2 if r2 is None else r2
    lam_s, lam_t = schedule.marginal_lambda(s), schedule.marginal_lambda(t)
    h = lam_t - lam_s  # [K]
    sigma_s = schedule.marginal_std(s)
    alpha_t, sigma_t = schedule.marginal_alpha(t), schedule.marginal_std(t)
    phi1 = jnp.expm1(-h)
    m0, m1, m2 = np.eye(3)
    zero = jnp.zeros_like(h)
    col = lambda v: v[:, None]  # noqa: E731  [K] -> [K, 1]

    stage_t = [s, s, s]
    stage_a = [jnp.ones_like(h), zero, zero]
    stage_b = [jnp.zeros(h.shape + (3,)), jnp.zeros(h.shape + (3,)), jnp.zeros(h.shape + (3,))]
    A = sigma_t / sigma_s
    B = -col(alpha_t * phi1) * m0
    if order >= 2:
        s1 = schedule.inverse_lambda(lam_s + r1 * h)
        stage_t[1] = s1
        stage_a[1] = schedule.marginal_std(s1) / sigma_s
        stage_b[1] = -col(schedule.marginal_alpha(s1) * jnp.expm1(-r1 * h)) * m0
    if order == 2:
        B = B - col(alpha_t * phi1 / (2.0 * r1)) * (m1 - m0)
    if order == 3:
        s2 = schedule.inverse_lambda(lam_s + r2 * h)
        alpha_s2 = schedule.marginal_alpha(s2)
        phi12 = jnp.expm1(-r2 * h)
        phi22 = phi12 / (r2 * h) + 1.0
        stage_t[2] = s2
        stage_a[2] = schedule.marginal_std(s2) / sigma_s
        stage_b[2] = -col(alpha_s2 * phi12) * m0 + col((r2 / r1) * alpha_s2 * phi22) * (m1 - m0)
        phi2 = phi1 / h + 1.0
        B = B + col(alpha_t * phi2 / r2) * (m2 - m0)
    return dict(
        stage_t=jnp.stack(stage_t, axis=1),
        stage_a=jnp.stack(stage_a, axis=1),
        stage_b=jnp.stack(stage_b, axis=1),
        A=A,
        B=B,
    )


# -------------------------------------------------------------------------------------------------------------------
# DDIM and DDPM (first order, with noise)
# -------------------------------------------------------------------------------------------------------------------


def ddim_coefficients(schedule: VPSchedule, ts: jnp.ndarray, eta: float):
    """DDIM (Song et al. 2021, eq. 12) in continuous time, steps s = t_{i−1} → t = t_i:

        σ_η = η (σ_t/σ_s) sqrt(1 − α_s²/α_t²),   ε̂ = (x − α_s m)/σ_s,
        x_t = α_t m + sqrt(σ_t² − σ_η²) ε̂ + σ_η z.

    Returns A [N], B [N, 3] (only the m_{i−1} column non-zero) and C = σ_η [N].
    """
    s, t = ts[:-1], ts[1:]
    alpha_s, sigma_s = schedule.marginal_alpha(s), schedule.marginal_std(s)
    alpha_t, sigma_t = schedule.marginal_alpha(t), schedule.marginal_std(t)
    one_minus = -jnp.expm1(2.0 * (schedule.marginal_log_mean_coeff(s) - schedule.marginal_log_mean_coeff(t)))
    sigma_eta = eta * (sigma_t / sigma_s) * jnp.sqrt(one_minus)
    c = jnp.sqrt(jnp.maximum(sigma_t**2 - sigma_eta**2, 0.0))
    A = c / sigma_s
    B = (alpha_t - alpha_s * c / sigma_s)[:, None] * np.eye(3)[0]
    return A, B, sigma_eta


def ddpm_coefficients(schedule: VPSchedule, ts: jnp.ndarray):
    """Ancestral sampling from the Gaussian posterior q(x_t | x_s, x_0 = m), t < s (Ho et al. 2020 eq. 7, written in
    continuous time as in Kingma et al. 2021, eq. 28):

        α_{s|t} = α_s/α_t,   σ²_{s|t} = 1 − α_{s|t}²,
        x_t = (α_{s|t} σ_t²/σ_s²) x + (α_t σ²_{s|t}/σ_s²) m + (σ_{s|t} σ_t/σ_s) z.

    On the training grid (t_i = τ_i/T) this is exactly DDPM's chain with the posterior variance β̃.
    Returns A [N], B [N, 3], C [N].
    """
    s, t = ts[:-1], ts[1:]
    log_a_s, log_a_t = schedule.marginal_log_mean_coeff(s), schedule.marginal_log_mean_coeff(t)
    alpha_t = jnp.exp(log_a_t)
    var_s, var_t = -jnp.expm1(2.0 * log_a_s), -jnp.expm1(2.0 * log_a_t)  # σ_s², σ_t²
    var_st = -jnp.expm1(2.0 * (log_a_s - log_a_t))  # σ²_{s|t}
    A = jnp.exp(log_a_s - log_a_t) * var_t / var_s
    B = (alpha_t * var_st / var_s)[:, None] * np.eye(3)[0]
    C = jnp.sqrt(var_st * var_t / var_s)
    return A, B, C
