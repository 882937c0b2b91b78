"""Flax NNX models: the U-Net and the DEF networks built on it (forecaster G_φ, denoiser ε_θ)."""

import jax
from flax import nnx


def model_rngs(seed: int) -> nnx.Rngs:
    """Parameter-initialization randomness from the ``rbg`` PRNG.

    Initializers draw hundreds of differently shaped random arrays; with the default threefry PRNG compiling that
    program dominated model start-up on CPU (measured for a small U-Net: 9.2 s against 4.2 s). rbg keeps splitting
    semantics sound and is deterministic given the seed; it is only used to initialize weights.
    """
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))
