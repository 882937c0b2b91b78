"""U-Net building blocks (Flax NNX), NHWC, compute in ``dtype`` with float32 parameters.

* :func:`timestep_embedding` -- the sinusoidal embedding of the diffusion step (Vaswani et al. 2017; Ho et al. 2020).
* :class:`ResBlock` -- GroupNorm → SiLU → 3×3 conv, plus a projection of the time embedding, → GroupNorm → SiLU →
  dropout → 3×3 conv, with a (1×1-projected) residual connection (Ho et al. 2020, App. B).
* :class:`SelfAttention` -- multi-head self-attention over the H·W positions of a feature map, residual.
* :class:`AttentionGate` -- additive attention gate on a skip connection (Oktay et al. 2018, "Attention U-Net"):
  α = σ(ψ(ReLU(W_x x + W_g g))), the skip x is scaled by α ∈ (0, 1)^{H×W} computed from the decoder signal g.
* :class:`Downsample` (stride-2 3×3 conv) and :class:`Upsample` (nearest ×2, then 3×3 conv).
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from def_jax.models.attention import attention


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Sinusoidal embedding: [sin(t ω_k), cos(t ω_k)], ω_k = max_period^(−k/(dim/2)), k = 0..dim/2−1.

    Args:
      t: [B] (or scalar) time values, e.g. the diffusion step τ ∈ [0, T].
    Returns:
      [B, dim] float32.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)  # [half]
    args = jnp.asarray(t, jnp.float32).reshape(-1, 1) * freqs[None, :]  # [B, half]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def groups_for(channels: int, wanted: int) -> int:
    """The largest group count ≤ ``wanted`` that divides ``channels``."""
    return max(g for g in range(1, min(wanted, channels) + 1) if channels % g == 0)


class GroupNorm(nnx.GroupNorm):
    """``nnx.GroupNorm`` (same parameters, same result up to float32 rounding) for feature maps [B, ..., C], with the
    statistics reduced per channel first and then per group: [B, C] sums instead of a [B, ..., G, C/G] view, which
    XLA:CPU runs about 1.8× faster (docs/BENCHMARKS.md). Mean and variance E[x²] − E[x]² (flax's fast variance) in
    float32, y = (x − mean) · scale / sqrt(var + ε) + bias."""

    def __call__(self, x: jax.Array, *, mask: Optional[jax.Array] = None) -> jax.Array:
        if mask is not None or self.reduction_axes is not None or x.ndim < 3 or self.axis_name is not None:
            return super().__call__(x, mask=mask)
        x = x.astype(jnp.promote_types(self.dtype or x.dtype, jnp.float32))
        axes = tuple(range(1, x.ndim - 1))
        b, g = x.shape[0], self.num_groups
        m1 = jnp.mean(x, axis=axes).reshape(b, g, -1).mean(-1)  # [B, G]: E[x] per group
        m2 = jnp.mean(jnp.square(x), axis=axes).reshape(b, g, -1).mean(-1)  # [B, G]: E[x²]
        inv = jax.lax.rsqrt(jnp.maximum(m2 - jnp.square(m1), 0.0) + self.epsilon)  # [B, G]
        inv = jnp.repeat(inv, self.group_size, axis=1)  # [B, C]
        mean = jnp.repeat(m1, self.group_size, axis=1)  # [B, C]
        if self.use_scale:
            inv = inv * self.scale[...]
        shift = -mean * inv + (self.bias[...] if self.use_bias else 0.0)  # [B, C]
        expand = (slice(None),) + (None,) * len(axes) + (slice(None),)
        return x * inv[expand] + shift[expand]


def _norm(channels: int, groups: int, rngs: nnx.Rngs) -> GroupNorm:
    # Normalization statistics in float32 whatever the compute dtype.
    return GroupNorm(channels, num_groups=groups_for(channels, groups), dtype=jnp.float32, rngs=rngs)


class ResBlock(nnx.Module):
    """Residual block with a time-embedding input. x [B, H, W, C_in] → [B, H, W, C_out]."""

    def __init__(self, c_in: int, c_out: int, *, emb_dim: Optional[int], groups: int, dropout: float, dtype,
                 rngs: nnx.Rngs):
        self.norm1 = _norm(c_in, groups, rngs)
        self.conv1 = nnx.Conv(c_in, c_out, (3, 3), dtype=dtype, rngs=rngs)
        self.emb = nnx.Linear(emb_dim, c_out, dtype=dtype, rngs=rngs) if emb_dim else None
        self.norm2 = _norm(c_out, groups, rngs)
        self.dropout = nnx.Dropout(dropout)
        # The residual branch starts as zero: each block is the identity at initialization.
        self.conv2 = nnx.Conv(c_out, c_out, (3, 3), dtype=dtype, kernel_init=nnx.initializers.zeros, rngs=rngs)
        self.skip = nnx.Conv(c_in, c_out, (1, 1), dtype=dtype, rngs=rngs) if c_in != c_out else None
        self.dtype = dtype

    def __call__(self, x: jax.Array, emb: Optional[jax.Array], *, deterministic: bool,
                 rngs: Optional[jax.Array] = None) -> jax.Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)).astype(self.dtype))  # [B, H, W, C_out]
        if self.emb is not None:
            h = h + self.emb(jax.nn.silu(emb).astype(self.dtype))[:, None, None, :]
        h = jax.nn.silu(self.norm2(h)).astype(self.dtype)
        h = self.conv2(self.dropout(h, deterministic=deterministic, rngs=rngs))
        return (x if self.skip is None else self.skip(x)) + h


class SelfAttention(nnx.Module):
    """Multi-head self-attention over all H·W positions, residual. x [B, H, W, C] → same. ``implementation`` and
    ``chunk`` choose how the attention is computed (:mod:`def_jax.models.attention`), not what."""

    def __init__(self, channels: int, *, heads: int, groups: int, dtype, rngs: nnx.Rngs,
                 implementation: str = "auto", chunk: int = 1024):
        if channels % heads:
            raise ValueError(f"attention: {channels} channels do not split into {heads} heads")
        self.heads = heads
        self.norm = _norm(channels, groups, rngs)
        self.qkv = nnx.Linear(channels, 3 * channels, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(channels, channels, dtype=dtype, kernel_init=nnx.initializers.zeros, rngs=rngs)
        self.dtype = dtype
        self.implementation, self.chunk = implementation, int(chunk)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        qkv = self.qkv(self.norm(x).astype(self.dtype).reshape(b, h * w, c))  # [B, N, 3C]
        q, k, v = jnp.split(qkv.reshape(b, h * w, 3, self.heads, c // self.heads), 3, axis=2)  # [B, N, 1, h, d]
        y = attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], implementation=self.implementation,
                      query_chunk=self.chunk, key_chunk=self.chunk)  # [B, N, heads, d]
        return x + self.out(y.reshape(b, h * w, c)).reshape(b, h, w, c)


class AttentionGate(nnx.Module):
    """Additive attention gate (Oktay et al. 2018): skip x [B, H, W, C_x] scaled by α(x, g) [B, H, W, 1]."""

    def __init__(self, c_skip: int, c_gate: int, *, dtype, rngs: nnx.Rngs):
        inter = max(c_skip // 2, 1)
        self.wx = nnx.Conv(c_skip, inter, (1, 1), use_bias=False, dtype=dtype, rngs=rngs)
        self.wg = nnx.Conv(c_gate, inter, (1, 1), dtype=dtype, rngs=rngs)
        # ψ starts at zero: α = σ(0) = ½ everywhere, a uniform gate at initialization.
        self.psi = nnx.Conv(inter, 1, (1, 1), dtype=dtype, kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, x: jax.Array, g: jax.Array) -> jax.Array:
        alpha = jax.nn.sigmoid(self.psi(jax.nn.relu(self.wx(x) + self.wg(g))))  # [B, H, W, 1]
        return x * alpha.astype(x.dtype)


class Downsample(nnx.Module):
    def __init__(self, channels: int, *, dtype, rngs: nnx.Rngs):
        self.conv = nnx.Conv(channels, channels, (3, 3), strides=2, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)  # [B, H/2, W/2, C]


class Upsample(nnx.Module):
    def __init__(self, channels: int, *, dtype, rngs: nnx.Rngs):
        self.conv = nnx.Conv(channels, channels, (3, 3), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # [B, 2H, 2W, C]
        return self.conv(x)
