"""Samplers on Gaussian data, where the optimal ε and the probability-flow ODE solution are known exactly.

For x_0 ~ N(μ, diag(s²)) the VP marginal is N(α_t μ, α_t² s² + σ_t²), hence
    ε*(x, t) = σ_t (x − α_t μ) / (α_t² s² + σ_t²),
and the probability-flow ODE is linear in x, so its flow preserves the standardized value:
    x(t_b) = α_b μ + v_b (x(t_a) − α_a μ) / v_a,   v_t = sqrt(α_t² s² + σ_t²).
Both are derived here again in float64 NumPy (independently of def_jax.diffusion.gaussian).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from def_jax.diffusion import sampler_configs as SC
from def_jax.diffusion import samplers as S
from def_jax.diffusion import solver_coefficients as sc
from def_jax.diffusion.schedules import make_schedule
from def_jax.diffusion.timesteps import time_grid

DIM = 8


def np_alpha_sigma(sched, t):
    """α_t, σ_t in float64 from the schedule's own definition: log α piecewise-linear in t between t_n = (n+1)/T."""
    log_a = 0.5 * np.log(sched.alphas_cumprod)
    T = len(log_a)
    u = t * T - 1.0
    i = int(np.clip(np.floor(u), 0, T - 2))
    la = log_a[i] + (u - i) * (log_a[i + 1] - log_a[i])
    return np.exp(la), np.sqrt(1.0 - np.exp(2 * la))


class Gaussian:
    def __init__(self, sched, seed=0, dim=DIM):
        rng = np.random.default_rng(seed)
        self.sched = sched
        self.mu = rng.uniform(-1.0, 1.0, dim)
        self.s = rng.uniform(0.3, 2.0, dim)

    def eps_fn(self, x, t):
        a, s = self.sched.marginal_alpha(t), self.sched.marginal_std(t)
        mu, sd = jnp.asarray(self.mu, x.dtype), jnp.asarray(self.s, x.dtype)
        return s * (x - a * mu) / (a**2 * sd**2 + s**2)

    def flow(self, x, t_a, t_b):
        a0, s0 = np_alpha_sigma(self.sched, t_a)
        a1, s1 = np_alpha_sigma(self.sched, t_b)
        v0, v1 = np.sqrt(a0**2 * self.s**2 + s0**2), np.sqrt(a1**2 * self.s**2 + s1**2)
        return a1 * self.mu + v1 * (np.asarray(x, np.float64) - a0 * self.mu) / v0

    def marginal(self, t):
        a, s = np_alpha_sigma(self.sched, t)
        return a * self.mu, a**2 * self.s**2 + s**2


@pytest.fixture(scope="module", params=["cosine", "linear"])
def problem(request):
    return Gaussian(make_schedule(request.param))


