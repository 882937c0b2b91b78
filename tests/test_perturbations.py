"""The baseline ensembles (gaussian, correlated, bred, lagged) and DEF's exact conditional branch, in the rollout
programs, with the constructed networks of test_rollout (an affine G_φ, the exact ε of Gaussian data)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_rollout import SCHEDULE, C, H, W, eps_net, forecast_fn, inputs

from def_jax import parallel
from def_jax.diffusion.sampler_configs import DPMSolverPP
from def_jax.diffusion.samplers import static_guidance
from def_jax.forecast import perturbations as pert
from def_jax.forecast.rollout import InitialSpec, RolloutSpec, initial_inputs, make_initial, make_rollout

AMPLITUDE = np.array([0.5, 1.0, 2.0], np.float32)  # [C]


def test_random_field_has_unit_variance_and_the_gaussian_covariance():
    """Empirical variance and lag correlations of 400 fields against exp(−r²/(2L²)); L = 0 is white noise."""
    length, n = 2.5, 400
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    fields = np.asarray(jax.vmap(lambda k: pert.gaussian_random_field(k, (24, 24, 2), length))(keys), np.float64)
    assert fields.var() == pytest.approx(1.0, rel=0.03)
    centre = fields[:, 8:16, 8:16]
    for lag in (1, 2, 4):
        corr = np.mean(centre * fields[:, 8:16, 8 + lag:16 + lag]) / np.sqrt(np.mean(centre**2)
                                                                            * np.mean(fields[:, 8:16, 8 + lag:16 + lag] ** 2))
        assert corr == pytest.approx(np.exp(-lag**2 / (2 * length**2)), abs=0.04), lag
    white = np.asarray(pert.gaussian_random_field(keys[0], (6, 5, 3), 0.0))
    np.testing.assert_array_equal(white, np.asarray(jax.random.normal(keys[0], (6, 5, 3))))


def test_rescale_rms_sets_each_member_and_channel():
    delta = jax.random.normal(jax.random.PRNGKey(1), (3, H, W, C)) * jnp.arange(1, 4)
    out = np.asarray(pert.rescale_rms(delta, jnp.asarray(AMPLITUDE)))
    np.testing.assert_allclose(np.sqrt(np.mean(out**2, axis=(1, 2))), np.broadcast_to(AMPLITUDE, (3, C)), rtol=1e-5)


@functools.lru_cache(maxsize=None)
def step_program(spec):
    return jax.jit(make_rollout(forecast_fn, eps_net, DPMSolverPP(steps=6).sampler(), SCHEDULE, spec))


def run_noise(members, kind, scale, *, steps=2, length=1.5, mesh=None, data=None):
    data = data or inputs(steps)
    spec = RolloutSpec(walks=0, lead_steps=steps, perturbation=kind, correlation_length=length)
    b = len(members)
    st = np.broadcast_to(data["state"][None], (b,) + data["state"].shape)
    ids = np.asarray(members, np.int32)
    if mesh is not None:
        st, ids = (jax.device_put(a, parallel.leading_sharding(mesh)) for a in (st, ids))
    _, out = step_program(spec)(st, ids, jax.random.PRNGKey(0), jnp.int32(0), data["forcings"], data["tf"],
                                data["statics"], jnp.float32(scale), jnp.asarray(AMPLITUDE))
    return np.asarray(out)  # [L, B, H, W, C]


@pytest.mark.parametrize("kind", ["gaussian", "correlated"])
def test_noise_members_do_not_depend_on_the_ensemble_or_the_devices(kind):
    small = run_noise([0, 1], kind, 0.3)
    large = run_noise([0, 1, 2, 3], kind, 0.3)
    np.testing.assert_array_equal(small, large[:, :2])
    four = run_noise([0, 1, 2, 3], kind, 0.3, mesh=parallel.make_mesh(4, 1, devices=jax.devices()[:4]))
    np.testing.assert_array_equal(large, four)
    assert not np.allclose(large[:, 0], large[:, 1])


@pytest.mark.parametrize("kind", ["gaussian", "correlated"])
def test_noise_spread_grows_with_the_scale_and_zero_is_the_deterministic_run(kind):
    data = inputs(2)
    det = run_noise([0], kind, 0.0, data=data)
    np.testing.assert_array_equal(run_noise([0, 1], kind, 0.0, data=data)[:, 1], det[:, 0])
    spreads = [run_noise(list(range(16)), kind, s, data=data).std(axis=1).mean(axis=(1, 2)) for s in (0.1, 0.3, 1.0)]
    assert np.all(np.diff(np.stack(spreads), axis=0) > 0)  # every lead and channel
    # one step: the noise before G_φ (0.9 x + ...) has point std scale × amplitude
    np.testing.assert_allclose(spreads[2][0], 0.9 * 1.0 * AMPLITUDE, rtol=0.25)


@functools.lru_cache(maxsize=None)
def initial_program(spec):
    return jax.jit(make_initial(forecast_fn, spec))


def run_initial(members, kind, *, scale=0.5, pre_steps=0, lag=1, k=1, seed=0, slots=12):
    """The initial states from the last P+k of ``slots`` random analyses (and their forcings): the same times up to
    the initial one whatever P is."""
    spec = InitialSpec(kind=kind, history=k, forecaster_history=1, pre_steps=pre_steps, lag=lag)
    n_an, n_f, n_t = initial_inputs(spec)
    rng = np.random.default_rng(seed)
    full = dict(analyses=rng.normal(size=(slots, H, W, C)).astype(np.float32),
                forcings=rng.normal(size=(slots - 1, H, W, 1)).astype(np.float32),
                tf=rng.normal(size=(slots, 4)).astype(np.float32))
    d = dict(analyses=full["analyses"][slots - n_an:], forcings=full["forcings"][slots - 1 - n_f:],
             tf=full["tf"][slots - n_t:], statics=rng.normal(size=(H, W, 2)).astype(np.float32))
    out = initial_program(spec)(d["analyses"], jnp.asarray(members, jnp.int32), jax.random.PRNGKey(3),
                                d["forcings"], d["tf"], d["statics"], jnp.float32(scale), jnp.asarray(AMPLITUDE))
    return np.asarray(out), d


def test_lagged_members_are_earlier_analyses_run_to_the_initial_time():
    """Member b = G_φ applied b·lag times from the analysis b·lag steps back; member 0 is the analysis."""
    lag, members = 2, [0, 1, 2]
    out, d = run_initial(members, "lagged", pre_steps=(len(members) - 1) * lag, lag=lag)
    p = (len(members) - 1) * lag
    np.testing.assert_array_equal(out[0, 0], d["analyses"][p])
    f = jax.jit(forecast_fn)
    for b in members[1:]:
        x = d["analyses"][p - b * lag]
        for n in range(p - b * lag, p):
            x = np.asarray(f(jnp.asarray(x)[None, None], jnp.asarray(d["forcings"][None, n:n + 1]),
                             jnp.asarray(d["tf"][None, n:n + 2]), jnp.asarray(d["statics"][None])))[0]
        np.testing.assert_allclose(out[b, 0], x, rtol=0, atol=1e-6)
    # a member is the same inside a larger ensemble, whose longest lag makes the pre-initial scan longer
    larger, _ = run_initial([0, 1, 2, 3, 4], "lagged", pre_steps=4 * lag, lag=lag)
    np.testing.assert_array_equal(larger[:3], out)


def test_bred_vectors_come_in_pairs_at_the_amplitude():
    members = [0, 1, 2, 3]
    out, d = run_initial(members, "bred", scale=0.5, pre_steps=3)
    x0 = d["analyses"][-1]
    delta = out[:, 0] - x0  # [B, H, W, C]
    np.testing.assert_allclose(delta[0], -delta[1], atol=1e-6)
    np.testing.assert_allclose(delta[2], -delta[3], atol=1e-6)
    assert not np.allclose(delta[0], delta[2])
    np.testing.assert_allclose(np.sqrt(np.mean(delta**2, axis=(1, 2))), np.broadcast_to(0.5 * AMPLITUDE, (4, C)),
                               rtol=1e-4)
    twice, _ = run_initial(members, "bred", scale=1.0, pre_steps=3)
    np.testing.assert_allclose(twice[:, 0] - x0, 2 * delta, rtol=1e-4, atol=1e-5)  # G_φ is affine: δ scales
    alone, _ = run_initial([2, 3], "bred", scale=0.5, pre_steps=3)
    np.testing.assert_array_equal(alone, out[2:])


@pytest.mark.parametrize("kind", ["gaussian", "correlated"])
def test_initial_noise_only_touches_the_newest_state(kind):
    out, d = run_initial([0, 1, 2], kind, scale=0.5, k=2)
    np.testing.assert_array_equal(out[:, 0], np.broadcast_to(d["analyses"][0], out[:, 0].shape))
    assert not np.allclose(out[:, 1], d["analyses"][1])
    np.testing.assert_array_equal(run_initial([1], kind, scale=0.5, k=2)[0][0], out[1])


def run_def(members, guidance, conditional, eps=eps_net, steps=1):
    data = inputs(steps)
    spec = RolloutSpec(walks=1, lead_steps=steps, conditional=conditional,
                       static_guidance=static_guidance(guidance))
    program = jax.jit(make_rollout(forecast_fn, eps, DPMSolverPP(steps=12).sampler(), SCHEDULE, spec))
    st = np.broadcast_to(data["state"][None], (len(members),) + data["state"].shape)
    _, out = program(st, jnp.asarray(members, jnp.int32), jax.random.PRNGKey(0), jnp.int32(0), data["forcings"],
                     data["tf"], data["statics"], jnp.float32(guidance))
    return np.asarray(out), data


def point_mass_eps(x, tau, c):
    """The exact ε of data concentrated at c given c, of N(0, 1) given ∅ (test_rollout.eps_net with s_c = 0)."""
    t = jnp.asarray(tau) / SCHEDULE.num_steps
    a, s = SCHEDULE.marginal_alpha(t), SCHEDULE.marginal_std(t)
    null = jnp.all(c == 0, axis=(1, 2, 3), keepdims=True)
    return jnp.where(null, s * x / (a**2 + s**2), (x - a * c) / s)


def test_exact_conditional_branch_equals_a_network_that_learned_it():
    """With a network whose conditional branch is DEF's point mass, the exact branch gives the same members."""
    for lam in (0.5, 1.0):
        net, _ = run_def([0, 1, 2], lam, "network", eps=point_mass_eps)
        exact, _ = run_def([0, 1, 2], lam, "exact", eps=point_mass_eps)
        np.testing.assert_allclose(exact, net, rtol=0, atol=2e-5)
    # λ = 1: the walk returns the state up to the noise left at t_end, σ(t_end) z (x̂_0 = c at every solver step);
    # G_φ (0.9 x + ...) steps it
    at_one, data = run_def([0, 1], 1.0, "exact")
    g = np.asarray(forecast_fn(jnp.asarray(data["state"][None]), jnp.asarray(data["forcings"][None, :1]),
                               jnp.asarray(data["tf"][None, :2]), jnp.asarray(data["statics"][None])))[0]
    sigma_end = float(SCHEDULE.marginal_std(SCHEDULE.t_min))
    residual = (at_one[0] - g[None]) / (0.9 * sigma_end)  # standard normal
    assert np.abs(residual).max() < 5 and residual.std() == pytest.approx(1.0, rel=0.3)


