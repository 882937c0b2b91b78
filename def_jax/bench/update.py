"""One training update of a network alone, for the side-by-side with the authors' stack (``def-jax bench authors``).

``def-jax bench train`` times the real update of a training run (its objective, schedule, clipping, EMA, gradient
accumulation and, for ε_θ in DEF mode, the frozen G_φ inside it). Comparing that with another framework would compare
unlike programs, so this benchmark times the part both stacks share: the config's forecaster G_φ or denoiser ε_θ,
one AdamW step (``optax.adamw``, learning rate 1e-4, weight decay 0.01, torch's defaults for ``torch.optim.AdamW``)
on the mean squared error between its output and a fixed random target, for one batch of random inputs:

    loss(θ) = mean((net_θ(inputs) − target)²),   θ ← AdamW(θ, ∇loss).

ε_θ's inputs are x_τ [B, H, W, C_s], an integer step τ per sample and the condition [B, H, W, C_c]; G_φ's are the
config's history of states, forcings, time features and statics. The update is one jitted program with the
parameters and optimizer state donated, timed by its median over ``steps`` updates after one warm-up; XLA's cost
analysis gives its FLOPs (forward, backward and optimizer).
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from def_jax.bench.sampler import _flops

NETWORKS = ("forecaster", "denoiser")
LEARNING_RATE, WEIGHT_DECAY = 1e-4, 1e-2


def _inputs(kind: str, cfg: ml_collections.ConfigDict, channels, batch: int, height: int, width: int,
            rng: np.random.Generator) -> tuple[tuple[np.ndarray, ...], int]:
    """Random network inputs of one batch, and the number of input channels the U-Net sees."""
    from def_jax.models.build import denoiser_condition_channels

    def normal(*shape):
        return rng.normal(size=shape).astype(np.float32)
    c = channels.state
    if kind == "denoiser":
        cc = denoiser_condition_channels(cfg, channels)
        tau = rng.integers(1, int(cfg.diffusion.num_steps) + 1, size=batch).astype(np.float32)
        return (normal(batch, height, width, c), tau, normal(batch, height, width, cc)), cc + c
    k = int(cfg.data.history)
    return ((normal(batch, k, height, width, c), normal(batch, k, height, width, channels.forcing),
             normal(batch, k + 1, channels.time), normal(batch, height, width, channels.static)),
            channels.forecaster_inputs(k))


def run_update_bench(cfg: ml_collections.ConfigDict, kind: str, *, batch: int, height: int, width: int,
                     steps: int = 10, matmul_reference: bool = True,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Compile and time ``steps`` AdamW updates of the config's ``kind`` network (forecaster | denoiser); see the
    module docstring. A JSON-able dict; ``matmul_reference`` adds this machine's float32 matmul GFLOP/s."""
    import optax
    from flax import nnx

    from def_jax.bench.rollout import matmul_gflops
    from def_jax.models.build import build_denoiser, build_forecaster, config_channels, init_params, null_prior

    if kind not in NETWORKS:
        raise ValueError(f"network must be one of {', '.join(NETWORKS)}; got {kind!r}")
    channels = config_channels(cfg)
    build = ((lambda: build_denoiser(cfg, channels, 1, null_prior(cfg, None))) if kind == "denoiser" else
             (lambda: build_forecaster(cfg, channels, 0)))
    graphdef, params = init_params(build, None)  # initialized in one compiled program, on the default device
    dropout = float(cfg[kind].dropout) > 0
    rng = np.random.default_rng(0)
    inputs, in_channels = _inputs(kind, cfg, channels, batch, height, width, rng)
    target = rng.normal(size=(batch, height, width, channels.state)).astype(np.float32)
    optimizer = optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    opt_state = optimizer.init(params)

    def loss_fn(p, inputs, target, key):
        net = nnx.merge(graphdef, p)
        pred = net(*inputs, deterministic=not dropout, rngs=key if dropout else None)  # [B, H, W, C_s]
        return jnp.mean(jnp.square(pred.astype(jnp.float32) - target))

    def update(p, opt_state, inputs, target, key):
        loss, grads = jax.value_and_grad(loss_fn)(p, inputs, target, key)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    gflops_ref = matmul_gflops() if matmul_reference else None
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    log(f"[{kind}] compiling one AdamW update: {n_params / 1e6:.2f} M parameters, batch {batch} × {height}×{width}, "
        f"{in_channels} → {channels.state} channels")
    key = jax.random.PRNGKey(0)
    args = (params, opt_state, inputs, target, key)
    t0 = time.perf_counter()
    compiled = jax.jit(update, donate_argnums=(0, 1)).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    flops = _flops(compiled)
    params, opt_state, first_loss = compiled(*args)  # warm-up
    jax.block_until_ready(params)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        params, opt_state, loss = compiled(params, opt_state, inputs, target, key)
        jax.block_until_ready(params)
        times.append(time.perf_counter() - t0)
    update_s = statistics.median(times)
    loss = float(loss)
    if not np.isfinite(loss):
        raise FloatingPointError(f"bench update: the {kind} loss became {loss}")
    return {
        "network": kind, "parameters": n_params, "batch": batch, "grid": [height, width],
        "in_channels": in_channels, "out_channels": channels.state,
        "base_channels": int(cfg[kind].base_channels), "channel_mults": list(cfg[kind].channel_mults),
        "optimizer": f"optax.adamw(lr={LEARNING_RATE}, weight_decay={WEIGHT_DECAY})",
        "first_loss": float(first_loss), "loss": loss,
        "compile_s": compile_s, "update_times_s": times, "update_s": update_s, "updates_per_s": 1.0 / update_s,
        "samples_per_s": batch / update_s, "flops_per_update": flops,
        "gflops_per_s": flops / update_s / 1e9, "matmul_gflops_per_s": gflops_ref,
        "steps": steps, "machine": {"backend": jax.default_backend(), "jax": jax.__version__,
                                    "devices": jax.device_count()},
    }
