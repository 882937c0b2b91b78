"""Per-sample normalization at forecast time (the DEF authors' setting, docs/FORECASTS.md): the initial state's own
statistics convert the forecast back to physical units, every state fed back into G_φ is standardized over space (in
the forecast and in G_φ's k-step training loss), and the corrector standardizes each solver update."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny_config import forecast_config

from def_jax.data.normalization import standardize_fields
from def_jax.diffusion import samplers as S
from def_jax.diffusion.sampler_configs import sampler_from_config
from def_jax.diffusion.schedules import make_schedule
from def_jax.errors import UserError
from def_jax.forecast.inputs import ForecastInputs
from def_jax.forecast.rollout import RolloutSpec, make_rollout
from def_jax.forecast.run import forecast
from def_jax.training.objectives import forecaster_objective

SCHEDULE = make_schedule("cosine", 1000)
INIT = np.datetime64("2024-06-02T16", "ns")


def field_moments(x):
    """Mean and standard deviation over (H, W) of x [..., H, W, C], float64: [..., C] each."""
    x = np.asarray(x, np.float64)
    return x.mean(axis=(-3, -2)), x.std(axis=(-3, -2))


def gaussian_eps(x, t):
    """The exact ε of data N(2, 3²) in every element: far from standardized, so a corrector's effect shows."""
    a, s = SCHEDULE.marginal_alpha(t), SCHEDULE.marginal_std(t)
    return s * (x - a * 2.0) / (a**2 * 9.0 + s**2)


def test_the_corrector_standardizes_every_update():
    """Without the corrector DPM-Solver++ heads for the data N(2, 3²) (7 steps: not all the way); with it the result
    is standardized per sample and channel over space, multistep and singlestep. A corrector that adds 1 moves the
    multistep result by more than 1.5: it acts on every update, not once at the end."""
    x_T = jax.random.normal(jax.random.key(0), (2, 16, 12, 3))
    plain = S.dpm_solver_pp(gaussian_eps, x_T, SCHEDULE, steps=7)
    mean, std = field_moments(plain)
    assert np.all(mean > 1.5) and np.all(std > 1.5), (mean, std)
    for method, order in (("multistep", 2), ("singlestep", 3)):
        corrected = S.dpm_solver_pp(gaussian_eps, x_T, SCHEDULE, steps=7, order=order, method=method,
                                    corrector=standardize_fields)
        mean, std = field_moments(corrected)
        np.testing.assert_allclose(mean, 0.0, atol=1e-5, err_msg=method)
        np.testing.assert_allclose(std, 1.0, atol=1e-4, err_msg=method)
    shifted = S.dpm_solver_pp(gaussian_eps, x_T, SCHEDULE, steps=7, corrector=shift_by_one)
    assert float(jnp.min(shifted - plain)) > 1.5


def shift_by_one(x):
    return x + 1.0


def test_only_dpm_solver_pp_takes_a_corrector():
    assert sampler_from_config({"name": "dpm_solver_pp", "steps": 3}, standardize_fields) is not None
    with pytest.raises(ValueError, match="the ddim sampler has no corrector"):
        sampler_from_config({"name": "ddim", "steps": 3}, standardize_fields)


def test_the_rollout_restandardizes_each_new_state():
    """G_φ that doubles and shifts the state (a real affine map): with ``restandardize`` every emitted and carried
    state is standardized over space; without it the outputs keep the affine map's mean and spread."""
    def forecast_fn(states, forcings, time_features, statics):
        return 2.0 * states[:, -1] + 5.0

    rng = np.random.default_rng(0)
    states = rng.normal(size=(2, 1, 8, 6, 3)).astype(np.float32)
    args = (jnp.arange(2, dtype=jnp.int32), jax.random.key(0), jnp.int32(0), jnp.zeros((2, 8, 6, 0)),
            jnp.zeros((4, 0)), jnp.zeros((8, 6, 0)), jnp.float32(0.0))
    for restandardize in (False, True):
        spec = RolloutSpec(walks=0, perturbation="none", lead_steps=3, restandardize=restandardize)
        carried, out = jax.jit(make_rollout(forecast_fn, None, None, None, spec))(states, *args)
        mean, std = field_moments(out)  # [3, 2, C]
        if restandardize:
            np.testing.assert_allclose(mean, 0.0, atol=1e-5)
            np.testing.assert_allclose(std, 1.0, atol=1e-5)
            np.testing.assert_allclose(carried[:, -1], out[-1])
        else:
            assert np.all(mean[-1] > 30)  # 5·(1 + 2 + 4) + 8·(the initial mean)


