"""The ensemble rollouts as pure JAX programs (DEF_METHOD §5, §6): no models imported, no I/O.

The networks come in as functions of their inputs (closures over traced parameters, built by the caller inside its
``jax.jit``):

* ``forecast_fn(states [B, k, H, W, C], forcings [B, k, H, W, C_f], time_features [B, k+1, F], statics [B, H, W, C_st])
  -> [B, H, W, C]``: one step of G_φ;
* ``eps_net(x [n, H, W, C], tau, condition [n, H, W, C_c]) -> ε [n, H, W, C]``: ε_θ with τ the discrete step
  (a scalar, or [n]).

**DEF rollout** (§5), per member b and forecast step n = 0..N−1::

    for k in 1..K:  z ~ N(0, I);  x ← reverse diffusion from t = 1 with ε̂(·, ·, c = x) (S solver steps)
    x ← G_φ(x);  emit x at lead (n+1)Δt

with classifier-free guidance ε̂ = ε(∅) + λ (ε(c) − ε(∅)) (one batched call for both halves). K = 0 is the
deterministic G_φ rollout. With history k > 1 the perturbed state replaces the newest of the k input states.

**Direct mode** (§6): x_{n+1} = a reverse-diffusion sample conditioned on the past k states, forcings, time features
and statics (and G_φ(X_n), whose output is then added to the sample: the residual variant).

**Randomness**: member b's key is ``fold_in(base, b)``; step n's ``fold_in(member_key, n)``; walk k's
``fold_in(step_key, k)``, split into the initial noise z and the sampler's own key. Each member's reverse diffusion
is a function of its own key only (the sampler is ``vmap``-ed over members), so member b is the same whatever B,
however members are chunked, and however they are spread over devices.

**Programs**: :func:`make_rollout` returns ``rollout(params, states, member_ids, base_key, step0, forcings,
time_features, statics, guidance_scale) -> (states, outputs)`` for a chunk of L lead steps: a ``lax.scan`` over the
L steps with the walks' ``lax.scan`` and the sampler's ``lax.scan`` inside. The caller jits it (members sharded over
the mesh's data axis) and calls it repeatedly for chunks of members and of lead times, carrying ``states``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from def_jax.diffusion.samplers import guided_eps
from def_jax.diffusion.schedules import VPSchedule

MODES = ("def", "direct")
ForecastFn = Callable[..., jax.Array]
EpsNet = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
Sampler = Callable[..., jax.Array]  # sample(eps_fn, x_T, schedule, key) -> x_0 (def_jax.diffusion.samplers)


@dataclasses.dataclass(frozen=True)
class RolloutSpec:
    """The static shape of a rollout program.

    Attributes:
      mode: ``def`` (perturbation walks + G_φ) or ``direct`` (sample the next state).
      walks: K, chained perturbation walks per step (``def``; 0 = the deterministic rollout).
      history: input states carried: G_φ's k (``def``) or the direct condition's k.
      forecaster_history: G_φ's k (≤ ``history``); used by ``def`` and by the residual direct variant.
      residual: direct mode diffuses X_{n+1} − G_φ(X_n) (StormCast-style).
      guidance: ``conditional`` (λ = 1: ε(c) only), ``unconditional`` (λ = 0) or ``guided`` (λ traced, 2B batch).
      lead_steps: L, forecast steps per call.
    """

    mode: str = "def"
    walks: int = 1
    history: int = 1
    forecaster_history: int = 1
    residual: bool = False
    guidance: str = "guided"
    lead_steps: int = 1

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r}: expected one of {MODES}")
        if self.guidance not in ("conditional", "unconditional", "guided"):
            raise ValueError(f"guidance {self.guidance!r}")
        if self.walks < 0 or self.lead_steps < 1 or not 1 <= self.forecaster_history <= self.history:
            raise ValueError(f"invalid rollout spec {self}")


def guidance_kind(guidance_scale: float) -> str:
    """λ = 1 and λ = 0 need one half of the guided batch only (an exact shortcut); anything else runs both."""
    return {1.0: "conditional", 0.0: "unconditional"}.get(float(guidance_scale), "guided")


def member_keys(base_key: jax.Array, member_ids: jax.Array) -> jax.Array:
    """Key of each member: fold_in(base, b). member_ids [B] int32 → keys [B]."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(base_key, member_ids)


def fold_all(keys: jax.Array, value: jax.Array) -> jax.Array:
    """fold_in(key_b, value) for each of the keys [B]."""
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, value)


def _sample_members(eps_net: EpsNet, sample: Sampler, schedule: VPSchedule, spec: RolloutSpec,
                    condition: jax.Array, keys: jax.Array, guidance_scale: jax.Array, shape: tuple) -> jax.Array:
    """One reverse diffusion per member from its own noise: condition [B, H, W, C_c], keys [B] → [B, H, W, C].

    Each member's sampler runs on a batch of one (``vmap`` adds the member axis), so its result does not depend on
    the other members (the guided network call is still one batched call of 2B samples after vectorization).
    """
    scale = {"conditional": 1.0, "unconditional": 0.0}.get(spec.guidance, guidance_scale)

    def one(c: jax.Array, key: jax.Array) -> jax.Array:  # c [H, W, C_c]
        k_noise, k_sampler = jax.random.split(key)
        z = jax.random.normal(k_noise, (1,) + shape, jnp.float32)  # [1, H, W, C]

        def net(x, t, cond):  # the sampler's continuous t → the discrete step τ = T·t
            return eps_net(x, schedule.discrete_timestep(t), cond)

        return sample(guided_eps(net, scale, c[None]), z, schedule, k_sampler)[0]

    return jax.vmap(one)(condition, keys)