def test_exact_conditional_calls_the_network_with_the_null_condition_only():
    calls = []

    def counting(x, tau, c):
        calls.append(c.shape)
        assert c.shape[0] == x.shape[0]
        return point_mass_eps(x, tau, c)

    run_def([0, 1], 0.5, "exact", eps=counting)
    assert calls and all(shape[0] == 1 for shape in calls)  # one member per vmapped solve, ∅ only (not [c; ∅])
    calls.clear()
    run_def([0, 1], 0.5, "network", eps=counting)
    assert calls and all(shape[0] == 2 for shape in calls)


def test_invalid_perturbations_are_rejected():
    with pytest.raises(ValueError, match="perturbation"):
        RolloutSpec(perturbation="bred")
    with pytest.raises(ValueError, match="conditional"):
        RolloutSpec(conditional="analytic")
    with pytest.raises(ValueError, match="initial perturbation"):
        InitialSpec(kind="def")
    with pytest.raises(ValueError, match="forecaster"):
        make_initial(None, InitialSpec(kind="lagged", pre_steps=2))
    with pytest.raises(ValueError, match="amplitude"):
        run = make_rollout(forecast_fn, None, None, None, RolloutSpec(walks=0, perturbation="gaussian"))
        d = inputs(1)
        run(d["state"][None], jnp.zeros(1, jnp.int32), jax.random.PRNGKey(0), jnp.int32(0), d["forcings"], d["tf"],
            d["statics"], jnp.float32(1.0))


