"""Reverse-time samplers for VP diffusion models, each one jit-compiled ``lax.scan`` (or ``lax.while_loop``) program.

All samplers take a noise-prediction function ``eps_fn(x, t) -> ε̂`` with

* ``x``: the current state, same shape as ``x_T`` (a leading batch axis is the convention, not a requirement);
* ``t``: the continuous time in (0, 1] as a **scalar** (0-d float32 array): every sample in the batch is at the same
  time. A network trained on discrete steps τ ∈ {1..T} should be fed ``schedule.discrete_timestep(t)`` = T·t, broadcast
  to the batch inside ``eps_fn``.

``eps_fn`` is a static argument of the jitted samplers (hashed by identity): define it once and reuse it, or -- the
usual case for a network with parameters -- call the sampler inside your own ``jax.jit`` in which ``eps_fn`` closes over
traced parameters. (A closure over concrete arrays bakes them into the compiled program as constants.)

The state is carried in at least float32 and returned in the dtype of ``x_T``. NFE (network evaluations) equals
``steps`` for every fixed-step sampler (+1 with ``denoise_to_zero``); the adaptive solver reports its own.

Samplers:
* :func:`dpm_solver_pp` -- DPM-Solver++ (Lu et al. 2022b), orders 1–3, multistep or singlestep, three time spacings;
* :func:`dpm_solver_pp_adaptive` -- DPM-Solver's error-controlled adaptive step size (Lu et al. 2022a, §4.2 and
  Alg. 4) with DPM-Solver++ updates (DPM-Solver-12 and -23);
* :func:`ddim` (Song et al. 2021, η ≥ 0) and :func:`ddpm` (Ho et al. 2020, ancestral);
* :func:`guided_eps` -- classifier-free guidance (Ho & Salimans 2022; DEF_METHOD §5) with one batched network call;
  :func:`static_guidance` -- whether a guidance scale λ needs one half of the guided batch only (λ = 1 or 0).

The solver a configuration names, with its settings' defaults: :mod:`def_jax.diffusion.sampler_configs`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from def_jax.diffusion import solver_coefficients as sc
from def_jax.diffusion.schedules import VPSchedule
from def_jax.diffusion.timesteps import SPACINGS, resolve_time_range, time_grid

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]
METHODS = ("multistep", "singlestep")


def data_prediction(eps_fn: EpsFn, schedule: VPSchedule, x: jax.Array, t: jax.Array) -> jax.Array:
    """x̂_0(x, t) = (x − σ_t ε̂(x, t)) / α_t  (DPM-Solver++, eq. 8)."""
    eps = eps_fn(x, t).astype(x.dtype)
    return (x - schedule.marginal_std(t).astype(x.dtype) * eps) / schedule.marginal_alpha(t).astype(x.dtype)


def _state_dtype(x: jax.Array):
    return jnp.promote_types(x.dtype, jnp.float32)


def _time_dtype(schedule: VPSchedule):
    """float32, or float64 when x64 is enabled (the schedule arrays are float64 NumPy)."""
    return jnp.asarray(schedule.log_alpha).dtype


def _combine(a, b, x, stack):
    """a · x + Σ_k b_k · stack[k]; ``stack`` is [K, *x.shape] (or a K-tuple), ``b`` is [K].

    Written as an explicit sum (not ``tensordot``) so that XLA fuses it into one elementwise pass.
    """
    dt = x.dtype
    return a.astype(dt) * x + sum(b[k].astype(dt) * stack[k] for k in range(len(stack)))


def check_choice(name: str, value: Any, choices: tuple) -> None:
    """``ValueError`` naming the setting unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


# -------------------------------------------------------------------------------------------------------------------
# Executors: one network call per scan iteration
# -------------------------------------------------------------------------------------------------------------------


