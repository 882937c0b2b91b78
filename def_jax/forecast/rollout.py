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

with classifier-free guidance ε̂ = ε(∅) + λ (ε(c) − ε(∅)) (one batched call for both halves). With the exact
conditional branch (``RolloutSpec.conditional = "exact"``) ε(c) is the closed form of DEF's point-mass condition,
(x − α_t c)/σ_t, and the network is called with ∅ only (half the batch). K = 0 is the deterministic G_φ rollout. With
history k > 1 the perturbed state replaces the newest of the k input states.

**Baseline ensembles** (:mod:`def_jax.forecast.perturbations`): the walks replaced by additive white (``gaussian``)
or spatially correlated (``correlated``) noise of amplitude ``scale × amplitude[C]`` before every G_φ step; or the
initial states alone perturbed (:func:`make_initial`: noise at the initial time, bred vectors, lagged starts) and the
rollout run with ``perturbation = "none"``.

**Direct mode** (§6): x_{n+1} = a reverse-diffusion sample conditioned on the past k states, forcings, time features
and statics (and G_φ(X_n), whose output is then added to the sample: the residual variant).

**Per-sample normalization** (``RolloutSpec.restandardize``, the DEF authors' setting): states are each field
standardized over space, so every new state (G_φ's output, a direct sample) is standardized again over (H, W) before
it is carried and emitted (:func:`def_jax.data.normalization.standardize_fields`); the caller converts the outputs to
physical units with the initial state's spatial statistics.

**Randomness**: member b's key is ``fold_in(base, b)``; step n's ``fold_in(member_key, n)``; walk k's
``fold_in(step_key, k)``, split into the initial noise z and the sampler's own key; the additive noise of step n is
drawn from the step key itself, the initial noise from ``fold_in(member_key, INITIAL_TAG)``, and bred pair p's
starting perturbation from ``fold_in(fold_in(base, INITIAL_TAG), p)``. Each member's draws are a function of its own
key only (samplers and noise are ``vmap``-ed over members), so member b is the same whatever B, however members are
chunked, and however they are spread over devices.

**Programs**: :func:`make_rollout` returns ``rollout(states, member_ids, base_key, step0, forcings, time_features,
statics, scale, amplitude) -> (states, outputs)`` for a chunk of L lead steps: a ``lax.scan`` over the L steps with
the walks' ``lax.scan`` and the sampler's ``lax.scan`` inside. :func:`make_initial` returns the program of the
initial states (a ``lax.scan`` over the breeding cycles or the lagged members' pre-initial steps). The caller jits
them (members sharded over the mesh's data axis) and calls the rollout repeatedly for chunks of members and of lead
times, carrying ``states``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from def_jax.data.normalization import standardize_fields
from def_jax.diffusion.gaussian import gaussian_eps_fn
from def_jax.diffusion.samplers import guided_eps
from def_jax.diffusion.schedules import VPSchedule
from def_jax.forecast import perturbations as pert

MODES = ("def", "direct")
STEP_PERTURBATIONS = ("def", "gaussian", "correlated", "none")  # what happens before every G_φ step
CONDITIONALS = ("network", "exact")
INITIAL_KINDS = ("none", "gaussian", "correlated", "bred", "lagged")
INITIAL_TAG = 0x7FFFFFFF  # folded into keys for the initial-time draws (lead steps never reach it)
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
      static_guidance: λ fixed in the program, 1.0 (ε(c) only) or 0.0 (ε(∅) only): one half of the guided batch
        (:func:`~def_jax.diffusion.samplers.static_guidance`, e.g. ``static_guidance(λ)``); None: λ is the
        program's traced ``scale`` (both halves, 2B batch; one program for every λ).
      lead_steps: L, forecast steps per call.
      perturbation: before every G_φ step (``def`` mode): ``def`` (K walks), ``gaussian`` or ``correlated``
        (additive noise), ``none``.
      conditional: DEF's ε(c): ``network`` (ε_θ with the condition) or ``exact`` ((x − α_t c)/σ_t, no network call).
      correlation_length: L in grid points of the ``correlated`` noise.
      restandardize: per-sample normalization: each new state standardized over space before it is carried.
    """

    mode: str = "def"
    walks: int = 1
    history: int = 1
    forecaster_history: int = 1
    residual: bool = False
    static_guidance: Optional[float] = None
    lead_steps: int = 1
    perturbation: str = "def"
    conditional: str = "network"
    correlation_length: float = 0.0
    restandardize: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r}: expected one of {MODES}")
        if self.static_guidance not in (None, 0.0, 1.0):
            raise ValueError(f"static_guidance must be 1.0, 0.0 or None (λ traced); got {self.static_guidance!r}")
        if self.perturbation not in STEP_PERTURBATIONS:
            raise ValueError(f"perturbation {self.perturbation!r}: expected one of {STEP_PERTURBATIONS}")
        if self.conditional not in CONDITIONALS:
            raise ValueError(f"conditional {self.conditional!r}: expected one of {CONDITIONALS}")
        if self.walks < 0 or self.lead_steps < 1 or not 1 <= self.forecaster_history <= self.history:
            raise ValueError(f"invalid rollout spec {self}")
        if self.correlation_length < 0:
            raise ValueError(f"correlation_length must be >= 0; got {self.correlation_length}")

    @property
    def perturbs(self) -> bool:
        """Whether anything is added before the G_φ steps (False: the G_φ rollout from the given states)."""
        return self.mode == "def" and self.perturbation != "none" and (self.perturbation != "def" or self.walks > 0)

    @property
    def needs_denoiser(self) -> bool:
        return self.mode == "direct" or (self.perturbs and self.perturbation == "def")


def member_keys(base_key: jax.Array, member_ids: jax.Array) -> jax.Array:
    """Key of each member: fold_in(base, b). member_ids [B] int32 → keys [B]."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(base_key, member_ids)


def fold_all(keys: jax.Array, value: jax.Array) -> jax.Array:
    """fold_in(key_b, value) for each of the keys [B]."""
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, value)


def sample_members(eps_net: EpsNet, sample: Sampler, schedule: VPSchedule, spec: RolloutSpec,
                    condition: jax.Array, keys: jax.Array, guidance_scale: jax.Array, shape: tuple) -> jax.Array:
    """One reverse diffusion per member from its own noise: condition [B, H, W, C_c], keys [B] → [B, H, W, C].

    Each member's sampler runs on a batch of one (``vmap`` adds the member axis), so its result does not depend on
    the other members (the guided network call is still one batched call of 2B samples after vectorization, B with
    the exact conditional branch).
    """
    scale = guidance_scale if spec.static_guidance is None else spec.static_guidance
    exact = spec.mode == "def" and spec.conditional == "exact"

    def one(c: jax.Array, key: jax.Array) -> jax.Array:  # c [H, W, C_c]
        k_noise, k_sampler = jax.random.split(key)
        z = jax.random.normal(k_noise, (1,) + shape, jnp.float32)  # [1, H, W, C]

        def net(x, t, cond):  # the sampler's continuous t → the discrete step τ = T·t
            return eps_net(x, schedule.discrete_timestep(t), cond)

        conditional = gaussian_eps_fn(schedule, c[None], 0.0) if exact else None  # point mass at c
        return sample(guided_eps(net, scale, c[None], conditional_eps=conditional), z, schedule, k_sampler)[0]

    return jax.vmap(one)(condition, keys)


def perturb(eps_net: Optional[EpsNet], sample: Optional[Sampler], schedule: Optional[VPSchedule], spec: RolloutSpec,
            x: jax.Array, keys: jax.Array, scale: jax.Array, amplitude: Optional[jax.Array] = None) -> jax.Array:
    """The perturbation before one G_φ step: x [B, H, W, C], keys [B] (this step's) → perturbed [B, H, W, C].

    ``def``: K chained walks of DEF (§5), walk k conditioned on the previous walk's sample (c = x, DEF's condition is
    the state), ``scale`` = λ. ``gaussian``/``correlated``: x + scale · amplitude [C] · noise.
    """
    if not spec.perturbs:
        return x
    if spec.perturbation in pert.NOISE:
        return pert.add_noise(spec.perturbation, x, keys, scale * amplitude, spec.correlation_length)

    def walk(x_c, k):
        return sample_members(eps_net, sample, schedule, spec, x_c, fold_all(keys, k), scale, x.shape[1:]), None

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

    Returns ``rollout(states, member_ids, base_key, step0, forcings, time_features, statics, scale, amplitude)``:

    * ``states`` [B, k, H, W, C] normalized input states (k = ``spec.history``), the newest last;
    * ``member_ids`` [B] int32; ``base_key`` a key; ``step0`` int32 index of the first forecast step of the chunk;
    * ``forcings`` [k+L−1, H, W, C_f] at the input times of the L steps; ``time_features`` [k+L, F] at the input
      times and the last target time; ``statics`` [H, W, C_st]; ``scale`` (float32 scalar): λ for DEF and the
      direct mode, the noise's scale for ``gaussian``/``correlated``; ``amplitude`` [C] the noise's per-channel
      amplitude (None when there is no noise);

    → ``(states', outputs [L, B, H, W, C])``: the carried k states after the chunk and the emitted states
    (normalized; the caller denormalizes and applies the physical constraints).
    """
    k, kf, n_steps = spec.history, spec.forecaster_history, spec.lead_steps
    needs_forecaster = spec.mode == "def" or spec.residual
    if needs_forecaster and forecast_fn is None:
        raise ValueError("this rollout needs the forecaster G_φ")
    if spec.needs_denoiser and (eps_net is None or sample is None or schedule is None):
        raise ValueError("this rollout needs the denoiser, a sampler and a schedule")
    if spec.mode == "direct" and condition_fn is None:
        raise ValueError("the direct mode needs condition_fn")

    def rollout(states, member_ids, base_key, step0, forcings, time_features, statics, scale, amplitude=None):
        if spec.perturbs and spec.perturbation in pert.NOISE and amplitude is None:
            raise ValueError(f"the {spec.perturbation} perturbation needs the per-channel amplitude")
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
                x = perturb(eps_net, sample, schedule, spec, hist[:, -1], step_keys, scale, amplitude)
                hist = hist.at[:, -1].set(x)
                y = g_phi(hist, j)  # [B, H, W, C]
            else:
                f = jax.lax.dynamic_slice_in_dim(forcings, j, k, axis=0)  # [k, H, W, C_f]
                tf = jax.lax.dynamic_slice_in_dim(time_features, j, k + 1, axis=0)  # [k+1, F]
                forecast = g_phi(hist, j) if spec.residual else None
                cond = condition_fn(hist, _broadcast_members(f, b), _broadcast_members(tf, b), st, forecast)
                y = sample_members(eps_net, sample, schedule, spec, cond, step_keys, scale, hist.shape[2:])
                y = y + forecast if spec.residual else y
            if spec.restandardize:
                y = standardize_fields(y)
            hist = jnp.concatenate([hist[:, 1:], y[:, None].astype(hist.dtype)], axis=1)
            return hist, y

        states, outputs = jax.lax.scan(step, states, jnp.arange(n_steps, dtype=jnp.int32))
        return states, outputs  # [B, k, H, W, C], [L, B, H, W, C]

    return rollout


@dataclasses.dataclass(frozen=True)
class InitialSpec:
    """The static shape of an initial-state program (:func:`make_initial`).

    Attributes:
      kind: ``none`` (the analysis), ``gaussian``/``correlated`` (noise added to the newest state), ``bred`` (± bred
        vectors added to it) or ``lagged`` (earlier analyses run forward to the initial time).
      history: k states carried; forecaster_history: G_φ's k (≤ ``history``).
      pre_steps: P, forecast steps before the initial time that the program runs: the breeding cycles (``bred``) or
        the longest member's lag (``lagged``: (B − 1) × ``lag`` for B members).
      lag: ``lagged``: steps between successive members' starts.
      correlation_length: L in grid points of the ``correlated`` noise.
    """

    kind: str = "none"
    history: int = 1
    forecaster_history: int = 1
    pre_steps: int = 0
    lag: int = 1
    correlation_length: float = 0.0

    def __post_init__(self):
        if self.kind not in INITIAL_KINDS:
            raise ValueError(f"initial perturbation {self.kind!r}: expected one of {INITIAL_KINDS}")
        if self.pre_steps < 0 or self.lag < 1 or not 1 <= self.forecaster_history <= self.history:
            raise ValueError(f"invalid initial spec {self}")

    @property
    def needs_forecaster(self) -> bool:
        return self.kind in pert.INITIAL and self.pre_steps > 0


def make_initial(forecast_fn: Optional[ForecastFn], spec: InitialSpec) -> Callable:
    """The initial states of a chunk of members (see :class:`InitialSpec`).

    Returns ``initial(analyses, member_ids, base_key, forcings, time_features, statics, scale, amplitude)``:

    * ``analyses`` [P+k, H, W, C] normalized analyses at the slots −P−k+1..0 (0 = the initial time);
    * ``forcings`` [P+k−1, H, W, C_f] at the slots −P−k+1..−1 and ``time_features`` [P+k, F] at −P−k+1..0 (the
      inputs of the P steps before the initial time; P = 0 needs none);
    * ``statics`` [H, W, C_st]; ``scale`` (float32) × ``amplitude`` [C] the per-channel size of the noise and of the
      bred vectors (RMS over the grid), unused by ``none`` and ``lagged``;

    → ``states`` [B, k, H, W, C]: each member's k input states at the initial time.

    ``lagged``: member b's trajectory starts at the analysis window ending at slot −b·lag and is stepped by G_φ to
    slot 0; all members step together over the P slots, a member being reset to the analyses until its start.
    ``bred``: δ_0 is pair p's white noise rescaled to the amplitude; breeding cycle n (n = 0..P−1) runs G_φ from the
    analysis window ending at slot −P+n with and without δ added to its newest state and rescales the difference
    (:func:`~def_jax.forecast.perturbations.rescale_rms`) into the next δ; member 2p gets +δ_p, member 2p+1 −δ_p.
    """
    k, kf, n_pre = spec.history, spec.forecaster_history, spec.pre_steps
    if spec.needs_forecaster and forecast_fn is None:
        raise ValueError(f"the {spec.kind} initial states need the forecaster G_φ")

    def initial(analyses, member_ids, base_key, forcings, time_features, statics, scale, amplitude=None):
        b = member_ids.shape[0]
        states = _broadcast_members(analyses[n_pre:], b)  # [B, k, H, W, C] the analyses at the initial time
        if spec.kind == "none":
            return states
        if spec.kind != "lagged" and amplitude is None:
            raise ValueError(f"the {spec.kind} initial perturbation needs the per-channel amplitude")
        keys = member_keys(base_key, member_ids)  # [B]
        if spec.kind in pert.NOISE:
            x = pert.add_noise(spec.kind, states[:, -1], fold_all(keys, INITIAL_TAG), scale * amplitude,
                               spec.correlation_length)
            return states.at[:, -1].set(x)

        def g_phi(hist, n):  # G_φ of the window of pre-initial step n: [b', k, H, W, C] → [b', H, W, C]
            m = hist.shape[0]
            f = jax.lax.dynamic_slice_in_dim(forcings, n + k - kf, kf, axis=0)  # [kf, H, W, C_f]
            tf = jax.lax.dynamic_slice_in_dim(time_features, n + k - kf, kf + 1, axis=0)  # [kf+1, F]
            return forecast_fn(hist[:, k - kf:], _broadcast_members(f, m), _broadcast_members(tf, m),
                               _broadcast_members(statics, m))

        def window(n):  # the analyses [k, H, W, C] ending at pre-initial slot n − P (n = 0..P)
            return jax.lax.dynamic_slice_in_dim(analyses, n, k, axis=0)

        steps = jnp.arange(n_pre, dtype=jnp.int32)
        if spec.kind == "lagged":
            start_step = n_pre - pert.lag_steps_of(member_ids, spec.lag)  # [B] the first step each member takes

            def lagged_step(hist, n):
                y = g_phi(hist, n)  # [B, H, W, C]
                stepped = jnp.concatenate([hist[:, 1:], y[:, None].astype(hist.dtype)], axis=1)
                reset = _broadcast_members(window(n + 1), b)
                active = (n >= start_step)[:, None, None, None, None]
                return jnp.where(active, stepped, reset), None

            hist, _ = jax.lax.scan(lagged_step, _broadcast_members(window(0), b), steps)
            return hist

        target = scale * amplitude  # [C]
        pair_keys = member_keys(jax.random.fold_in(base_key, INITIAL_TAG), member_ids // 2)  # [B]
        delta = jax.vmap(lambda key: jax.random.normal(key, analyses.shape[1:], jnp.float32))(pair_keys)
        delta = pert.rescale_rms(delta, target)  # [B, H, W, C]

        def breed(delta, n):
            w = window(n)[None]  # [1, k, H, W, C]
            control = g_phi(w, n)  # [1, H, W, C]
            perturbed = jnp.broadcast_to(w, (b,) + w.shape[1:]).at[:, -1].add(delta.astype(w.dtype))
            return pert.rescale_rms(g_phi(perturbed, n) - control, target), None

        delta, _ = jax.lax.scan(breed, delta, steps)
        sign = pert.bred_sign(member_ids)[:, None, None, None]  # [B, 1, 1, 1]
        return states.at[:, -1].add((sign * delta).astype(states.dtype))

    return initial


def initial_inputs(spec: InitialSpec) -> tuple[int, int, int]:
    """(analysis slots, forcing slots, time-feature slots) one call of :func:`make_initial` needs: P+k, P+k−1, P+k."""
    return spec.pre_steps + spec.history, spec.pre_steps + spec.history - 1, spec.pre_steps + spec.history


def required_inputs(spec: RolloutSpec) -> tuple[int, int]:
    """(forcing slots, time-feature slots) one call needs: k+L−1 and k+L."""
    return spec.history + spec.lead_steps - 1, spec.history + spec.lead_steps

