"""The training objectives of G_φ and ε_θ as ``loss_fn(params, batch, key, frozen) -> (loss, aux)`` functions.

* :func:`forecaster_objective` -- MSE in normalized space, optionally weighted per channel and per grid cell (area),
  over a k-step autoregressive rollout with discount γ (DEF_METHOD §3; the authors: k = 4, γ = 0.99):
  L = Σ_j γ^j MSE_j / Σ_j γ^j, the rollout feeding each prediction back as the newest input state (with per-sample
  normalization, standardized over space first, as the forecast's rollout does: ``restandardize``).
* :func:`def_denoiser_objective` -- DEF's "random advancement" with classifier-free guidance dropout (DEF_METHOD §4):
  null ~ B(p_uncond); adv ~ B(p_advance) ∧ ¬null; x0 = G_φ(X) (no gradient) if adv else X; c = 0 if null else x0;
  L = ‖ε_θ(√ᾱ_τ x0 + √(1−ᾱ_τ) ε, τ, c) − ε‖², τ ~ U{1..T}.
* :func:`direct_denoiser_objective` -- the direct generative mode (DEF_METHOD §6): x0 = X_{t+1} (or the residual
  X_{t+1} − G_φ(X_t)), c = the past k states, forcings, time features, statics (and G_φ(X_t)), dropped with p_uncond.
* :func:`denoiser_validation` -- ε_θ's validation: the ε-loss in bands of τ with the condition and without it (∅),
  separately: the conditional and the unconditional model are two different things (DEF_METHOD §5, "what a
  perturbation is made of"), and a mixed loss is dominated by whichever is easier.

Batches are the loader's (docs/DATA.md): inputs [B, k, H, W, C], targets [B, n, H, W, C], forcings [B, k+n, H, W, C_f],
time_features [B, k+n, F], statics [B, H, W, C_st], optionally area_weights [B, H, W].
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from def_jax.data.normalization import standardize_fields
from def_jax.diffusion import losses
from def_jax.diffusion.schedules import VPSchedule
from def_jax.models.networks import def_condition, direct_condition


def weighted_mse(pred: jax.Array, target: jax.Array, channel_weights: Optional[jax.Array] = None,
                 area_weights: Optional[jax.Array] = None) -> jax.Array:
    """Σ w_c w_a (pred − target)² / Σ w_c w_a over [B, H, W, C] (plain mean without weights)."""
    sq = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))  # [B, H, W, C]
    w = jnp.ones((1, 1, 1, 1), jnp.float32)
    if channel_weights is not None:
        w = w * channel_weights.reshape(1, 1, 1, -1)
    if area_weights is not None:
        w = w * area_weights[..., None]
    w = jnp.broadcast_to(w, sq.shape)
    return jnp.sum(w * sq) / jnp.sum(w)


def forecast_step(model, states: jax.Array, batch: dict, j: int | jax.Array, *, deterministic: bool,
                  rngs: Optional[jax.Array] = None) -> jax.Array:
    """G_φ's prediction of the state at window position k + j from the k states ``states`` [B, k, H, W, C]."""
    k = states.shape[1]
    forcings = jax.lax.dynamic_slice_in_dim(batch["forcings"], j, k, axis=1)  # [B, k, H, W, C_f]
    tf = jax.lax.dynamic_slice_in_dim(batch["time_features"], j, k + 1, axis=1)  # [B, k+1, F]
    return model(states, forcings, tf, batch["statics"], deterministic=deterministic, rngs=rngs)


def forecaster_objective(graphdef: nnx.GraphDef, *, rollout_steps: int, discount: float,
                         channel_weights: Optional[jax.Array] = None, deterministic: bool = False,
                         restandardize: bool = False):
    """The k-step rollout loss of G_φ (see the module docstring). Aux: ``mse_step1``, the one-step MSE.
    ``restandardize``: each prediction is standardized over (H, W) per sample and channel before it is fed back
    (per-sample normalization, where the targets are standardized fields)."""

    def loss_fn(params, batch, key, frozen):
        model = nnx.merge(graphdef, params)
        area = batch.get("area_weights")

        # The rollout is a Python loop, not lax.scan: XLA:CPU differentiates convolutions inside a while loop ~25×
        # slower than outside one, and k is small (the authors use 4).
        states, errs = batch["inputs"], []
        for j in range(rollout_steps):
            pred = forecast_step(model, states, batch, j, deterministic=deterministic,
                                 rngs=jax.random.fold_in(key, j))  # [B, H, W, C]
            errs.append(weighted_mse(pred, batch["targets"][:, j], channel_weights, area))
            carried = standardize_fields(pred) if restandardize else pred  # [B, H, W, C]
            states = jnp.concatenate([states[:, 1:], carried[:, None]], axis=1)
        errs = jnp.stack(errs)  # [n]
        gamma = discount ** jnp.arange(rollout_steps, dtype=jnp.float32)
        return jnp.sum(gamma * errs) / jnp.sum(gamma), {"mse_step1": errs[0]}

    return loss_fn


