"""Noise schedules against their standard definitions, derived here independently in float64 NumPy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from def_jax.diffusion.schedules import make_schedule

T = 1000


def reference_cosine_alphas_cumprod(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal (2021): betas_for_alpha_bar with ᾱ(t) = cos²((t + s)/(1 + s) · π/2), one step at a time."""

    def alpha_bar(t):
        return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)]
    out, prod = [], 1.0
    for b in betas:
        prod *= 1.0 - b
        out.append(prod)
    return np.array(out)


def reference_linear_alphas_cumprod(num_steps: int) -> np.ndarray:
    prod, out = 1.0, []
    for i in range(num_steps):
        beta = 1e-4 + (0.02 - 1e-4) * i / (num_steps - 1)
        prod *= 1.0 - beta
        out.append(prod)
    return np.array(out)


@pytest.mark.parametrize("name, reference", [("cosine", reference_cosine_alphas_cumprod),
                                             ("linear", reference_linear_alphas_cumprod)])
def test_alphas_cumprod_equals_standard_definition(name, reference):
    sched = make_schedule(name, T)
    np.testing.assert_allclose(sched.alphas_cumprod, reference(T), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("tau", [1, 10, 250, 500, 750, 999])
def test_cosine_closed_form(tau):
    """ᾱ(τ) = f(τ)/f(0) exactly wherever β was not clipped (every τ < T)."""
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    sched = make_schedule("cosine", T)
    assert sched.alphas_cumprod[tau - 1] == pytest.approx(f(tau) / f(0), rel=1e-9)


def test_cosine_last_beta_is_capped():
    sched = make_schedule("cosine", T)
    assert sched.betas[-1] == pytest.approx(0.999)
    assert sched.alphas_cumprod[-1] == pytest.approx(sched.alphas_cumprod[-2] * (1 - 0.999), rel=1e-12)
    assert np.all(sched.betas > 0) and np.all(sched.betas <= 0.999)


@pytest.mark.parametrize("tau", [1, 100, 500, 1000])
def test_linear_closed_form(tau):
    betas = np.linspace(1e-4, 0.02, T)
    sched = make_schedule("linear", T)
    assert sched.betas[0] == 1e-4 and sched.betas[-1] == pytest.approx(0.02)
    assert sched.alphas_cumprod[tau - 1] == pytest.approx(np.prod(1 - betas[:tau]), rel=1e-12)


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_continuous_interface_on_the_grid(name):
    """At t_n = (n + 1)/T: α_t² = ᾱ_n, α² + σ² = 1, λ = log(α/σ)."""
    sched = make_schedule(name, T)
    with jax.enable_x64(True):
        t = jnp.arange(1, T + 1) / T
        alpha, sigma = np.asarray(sched.marginal_alpha(t)), np.asarray(sched.marginal_std(t))
        lam = np.asarray(sched.marginal_lambda(t))
    np.testing.assert_allclose(alpha**2, sched.alphas_cumprod, rtol=1e-10)
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-12)
    np.testing.assert_allclose(lam, np.log(alpha / sigma), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_log_alpha_is_piecewise_linear_between_steps(name):
    sched = make_schedule(name, T)
    log_a = 0.5 * np.log(sched.alphas_cumprod)
    n = np.array([0, 3, 400, 997])
    for frac in (0.25, 0.5, 0.9):
        t = (n + 1 + frac) / T
        with jax.enable_x64(True):
            got = np.asarray(sched.marginal_log_mean_coeff(jnp.asarray(t)))
        np.testing.assert_allclose(got, (1 - frac) * log_a[n] + frac * log_a[n + 1], rtol=1e-10)
    # Below the first step (t < 1/T) the first segment is extended linearly, as DPM-Solver's interpolate_fn does.
    with jax.enable_x64(True):
        got = float(sched.marginal_log_mean_coeff(0.5 / T))
    assert got == pytest.approx(log_a[0] - 0.5 * (log_a[1] - log_a[0]), rel=1e-10)


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_lambda_monotone_and_inverse(name):
    sched = make_schedule(name, T)
    t = jnp.linspace(1e-3, 1.0, 5001)
    lam = sched.marginal_lambda(t)
    assert bool(jnp.all(jnp.diff(lam) < 0)), "λ_t must decrease strictly"
    with jax.enable_x64(True):  # σ_t saturates at 1 in float32 near t = 1
        t64 = jnp.linspace(1e-3, 1.0, 5001)
        assert bool(jnp.all(jnp.diff(sched.marginal_alpha(t64)) < 0))
        assert bool(jnp.all(jnp.diff(sched.marginal_std(t64)) > 0))
    # marginal_lambda(inverse_lambda(l)) == l over the whole sampling range, and the other way round.
    with jax.enable_x64(True):
        ls = jnp.linspace(float(sched.marginal_lambda(1.0)), float(sched.marginal_lambda(1e-3)), 777)
        np.testing.assert_allclose(sched.marginal_lambda(sched.inverse_lambda(ls)), ls, atol=1e-9)
        ts = jnp.linspace(1e-3, 1.0, 777)
        np.testing.assert_allclose(sched.inverse_lambda(sched.marginal_lambda(ts)), ts, atol=1e-9)
    # float32 (the default): limited by the resolution of t near 1 (6e-8) times dλ/dt there (cosine: ~3.5e3).
    ls32 = jnp.linspace(float(sched.marginal_lambda(1.0)), float(sched.marginal_lambda(1e-3)), 777)
    np.testing.assert_allclose(sched.marginal_lambda(sched.inverse_lambda(ls32)), ls32, atol=1e-3)


def test_jit_and_vmap_safe():
    sched = make_schedule("cosine", T)
    t = jnp.linspace(0.01, 1.0, 13)

    @jax.jit
    def f(schedule, t):  # the schedule is an ordinary (pytree) argument
        return schedule.marginal_lambda(t), schedule.inverse_lambda(schedule.marginal_lambda(t))

    lam, back = f(sched, t)
    np.testing.assert_allclose(lam, sched.marginal_lambda(t), rtol=1e-5)  # XLA fusion rounding
    np.testing.assert_allclose(back, t, atol=1e-5)
    np.testing.assert_allclose(jax.vmap(sched.marginal_std)(t), sched.marginal_std(t), rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(lambda s: s.marginal_alpha(0.3))(
        jax.tree.map(lambda a: jnp.stack([a, a]), sched)), [sched.marginal_alpha(0.3)] * 2, rtol=1e-6)


def test_add_noise_matches_forward_process():
    sched = make_schedule("linear", T)
    x0 = jnp.ones((3, 2, 2))
    eps = jnp.full((3, 2, 2), 2.0)
    tau = jnp.array([1, 500, 1000])
    got = sched.add_noise(x0, tau, eps)
    abar = sched.alphas_cumprod[np.array([0, 499, 999])]
    want = np.sqrt(abar)[:, None, None] + 2 * np.sqrt(1 - abar)[:, None, None]
    np.testing.assert_allclose(got, np.broadcast_to(want, (3, 2, 2)), rtol=1e-6)


def test_discrete_timestep_maps_grid_to_tau():
    sched = make_schedule("cosine", T)
    np.testing.assert_allclose(sched.discrete_timestep(jnp.array([1e-3, 0.5, 1.0])), [1, 500, 1000], rtol=1e-6)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown noise schedule 'cosin'"):
        make_schedule("cosin")
    with pytest.raises(ValueError, match="beta_end"):
        make_schedule("linear", beta_end=2.0)
    with pytest.raises(ValueError, match="unknown keyword"):
        make_schedule("cosine", beta_start=0.1)
    with pytest.raises(ValueError, match="num_steps"):
        make_schedule("cosine", 1)
