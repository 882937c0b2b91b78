"""Self-attention four ways (def_jax.models.attention): the blocked form (CPU) and the chunked, memory-efficient form
equal XLA's and a float64 NumPy reference, values and gradients; the chunked one never builds the N² score matrix
(XLA's compiled memory analysis); the U-Nets compute the same with any; ``auto`` picks per backend."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from def_jax.models.attention import attention, blocked_attention, chunked_attention, resolve


def reference(q, k, v):
    """softmax(q kᵀ / sqrt(d)) v in float64 NumPy, [B, N, h, d]."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def qkv(n=100, b=2, h=2, d=8, seed=0, scale=2.0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    return tuple(scale * jax.random.normal(kk, (b, n, h, d), jnp.float32) for kk in keys)


@pytest.mark.parametrize("chunks", [(32, 24), (100, 100), (7, 100), (1, 1)])
def test_chunked_equals_xla_and_float64(chunks):
    q, k, v = qkv()  # 100 tokens: the chunks do not divide them (padded keys must not count)
    expected = reference(q, k, v)
    chunked = chunked_attention(q, k, v, query_chunk=chunks[0], key_chunk=chunks[1])
    blocked = blocked_attention(q, k, v, queries=chunks[0])  # queries padded to whole blocks, then dropped
    xla = attention(q, k, v, implementation="xla")
    np.testing.assert_allclose(np.asarray(xla), expected, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(np.asarray(chunked), expected, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(np.asarray(blocked), expected, rtol=2e-5, atol=2e-6)


def test_chunked_gradients_equal_xla():
    q, k, v = qkv(n=70, seed=1)
    cot = jax.random.normal(jax.random.PRNGKey(9), q.shape)

    def grads(fn):
        return jax.grad(lambda a, b, c: jnp.sum(fn(a, b, c) * cot), argnums=(0, 1, 2))(q, k, v)

    ref = grads(lambda a, b, c: attention(a, b, c, implementation="xla"))
    for fn in (lambda a, b, c: chunked_attention(a, b, c, query_chunk=16, key_chunk=24),
               lambda a, b, c: blocked_attention(a, b, c, queries=16)):
        for r, g in zip(ref, grads(fn), strict=True):
            np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-5)


def test_bfloat16_inputs_keep_their_dtype():
    q, k, v = (a.astype(jnp.bfloat16) for a in qkv(n=40, seed=2, scale=1.0))
    for out in (chunked_attention(q, k, v, query_chunk=16, key_chunk=16), blocked_attention(q, k, v, queries=16)):
        assert out.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(out, np.float32), reference(q, k, v), atol=2e-2)


def test_chunked_never_builds_the_score_matrix():
    """XLA's compiled memory analysis of a training-style program (forward and backward) of N tokens: XLA's attention
    holds at least the [B, h, N, N] float32 scores (256 MiB at N = 4096) and grows 4× when N doubles; the chunked one
    needs a small fraction of that and grows about 2× (linearly in N)."""
    def temp_bytes(fn, n, b=1, h=4, d=32):
        spec = jax.ShapeDtypeStruct((b, n, h, d), jnp.float32)
        loss = lambda q, k, v: jnp.sum(fn(q, k, v) ** 2)  # noqa: E731
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(spec, spec, spec).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    xla = lambda q, k, v: attention(q, k, v, implementation="xla")  # noqa: E731
    chunked = lambda q, k, v: chunked_attention(q, k, v, query_chunk=512, key_chunk=512)  # noqa: E731
    scores = 4 * 4096 * 4096 * 4
    x1, x2 = temp_bytes(xla, 4096), temp_bytes(xla, 8192)
    c1, c2 = temp_bytes(chunked, 4096), temp_bytes(chunked, 8192)
    assert x1 >= scores and x2 / x1 > 3.5, (x1, x2)
    assert c1 < scores / 4 and c2 / c1 < 2.5, (c1, c2)


