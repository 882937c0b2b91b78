"""The rollout program (DEF_METHOD §5, §6) with constructed networks whose effect is known exactly.

The denoiser is the exact ε of Gaussian data: given a condition c it is the data N(c, s_c²) (a perturbation of size
s_c around the state), given the null condition (zeros) climatology N(0, 1). So λ = 1 samples N(c, s_c²), λ = 0
samples N(0, 1), and chained walks random-walk with variance K s_c². G_φ is an affine map that uses the forcings and
time features, so the K = 0 rollout can be computed by hand.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from def_jax import parallel
from def_jax.diffusion.sampler_configs import DDIM, sampler_from_config
from def_jax.diffusion.samplers import static_guidance
from def_jax.diffusion.schedules import make_schedule
from def_jax.forecast.rollout import RolloutSpec, make_rollout, required_inputs
from def_jax.models.networks import direct_condition

H, W, C, CF, F = 6, 5, 3, 1, 4
S_COND = 0.1
SCHEDULE = make_schedule("cosine", 1000)


def eps_net(x, tau, c):
    """Exact ε of N(c, S_COND²) given c, of N(0, 1) given the null condition (all zeros). x, c [n, H, W, C]."""
    t = jnp.asarray(tau) / SCHEDULE.num_steps
    a, s = SCHEDULE.marginal_alpha(t), SCHEDULE.marginal_std(t)
    null = jnp.all(c == 0, axis=(1, 2, 3), keepdims=True)  # [n, 1, 1, 1]
    mean = jnp.where(null, 0.0, c[..., :C])
    std = jnp.where(null, 1.0, S_COND)
    return s * (x - a * mean) / (a**2 * std**2 + s**2)


def forecast_fn(states, forcings, time_features, statics):
    """G_φ stand-in: 0.9·x_t + 0.1·forcing + 0.01·Σ time features + 0.01·static. [B, k, H, W, C] → [B, H, W, C]."""
    return (0.9 * states[:, -1] + 0.1 * forcings[:, -1, ..., :1] + 0.01 * time_features[:, -1].sum(-1)[:, None, None,
            None] + 0.01 * statics[..., :1])


def inputs(steps, k=1, seed=0):
    rng = np.random.default_rng(seed)
    n_f, n_t = required_inputs(RolloutSpec(history=k, forecaster_history=1, lead_steps=steps))
    return dict(state=rng.normal(size=(k, H, W, C)).astype(np.float32),
                forcings=rng.normal(size=(n_f, H, W, CF)).astype(np.float32),
                tf=rng.normal(size=(n_t, F)).astype(np.float32),
                statics=rng.normal(size=(H, W, 2)).astype(np.float32))


@functools.lru_cache(maxsize=None)
def compiled(spec, sampler, sampler_steps):
    sample = sampler_from_config({"name": sampler, "steps": sampler_steps})
    return jax.jit(make_rollout(forecast_fn, eps_net, sample, SCHEDULE, spec, condition_fn=direct_condition))


def run(members, *, steps=3, walks=1, guidance=0.5, sampler="dpm_solver_pp", sampler_steps=6, mode="def", k=1,
        residual=False, mesh=None, step0=0, data=None, states=None, key=0):
    data = data or inputs(steps, k)
    spec = RolloutSpec(mode=mode, walks=walks, history=k, forecaster_history=1, residual=residual,
                       static_guidance=static_guidance(guidance), lead_steps=steps)
    program = compiled(spec, sampler, sampler_steps)
    b = len(members)
    st = states if states is not None else np.broadcast_to(data["state"][None], (b,) + data["state"].shape)
    ids = np.asarray(members, np.int32)
    if mesh is not None:
        st = jax.device_put(st, parallel.leading_sharding(mesh))
        ids = jax.device_put(ids, parallel.leading_sharding(mesh))
    out_states, out = program(st, ids, jax.random.PRNGKey(key), jnp.int32(step0), data["forcings"], data["tf"],
                              data["statics"], jnp.float32(guidance))
    return np.asarray(out_states), np.asarray(out)  # [B, k, H, W, C], [L, B, H, W, C]


def test_deterministic_given_the_key():
    a, b = run([0, 1, 2])[1], run([0, 1, 2])[1]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, run([0, 1, 2], key=1)[1])


@pytest.mark.parametrize("sampler", ["dpm_solver_pp", "ddpm"])
def test_member_is_the_same_whatever_the_ensemble_size(sampler):
    """Member b depends only on (base key, b): the same inside ensembles of 2, 5 and of other member indices."""
    small = run([0, 1], sampler=sampler)[1]
    large = run([0, 1, 2, 3, 4], sampler=sampler)[1]
    shifted = run([3, 1], sampler=sampler)[1]
    np.testing.assert_array_equal(small, large[:, :2])
    np.testing.assert_array_equal(small[:, 1], shifted[:, 1])
    np.testing.assert_array_equal(large[:, 3], shifted[:, 0])
    assert not np.allclose(large[:, 0], large[:, 1])  # members differ


def test_member_is_the_same_on_one_and_on_four_devices():
    one = run(list(range(4)), mesh=parallel.make_mesh(1, 1, devices=jax.devices()[:1]))[1]
    four = run(list(range(4)), mesh=parallel.make_mesh(4, 1, devices=jax.devices()[:4]))[1]
    np.testing.assert_array_equal(one, four)


def test_zero_walks_is_the_deterministic_rollout_exactly():
    data = inputs(4)
    _, out = run([0, 1, 2], walks=0, steps=4, data=data)
    x = jnp.asarray(data["state"][None])  # [1, 1, H, W, C]
    f = jax.jit(forecast_fn)
    for n in range(4):
        y = f(x, jnp.asarray(data["forcings"][None, n:n + 1]), jnp.asarray(data["tf"][None, n:n + 2]),
              jnp.asarray(data["statics"][None]))
        for b in range(3):
            np.testing.assert_array_equal(out[n, b], np.asarray(y[0]))
        x = y[:, None]


def test_lead_chunks_continue_the_same_trajectory():
    """Two calls of 2 steps (carrying the states, step0 = 2 for the second) equal one call of 4 steps."""
    data = inputs(4)
    _, whole = run([0, 1], steps=4, data=data)
    second_data = dict(data, forcings=data["forcings"][2:], tf=data["tf"][2:])
    st, first = run([0, 1], steps=2, data=data)
    _, second = run([0, 1], steps=2, data=second_data, states=st, step0=2)
    np.testing.assert_allclose(np.concatenate([first, second]), whole, rtol=0, atol=1e-6)


def spread(out):
    """Ensemble standard deviation over members, averaged over points: out [L, B, H, W, C] → [L]."""
    return out.std(axis=1).mean(axis=(1, 2, 3))


def test_perturbation_size_follows_the_constructed_denoiser():
    """λ = 1: one walk adds N(0, s_c²) before G_φ (0.9×): the spread after step 1 is 0.9 s_c."""
    _, out = run(list(range(64)), walks=1, guidance=1.0, steps=1, sampler_steps=20)
    assert spread(out)[0] == pytest.approx(0.9 * S_COND, rel=0.08)


def test_smaller_guidance_scale_gives_larger_spread():
    s = [spread(run(list(range(16)), guidance=lam, steps=2)[1])[-1] for lam in (1.0, 0.7, 0.3, 0.0)]
    assert s[0] < s[1] < s[2] < s[3], s
    assert s[-1] > 0.5  # λ = 0 is a climatological (unit-variance) draw


def test_more_walks_give_larger_spread():
    s = [spread(run(list(range(32)), walks=k, guidance=1.0, steps=1, sampler_steps=12)[1])[0] for k in (1, 3)]
    assert s[1] / s[0] == pytest.approx(np.sqrt(3), rel=0.2), s


def test_direct_mode_samples_from_the_condition_and_adds_the_forecast_in_the_residual_variant():
    """Direct mode with history k = 2: the constructed denoiser reads the first C condition channels, i.e. the older
    input state; the residual variant adds G_φ's forecast to the sample."""
    data = inputs(1, k=2)
    _, plain = run(list(range(32)), mode="direct", k=2, steps=1, guidance=1.0, sampler_steps=20, data=data)
    _, resid = run(list(range(32)), mode="direct", k=2, steps=1, guidance=1.0, sampler_steps=20, data=data,
                   residual=True)
    older = data["state"][0]  # [H, W, C]
    np.testing.assert_allclose(plain[0].mean(0), older, atol=4 * S_COND / np.sqrt(32))
    assert plain[0].std(0).mean() == pytest.approx(S_COND, rel=0.15)
    g = np.asarray(forecast_fn(jnp.asarray(data["state"][None, 1:]), jnp.asarray(data["forcings"][None, 1:2]),
                               jnp.asarray(data["tf"][None, 1:3]), jnp.asarray(data["statics"][None])))[0]
    # the residual variant's condition ends with G_φ(X_t), but the constructed net reads the first channels: the
    # sample is the same draw, shifted by the forecast
    np.testing.assert_allclose(resid[0], plain[0] + g[None], rtol=0, atol=1e-5)


def test_invalid_specs_are_rejected():
    with pytest.raises(ValueError, match="mode"):
        RolloutSpec(mode="ensemble")
    with pytest.raises(ValueError, match="static_guidance"):
        RolloutSpec(static_guidance=0.5)  # a λ other than 1 or 0 is the program's traced argument
    with pytest.raises(ValueError, match="needs the forecaster"):
        make_rollout(None, eps_net, DDIM(steps=2).sampler(), SCHEDULE, RolloutSpec())
    with pytest.raises(ValueError, match="condition_fn"):
        make_rollout(forecast_fn, eps_net, DDIM(steps=2).sampler(), SCHEDULE, RolloutSpec(mode="direct"))
