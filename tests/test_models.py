"""The U-Net and the DEF networks: shapes, dtypes, any grid size, remat, bf16 compute with fp32 parameters.

Models are built and applied functionally under jit (split graph definition + parameters), as training does: eager
NNX calls would compile op by op.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from def_jax.models import model_rngs
from def_jax.models.layers import groups_for, timestep_embedding
from def_jax.models.networks import Channels, Denoiser, Forecaster, forecaster_input
from def_jax.models.unet import UNet, UNetConfig

TINY = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,),
                  num_heads=2, norm_groups=4, time_embedding_dim=16)


def init(build):
    """(graphdef, params) with the parameters initialized in one compiled program."""
    return nnx.graphdef(nnx.eval_shape(build)), jax.jit(lambda: nnx.state(build()))()


def randomize(params, seed=1):
    """Non-zero parameters everywhere (the zero-initialized output layers would hide every path): N(0, 0.2²) values,
    drawn in one call and cut into the leaves (one draw per leaf would compile once per leaf shape)."""
    leaves, treedef = jax.tree.flatten(params)
    sizes = [int(x.size) for x in leaves]
    flat = 0.2 * np.asarray(jax.random.normal(jax.random.key(seed), (sum(sizes),), jnp.float32))
    pieces = np.split(flat, np.cumsum(sizes)[:-1])
    return jax.tree.unflatten(treedef, [jnp.asarray(piece.reshape(x.shape), x.dtype)
                                        for piece, x in zip(pieces, leaves, strict=True)])


@functools.partial(jax.jit, static_argnums=0, static_argnames=("deterministic",))
def apply(graphdef, params, *args, deterministic=True, rngs=None):
    return nnx.merge(graphdef, params)(*args, deterministic=deterministic, rngs=rngs)


@pytest.fixture(scope="module")
def unet():
    graphdef, params = init(lambda: UNet(5, 3, TINY, time_conditioned=True, rngs=model_rngs(0)))
    return graphdef, params, randomize(params)


@pytest.mark.parametrize("shape", [(32, 32), (13, 29), (1, 7)])
def test_any_grid_size(unet, shape):
    graphdef, _, params = unet
    x = jax.random.normal(jax.random.key(0), (2, *shape, 5))
    y = apply(graphdef, params, x, jnp.array([3.0, 900.0]))
    assert y.shape == (2, *shape, 3) and y.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(y)))


def test_output_depends_on_time_and_is_zero_at_init(unet):
    graphdef, params0, params = unet
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 5))
    assert float(jnp.abs(apply(graphdef, params0, x, 5.0)).max()) == 0.0  # zero-initialized output conv
    assert float(jnp.abs(apply(graphdef, params, x, 5.0) - apply(graphdef, params, x, 500.0)).max()) > 1e-3
    np.testing.assert_allclose(apply(graphdef, params, x, jnp.array([5.0, 5.0])), apply(graphdef, params, x, 5.0),
                               rtol=1e-6)  # a scalar step broadcasts over the batch


def test_bfloat16_compute_with_float32_parameters(unet):
    graphdef32, _, params = unet
    graphdef16 = nnx.graphdef(nnx.eval_shape(
        lambda: UNet(5, 3, dataclasses.replace(TINY, dtype="bfloat16"), time_conditioned=True, rngs=model_rngs(0))))
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype("float32")}
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 5))
    y16, y32 = apply(graphdef16, params, x, 10.0), apply(graphdef32, params, x, 10.0)
    assert y16.dtype == jnp.float32
    err = float(jnp.abs(y16 - y32).max() / jnp.abs(y32).max())
    assert 1e-4 < err < 0.1, err  # bf16 rounding is there, and small


def test_remat_gives_the_same_values_and_gradients(unet):
    graphdef, _, params = unet
    graphdef_remat = nnx.graphdef(nnx.eval_shape(
        lambda: UNet(5, 3, dataclasses.replace(TINY, remat=True), time_conditioned=True, rngs=model_rngs(0))))
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 5))

    @functools.partial(jax.jit, static_argnums=0)
    def value_and_grad(gd, p):
        return jax.value_and_grad(lambda p: jnp.sum(nnx.merge(gd, p)(x, 7.0) ** 2))(p)

    (l1, g1), (l2, g2) = value_and_grad(graphdef, params), value_and_grad(graphdef_remat, params)
    np.testing.assert_allclose(l2, l1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # O(1–10) gradients: summation order
    # under vmap inside a scan, as the rollout calls the networks (nnx.remat failed there with a trace error)
    xs = jnp.stack([x, 2 * x])  # [2, B, H, W, C]

    @functools.partial(jax.jit, static_argnums=0)
    def scanned(gd, p):
        net = nnx.merge(gd, p)
        return jax.lax.scan(lambda c, xi: (c, jax.vmap(lambda a: net(a[None], 7.0)[0])(xi)), 0, xs)[1]

    np.testing.assert_allclose(scanned(graphdef_remat, params), scanned(graphdef, params), rtol=1e-5, atol=1e-6)


def test_dropout_is_active_only_when_asked():
    graphdef, params = init(lambda: UNet(5, 3, dataclasses.replace(TINY, dropout=0.5), time_conditioned=True,
                                         rngs=model_rngs(0)))
    params = randomize(params)
    x = jax.random.normal(jax.random.key(0), (1, 16, 16, 5))
    a = apply(graphdef, params, x, 1.0, deterministic=False, rngs=jax.random.key(1))
    b = apply(graphdef, params, x, 1.0, deterministic=False, rngs=jax.random.key(2))
    assert float(jnp.abs(a - b).max()) > 1e-3
    np.testing.assert_array_equal(apply(graphdef, params, x, 1.0), apply(graphdef, params, x, 1.0))


def test_forecaster_inputs_and_increment():
    ch, k = Channels(state=3, forcing=2, static=4), 2
    graphdef, params = init(lambda: Forecaster(ch, k, TINY, predict_increment=True, rngs=model_rngs(0)))
    states = jax.random.normal(jax.random.key(0), (2, k, 12, 20, 3))
    forcings, tf, statics = jnp.ones((2, k, 12, 20, 2)), jnp.zeros((2, k + 1, 4)), jnp.ones((2, 12, 20, 4))
    x = forecaster_input(states, forcings, tf, statics)
    assert x.shape == (2, 12, 20, ch.forecaster_inputs(k)) == (2, 12, 20, 2 * 3 + 2 * 2 + 3 * 4 + 4)
    np.testing.assert_array_equal(x[..., 3:6], states[:, 1])  # time-major blocks: state at t-1, then t
    np.testing.assert_array_equal(apply(graphdef, params, states, forcings, tf, statics), states[:, -1])  # persistence
    assert apply(graphdef, randomize(params), states, forcings, tf, statics).shape == (2, 12, 20, 3)


def test_denoiser_concatenates_condition_and_noisy_state():
    graphdef, params = init(lambda: Denoiser(3, 6, TINY, rngs=model_rngs(0)))
    params = randomize(params)
    x = jax.random.normal(jax.random.key(0), (2, 10, 10, 3))
    c = jax.random.normal(jax.random.key(1), (2, 10, 10, 6))
    assert apply(graphdef, params, x, jnp.array([1.0, 999.0]), c).shape == x.shape
    diff = apply(graphdef, params, x, 5.0, c) - apply(graphdef, params, x, 5.0, jnp.zeros_like(c))
    assert float(jnp.abs(diff).max()) > 1e-3  # the condition matters


def test_embedding_and_groups():
    e = timestep_embedding(jnp.array([0.0, 10.0]), 8)
    assert e.shape == (2, 8)
    np.testing.assert_allclose(e[0], [0, 0, 0, 0, 1, 1, 1, 1], atol=1e-7)
    assert groups_for(96, 32) == 32 and groups_for(24, 32) == 24 and groups_for(20, 8) == 5
    assert UNetConfig(base_channels=256, channel_mults=(1, 1.5, 2, 3)).widths == (256, 384, 512, 768)


@pytest.mark.parametrize("shape, groups", [((2, 12, 16, 16), 8), ((3, 5, 7, 12), 3), ((2, 6, 24), 4)])
def test_group_norm_equals_flax_and_float64(shape, groups):
    """The per-channel-sums GroupNorm of the U-Nets equals nnx.GroupNorm (same parameters) and a float64 NumPy
    reference within float32 rounding, for feature maps of any rank."""
    from def_jax.models.layers import GroupNorm

    c, rng = shape[-1], np.random.default_rng(5)
    x = (3.0 * rng.normal(size=shape) + 1.5).astype(np.float32)
    scale, bias = rng.uniform(0.5, 2.0, c).astype(np.float32), rng.normal(size=c).astype(np.float32)
    mods = [cls(c, num_groups=groups, dtype=jnp.float32, rngs=nnx.Rngs(0)) for cls in (GroupNorm, nnx.GroupNorm)]
    for m in mods:
        m.scale[...], m.bias[...] = jnp.asarray(scale), jnp.asarray(bias)
    assert jax.tree.structure(nnx.state(mods[0])) == jax.tree.structure(nnx.state(mods[1]))  # checkpoints fit both
    got, flax_out = (np.asarray(jax.jit(lambda v, m=m: m(v))(x)) for m in mods)
    xg = x.astype(np.float64).reshape(shape[0], -1, groups, c // groups)  # [B, positions, G, C/G]
    mean, var = xg.mean(axis=(1, 3), keepdims=True), xg.var(axis=(1, 3), keepdims=True)
    expected = ((xg - mean) / np.sqrt(var + 1e-6)).reshape(shape) * scale + bias
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(got, flax_out, rtol=1e-5, atol=2e-5)


def test_denoiser_linear_skip_starts_as_the_plain_network_and_can_express_the_def_answer():
    """At initialization the skip path is zero (a, b start at 0), so the output is the plain U-Net's; setting
    a = 1/σ, b = −α/σ (P = I) makes the skip path alone the exact ε of DEF's c = x_0."""
    x, c = (jax.random.normal(jax.random.PRNGKey(i), (2, 12, 10, 5)) for i in (0, 1))
    plain = Denoiser(5, 5, TINY, rngs=model_rngs(3))
    skip = Denoiser(5, 5, TINY, rngs=model_rngs(3), linear_skip=True)
    np.testing.assert_array_equal(plain(x, 500.0, c), skip(x, 500.0, c))
    a, s = 0.6, 0.8  # x_τ = a x_0 + s ε
    eps = jax.random.normal(jax.random.PRNGKey(2), x.shape)
    x_tau = a * c + s * eps
    skip.skip_mlp2.kernel[...] = jnp.zeros_like(skip.skip_mlp2.kernel[...])
    skip.skip_mlp2.bias[...] = jnp.concatenate([jnp.full(5, 1 / s), jnp.full(5, -a / s)])
    skip.unet.conv_out.bias[...] = jnp.zeros_like(skip.unet.conv_out.bias[...])  # the U-Net's output is 0 at init
    np.testing.assert_allclose(skip(x_tau, 500.0, c), eps, rtol=1e-4, atol=1e-4)