def test_ensemble_settings_from_the_config():
    """Each ensemble reads its own settings, records exactly those, and tunes the scale it has."""
    from configs.presets import get_config
    from def_jax.errors import UserError
    from def_jax.forecast.ensemble import Ensemble
    from def_jax.tuning import best_overrides, setting_tag

    cfg = get_config("demo")
    e = Ensemble.from_config(cfg)
    assert (e.kind, e.walks, e.scale, e.conditional, e.pre_steps) == ("def", 2, 0.5, "exact", 0)
    assert e.settings() == {"perturbation": "def", "walks": 2, "guidance_scale": 0.5, "conditional": "exact"}
    cfg.ensemble.perturbation, cfg.ensemble.perturbation_scale = "correlated", 0.3
    e = Ensemble.from_config(cfg)
    assert (e.kind, e.walks, e.scale, e.uses_denoiser, e.uses_amplitude) == ("correlated", 0, 0.3, False, True)
    assert set(e.settings()) == {"perturbation", "walks", "perturbation_scale", "noise_every_step",
                                 "correlation_length_km"}
    assert e.step_spec(cfg, 1, 4, dx_km=6.0).correlation_length == pytest.approx(50.0 / 6.0)
    cfg.ensemble.noise_every_step = False
    e = Ensemble.from_config(cfg)
    assert e.step_spec(cfg, 1, 4, 6.0).perturbation == "none" and e.initial_spec(1, 1, 6.0).kind == "correlated"
    cfg.ensemble.perturbation, cfg.ensemble.members, cfg.ensemble.lag_steps = "lagged", 5, 2
    e = Ensemble.from_config(cfg)
    assert (e.scale, e.pre_steps) == (2.0, 8) and e.with_scale(3).pre_steps == 12
    with pytest.raises(UserError, match="whole number"):
        e.with_scale(1.5)
    cfg.ensemble.perturbation, cfg.ensemble.breeding_steps = "bred", 4
    assert Ensemble.from_config(cfg).pre_steps == 4
    assert best_overrides({"perturbation": "def", "walks": 2, "scale": 0.7}) == \
        "--config.ensemble.perturbation=def --config.ensemble.walks=2 --config.ensemble.guidance_scale=0.7"
    assert best_overrides({"perturbation": "lagged", "walks": 0, "scale": 2.0}) == \
        "--config.ensemble.perturbation=lagged --config.ensemble.lag_steps=2"
    assert setting_tag("gaussian", 0, 0.25) == "gaussian_scale0.25" and setting_tag("def", 1, 0.5) == "K1_lambda0.5"