def _run_multistep(eps_fn, schedule, x, ts, A, B, history: int, noise_scale=None, key=None, corrector=None):
    """x_i = A_i x_{i−1} + Σ_k B_ik m_{i−1−k} (+ C_i z_i), with m_i = x̂_0(x_i, t_i), for i = 1..N.

    ``history`` (static) is how many past data predictions the updates use (the solver order). Shapes: ts [N + 1],
    A [N], B [N, 3], noise_scale [N] or None. ``corrector`` (x → x, or None) is applied to every updated x_i.
    """
    n = ts.shape[0] - 1
    stochastic = noise_scale is not None
    inputs = (jnp.arange(n), ts[:-1], A, B[:, :history], noise_scale if stochastic else jnp.zeros(n))

    def step(carry, inp):
        x, hist = carry  # hist: tuple (m_{i-1}, m_{i-2}, ...) -- a tuple, so the shift copies nothing
        i, t, a, b, c = inp
        hist = (data_prediction(eps_fn, schedule, x, t),) + hist[:-1]
        x = _combine(a, b, x, hist)
        if stochastic:
            z = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
            x = x + c.astype(x.dtype) * z
        if corrector is not None:
            x = corrector(x)
        return (x, hist), None

    hist0 = tuple(jnp.zeros_like(x) for _ in range(history))
    (x, _), _ = jax.lax.scan(step, (x, hist0), inputs)
    return x


def _run_singlestep(eps_fn, schedule, x, outer_ts, orders: list[int], corrector=None):
    """Singlestep solver over the outer grid ``outer_ts`` [K + 1] with a static order per step.

    All stages of all steps are flattened into one scan of NFE = Σ orders iterations. Iteration g first finishes the
    previous step if g starts a new one (x_start ← A x_start + Σ B m; identity otherwise), then evaluates its stage.
    ``corrector`` (x → x, or None) is applied to the state at the end of every step.
    """
    k_steps = len(orders)
    s, t = outer_ts[:-1], outer_ts[1:]
    # Coefficients of every step at every order present, then pick each step's own order.
    present = sorted(set(orders))
    per_order = {o: sc.singlestep_coefficients(schedule, s, t, o) for o in present}
    pick = np.array([present.index(o) for o in orders])
    steps_idx = np.arange(k_steps)
    coef = {
        name: jnp.stack([per_order[o][name] for o in present])[pick, steps_idx]
        for name in ("stage_t", "stage_a", "stage_b", "A", "B")
    }
    # Flatten stages: stage g belongs to step step_of[g] as its stage_of[g]-th stage.
    step_of = np.concatenate([np.full(o, i) for i, o in enumerate(orders)])
    stage_of = np.concatenate([np.arange(o) for o in orders])
    first = stage_of == 0
    prev = np.maximum(step_of - 1, 0)
    finishes = first & (step_of > 0)  # [NFE] iteration g completes the previous step
    finish_a = jnp.where(finishes, coef["A"][prev], 1.0)  # [NFE]
    finish_b = jnp.where(finishes[:, None], coef["B"][prev], 0.0)  # [NFE, 3]
    inputs = (
        coef["stage_t"][step_of, stage_of],
        coef["stage_a"][step_of, stage_of],
        coef["stage_b"][step_of, stage_of],
        finish_a,
        finish_b,
        jnp.asarray(stage_of),
        jnp.asarray(finishes),
    )

    def stage(carry, inp):
        x_start, buf = carry  # buf: [3, *x.shape], the data predictions of the current step's stages
        tau, a, b, fa, fb, slot, ends = inp
        x_start = _combine(fa, fb, x_start, buf)
        if corrector is not None:
            x_start = jnp.where(ends, corrector(x_start), x_start)
        y = _combine(a, b, x_start, buf)
        buf = buf.at[slot].set(data_prediction(eps_fn, schedule, y, tau))
        return (x_start, buf), None

    buf0 = jnp.zeros((3,) + x.shape, x.dtype)
    (x_start, buf), _ = jax.lax.scan(stage, (x, buf0), inputs)
    x = _combine(coef["A"][-1], coef["B"][-1], x_start, buf)
    return x if corrector is None else corrector(x)


def _finish(eps_fn, schedule, x, t_end, denoise_to_zero: bool):
    if denoise_to_zero:
        return data_prediction(eps_fn, schedule, x, jnp.asarray(t_end, _time_dtype(schedule)))
    return x