def test_denoiser_exact_skip_is_the_def_answer_with_a_condition_and_sigma_x_without():
    """skip_coefficients="exact": with a zero U-Net output, ε_θ(x_τ, τ, c = x_0) is the true ε at every τ (so x̂_0 = c),
    and with c = ∅ it is σ_τ x_τ; the schedule's α_τ, σ_τ are a float64 NumPy derivation (cosine, Nichol & Dhariwal)."""
    T, s_off = 1000, 0.008
    f = lambda n: np.cos((n / T + s_off) / (1 + s_off) * np.pi / 2) ** 2  # noqa: E731
    taus = np.array([1, 250, 999])
    alpha_bar = f(taus.astype(np.float64)) / f(0.0)
    alpha, sigma = np.sqrt(alpha_bar), np.sqrt(1 - alpha_bar)
    x0 = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 6, 4))
    eps = jax.random.normal(jax.random.PRNGKey(1), x0.shape)
    x_tau = alpha[:, None, None, None] * x0 + sigma[:, None, None, None] * eps
    d = Denoiser(4, 4, TINY, rngs=model_rngs(3), linear_skip=True, skip_coefficients="exact", schedule="cosine",
                 num_steps=T)
    for p in (d.unet.conv_out.kernel, d.unet.conv_out.bias):  # the U-Net's output is 0: only the skip path is left
        p[...] = jnp.zeros_like(p[...])
    tau = jnp.asarray(taus, jnp.float32)
    np.testing.assert_allclose(d(x_tau.astype(jnp.float32), tau, x0), eps, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(d(x_tau.astype(jnp.float32), tau, jnp.zeros_like(x0)),
                               sigma[:, None, None, None] * np.asarray(x_tau), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="exact skip coefficients need DEF's condition"):
        Denoiser(4, 6, TINY, rngs=model_rngs(3), linear_skip=True, skip_coefficients="exact")


def test_denoiser_validation_separates_the_conditional_and_the_unconditional_model():
    """ε_θ's validation on standard-normal states with the U-Net's output zeroed: the conditional branch is DEF's
    exact answer (ε-loss ≈ 0), the unconditional one is σ_τ x_τ, whose expected ε-loss for N(0, 1) data is
    E‖σα x_0 − α² ε‖² = α_τ² (float64 NumPy: the band means of α² over uniform τ)."""
    from def_jax.diffusion.schedules import make_schedule
    from def_jax.training.objectives import band_name, denoiser_validation, tau_bands

    T = 1000
    schedule = make_schedule("cosine", T)
    d = Denoiser(3, 3, TINY, rngs=model_rngs(3), linear_skip=True, skip_coefficients="exact", num_steps=T)
    for p in (d.unet.conv_out.kernel, d.unet.conv_out.bias):
        p[...] = jnp.zeros_like(p[...])
    graphdef, params = nnx.split(d)
    evaluate = jax.jit(denoiser_validation(graphdef, None, schedule, mode="def", conditional="exact",
                                           forecaster_history=1))
    batch = {"inputs": jax.random.normal(jax.random.PRNGKey(0), (256, 1, 8, 8, 3))}
    out = jax.device_get(evaluate(params, batch, None))
    s_off = 0.008
    f = lambda n: np.cos((n / T + s_off) / (1 + s_off) * np.pi / 2) ** 2  # noqa: E731
    alpha2 = f(np.arange(1, T + 1, dtype=np.float64)) / f(0.0)  # ᾱ_τ = α_τ², τ = 1..T
    bands = tau_bands(T)
    assert bands == ((1, 10), (11, 100), (101, 300), (301, 600), (601, 1000))
    for lo, hi in bands:
        name = band_name((lo, hi), T)
        assert out[f"eps_c_{name}"] < 1e-4, (name, out[f"eps_c_{name}"])
        assert out[f"eps_null_{name}"] == pytest.approx(alpha2[lo - 1:hi].mean(), abs=0.03), name
    assert out["eps_null"] == pytest.approx(sum((hi - lo + 1) / T * out[f"eps_null_{band_name((lo, hi), T)}"]
                                                for lo, hi in bands), rel=1e-5)
    assert out["loss"] == pytest.approx(0.5 * (out["eps_c"] + out["eps_null"]), rel=1e-6)