def test_auto_picks_per_backend():
    assert resolve("auto", jnp.float32, 64, backend="cpu") == "blocked"
    assert resolve("auto", jnp.bfloat16, 64, backend="gpu") == "cudnn"
    assert resolve("auto", jnp.float32, 64, backend="gpu") == "chunked"  # cuDNN's fused kernel needs 16-bit inputs
    assert resolve("auto", jnp.bfloat16, 256, backend="gpu") == "chunked"  # and heads of at most 128
    assert resolve("auto", jnp.bfloat16, 64, backend="tpu") == "chunked"
    assert resolve("chunked", jnp.float32, 64, backend="cpu") == "chunked"
    with pytest.raises(ValueError, match="attention implementation 'flash'"):
        resolve("flash", jnp.float32, 64)


def test_unet_computes_the_same_with_either_attention():
    from def_jax.models.unet import UNet, UNetConfig

    def network(impl):
        cfg = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(0, 1),
                         num_heads=2, norm_groups=4, time_embedding_dim=16, attention=impl, attention_chunk=96)
        return lambda: UNet(3, 3, cfg, time_conditioned=True, rngs=nnx.Rngs(0))

    graphdefs = {impl: nnx.split(nnx.eval_shape(network(impl)))[0] for impl in ("xla", "blocked", "chunked")}
    # random values for every weight (an initialized network's attention output projections are zero)
    abstract = nnx.state(nnx.eval_shape(network("xla")))
    rng = np.random.default_rng(3)
    state = jax.tree.map(lambda a: (0.3 * rng.normal(size=a.shape)).astype(a.dtype), abstract)
    x = rng.normal(size=(2, 16, 20, 3)).astype(np.float32)  # 320 tokens at level 0: chunks of 96 pad them
    t = np.array([0.3, 0.7], np.float32)
    out = {impl: jax.jit(lambda s, x_, t_, g=g: nnx.merge(g, s)(x_, t_))(state, x, t) for impl, g in graphdefs.items()}
    np.testing.assert_allclose(np.asarray(out["chunked"]), np.asarray(out["xla"]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["blocked"]), np.asarray(out["xla"]), rtol=1e-4, atol=1e-5)


def test_attention_choice_is_checked_and_not_part_of_a_checkpoints_model():
    from configs.presets import get_config

    from def_jax.configuration import ConfigError, validate
    from def_jax.training.checkpoint import ARCHITECTURE_FIELDS, config_differences

    cfg = get_config("demo")
    cfg.denoiser.attention = "flash"
    with pytest.raises(ConfigError, match="config.denoiser.attention: must be one of auto, xla, blocked, cudnn, chunked; "
                                          "got 'flash'"):
        validate(cfg)
    saved = {"denoiser": {"attention": "cudnn", "attention_chunk": 512, "remat": True, "base_channels": 8}}
    loaded = {"denoiser": {"attention": "xla", "attention_chunk": 1024, "remat": False, "base_channels": 8}}
    assert config_differences(saved, loaded, ARCHITECTURE_FIELDS["diffusion"]) == []
    loaded["denoiser"]["base_channels"] = 16
    assert config_differences(saved, loaded, ARCHITECTURE_FIELDS["diffusion"]) == ["denoiser.base_channels: 8 → 16"]


def test_info_counts_what_each_implementation_builds():
    """def-jax info's attention term: the whole score matrix with xla, 256 of its rows with blocked, one chunk² block
    with chunked, none with cudnn (hrrr_4090's bf16 denoiser: auto is cudnn on a GPU, blocked here)."""
    from configs.presets import get_config

    from def_jax.training.info import largest_attention_bytes

    cfg = get_config("hrrr_4090")
    den = cfg.denoiser  # attention at level 3 of 4 and in the middle: 1/8 resolution, 4 heads
    n = (1064 // 8) * (1800 // 8)  # 1059×1799 padded to multiples of 8
    assert largest_attention_bytes(den, (1059, 1799), 2, backend="cpu") == ("blocked", 2 * 4 * 256 * n * 4)
    assert largest_attention_bytes(den, (1059, 1799), 2, backend="gpu") == ("cudnn", 0)
    den.attention = "chunked"
    assert largest_attention_bytes(den, (1059, 1799), 2, backend="gpu") == ("chunked", 2 * 4 * 1024 * 1024 * 4)
    den.attention = "xla"
    assert largest_attention_bytes(den, (1059, 1799), 2, backend="cpu") == ("xla", 2 * 4 * n * n * 4)