# -------------------------------------------------------------------------------------------------------------------
# Public samplers
# -------------------------------------------------------------------------------------------------------------------


@functools.partial(
    jax.jit,
    static_argnums=0,
    static_argnames=("steps", "order", "method", "spacing", "t_start", "t_end", "lower_order_final", "denoise_to_zero",
                     "corrector"),
)
def dpm_solver_pp(
    eps_fn: EpsFn,
    x_T: jax.Array,
    schedule: VPSchedule,
    *,
    steps: int,
    order: int = 2,
    method: str = "multistep",
    spacing: str = "logSNR",
    t_start: Optional[float] = None,
    t_end: Optional[float] = None,
    lower_order_final: bool = True,
    denoise_to_zero: bool = False,
    corrector: Optional[Callable[[jax.Array], jax.Array]] = None,
) -> jax.Array:
    """DPM-Solver++ from ``t_start`` (default 1) to ``t_end`` (default 1/T, i.e. 1e-3 for T = 1000).

    Args:
      eps_fn: noise prediction ``eps_fn(x, t)``, ``t`` a scalar (see module docstring).
      x_T: the initial state at ``t_start``, e.g. standard normal noise. Any shape.
      schedule: a :class:`~def_jax.diffusion.schedules.VPSchedule`.
      steps: number of network evaluations (NFE). Multistep: ``steps`` updates, warm-up with lower orders.
        Singlestep: DPM-Solver's "fast" mix, e.g. order 2 = ⌊steps/2⌋ 2S steps (+ one 1st-order step if odd).
      order: 1 (= DDIM), 2 or 3.
      method: ``"multistep"`` (2M/3M) or ``"singlestep"`` (2S/3S).
      spacing: ``"logSNR"``, ``"time_uniform"`` or ``"time_quadratic"``.
      lower_order_final: multistep only -- lower the order of the last steps when steps < 15.
      denoise_to_zero: return x̂_0(x, t_end) instead of x at t_end (one extra NFE).
      corrector: a map x → x applied after every update, intermediate noisy states included (the DEF authors'
        re-standardization of each sample's fields, :func:`def_jax.data.normalization.standardize_fields`); static,
        hashed by identity; None = off.
    Returns:
      The sample at ``t_end``, same shape and dtype as ``x_T``.
    """
    check_choice("order", order, (1, 2, 3))
    check_choice("method", method, METHODS)
    check_choice("spacing", spacing, SPACINGS)
    t_start, t_end = resolve_time_range(schedule, t_start, t_end)
    x = x_T.astype(_state_dtype(x_T))
    ts = time_grid(schedule, steps, spacing, t_start, t_end)  # [steps + 1]
    if method == "multistep":
        orders = sc.multistep_orders(steps, order, lower_order_final)
        A, B = sc.multistep_coefficients(schedule, ts, orders)
        x = _run_multistep(eps_fn, schedule, x, ts, A, B, history=max(orders), corrector=corrector)
    else:
        orders = sc.singlestep_orders(steps, order)
        outer = ts[np.concatenate([[0], np.cumsum(orders)])]
        x = _run_singlestep(eps_fn, schedule, x, outer, orders, corrector=corrector)
    return _finish(eps_fn, schedule, x, t_end, denoise_to_zero).astype(x_T.dtype)


class AdaptiveInfo(NamedTuple):
    """Statistics of an adaptive solve: network evaluations, accepted/rejected steps, and the time reached."""

    nfe: jax.Array
    accepted: jax.Array
    rejected: jax.Array
    t_final: jax.Array


