"""Scaled dot-product attention, four ways, as pure functions of q, k, v [B, N, heads, d] → [B, N, heads, d].

softmax(q kᵀ / sqrt(d)) v (Vaswani et al. 2017, eq. 1) over all N tokens, computed by

* ``xla``: ``jax.nn.dot_product_attention(implementation="xla")``: the [B, heads, N, N] score matrix is built in
  memory (and kept for the backward pass);
* ``blocked``: the same exact softmax over all N keys, for blocks of ``BLOCKED_QUERIES`` queries at a time (unrolled
  up to ``BLOCKED_UNROLL`` blocks, else ``lax.map``), with heads ahead of tokens ([B, heads, block, N] scores); what
  XLA:CPU runs fastest (docs/BENCHMARKS.md); the backward pass keeps every block's probabilities, as ``xla`` keeps
  the whole matrix;
* ``cudnn``: the same call with ``implementation="cudnn"``: cuDNN's fused (flash) kernel on NVIDIA GPUs, which never
  builds the score matrix; it needs float16/bfloat16 inputs and a head size of at most 128 (cuDNN's limits, checked by
  JAX when it compiles);
* ``chunked``: memory-efficient attention in plain JAX, on every backend (Rabe & Staats 2021, "Self-attention does
  not need O(n²) memory"; the online softmax of FlashAttention, Dao et al. 2022): queries in chunks of
  ``query_chunk``, and for each the keys in chunks of ``key_chunk`` with a running maximum m, normalizer l and
  weighted sum a,

      s = q_i k_jᵀ / sqrt(d);  m' = max(m, max_j s);  l ← l·e^{m − m'} + Σ_j e^{s − m'};  a ← a·e^{m − m'} + e^{s − m'} v_j

  and the output a / l. Nothing larger than [B, query_chunk, heads, key_chunk] exists at once, in the forward and,
  because each query chunk and each key step is rematerialized (``jax.checkpoint``), in the backward pass too.
  Tokens are padded to whole chunks; padded keys get a score of −∞.

``auto`` picks per backend (:func:`resolve`): ``blocked`` on CPU; on GPUs ``cudnn`` where its limits hold, else
``chunked``; ``chunked`` elsewhere.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "blocked", "cudnn", "chunked")
# queries per block of ``blocked``: at 1024 tokens (4 heads × 64, B = 2, one core) 256 ran in 38 ms, 128 in 45 ms,
# one block of 1024 in 104 ms (512 was not measured)
BLOCKED_QUERIES = 256
BLOCKED_UNROLL = 64  # up to this many blocks (16384 tokens) ``blocked`` is unrolled, beyond it a loop
CUDNN_DTYPES = (jnp.float16, jnp.bfloat16)
CUDNN_MAX_HEAD_DIM = 128


def resolve(implementation: str, dtype, head_dim: int, backend: str | None = None) -> str:
    """The implementation ``auto`` stands for on ``backend`` (default: JAX's) for inputs of ``dtype``; any other
    name is returned as it is."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {implementation!r}: expected one of {IMPLEMENTATIONS}")
    if implementation != "auto":
        return implementation
    backend = backend or jax.default_backend()
    if backend == "cpu":
        return "blocked"
    if backend in ("gpu", "cuda") and jnp.dtype(dtype) in [jnp.dtype(d) for d in CUDNN_DTYPES] \
            and head_dim <= CUDNN_MAX_HEAD_DIM:
        return "cudnn"
    return "chunked"


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, implementation: str = "auto", query_chunk: int = 1024,
              key_chunk: int = 1024) -> jax.Array:
    """Self-attention of q, k, v [B, N, heads, d] → [B, N, heads, d] by ``implementation`` (module docstring)."""
    impl = resolve(implementation, q.dtype, q.shape[-1])
    if impl in ("xla", "cudnn"):
        return jax.nn.dot_product_attention(q, k, v, implementation=impl)
    if impl == "blocked":
        return blocked_attention(q, k, v)
    return chunked_attention(q, k, v, query_chunk=query_chunk, key_chunk=key_chunk)


