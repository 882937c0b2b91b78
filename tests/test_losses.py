"""ε-prediction loss and classifier-free-guidance condition dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from def_jax.diffusion import losses
from def_jax.diffusion.schedules import make_schedule


def test_epsilon_loss_by_hand():
    pred = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    eps = jnp.array([[0.0, 0.0], [3.0, 2.0]])
    assert float(losses.epsilon_loss(pred, eps)) == pytest.approx((1 + 4 + 0 + 4) / 4)
    # Per-sample weights (second sample counts double): Σ w·e² / Σ w.
    w = jnp.array([[1.0], [2.0]])
    assert float(losses.epsilon_loss(pred, eps, w)) == pytest.approx((1 + 4 + 2 * (0 + 4)) / 6)
    assert float(losses.epsilon_loss(eps, eps)) == 0.0


def test_epsilon_loss_is_float32_for_bf16_inputs():
    out = losses.epsilon_loss(jnp.ones((2, 3), jnp.bfloat16), jnp.zeros((2, 3), jnp.bfloat16))
    assert out.dtype == jnp.float32 and float(out) == 1.0


def test_optimal_predictor_minimizes_the_loss():
    """E‖ε̂ − ε‖² is smallest for the true ε: the exact posterior mean ε* of Gaussian data beats perturbations."""
    sched = make_schedule("cosine")
    key = jax.random.key(0)
    x0 = 0.5 * jax.random.normal(key, (20000, 4))  # data N(0, 0.25)
    x_tau, tau, eps = losses.noisy_sample(jax.random.key(1), sched, x0)
    abar = jnp.asarray(sched.alphas_cumprod, jnp.float32)[tau - 1][:, None]
    eps_star = jnp.sqrt(1 - abar) * x_tau / (abar * 0.25 + (1 - abar))  # E[ε | x_τ]
    best = float(losses.epsilon_loss(eps_star, eps))
    assert best < float(losses.epsilon_loss(1.1 * eps_star, eps))
    assert best < float(losses.epsilon_loss(0.9 * eps_star, eps))
    assert best < float(losses.epsilon_loss(jnp.zeros_like(eps), eps))


def test_noisy_sample_draws_every_step_uniformly():
    sched = make_schedule("linear")
    x0 = jnp.zeros((50000, 1))
    x_tau, tau, eps = losses.noisy_sample(jax.random.key(2), sched, x0)
    tau = np.asarray(tau)
    assert tau.min() == 1 and tau.max() == 1000 and tau.dtype == np.int32
    counts = np.bincount(tau, minlength=1001)[1:]
    assert abs(counts.mean() - 50) < 1e-9 and counts.std() < 3 * np.sqrt(50)
    np.testing.assert_allclose(x_tau, np.sqrt(1 - sched.alphas_cumprod[tau - 1])[:, None] * eps, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_condition_dropout_rate_and_per_sample_zeros(p):
    n = 20000
    cond = jnp.ones((n, 3, 2))
    out, dropped = losses.condition_dropout(jax.random.key(3), cond, p)
    dropped = np.asarray(dropped)
    assert dropped.shape == (n,)
    assert abs(dropped.mean() - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-12
    out = np.asarray(out)
    assert np.all(out[dropped] == 0.0) and np.all(out[~dropped] == 1.0)


def test_condition_dropout_custom_null():
    out, dropped = losses.condition_dropout(jax.random.key(0), jnp.ones((8, 2)), 1.0, null_condition=jnp.array(-5.0))
    assert bool(jnp.all(dropped)) and bool(jnp.all(out == -5.0))