@functools.partial(
    jax.jit,
    static_argnums=0,
    static_argnames=("order", "t_start", "t_end", "atol", "rtol", "h_init", "theta", "t_err", "max_nfe",
                     "denoise_to_zero"),
)
def dpm_solver_pp_adaptive(
    eps_fn: EpsFn,
    x_T: jax.Array,
    schedule: VPSchedule,
    *,
    order: int = 2,
    t_start: Optional[float] = None,
    t_end: Optional[float] = None,
    atol: float,
    rtol: float,
    h_init: float = 0.05,
    theta: float = 0.9,
    t_err: float = 1e-5,
    max_nfe: int,
    denoise_to_zero: bool = False,
) -> tuple[jax.Array, AdaptiveInfo]:
    """Adaptive step-size DPM-Solver++ (DPM-Solver-12 for order 2, -23 for order 3), a ``lax.while_loop``.

    Each trial step s → t (t = λ⁻¹(λ_s + h)) computes a lower- and a higher-order singlestep solution from shared
    network evaluations: order 2 pairs DPM-Solver++-1 with 2S (r₁ = ½); order 3 pairs 2S (r₁ = ⅓) with 3S (⅓, ⅔).
    With δ = max(atol, rtol · max(|x_lower|, |x_prev|)) and E = max over the batch (leading axis) of the RMS of
    (x_higher − x_lower)/δ, the step is accepted if E ≤ 1, and h ← min(θ h E^{−1/order}, λ_end − λ_s)
    (Lu et al. 2022a, Alg. 4; Jolicoeur-Martineau et al. 2021). The step size is shared by the batch.

    ``atol``, ``rtol`` and ``max_nfe`` have their configuration defaults in
    :class:`~def_jax.diffusion.sampler_configs.DPMSolverPPAdaptive`.

    Returns ``(x, info)``. If ``max_nfe`` runs out before ``t_end`` is reached, ``x`` is all-NaN (never a silently
    unfinished sample) and ``info.t_final`` says where the solve stopped. ``denoise_to_zero`` as in
    :func:`dpm_solver_pp` (one more NFE, not counted in ``info.nfe``).
    """
    check_choice("order", order, (2, 3))
    t_start, t_end = resolve_time_range(schedule, t_start, t_end)
    x0 = x_T.astype(_state_dtype(x_T))
    r1, r2 = (0.5, None) if order == 2 else (1.0 / 3.0, 2.0 / 3.0)
    ftype = _time_dtype(schedule)
    lam_end = schedule.marginal_lambda(jnp.asarray(t_end, ftype))
    batch = x0.shape[0] if x0.ndim >= 2 else 1

    def rms_per_sample(v):
        return jnp.sqrt(jnp.mean(jnp.square(v.reshape(batch, -1)), axis=-1))

    def trial(x, s, lam_s, h):
        t = jnp.maximum(schedule.inverse_lambda(lam_s + h), t_end)[None]  # [1]
        hi = sc.singlestep_coefficients(schedule, s[None], t, order, r1, r2)
        lo = sc.singlestep_coefficients(schedule, s[None], t, order - 1, r1, r2)

        def stage(j, buf):
            y = _combine(hi["stage_a"][0, j], hi["stage_b"][0, j], x, buf)
            return buf.at[j].set(data_prediction(eps_fn, schedule, y, hi["stage_t"][0, j]))

        buf = jax.lax.fori_loop(0, order, stage, jnp.zeros((3,) + x.shape, x.dtype))
        x_high = _combine(hi["A"][0], hi["B"][0], x, buf)
        x_low = _combine(lo["A"][0], lo["B"][0], x, buf)
        return t[0], x_low, x_high

    def cond(state):
        x, x_prev, s, lam_s, h, info = state
        return (jnp.abs(s - t_end) > t_err) & (info.nfe + order <= max_nfe)

    def body(state):
        x, x_prev, s, lam_s, h, info = state
        t, x_low, x_high = trial(x, s, lam_s, h)
        delta = jnp.maximum(atol, rtol * jnp.maximum(jnp.abs(x_low), jnp.abs(x_prev)))
        err = jnp.max(rms_per_sample((x_high - x_low) / delta))
        err = jnp.where(jnp.isfinite(err), err, jnp.inf)
        accept = err <= 1.0
        x = jnp.where(accept, x_high, x)
        x_prev = jnp.where(accept, x_low, x_prev)
        s = jnp.where(accept, t, s)
        lam_s = jnp.where(accept, schedule.marginal_lambda(t), lam_s)
        h = jnp.minimum(theta * h * err ** (-1.0 / order), lam_end - lam_s)
        info = AdaptiveInfo(
            nfe=info.nfe + order,
            accepted=info.accepted + accept.astype(jnp.int32),
            rejected=info.rejected + (~accept).astype(jnp.int32),
            t_final=s,
        )
        return x, x_prev, s, lam_s, h, info

    s0 = jnp.asarray(t_start, ftype)
    info0 = AdaptiveInfo(jnp.int32(0), jnp.int32(0), jnp.int32(0), s0)
    state0 = (x0, x0, s0, schedule.marginal_lambda(s0), jnp.asarray(h_init, ftype), info0)
    x, _, s, _, _, info = jax.lax.while_loop(cond, body, state0)
    x = jnp.where(jnp.abs(s - t_end) <= t_err, x, jnp.nan)
    return _finish(eps_fn, schedule, x, t_end, denoise_to_zero).astype(x_T.dtype), info


