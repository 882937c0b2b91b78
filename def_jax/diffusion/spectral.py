"""A stationary Gaussian model of the climate and its exact denoiser: the unconditional prior of ε_θ.

The model: a normalized state x [H, W, C] whose orthonormal 2-D Fourier coefficients X(f) = FFT2(x)(f)/sqrt(HW)
are independent across frequencies with the cross-channel covariance

    E[X(f) X(f)^H] = Σ(|f|)   (real, symmetric, C × C),

constant within bins of the radial frequency |f| (cycles per grid point, :data:`BIN_EDGES`): a field that is
stationary and isotropic in space, with any correlation between channels at each scale. Under the VP forward process
x_τ = α x_0 + σ ε, the posterior mean of x_0 (the Wiener filter) and the matching noise prediction are, per frequency,

    X̂_0(f) = α Σ (α² Σ + σ² I)⁻¹ X_τ(f) = U diag(α λ / (α² λ + σ²)) Uᵀ X_τ(f),    ε̂ = (x_τ − α x̂_0) / σ,

with Σ = U diag(λ) Uᵀ in each bin. For Σ = I (white, unit-variance data) this is x̂_0 = α x_τ, ε̂ = σ x_τ. It is the
best ε-prediction that is linear in x_τ for data with these second moments, so ε_θ's unconditional branch starts from
it and its U-Net learns what is not Gaussian (``denoiser.null_prior = "spectral"``, docs/TRAINING.md). Σ is estimated
from the training period by ``def-jax stats`` (:func:`binned_cross_spectrum`): the real part of the averaged cross
spectra, so phase shifts between channels are not represented. Estimated on grids of any size, Σ(|f|) in cycles per
grid point applies to crops and full domains alike (edges make the FFT's fields periodic; that leakage is the same in
estimation and use on grids of similar size).
"""

from __future__ import annotations

import dataclasses
import hashlib

import jax
import jax.numpy as jnp
import numpy as np

BIN_EDGES = tuple(float(e) for e in np.linspace(0.0, 0.75, 25))  # cycles per grid point; |f| ≤ √½ ≈ 0.707


def radial_bins(shape: tuple[int, int], edges=BIN_EDGES) -> np.ndarray:
    """The bin of each 2-D FFT mode of an [H, W] grid by its radial frequency |f| = sqrt(f_y² + f_x²). [H, W] int."""
    h, w = shape
    f = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :])
    return np.clip(np.digitize(f, np.asarray(edges)) - 1, 0, len(edges) - 2)


def binned_cross_spectrum(x: np.ndarray, edges=BIN_EDGES) -> tuple[np.ndarray, np.ndarray]:
    """Sums of Re(X(f) X(f)^H) over the modes of each bin and the samples: x [N, H, W, C] → (sums [K, C, C] float64,
    modes [K] counted over the samples). Σ = sums / modes (bins with modes)."""
    n, h, w, c = x.shape
    xf = np.fft.fft2(np.moveaxis(np.asarray(x, np.float64), -1, 1), norm="ortho").reshape(n, c, h * w)  # [N, C, M]
    bins = radial_bins((h, w), edges).ravel()
    k = len(edges) - 1
    sums, modes = np.zeros((k, c, c)), np.zeros(k)
    for b in np.unique(bins):
        xb = xf[:, :, bins == b]  # [N, C, M_b]
        sums[b] = np.real(np.einsum("ncm,ndm->cd", xb, np.conj(xb)))
        modes[b] = xb.shape[0] * xb.shape[2]
    return sums, modes