def test_per_sample_inputs_round_trip_to_the_store(mini_store):
    """The initial states are each field standardized over space; with the initial state's own statistics
    ``to_physical`` returns the store's state at the initial time (within float32 rounding and the catalogue's
    physical bounds, which the store's values satisfy)."""
    cfg = forecast_config(mini_store)
    cfg.data.normalization = "per_sample"
    inputs = ForecastInputs(mini_store, cfg.data, history=2)
    assert inputs.state_stats is None  # no training-period statistics are read
    states = inputs.initial_states(INIT)  # [2, H, W, C]
    mean, std = field_moments(states)
    varies = field_moments(inputs.truth(INIT, -1, 2))[1] > 0  # [2, C] (a field without echoes is constant)
    assert varies.mean() > 0.8
    np.testing.assert_allclose(mean, 0.0, atol=1e-4)
    np.testing.assert_allclose(std, np.where(varies, 1.0, 0.0), atol=1e-3)
    truth = inputs.truth(INIT, 0, 1)[0]  # [H, W, C] physical
    physical = inputs.to_physical(states[-1], inputs.initial_reference(INIT))
    scale = np.abs(truth).max(axis=(0, 1))  # [C]
    assert np.all(np.abs(physical - truth) <= 1e-5 * scale + 1e-6)
    forcings = inputs.forcings(INIT, -1, 2)  # [2, H, W, C_f]
    np.testing.assert_allclose(field_moments(forcings)[0], 0.0, atol=1e-4)
    with pytest.raises(ValueError, match="initial_reference"):
        inputs.to_physical(states[-1])


def test_per_sample_forecast_settings_are_checked_first(mini_store, tmp_path):
    """The corrector without per-sample normalization, a baseline ensemble with it, and the corrector with a sampler
    that has none are one-line errors before any model is loaded (the workdir is empty)."""
    cases = [(dict(), dict(corrector=True), "corrector re-standardizes each sample's fields"),
             (dict(normalization="per_sample"), dict(perturbation="gaussian"),
              "per-sample forecasts run def or direct"),
             (dict(normalization="per_sample"), dict(corrector=True), "the ddim sampler has no corrector")]
    for data, ensemble, message in cases:
        cfg = forecast_config(mini_store, **ensemble)
        cfg.data.update(data)
        if "ddim" in message:
            cfg.sampler.name = "ddim"
        with pytest.raises(UserError, match=message):
            forecast(cfg, tmp_path / "empty", tmp_path, [INIT], log=lambda m: None)
    assert not list(tmp_path.glob("*.nc"))


class AffineForecaster(nnx.Module):
    """G_φ(X) = a·X_newest + 5: a real nnx module with one parameter, so the objective's merge and rollout run."""

    def __init__(self):
        self.a = nnx.Param(jnp.float32(2.0))

    def __call__(self, states, forcings, time_features, statics, *, deterministic, rngs=None):
        return self.a[...] * states[:, -1] + 5.0


def test_the_k_step_loss_restandardizes_what_it_feeds_back():
    """The 2-step loss of an affine G_φ against a float64 NumPy derivation: with per-sample normalization the second
    step starts from the first prediction standardized over space (as the forecast's rollout), without it from the
    prediction itself."""
    graphdef, params = nnx.split(AffineForecaster(), nnx.Param)
    rng = np.random.default_rng(1)
    x = rng.normal(1.0, 2.0, size=(2, 1, 8, 6, 3))  # [B, k, H, W, C]
    targets = rng.normal(size=(2, 2, 8, 6, 3))  # [B, n, H, W, C]
    batch = dict(inputs=jnp.asarray(x, jnp.float32), targets=jnp.asarray(targets, jnp.float32),
                 forcings=jnp.zeros((2, 3, 8, 6, 0)), time_features=jnp.zeros((2, 3, 0)),
                 statics=jnp.zeros((2, 8, 6, 0)))

    def standardized(f):  # [B, H, W, C] over (H, W), population std
        return (f - f.mean(axis=(1, 2), keepdims=True)) / f.std(axis=(1, 2), keepdims=True)

    first = 2.0 * x[:, -1] + 5.0
    for restandardize in (False, True):
        second = 2.0 * (standardized(first) if restandardize else first) + 5.0
        expected = (np.mean((first - targets[:, 0]) ** 2) + np.mean((second - targets[:, 1]) ** 2)) / 2
        loss_fn = forecaster_objective(graphdef, rollout_steps=2, discount=1.0, deterministic=True,
                                       restandardize=restandardize)
        loss, _ = loss_fn(params, batch, jax.random.key(0), None)
        np.testing.assert_allclose(float(loss), expected, rtol=1e-5, err_msg=f"restandardize={restandardize}")