@functools.partial(
    jax.jit, static_argnums=0, static_argnames=("steps", "eta", "spacing", "t_start", "t_end", "denoise_to_zero")
)
def ddim(
    eps_fn: EpsFn,
    x_T: jax.Array,
    schedule: VPSchedule,
    *,
    steps: int,
    eta: float = 0.0,
    spacing: str = "time_uniform",
    t_start: Optional[float] = None,
    t_end: Optional[float] = None,
    key: Optional[jax.Array] = None,
    denoise_to_zero: bool = False,
) -> jax.Array:
    """DDIM with stochasticity η ≥ 0 (η = 0: deterministic, equal to DPM-Solver++ order 1; η = 1: DDPM's posterior).

    ``key`` is required when η > 0; the noise of step i is drawn with ``fold_in(key, i)``.
    """
    check_choice("spacing", spacing, SPACINGS)
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if eta > 0 and key is None:
        raise ValueError("ddim with eta > 0 is stochastic and needs a PRNG key")
    t_start, t_end = resolve_time_range(schedule, t_start, t_end)
    x = x_T.astype(_state_dtype(x_T))
    ts = time_grid(schedule, steps, spacing, t_start, t_end)
    A, B, C = sc.ddim_coefficients(schedule, ts, eta)
    x = _run_multistep(eps_fn, schedule, x, ts, A, B, history=1, noise_scale=C if eta > 0 else None, key=key)
    return _finish(eps_fn, schedule, x, t_end, denoise_to_zero).astype(x_T.dtype)


@functools.partial(jax.jit, static_argnums=0, static_argnames=("steps", "spacing", "t_start", "t_end", "denoise_to_zero"))
def ddpm(
    eps_fn: EpsFn,
    x_T: jax.Array,
    schedule: VPSchedule,
    *,
    key: jax.Array,
    steps: Optional[int] = None,
    spacing: str = "time_uniform",
    t_start: Optional[float] = None,
    t_end: Optional[float] = None,
    denoise_to_zero: bool = False,
) -> jax.Array:
    """DDPM ancestral sampling. The default ``steps = T − 1`` with time-uniform spacing from 1 to 1/T walks exactly the
    training chain τ = T → 1; ``denoise_to_zero`` then takes DDPM's final noise-free step to τ = 0 (x̂_0).
    """
    check_choice("spacing", spacing, SPACINGS)
    steps = schedule.num_steps - 1 if steps is None else steps
    t_start, t_end = resolve_time_range(schedule, t_start, t_end)
    x = x_T.astype(_state_dtype(x_T))
    ts = time_grid(schedule, steps, spacing, t_start, t_end)
    A, B, C = sc.ddpm_coefficients(schedule, ts)
    x = _run_multistep(eps_fn, schedule, x, ts, A, B, history=1, noise_scale=C, key=key)
    return _finish(eps_fn, schedule, x, t_end, denoise_to_zero).astype(x_T.dtype)


# -------------------------------------------------------------------------------------------------------------------
# Classifier-free guidance
# -------------------------------------------------------------------------------------------------------------------