def perturb(eps_net: EpsNet, sample: Sampler, schedule: VPSchedule, spec: RolloutSpec, x: jax.Array,
            keys: jax.Array, guidance_scale: jax.Array) -> jax.Array:
    """K chained perturbation walks of DEF (§5): x [B, H, W, C], keys [B] (this step's) → perturbed [B, H, W, C].

    Walk k conditions the reverse diffusion on the previous walk's sample (c = x, DEF's condition is the state).
    """
    if spec.walks == 0:
        return x

    def walk(x_c, k):
        return _sample_members(eps_net, sample, schedule, spec, x_c, fold_all(keys, k), guidance_scale,
                               x.shape[1:]), None

    x, _ = jax.lax.scan(walk, x, jnp.arange(spec.walks, dtype=jnp.int32))
    return x


def _broadcast_members(a: jax.Array, members: int) -> jax.Array:
    return jnp.broadcast_to(a[None], (members,) + a.shape)


def make_rollout(forecast_fn: Optional[ForecastFn], eps_net: Optional[EpsNet], sample: Optional[Sampler],
                 schedule: Optional[VPSchedule], spec: RolloutSpec,
                 condition_fn: Optional[Callable[..., jax.Array]] = None) -> Callable:
    """The rollout of ``spec.lead_steps`` forecast steps for a chunk of members (see the module docstring).

    ``condition_fn(states, forcings, time_features, statics, forecast_or_None) -> [B, H, W, C_c]`` builds the direct
    mode's condition (:func:`def_jax.models.networks.direct_condition`).

    Returns ``rollout(states, member_ids, base_key, step0, forcings, time_features, statics, guidance_scale)``:

    * ``states`` [B, k, H, W, C] normalized input states (k = ``spec.history``), the newest last;
    * ``member_ids`` [B] int32; ``base_key`` a key; ``step0`` int32 index of the first forecast step of the chunk;
    * ``forcings`` [k+L−1, H, W, C_f] at the input times of the L steps; ``time_features`` [k+L, F] at the input
      times and the last target time; ``statics`` [H, W, C_st]; ``guidance_scale`` λ (float32 scalar);

    → ``(states', outputs [L, B, H, W, C])``: the carried k states after the chunk and the emitted states
    (normalized; the caller denormalizes and applies the physical constraints).
    """
    k, kf, n_steps = spec.history, spec.forecaster_history, spec.lead_steps
    needs_forecaster = spec.mode == "def" or spec.residual
    if needs_forecaster and forecast_fn is None:
        raise ValueError("this rollout needs the forecaster G_φ")
    if (spec.mode == "direct" or spec.walks > 0) and (eps_net is None or sample is None or schedule is None):
        raise ValueError("this rollout needs the denoiser, a sampler and a schedule")
    if spec.mode == "direct" and condition_fn is None:
        raise ValueError("the direct mode needs condition_fn")

    def rollout(states, member_ids, base_key, step0, forcings, time_features, statics, guidance_scale):
        b = states.shape[0]
        keys = member_keys(base_key, member_ids)  # [B]
        st = _broadcast_members(statics, b)  # [B, H, W, C_st]

        def g_phi(hist, j):  # G_φ from the last kf of the k states: [B, k, H, W, C] → [B, H, W, C]
            f = jax.lax.dynamic_slice_in_dim(forcings, j + k - kf, kf, axis=0)  # [kf, H, W, C_f]
            tf = jax.lax.dynamic_slice_in_dim(time_features, j + k - kf, kf + 1, axis=0)  # [kf+1, F]
            return forecast_fn(hist[:, k - kf:], _broadcast_members(f, b), _broadcast_members(tf, b), st)

        def step(hist, j):
            step_keys = fold_all(keys, step0 + j)  # [B]
            if spec.mode == "def":
                x = perturb(eps_net, sample, schedule, spec, hist[:, -1], step_keys, guidance_scale)
                hist = hist.at[:, -1].set(x)
                y = g_phi(hist, j)  # [B, H, W, C]
            else:
                f = jax.lax.dynamic_slice_in_dim(forcings, j, k, axis=0)  # [k, H, W, C_f]
                tf = jax.lax.dynamic_slice_in_dim(time_features, j, k + 1, axis=0)  # [k+1, F]
                forecast = g_phi(hist, j) if spec.residual else None
                cond = condition_fn(hist, _broadcast_members(f, b), _broadcast_members(tf, b), st, forecast)
                y = _sample_members(eps_net, sample, schedule, spec, cond, step_keys, guidance_scale,
                                    hist.shape[2:])
                y = y + forecast if spec.residual else y
            hist = jnp.concatenate([hist[:, 1:], y[:, None].astype(hist.dtype)], axis=1)
            return hist, y

        states, outputs = jax.lax.scan(step, states, jnp.arange(n_steps, dtype=jnp.int32))
        return states, outputs  # [B, k, H, W, C], [L, B, H, W, C]

    return rollout


def required_inputs(spec: RolloutSpec) -> tuple[int, int]:
    """(forcing slots, time-feature slots) one call needs: k+L−1 and k+L."""
    return spec.history + spec.lead_steps - 1, spec.history + spec.lead_steps

