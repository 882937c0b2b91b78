"""The stationary Gaussian climate prior (def_jax/diffusion/spectral.py) against float64 NumPy derivations, and the
power spectrum that def-jax stats writes."""

import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from def_jax.diffusion import spectral
from def_jax.diffusion.schedules import make_schedule

EDGES = spectral.BIN_EDGES


def test_binned_cross_spectrum_by_hand():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 6, 8, 2))
    sums, modes = spectral.binned_cross_spectrum(x)
    bins = spectral.radial_bins((6, 8))
    expect, count = np.zeros_like(sums), np.zeros(len(EDGES) - 1)
    for n in range(3):
        f = [np.fft.fft2(x[n, :, :, c]) / np.sqrt(48) for c in range(2)]
        for i in range(6):
            for j in range(8):
                b = bins[i, j]
                for c in range(2):
                    for d in range(2):
                        expect[b, c, d] += (f[c][i, j] * np.conj(f[d][i, j])).real
                count[b] += 1
    np.testing.assert_allclose(sums, expect, atol=1e-12)
    np.testing.assert_array_equal(modes, count)
    # Parseval: the traces add up to the sum of squares
    assert np.trace(sums, axis1=1, axis2=2).sum() == pytest.approx(np.sum(x**2))


def wiener_reference(x, cov, modes, a, s):
    """x̂_0 = α Σ (α² Σ + σ² I)⁻¹ X per FFT mode, Σ of the nearest bin with modes, by linear solves (float64)."""
    h, w, c = x.shape
    xf = np.fft.fft2(np.moveaxis(x, -1, 0), norm="ortho")  # [C, H, W]
    bins = spectral.radial_bins((h, w))
    have = np.flatnonzero(modes > 0)
    out = np.zeros_like(xf)
    for i in range(h):
        for j in range(w):
            k = have[np.argmin(np.abs(have - bins[i, j]))]
            sig = cov[k]
            out[:, i, j] = a * sig @ np.linalg.solve(a * a * sig + s * s * np.eye(c), xf[:, i, j])
    return np.moveaxis(np.fft.ifft2(out, norm="ortho").real, 0, -1)


def test_the_prior_is_the_wiener_filter_of_its_covariance():
    rng = np.random.default_rng(1)
    k, c = len(EDGES) - 1, 3
    m = rng.normal(size=(k, c, c))
    cov = np.einsum("kab,kcb->kac", m, m) + 0.1 * np.eye(c)  # symmetric positive definite per bin
    modes = np.ones(k)
    modes[5] = 0  # a bin without modes takes its neighbour's Σ
    prior = spectral.SpectralPrior.from_covariance(cov, modes)
    sched = make_schedule("cosine")
    x = rng.normal(size=(2, 10, 12, c)).astype(np.float32)
    for tau in (20, 400):
        t = tau / 1000
        a, s = float(sched.marginal_alpha(t)), float(sched.marginal_std(t))
        got = np.asarray(prior.denoise(jnp.asarray(x), jnp.full(2, a), jnp.full(2, s)))
        for n in range(2):
            np.testing.assert_allclose(got[n], wiener_reference(x[n].astype(np.float64), cov, modes, a, s),
                                       rtol=1e-4, atol=1e-4)
    white = spectral.SpectralPrior.white(c)
    a, s = jnp.full(2, 0.6), jnp.full(2, 0.8)
    np.testing.assert_allclose(np.asarray(white.eps(jnp.asarray(x), a, s)), 0.8 * x, rtol=1e-5, atol=1e-6)
    assert prior == spectral.SpectralPrior.from_covariance(cov, modes) and prior != white
    assert hash(prior) == hash(spectral.SpectralPrior.from_covariance(cov, modes))


def test_the_prior_denoises_smooth_fields_better_than_white_noise():
    """On spatially correlated fields whose channels are coupled, the prior estimated from samples of them beats
    σ_τ x_τ (the white prior) at every noise level: the ε-loss of the exact Gaussian posterior is lower."""
    from def_jax.forecast.perturbations import gaussian_random_field

    import jax

    keys = jax.random.split(jax.random.PRNGKey(0), 160)
    base = np.asarray(jax.vmap(lambda kk: gaussian_random_field(kk, (16, 16, 2), 2.0))(keys), np.float64)
    x = np.concatenate([base, base[..., :1] + 0.1 * base[..., 1:]], axis=-1)  # [N, 16, 16, 3], channel 2 ≈ 0
    train, test = x[:128], x[128:]
    sums, modes = spectral.binned_cross_spectrum(train)
    prior = spectral.SpectralPrior.from_covariance(sums / np.maximum(modes, 1)[:, None, None], modes)
    sched = make_schedule("cosine")
    rng = np.random.default_rng(2)
    for tau, most in ((5, 0.8), (100, 0.5), (500, 0.5)):  # at τ = 5 the fields' (non-periodic) edges dominate
        t = tau / 1000
        a, s = float(sched.marginal_alpha(t)), float(sched.marginal_std(t))
        eps = rng.normal(size=test.shape)
        x_tau = (a * test + s * eps).astype(np.float32)
        n = len(test)
        spectral_eps = np.asarray(prior.eps(jnp.asarray(x_tau), jnp.full(n, a), jnp.full(n, s)))
        loss_spectral = np.mean((spectral_eps - eps) ** 2)
        loss_white = np.mean((s * x_tau - eps) ** 2)
        assert loss_spectral < most * loss_white, (tau, loss_spectral, loss_white)


def test_stats_writes_the_state_power_spectrum(mini_store):
    """The store's spectrum is symmetric, positive semi-definite per bin, of the catalogue's state channels, and by
    Parseval its traces × modes add up to the sum of squares of the normalized states of the slots it used."""
    import json

    from def_jax.data import schema
    from def_jax.data.source import WindowSource

    ds = xr.open_zarr(mini_store, consolidated=False)
    cov = ds[schema.SPECTRAL_COVARIANCE].values
    modes = ds[schema.SPECTRAL_MODES].values
    src = WindowSource(mini_store, split="train", period=ds.attrs["stats_train_period"])
    assert json.loads(ds[schema.SPECTRAL_COVARIANCE].attrs["channels"]) == list(src.state_channels)
    np.testing.assert_allclose(cov, np.swapaxes(cov, 1, 2), atol=1e-10)
    assert np.linalg.eigvalsh(cov[modes > 0]).min() > -1e-8
    slots = int(ds[schema.SPECTRAL_COVARIANCE].attrs["slots"])
    assert modes.sum() == slots * 32 * 32
    prior = spectral.SpectralPrior.from_covariance(cov, modes)
    assert prior.channels == len(src.state_channels)
    total = np.sum(np.trace(cov, axis1=1, axis2=2) * modes)  # Σ over slots, points, channels of x²
    assert total / (slots * 32 * 32 * len(src.state_channels)) == pytest.approx(1.0, rel=0.3)  # ~unit variance