@dataclasses.dataclass(frozen=True, eq=False)
class SpectralPrior:
    """Σ(|f|) by its eigendecomposition: ``eigenvalues`` [K, C] ≥ 0 and ``eigenvectors`` [K, C, C] (columns), on
    the bins of ``edges``. Compared and hashed by content (it is a static part of the network's structure)."""

    edges: tuple
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray

    @property
    def channels(self) -> int:
        return int(self.eigenvalues.shape[1])

    @property
    def digest(self) -> str:
        h = hashlib.sha1(np.asarray(self.edges).tobytes())
        h.update(np.ascontiguousarray(self.eigenvalues, np.float32).tobytes())
        h.update(np.ascontiguousarray(self.eigenvectors, np.float32).tobytes())
        return h.hexdigest()

    def __eq__(self, other) -> bool:
        return isinstance(other, SpectralPrior) and self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    @classmethod
    def white(cls, channels: int, edges=BIN_EDGES) -> "SpectralPrior":
        """Σ = I in every bin: unit-variance white noise (the denoiser is then x̂_0 = α x_τ)."""
        k = len(edges) - 1
        return cls(tuple(edges), np.ones((k, channels)), np.broadcast_to(np.eye(channels), (k, channels, channels)))

    @classmethod
    def from_covariance(cls, covariance: np.ndarray, modes: np.ndarray, edges=BIN_EDGES) -> "SpectralPrior":
        """From Σ [K, C, C] and the number of modes behind each bin [K]: a bin without modes takes the nearest
        estimated bin's Σ; negative eigenvalues (rounding) become 0."""
        cov = np.asarray(covariance, np.float64)
        have = np.flatnonzero(np.asarray(modes) > 0)
        if have.size == 0:
            raise ValueError("spectral prior: no bin has modes")
        nearest = have[np.argmin(np.abs(np.arange(len(cov))[:, None] - have[None, :]), axis=1)]
        cov = cov[nearest]
        lam, vec = np.linalg.eigh(0.5 * (cov + np.swapaxes(cov, 1, 2)))  # [K, C], [K, C, C]
        return cls(tuple(edges), np.maximum(lam, 0.0), vec)

    def denoise(self, x: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
        """The posterior mean E[x_0 | x_τ = x] (module docstring): x [B, H, W, C], alpha, sigma [B] → [B, H, W, C]."""
        b, h, w, c = x.shape
        if c != self.channels:
            raise ValueError(f"spectral prior of {self.channels} channels applied to {c}")
        xf = jnp.fft.fft2(jnp.moveaxis(x.astype(jnp.float32), -1, 1), norm="ortho").reshape(b, c, h * w)
        bins = radial_bins((h, w), self.edges).ravel()
        order = np.argsort(bins, kind="stable")  # the modes grouped by bin: one matrix product per bin
        counts = np.bincount(bins, minlength=len(self.edges) - 1)
        xs = xf[:, :, order]  # [B, C, M]
        a2 = jnp.square(alpha.astype(jnp.float32))[:, None]  # [B, 1]
        s2 = jnp.square(sigma.astype(jnp.float32))[:, None]
        pieces, start = [], 0
        for k, n in enumerate(counts):
            if n == 0:
                continue
            u = jnp.asarray(self.eigenvectors[k], jnp.float32)  # [C, C]
            lam = jnp.asarray(self.eigenvalues[k], jnp.float32)[None]  # [1, C]
            gain = alpha.astype(jnp.float32)[:, None] * lam / (a2 * lam + s2)  # [B, C]
            seg = jnp.einsum("dc,bdm->bcm", u, xs[:, :, start:start + n])  # Uᵀ X
            pieces.append(jnp.einsum("cd,bdm->bcm", u, gain[:, :, None] * seg))  # U diag(g) Uᵀ X
            start += n
        y = jnp.concatenate(pieces, axis=2)[:, :, np.argsort(order)].reshape(b, c, h, w)
        return jnp.moveaxis(jnp.fft.ifft2(y, norm="ortho").real, 1, -1).astype(jnp.float32)

    def eps(self, x: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
        """ε̂ = (x − α x̂_0)/σ: x [B, H, W, C], alpha, sigma [B] → [B, H, W, C]."""
        a, s = alpha[:, None, None, None], sigma[:, None, None, None]
        return (x - a * self.denoise(x, alpha, sigma)) / s