def x_T(n=32, seed=1, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(dtype)


def max_err(x, ref):
    return float(np.max(np.abs(np.asarray(x, np.float64) - ref)))


# --- every solver converges to the exact endpoint ----------------------------------------------------------------

SOLVERS = [
    dict(order=1, method="multistep", spacing="logSNR"),
    dict(order=2, method="multistep", spacing="logSNR"),
    dict(order=3, method="multistep", spacing="logSNR"),
    dict(order=2, method="multistep", spacing="time_uniform"),
    dict(order=2, method="multistep", spacing="time_quadratic"),
    dict(order=2, method="singlestep", spacing="logSNR"),
    dict(order=3, method="singlestep", spacing="time_uniform"),
]


# every solver on the cosine schedule; on the linear one only those whose order the convergence-order tests below
# do not measure on both schedules (multistep 3, time-quadratic spacing)
ENDPOINT_CASES = [("cosine", kw) for kw in SOLVERS] + [("linear", kw) for kw in SOLVERS
                                                      if kw["order"] == 3 and kw["method"] == "multistep"
                                                      or kw["spacing"] == "time_quadratic"]


@pytest.mark.parametrize("schedule, kw", ENDPOINT_CASES,
                         ids=lambda v: v if isinstance(v, str) else f"{v['method']}{v['order']}-{v['spacing']}")
def test_dpm_solver_pp_converges_to_exact_endpoint(schedule, kw):
    problem = Gaussian(make_schedule(schedule))
    x = x_T()
    ref = problem.flow(x, 1.0, 1e-3)
    errs = [max_err(S.dpm_solver_pp(problem.eps_fn, jnp.asarray(x), problem.sched, steps=n, **kw), ref)
            for n in (25, 100, 400)]
    assert errs[0] > errs[1] > errs[2], errs
    assert errs[2] < (0.05 if kw["order"] == 1 else 5e-3), errs


def test_ddim_converges_and_equals_first_order_dpm_solver(problem):
    x = jnp.asarray(x_T())
    ref = problem.flow(x, 1.0, 1e-3)
    errs = [max_err(S.ddim(problem.eps_fn, x, problem.sched, steps=n), ref) for n in (25, 100, 400)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.05, errs
    # DDIM (η = 0) is DPM-Solver++ order 1 written differently (DPM-Solver++ §4): the same map on the same grid.
    for spacing in ("time_uniform", "logSNR"):
        a = S.ddim(problem.eps_fn, x, problem.sched, steps=20, spacing=spacing)
        b = S.dpm_solver_pp(problem.eps_fn, x, problem.sched, steps=20, order=1, spacing=spacing)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_adaptive_converges_as_tolerance_tightens(problem):
    x = jnp.asarray(x_T())
    ref = problem.flow(x, 1.0, 1e-3)
    for order in (2, 3):
        errs, nfes = [], []
        for tol in (1e-2, 1e-4):  # local error control: the global error follows the tolerance, not exactly
            out, info = S.dpm_solver_pp_adaptive(problem.eps_fn, x, problem.sched, order=order, atol=tol, rtol=tol,
                                                 max_nfe=1000)
            assert abs(float(info.t_final) - 1e-3) < 1e-5 and int(info.accepted) > 0
            errs.append(max_err(out, ref))
            nfes.append(int(info.nfe))
        assert errs[0] > 10 * errs[1] and errs[1] < 2e-3, (order, errs)
        assert nfes[0] < nfes[1], nfes


def test_adaptive_out_of_budget_returns_nan_not_a_half_solved_sample(problem):
    out, info = S.dpm_solver_pp_adaptive(problem.eps_fn, jnp.asarray(x_T()), problem.sched, atol=1e-4, rtol=1e-4,
                                         max_nfe=6)
    assert int(info.nfe) <= 6 and float(info.t_final) > 1e-3
    assert bool(jnp.all(jnp.isnan(out)))


# --- convergence order ---------------------------------------------------------------------------------------------


def empirical_order(problem, steps, **kw):
    """Slope of log(max error) against log(steps), in float64 so that rounding does not flatten the tail."""
    with jax.enable_x64(True):
        # float64 jax arrays as schedule leaves: jit's dispatch cache keys NumPy arguments by their NumPy dtype, so
        # passing the float64 NumPy leaves both with and without x64 could reuse an executable of the other mode.
        sched64 = jax.tree.map(jnp.asarray, problem.sched)
        x = x_T(dtype=np.float64)
        ref = problem.flow(x, 1.0, 1e-3)
        errs = [max_err(S.dpm_solver_pp(problem.eps_fn, jnp.asarray(x), sched64, steps=n,
                                        lower_order_final=False, **kw), ref) for n in steps]
    return -np.polyfit(np.log(steps), np.log(errs), 1)[0], errs


# Asymptotic ranges. Uniform in t, the first steps stay large in λ until steps ≫ T: the cosine schedule's capped last
# β (0.999) makes λ fall by 3.5 within its last discrete step, so below ~16000 steps the observed order of 2M is ~1.7.
ASYMPTOTIC_STEPS = {"logSNR": [100, 200, 400], "time_uniform": [16000, 32000, 64000]}


@pytest.mark.parametrize("spacing", ["logSNR", "time_uniform"])
@pytest.mark.parametrize("order", [1, 2])
def test_multistep_convergence_order(problem, order, spacing):
    slope, errs = empirical_order(problem, ASYMPTOTIC_STEPS[spacing], order=order, spacing=spacing)
    assert abs(slope - order) < 0.1, (slope, errs)


def test_singlestep_convergence_orders(problem):
    slope, errs = empirical_order(problem, [100, 200, 400], order=2, method="singlestep")
    assert abs(slope - 2) < 0.15, (slope, errs)
    # 3S: steps ≡ 2 (mod 3) end with a 2S step, so the global order stays 3.
    slope, errs = empirical_order(problem, [200, 401, 800], order=3, method="singlestep")
    assert slope > 2.6, (slope, errs)


# --- stochastic samplers ---------------------------------------------------------------------------------------------


def test_ddim_eta_one_equals_ddpm_posterior_with_the_same_noise(problem):
    x = jnp.asarray(x_T())
    key = jax.random.key(7)
    a = S.ddim(problem.eps_fn, x, problem.sched, steps=50, eta=1.0, key=key)
    b = S.ddpm(problem.eps_fn, x, problem.sched, steps=50, key=key)
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_ddpm_ancestral_reproduces_data_mean_and_variance(problem):
    """The full chain τ = T → 1 from N(0, I): samples at t = 1/T follow the exact marginal there (≈ the data)."""
    n = 20000
    x = jax.random.normal(jax.random.key(3), (n, DIM))
    out = np.asarray(S.ddpm(problem.eps_fn, x, problem.sched, key=jax.random.key(4)), np.float64)
    mean, var = problem.marginal(1e-3)
    se_mean = np.sqrt(var / n)
    se_var = var * np.sqrt(2.0 / (n - 1))
    assert np.all(np.abs(out.mean(0) - mean) < 4.5 * se_mean), (out.mean(0) - mean) / se_mean
    assert np.all(np.abs(out.var(0) - var) < 4.5 * se_var + 0.01 * var), (out.var(0) - var) / se_var
    # ... and the data distribution itself, to within the noise left at τ = 1 (σ ≤ 0.01).
    np.testing.assert_allclose(out.mean(0), problem.mu, atol=5 * np.sqrt(var / n).max() + 0.01)
    np.testing.assert_allclose(out.std(0), problem.s, rtol=0.03)


def test_ddpm_noise_differs_between_keys_and_repeats_for_a_key(problem):
    x = jnp.asarray(x_T())
    a = S.ddpm(problem.eps_fn, x, problem.sched, key=jax.random.key(1), steps=20)
    b = S.ddpm(problem.eps_fn, x, problem.sched, key=jax.random.key(1), steps=20)
    c = S.ddpm(problem.eps_fn, x, problem.sched, key=jax.random.key(2), steps=20)
    np.testing.assert_array_equal(a, b)
    assert float(jnp.max(jnp.abs(a - c))) > 0.1


def test_denoise_to_zero_returns_the_data_prediction(problem):
    x = jnp.asarray(x_T())
    x_end = S.dpm_solver_pp(problem.eps_fn, x, problem.sched, steps=10)
    x0 = S.dpm_solver_pp(problem.eps_fn, x, problem.sched, steps=10, denoise_to_zero=True)
    t = jnp.float32(1e-3)
    want = (x_end - problem.sched.marginal_std(t) * problem.eps_fn(x_end, t)) / problem.sched.marginal_alpha(t)
    np.testing.assert_allclose(x0, want, rtol=1e-5, atol=1e-5)


# --- coefficients and grids ------------------------------------------------------------------------------------------


def test_time_grids():
    sched = make_schedule("cosine")
    for spacing in ("logSNR", "time_uniform", "time_quadratic"):
        ts = np.asarray(time_grid(sched, 10, spacing, 1.0, 1e-3))
        assert ts.shape == (11,) and ts[0] == 1.0 and ts[-1] == np.float32(1e-3) and np.all(np.diff(ts) < 0)
    lam = np.asarray(sched.marginal_lambda(time_grid(sched, 10, "logSNR", 1.0, 1e-3)))
    np.testing.assert_allclose(np.diff(lam), np.diff(lam).mean(), rtol=1e-3)
    np.testing.assert_allclose(np.sqrt(time_grid(sched, 10, "time_quadratic", 1.0, 1e-3)),
                               np.linspace(1.0, np.sqrt(1e-3), 11), rtol=1e-6)


def test_solver_orders():
    assert sc.multistep_orders(10, 2, lower_order_final=True) == [1] + [2] * 8 + [1]
    assert sc.multistep_orders(10, 3, lower_order_final=True) == [1, 2] + [3] * 6 + [2, 1]
    assert sc.multistep_orders(20, 3, lower_order_final=True) == [1, 2] + [3] * 18
    assert sc.multistep_orders(5, 2, lower_order_final=False) == [1, 2, 2, 2, 2]
    for steps in range(1, 40):
        for order in (1, 2, 3):
            assert sum(sc.singlestep_orders(steps, order)) == steps


def test_first_order_coefficients_by_hand():
    """One DPM-Solver++(1) step from s to t: A = σ_t/σ_s, B = α_t (1 − e^{−h})."""
    sched = make_schedule("linear")
    ts = jnp.array([0.8, 0.3])
    A, B = sc.multistep_coefficients(sched, ts, [1])
    (a_s, s_s), (a_t, s_t) = np_alpha_sigma(sched, 0.8), np_alpha_sigma(sched, 0.3)
    h = np.log(a_t / s_t) - np.log(a_s / s_s)
    np.testing.assert_allclose(A[0], s_t / s_s, rtol=1e-5)
    np.testing.assert_allclose(B[0], [a_t * (1 - np.exp(-h)), 0.0, 0.0], rtol=1e-5, atol=1e-7)


# --- guidance ------------------------------------------------------------------------------------------------------


def conditional_net(calls):
    """A toy conditional ε network that records the batch size of each traced call."""

    def net(x, t, c):
        calls.append(x.shape[0])
        return 0.5 * x + c * (1.0 + t)

    return net


def test_guidance_limits_and_single_batched_call():
    x = jnp.asarray(x_T(4))
    cond = jnp.asarray(np.random.default_rng(5).standard_normal((4, DIM)), jnp.float32)
    t = jnp.float32(0.4)
    calls = []
    net = conditional_net(calls)
    eps_c, eps_u = net(x, t, cond), net(x, t, jnp.zeros_like(cond))
    calls.clear()
    np.testing.assert_allclose(S.guided_eps(net, 1.0, cond)(x, t), eps_c, rtol=1e-6)
    np.testing.assert_allclose(S.guided_eps(net, 0.0, cond)(x, t), eps_u, rtol=1e-6)
    assert calls == [4, 4]  # λ = 1 and λ = 0 as Python numbers: only the needed half
    assert [S.static_guidance(v) for v in (1, 1.0, 0.0, np.float64(0.0), 0.3, jnp.float32(1.0))] == [
        1.0, 1.0, 0.0, 0.0, None, None]
    calls.clear()
    # Traced λ (no shortcut): the formula, from ONE network call on the doubled batch.
    guided = jax.jit(lambda lam, x: S.guided_eps(net, lam, cond)(x, t))
    for lam in (0.0, 0.3, 1.0, 1.7):
        np.testing.assert_allclose(guided(jnp.float32(lam), x), eps_u + lam * (eps_c - eps_u), rtol=1e-5, atol=1e-6)
    assert calls == [8], calls  # traced once, one call with batch 2B


def test_guided_sampling_runs_inside_a_sampler():
    sched = make_schedule("cosine")
    cond = jnp.ones((4, DIM))
    net = conditional_net([])
    out = S.dpm_solver_pp(S.guided_eps(net, 0.5, cond), jnp.asarray(x_T(4)), sched, steps=8)
    assert out.shape == (4, DIM) and bool(jnp.all(jnp.isfinite(out)))


# --- compilation, vmap, sharding -------------------------------------------------------------------------------------


def test_sampler_compiles_once_for_repeated_shapes():
    sched = make_schedule("cosine")
    traces = []

    def eps_fn(x, t):
        traces.append(1)  # runs only while tracing
        return 0.1 * x

    for seed in (1, 2, 3):
        S.dpm_solver_pp(eps_fn, jnp.asarray(x_T(seed=seed)), sched, steps=12)
    assert len(traces) == 1, f"eps_fn traced {len(traces)} times: the sampler recompiled"
    S.dpm_solver_pp(eps_fn, jnp.asarray(x_T(n=16)), sched, steps=12)  # a new shape compiles again
    assert len(traces) == 2


@pytest.mark.parametrize("sampler", ["multistep", "singlestep", "ddim"])
def test_sampler_under_vmap_matches_batched(problem, sampler):
    x = jnp.asarray(x_T(8))

    def solve(x):
        if sampler == "ddim":
            return S.ddim(problem.eps_fn, x, problem.sched, steps=10)
        return S.dpm_solver_pp(problem.eps_fn, x, problem.sched, steps=10, method=sampler)

    np.testing.assert_allclose(jax.vmap(solve)(x[:, None])[:, 0], solve(x), rtol=1e-5, atol=1e-6)


def conv_eps(x, t):
    """A per-sample spatial operator (3×3 box blur per channel) so that sharding the batch is meaningful."""
    k = jnp.ones((3, 3, 1, x.shape[-1]), x.dtype) / 9.0
    y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=x.shape[-1])
    return 0.3 * y * (1.0 + t)


def test_sampler_sharded_over_four_devices_matches_one_device():
    sched = make_schedule("cosine")
    x = jax.random.normal(jax.random.key(0), (8, 16, 16, 3))
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    x_sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    one = S.dpm_solver_pp(conv_eps, jax.device_put(x, jax.devices()[0]), sched, steps=10)
    four = S.dpm_solver_pp(conv_eps, x_sharded, sched, steps=10)
    assert len(four.sharding.device_set) == 4
    assert four.sharding.is_equivalent_to(x_sharded.sharding, x.ndim), four.sharding
    np.testing.assert_allclose(four, one, rtol=1e-5, atol=1e-6)


# --- argument errors ------------------------------------------------------------------------------------------------


def test_bad_arguments_are_named():
    sched = make_schedule("cosine")
    x = jnp.zeros((2, DIM))
    eps = lambda x, t: x  # noqa: E731
    with pytest.raises(ValueError, match="order"):
        S.dpm_solver_pp(eps, x, sched, steps=5, order=4)
    with pytest.raises(ValueError, match="method"):
        S.dpm_solver_pp(eps, x, sched, steps=5, method="twostep")
    with pytest.raises(ValueError, match="spacing"):
        S.dpm_solver_pp(eps, x, sched, steps=5, spacing="log")
    with pytest.raises(ValueError, match="t_end"):
        S.dpm_solver_pp(eps, x, sched, steps=5, t_end=1.5)
    with pytest.raises(ValueError, match="PRNG key"):
        S.ddim(eps, x, sched, steps=5, eta=0.5)
    with pytest.raises(ValueError, match="does not use eta"):
        SC.sampler_from_config({"name": "dpm_solver_pp", "steps": 10, "eta": 0.5})
    with pytest.raises(ValueError, match="order"):
        SC.sampler_from_config({"name": "dpm_solver_pp_adaptive", "steps": 10, "order": 1})
    with pytest.raises(ValueError, match="steps must be >= 1"):
        SC.DDIM(steps=0)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        SC.DDIM(steps=5, eta=-1.0)
    with pytest.raises(ValueError, match="x0_clip"):
        SC.DDPM(steps=5, x0_clip=0.0)
    with pytest.raises(ValueError, match="'ddim' needs steps"):
        SC.sampler_config({"name": "ddim"})
    with pytest.raises(ValueError, match="sampler must be one of"):
        SC.sampler_config({"name": "euler", "steps": 5})


def test_a_field_the_named_sampler_does_not_use_must_keep_its_default():
    """The rule of a flat ``config.sampler`` section, derived from the dataclasses' fields: for every sampler and every
    field with a default that its dataclass lacks, a changed value is rejected naming it and the default passes; the
    fields it has reach its dataclass; ``steps`` (no default) passes to the adaptive sampler, which chooses its own."""
    changed = {"order": 3, "method": "singlestep", "spacing": "time_uniform", "lower_order_final": False,
               "eta": 0.5, "atol": 1e-3, "rtol": 1e-3, "max_nfe": 50, "t_end": 2e-3, "denoise_to_zero": True,
               "x0_clip": 5.0}
    assert set(changed) == set(SC.FIELD_DEFAULTS) and SC.FIELDS == set(SC.FIELD_DEFAULTS) | {"steps"}
    for name, cls in SC.SAMPLER_CONFIGS.items():
        own = {f.name for f in dataclasses.fields(cls)}
        base = {"name": name, "steps": 7, **SC.FIELD_DEFAULTS}
        assert SC.sampler_config(base) == cls(**{k: v for k, v in base.items() if k in own})
        for field, value in changed.items():
            if field in own:
                assert getattr(SC.sampler_config(base | {field: value}), field) == value
            else:
                with pytest.raises(ValueError, match=f"sampler '{name}' does not use {field};"):
                    SC.sampler_config(base | {field: value})
    assert SC.sampler_config({"name": "dpm_solver_pp_adaptive", "steps": 999}) == SC.DPMSolverPPAdaptive()


def test_the_presets_take_the_sampler_defaults_from_the_dataclasses():
    from configs.presets import get_config

    section = get_config("era5_paper").sampler.to_dict()
    assert {k: section[k] for k in SC.FIELD_DEFAULTS} == SC.FIELD_DEFAULTS
    assert SC.sampler_config(section) == SC.DPMSolverPP(steps=section["steps"])


@pytest.mark.parametrize("name", SC.SAMPLERS)
def test_sampler_from_config_runs_every_sampler(problem, name):
    kw = {"spacing": "time_uniform"} if name in ("ddim", "ddpm") else {}
    sample = SC.sampler_from_config({"name": name, "steps": 200, **kw})
    x = jnp.asarray(x_T())
    out = sample(problem.eps_fn, x, problem.sched, jax.random.key(0))
    assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
    if name != "ddpm":  # deterministic: close to the probability-flow endpoint
        assert max_err(out, problem.flow(x, 1.0, 1e-3)) < 0.25


def test_clipped_eps_thresholds_the_data_prediction():
    """x̂_0 of the wrapped ε is clip(x̂_0, ±c); with a bound the data never reaches, samples are unchanged."""
    from def_jax.diffusion.gaussian import gaussian_eps_fn
    from def_jax.diffusion.sampler_configs import DPMSolverPP
    from def_jax.diffusion.samplers import clipped_eps, data_prediction

    sch = make_schedule("cosine", 1000)
    wild = lambda x, t: 0.3 * x + 0.5  # noqa: E731  a poor ε model: x̂_0 explodes near t = 1
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 5, 3))
    for t in (1.0, 0.5, 0.01):
        t = jnp.float32(t)
        raw = data_prediction(wild, sch, x, t)
        clipped = data_prediction(clipped_eps(wild, sch, 3.0), sch, x, t)
        # float32: the round trip through σ_t and 1/α_t (α_1 ≈ 5e-5) costs ~1e-3 absolute at t = 1
        np.testing.assert_allclose(clipped, jnp.clip(raw, -3.0, 3.0), rtol=0, atol=2e-3)
    bad = DPMSolverPP(steps=10).sampler()(wild, x, sch, None)
    good = DPMSolverPP(steps=10, x0_clip=3.0).sampler()(wild, x, sch, None)
    # the 2nd-order extrapolation of clipped x̂_0 may step slightly past c; the final σ_t x_T term is tiny
    assert float(jnp.abs(bad).max()) > 100 and float(jnp.abs(good).max()) < 3.1
    mean, std = jnp.float32(0.5), jnp.float32(0.8)
    exact = gaussian_eps_fn(sch, mean, std)
    a = DPMSolverPP(steps=10).sampler()(exact, x, sch, None)
    b = DPMSolverPP(steps=10, x0_clip=50.0).sampler()(exact, x, sch, None)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