def static_guidance(guidance_scale: float | jax.Array) -> Optional[float]:
    """λ as a Python float when it is a number equal to 1 or 0; None for any other λ and for a traced one.

    With ε̂ = ε(∅) + λ (ε(c) − ε(∅)), λ = 1 is ε(c) and λ = 0 is ε(∅): one half of the guided batch gives the same
    result (an exact shortcut, taken by :func:`guided_eps`). Any other λ needs both halves.
    """
    if isinstance(guidance_scale, (int, float, np.integer, np.floating)) and guidance_scale in (0, 1):
        return float(guidance_scale)
    return None


def guided_eps(
    eps_cond_uncond_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
    guidance_scale: float | jax.Array,
    condition: jax.Array,
    null_condition: Optional[jax.Array] = None,
    conditional_eps: Optional[EpsFn] = None,
) -> EpsFn:
    """Classifier-free guidance ε̂(x, t, c) = ε(x, t, ∅) + λ (ε(x, t, c) − ε(x, t, ∅))  (DEF_METHOD §5).

    Args:
      eps_cond_uncond_fn: the conditional network ``f(x, t, c) -> ε`` for a batch [B, ...]; the null condition ∅
        (zeros by default, as in training) gives its unconditional output.
      guidance_scale: λ. 1 → purely conditional, 0 → unconditional, in between → larger perturbations (DEF).
        May be a traced value. A number equal to 1 or 0 (:func:`static_guidance`) evaluates only the needed half
        (exactly the same result).
      condition: c, [B, ...].
      null_condition: ∅; defaults to ``zeros_like(condition)``.
      conditional_eps: ε(x, t, c) in closed form, ``eps(x, t)`` (e.g. ``gaussian_eps_fn(schedule, c, 0)``, DEF's
        point-mass condition); the network is then called with ∅ only.
    Returns:
      ``eps_fn(x, t)`` for the samplers. For general λ the conditional and unconditional passes are ONE network call
      on the batch concatenated along axis 0: x → [x; x], c → [c; ∅] (shape [2B, ...]); with ``conditional_eps``
      one call on [B, ...].
    """
    null = jnp.zeros_like(condition) if null_condition is None else null_condition
    fixed = static_guidance(guidance_scale)

    def eps_fn(x: jax.Array, t: jax.Array) -> jax.Array:
        if fixed == 1.0:  # ε(c) only
            return eps_cond_uncond_fn(x, t, condition) if conditional_eps is None else conditional_eps(x, t)
        if fixed == 0.0:  # ε(∅) only
            return eps_cond_uncond_fn(x, t, null)
        if conditional_eps is not None:
            eps_uncond = eps_cond_uncond_fn(x, t, null)  # [B, ...]
            return eps_uncond + guidance_scale * (conditional_eps(x, t) - eps_uncond)
        eps = eps_cond_uncond_fn(jnp.concatenate([x, x]), t, jnp.concatenate([condition, null]))  # [2B, ...]
        eps_cond, eps_uncond = jnp.split(eps, 2)
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)

    return eps_fn


def clipped_eps(eps_fn: EpsFn, schedule: VPSchedule, x0_clip: float) -> EpsFn:
    """Static thresholding of the data prediction (Saharia et al. 2022; DPM-Solver++, Lu et al. 2022b, §3.3).

    Returns the ε-function whose data prediction is the clipped one: with x̂_0 = (x − σ_t ε̂)/α_t,

        ε'(x, t) = (x − α_t clip(x̂_0, −c, c)) / σ_t,  so that  (x − σ_t ε')/α_t = clip(x̂_0, −c, c).

    Every solver here works with x̂_0 (DDIM and DDPM through the same data prediction), so all of them see the
    clipped value. Near t = 1 the cosine schedule has α_t ≈ 5·10⁻⁵, and x̂_0 amplifies the network's ε error by 1/α_t;
    a threshold of a few standard deviations (states are normalized) keeps an imperfect denoiser's trajectories
    bounded and leaves an accurate one's untouched.
    """

    def eps(x: jax.Array, t: jax.Array) -> jax.Array:
        a, s = schedule.marginal_alpha(t), schedule.marginal_std(t)
        e = eps_fn(x, t).astype(x.dtype)
        x0 = jnp.clip((x - s * e) / a, -x0_clip, x0_clip)
        return ((x - a * x0) / s).astype(x.dtype)

    return eps