def blocked_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, queries: int = BLOCKED_QUERIES) -> jax.Array:
    """Exact attention over all keys for ``queries`` queries at a time: q, k, v [B, N, heads, d] → [B, N, heads, d]
    in q's dtype, the softmax in float32 (module docstring)."""
    b, n, h, d = q.shape
    qc = max(1, min(int(queries), n))
    nq = -(-n // qc)
    qt = _pad_tokens(q.astype(jnp.float32) * (1.0 / math.sqrt(d)), nq * qc)  # [B, nq·qc, h, d]
    qs = qt.reshape(b, nq, qc, h, d).transpose(1, 0, 3, 2, 4)  # [nq, B, h, qc, d]
    kt = k.astype(jnp.float32).transpose(0, 2, 1, 3)  # [B, h, N, d]
    vt = v.astype(jnp.float32).transpose(0, 2, 1, 3)  # [B, h, N, d]

    def block(qi):  # [B, h, qc, d] → [B, h, qc, d]
        s = jnp.einsum("bhqd,bhkd->bhqk", qi, kt)  # [B, h, qc, N]
        # the shift by the row maximum leaves the softmax unchanged, so no gradient flows through it (exact, and it
        # spares the backward pass the maximum's selection mask)
        e = jnp.exp(s - jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True)))
        return jnp.einsum("bhqk,bhkd->bhqd", e, vt) / jnp.sum(e, axis=-1, keepdims=True)

    if nq <= BLOCKED_UNROLL:  # unrolled: faster on XLA:CPU, and XLA's cost analysis counts every block
        out = jnp.stack([block(qs[i]) for i in range(nq)])  # [nq, B, h, qc, d]
    else:  # a loop keeps the program small (its FLOPs count one block in XLA's cost analysis)
        out = jax.lax.map(block, qs)
    return out.transpose(1, 0, 3, 2, 4).reshape(b, nq * qc, h, d)[:, :n].astype(q.dtype)


def _pad_tokens(x: jax.Array, n: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (0, n - x.shape[1]), (0, 0), (0, 0)))


def chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, query_chunk: int = 1024,
                      key_chunk: int = 1024) -> jax.Array:
    """Memory-efficient attention (module docstring): q, k, v [B, N, heads, d] → [B, N, heads, d] in q's dtype,
    accumulated in float32."""
    b, n, h, d = q.shape
    qc, kc = max(1, min(int(query_chunk), n)), max(1, min(int(key_chunk), n))
    nq, nk = -(-n // qc), -(-n // kc)
    scale = 1.0 / math.sqrt(d)
    qs = _pad_tokens(q.astype(jnp.float32) * scale, nq * qc).reshape(b, nq, qc, h, d).swapaxes(0, 1)  # [nq,B,qc,h,d]
    ks = _pad_tokens(k.astype(jnp.float32), nk * kc).reshape(b, nk, kc, h, d).swapaxes(0, 1)  # [nk, B, kc, h, d]
    vs = _pad_tokens(v.astype(jnp.float32), nk * kc).reshape(b, nk, kc, h, d).swapaxes(0, 1)
    valid = (jnp.arange(nk * kc) < n).reshape(nk, kc)  # [nk, kc]: real keys

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def key_step(carry, key_block):
        m, l, acc, qi = carry  # [B, qc, h], [B, qc, h], [B, qc, h, d], [B, qc, h, d]
        kj, vj, ok = key_block  # [B, kc, h, d], [B, kc, h, d], [kc]
        s = jnp.einsum("bqhd,bkhd->bqhk", qi, kj)  # [B, qc, h, kc]
        s = jnp.where(ok[None, None, None, :], s, -jnp.inf)
        m_new = jnp.maximum(m, s.max(axis=-1))
        p = jnp.exp(s - m_new[..., None])
        correction = jnp.exp(m - m_new)
        l = l * correction + p.sum(axis=-1)
        acc = acc * correction[..., None] + jnp.einsum("bqhk,bkhd->bqhd", p, vj)
        return (m_new, l, acc, qi), None

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def query_block(qi):  # [B, qc, h, d] → [B, qc, h, d]
        init = (jnp.full((b, qc, h), -jnp.inf, jnp.float32), jnp.zeros((b, qc, h), jnp.float32),
                jnp.zeros((b, qc, h, d), jnp.float32), qi)
        (_, l, acc, _), _ = jax.lax.scan(key_step, init, (ks, vs, valid))
        return acc / l[..., None]

    out = jax.lax.map(query_block, qs)  # [nq, B, qc, h, d]
    return out.swapaxes(0, 1).reshape(b, nq * qc, h, d)[:, :n].astype(q.dtype)