def persistence_mse(batch: dict, channel_weights=None) -> jax.Array:
    """The one-step MSE of persistence (X_{t+1} ≈ X_t): the baseline G_φ must beat."""
    return weighted_mse(batch["inputs"][:, -1], batch["targets"][:, 0], channel_weights, batch.get("area_weights"))


def _forecast_frozen(forecaster_graphdef: nnx.GraphDef, forecaster_params, batch: dict, history: int) -> jax.Array:
    """G_φ(X_t) from the last ``history`` input states, without gradient (the forecaster is frozen)."""
    model = nnx.merge(forecaster_graphdef, forecaster_params)
    k_all = batch["inputs"].shape[1]
    states = batch["inputs"][:, k_all - history:]
    batch_g = dict(batch, forcings=batch["forcings"][:, k_all - history:],
                   time_features=batch["time_features"][:, k_all - history:])
    return jax.lax.stop_gradient(forecast_step(model, states, batch_g, 0, deterministic=True))


def def_denoiser_objective(graphdef: nnx.GraphDef, forecaster_graphdef: nnx.GraphDef, schedule: VPSchedule, *,
                           p_uncond: float, p_advance: float, forecaster_history: int, deterministic: bool = False):
    """Random advancement (see the module docstring). ``frozen`` = G_φ's parameters. Aux: ``advanced`` and
    ``unconditional`` fractions of the batch. Without ``forecaster_graphdef`` (p_uncond = 1 or p_advance = 0: no
    sample is advanced) G_φ is not run."""

    def loss_fn(params, batch, key, frozen):
        k_null, k_adv, k_noise, k_drop = jax.random.split(key, 4)
        x = batch["inputs"][:, -1]  # [B, H, W, C] the true state X
        null = jax.random.bernoulli(k_null, p_uncond, (x.shape[0],))  # [B]
        if forecaster_graphdef is None:
            adv, x0 = jnp.zeros_like(null), x
        else:
            y = _forecast_frozen(forecaster_graphdef, frozen, batch, forecaster_history)  # G_φ(X)
            adv = jax.random.bernoulli(k_adv, p_advance, (x.shape[0],)) & ~null
            x0 = jnp.where(adv[:, None, None, None], y, x)
        cond = losses.apply_null_condition(def_condition(x0), null)
        x_tau, tau, eps = losses.noisy_sample(k_noise, schedule, x0)
        pred = nnx.merge(graphdef, params)(x_tau, tau.astype(jnp.float32), cond, deterministic=deterministic,
                                           rngs=k_drop)
        return losses.epsilon_loss(pred, eps), {"advanced": adv.mean(), "unconditional": null.mean()}

    return loss_fn


def _direct_target(batch: dict, forecaster_graphdef, frozen, residual: bool, forecaster_history: int):
    """The direct mode's x0 (X_{t+1}, or X_{t+1} − G_φ(X_t)) and condition."""
    k = batch["inputs"].shape[1]
    target = batch["targets"][:, 0]  # [B, H, W, C] X_{t+1}
    forecast = _forecast_frozen(forecaster_graphdef, frozen, batch, forecaster_history) if residual else None
    x0 = target - forecast if residual else target
    cond = direct_condition(batch["inputs"], batch["forcings"][:, :k], batch["time_features"][:, :k + 1],
                            batch["statics"], forecast)
    return x0, cond


def direct_denoiser_objective(graphdef: nnx.GraphDef, forecaster_graphdef: Optional[nnx.GraphDef],
                              schedule: VPSchedule, *, p_uncond: float, residual: bool, forecaster_history: int,
                              deterministic: bool = False):
    """The direct mode (see the module docstring). ``frozen`` = G_φ's parameters when ``residual``, else None."""

    def loss_fn(params, batch, key, frozen):
        k_null, k_noise, k_drop = jax.random.split(key, 3)
        x0, cond = _direct_target(batch, forecaster_graphdef, frozen, residual, forecaster_history)
        cond, null = losses.condition_dropout(k_null, cond, p_uncond)
        x_tau, tau, eps = losses.noisy_sample(k_noise, schedule, x0)
        pred = nnx.merge(graphdef, params)(x_tau, tau.astype(jnp.float32), cond, deterministic=deterministic,
                                           rngs=k_drop)
        return losses.epsilon_loss(pred, eps), {"unconditional": null.mean()}

    return loss_fn



TAU_BAND_EDGES = (0.0, 0.01, 0.1, 0.3, 0.6, 1.0)  # fractions of T: τ in (T·e_i, T·e_{i+1}]


def tau_bands(num_steps: int) -> tuple[tuple[int, int], ...]:
    """The validation bands of τ, inclusive: T = 1000 → (1, 10), (11, 100), (101, 300), (301, 600), (601, 1000)."""
    edges = [int(round(e * num_steps)) for e in TAU_BAND_EDGES]
    return tuple((lo + 1, hi) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo)


def band_name(band: tuple[int, int], num_steps: int) -> str:
    """``tau0001-0010``: zero-padded to the digits of T, so that names sort in τ order (logs, TensorBoard)."""
    n = len(str(num_steps))
    return f"tau{band[0]:0{n}d}-{band[1]:0{n}d}"


def denoiser_validation(graphdef: nnx.GraphDef, forecaster_graphdef: Optional[nnx.GraphDef], schedule: VPSchedule, *,
                        mode: str, conditional: str, forecaster_history: int, residual: bool = False):
    """``eval_fn(params, batch, frozen) -> metrics`` of ε_θ on a validation batch, deterministic (fixed keys).

    x0 and c are the validation window's: DEF's true state X (c = X, no advancement), or the direct mode's target
    and condition. For each band of :func:`tau_bands`, τ ~ U(band) and ε ~ N(0, I) per sample give x_τ, and

    * ``eps_c_<band>`` = E‖ε_θ(x_τ, τ, c) − ε‖² -- the conditional branch as sampled: with
      ``conditional = "exact"`` (DEF) the closed form (x_τ − α_τ c)/σ_τ, whose loss only float rounding keeps
      from 0;
    * ``eps_null_<band>`` = E‖ε_θ(x_τ, τ, ∅) − ε‖² -- the unconditional model, the source of DEF's perturbations;
    * ``eps_c``, ``eps_null``: their averages over τ ~ U{1..T} (bands weighted by their widths);
    * ``loss`` = (eps_c + eps_null)/2, the criterion of the best checkpoint: with an exact or easily learned
      conditional branch it is decided by the unconditional model.

    An ε-loss of 1 is that of predicting ε = 0 (ε has unit variance).
    """
    bands = tau_bands(schedule.num_steps)
    widths = jnp.asarray([hi - lo + 1 for lo, hi in bands], jnp.float32) / schedule.num_steps  # [nb]
    exact = mode == "def" and conditional == "exact"

    def eval_fn(params, batch, frozen):
        model = nnx.merge(graphdef, params)
        if mode == "def":
            x0 = batch["inputs"][:, -1]  # [B, H, W, C]
            cond = def_condition(x0)
        else:
            x0, cond = _direct_target(batch, forecaster_graphdef, frozen, residual, forecaster_history)
        b = x0.shape[0]
        out, cs, nulls = {}, [], []
        for i, (lo, hi) in enumerate(bands):
            k_tau, k_eps = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(0), i))
            tau = jax.random.randint(k_tau, (b,), lo, hi + 1, dtype=jnp.int32)  # [B]
            eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
            x_tau = schedule.add_noise(x0, tau, eps)
            t = tau.astype(jnp.float32)
            if exact:
                tt = t / schedule.num_steps
                a = schedule.marginal_alpha(tt)[:, None, None, None]
                s_ = schedule.marginal_std(tt)[:, None, None, None]
                pred_c = (x_tau - a * x0) / s_
            else:
                pred_c = model(x_tau, t, cond, deterministic=True)
            pred_null = model(x_tau, t, jnp.zeros_like(cond), deterministic=True)
            cs.append(losses.epsilon_loss(pred_c, eps))
            nulls.append(losses.epsilon_loss(pred_null, eps))
            name = band_name((lo, hi), schedule.num_steps)
            out[f"eps_c_{name}"] = cs[-1]
            out[f"eps_null_{name}"] = nulls[-1]
        out["eps_c"] = jnp.sum(widths * jnp.stack(cs))
        out["eps_null"] = jnp.sum(widths * jnp.stack(nulls))
        out["loss"] = 0.5 * (out["eps_c"] + out["eps_null"])
        return out

    return eval_fn
