"""``def-jax info``: parameter counts, FLOPs per forward, and the memory of one training step -- without data or
running anything (abstract shapes only; XLA compiles the programs and reports their cost and memory analyses).

Channel counts come from the config's catalogue and statics, the grid from ``data.crop_shape`` (training) or
``data.grid_shape`` (or ``--grid``). Memory: see :func:`step_memory` -- an estimate built from exact pieces (what the
state, gradients and batch occupy; the activations JAX keeps for the backward pass, from ``jax.vjp``'s residuals; the
largest attention matrix), beside XLA's compiled analysis for this backend.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from def_jax.errors import UserError
from def_jax.models.attention import BLOCKED_QUERIES
from def_jax.models.attention import resolve as resolve_attention
from def_jax.models.build import build_denoiser, build_forecaster, config_channels, null_prior
from def_jax.models.networks import Channels
from def_jax.models.unet import DTYPES, UNetConfig
from def_jax.training import objectives
from def_jax.training.run import needs_forecaster, training_objective
from def_jax.training.state import init_train_state, make_optimizer, make_train_step

GB = 1024**3


def _count(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return cost or {}


def _abstract_batch(cfg: Any, kind: str, ch: Channels, grid: tuple[int, int], micro: int, history: int,
                    lead: int) -> dict:
    h, w = grid
    f32 = jnp.float32
    s = jax.ShapeDtypeStruct
    return {
        "inputs": s((micro, history, h, w, ch.state), f32),
        "targets": s((micro, lead, h, w, ch.state), f32),
        "forcings": s((micro, history + lead, h, w, ch.forcing), f32),
        "time_features": s((micro, history + lead, ch.time), f32),
        "statics": s((micro, h, w, ch.static), f32),
    }


def model_report(cfg: Any, kind: str, grid: tuple[int, int], *, memory: bool, batch: Optional[int] = None,
                 remat: Optional[bool] = None, compiled: bool = True) -> dict:
    """Parameters, GFLOPs per forward (batch 1) and, if ``memory``, the training step's memory (:func:`step_memory`;
    ``compiled``: with XLA's analysis of the compiled step)."""
    ch = config_channels(cfg)
    cfg = cfg.copy_and_resolve_references()
    section = "forecaster" if kind == "forecaster" else "denoiser"
    if remat is not None:
        with cfg.unlocked():
            cfg[section].remat = remat
    def builder(c):
        if kind == "forecaster":
            return lambda: build_forecaster(c, ch, 0)
        return lambda: build_denoiser(c, ch, 0, null_prior(c, None))

    history = cfg.diffusion.direct_history if kind != "forecaster" and cfg.diffusion.mode == "direct" \
        else cfg.data.history
    model = nnx.eval_shape(builder(cfg))
    graphdef, params = nnx.split(model)
    h, w = grid
    one = _abstract_batch(cfg, kind, ch, grid, 1, history, 1)
    if kind == "forecaster":
        def forward(p, b, g):
            return objectives.forecast_step(nnx.merge(g, p), b["inputs"], b, 0, deterministic=True)
    else:
        cond_ch = model.condition_channels

        def forward(p, b, g):
            x = b["inputs"][:, -1]
            c = jnp.zeros((1, h, w, cond_ch), jnp.float32)
            return nnx.merge(g, p)(x, jnp.ones((1,)), c)
    # FLOPs are counted on the same network with XLA's attention: the chunked form (and the blocked one beyond
    # BLOCKED_UNROLL blocks) computes the same products in a loop, which XLA's cost analysis counts once instead of
    # once per iteration
    flop_cfg = cfg.copy_and_resolve_references()
    flop_cfg[section].attention = "xla"
    flop_graphdef = nnx.split(nnx.eval_shape(builder(flop_cfg)))[0]
    fwd = jax.jit(lambda p, b: forward(p, b, flop_graphdef)).lower(params, one).compile()
    report = {"model": kind, "grid": list(grid), "parameters": _count(params),
              "gflops_per_forward": _cost(fwd).get("flops", float("nan")) / 1e9,
              "channels": {"state": ch.state, "forcing": ch.forcing, "static": ch.static},
              "widths": list(UNetConfig.from_config(cfg[section]).widths)}
    if memory:
        report.update(step_memory(cfg, kind, graphdef, params, ch, grid, history, batch, compiled=compiled))
    return report


def _bytes(tree) -> int:
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def largest_attention_bytes(cfg_model: Any, grid: tuple[int, int], batch: int,
                            backend: Optional[str] = None) -> tuple[str, int]:
    """The attention implementation on ``backend`` (default: this one) and the bytes of the largest transient it
    builds at once, in float32: ``xla`` the whole score matrix, batch × heads × N² (N the tokens at the finest
    attended level; the middle block attends at the coarsest); ``blocked`` one block of query rows of it, batch ×
    heads × 256 × N; ``chunked`` one block, batch × heads × query chunk × key chunk; ``cudnn`` none (the fused kernel
    keeps its blocks on chip)."""
    ucfg = UNetConfig.from_config(cfg_model)
    m = ucfg.multiple
    h, w = -(-grid[0] // m) * m, -(-grid[1] // m) * m
    levels = list(ucfg.attention_levels) + ([len(ucfg.channel_mults) - 1] if ucfg.mid_attention else [])
    head_dim = min(ucfg.widths[lv] for lv in levels) // ucfg.num_heads if levels else 0
    impl = resolve_attention(ucfg.attention, DTYPES[ucfg.dtype], head_dim, backend)
    if not levels or impl == "cudnn":
        return impl, 0
    n = (h // 2 ** min(levels)) * (w // 2 ** min(levels))
    if impl == "chunked":
        c = min(int(ucfg.attention_chunk), n)
        return impl, batch * ucfg.num_heads * c * c * 4
    if impl == "blocked":
        return impl, batch * ucfg.num_heads * min(BLOCKED_QUERIES, n) * n * 4
    return impl, batch * ucfg.num_heads * n * n * 4


def step_memory(cfg: Any, kind: str, graphdef, params, ch: Channels, grid, history: int,
                batch: Optional[int], compiled: bool = True) -> dict:
    """Memory of one update step (nothing is executed; with ``compiled`` False nothing is compiled either).

    * ``static``: parameters, gradients, optimizer state, EMA, frozen forecaster and the batch -- exact.
    * ``activations``: what the backward pass keeps, from the residuals of ``jax.vjp`` of the loss -- exact for JAX's
      plan, and reflecting ``remat``.
    * ``attention``: the largest transient of the attention implementation (:func:`largest_attention_bytes`): the
      whole score matrix with ``xla``, one block of it with ``chunked``, none with ``cudnn``. ``remat`` does not
      remove it. (What the backward pass keeps of the attention is in ``activations``: the probabilities with
      ``xla``, only q, k, v with ``chunked``.)
    * ``estimate`` = static + activations + 2 × attention: a device-independent estimate of the peak.
    * ``xla_cpu``: XLA's compiled memory analysis on this backend (its CPU scheduler is not memory-aware: it does not
      exploit rematerialization, so it overstates remat runs); only with ``compiled``.
    """
    tcfg = cfg.training[kind]
    micro = batch or int(tcfg.batch_size)
    lead = max(1, int(tcfg.rollout_steps)) if kind == "forecaster" else 1
    one = _abstract_batch(cfg, kind, ch, grid, micro, history, lead)
    batches = {k: jax.ShapeDtypeStruct((int(tcfg.grad_accum),) + v.shape, v.dtype) for k, v in one.items()}
    optimizer, schedule = make_optimizer(tcfg, 1000)
    ema = float(tcfg.ema_decay)
    state = jax.eval_shape(lambda p: init_train_state(p, optimizer, seed=0, ema_decay=ema), params)
    frozen = f_graphdef = None
    if kind == "diffusion" and needs_forecaster(cfg):
        f_graphdef, frozen = nnx.split(nnx.eval_shape(lambda: build_forecaster(cfg, ch, 0)))
    loss_fn = training_objective(kind, cfg, graphdef, f_graphdef, rollout_steps=lead)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    residuals = jax.eval_shape(lambda p, b, k, f: jax.vjp(lambda q: loss_fn(q, b, k, f)[0], p)[1],
                               params, one, key, frozen)
    static = _bytes(state) + _bytes(params) + _bytes(batches) + _bytes(frozen)  # state + gradients + inputs
    activations = _bytes(residuals) - _bytes(params)  # the vjp closure also holds the parameters
    section = "forecaster" if kind == "forecaster" else "denoiser"
    impl, attention = largest_attention_bytes(cfg[section], grid, micro)
    if impl == "cudnn" and jax.default_backend() == "cpu":
        raise UserError(f"config.{section}.attention: cudnn attention compiles only on an NVIDIA GPU; on this CPU "
                        f"estimate with --config.{section}.attention=chunked (no score matrix either)")
    report = {"micro_batch": micro, "grad_accum": int(tcfg.grad_accum), "remat": bool(cfg[section].remat),
              "memory_static_gb": static / GB, "memory_activations_gb": activations / GB,
              "attention": impl, "memory_attention_gb": attention / GB,
              "memory_estimate_gb": (static + activations + 2 * attention) / GB}
    if compiled:
        step = jax.jit(make_train_step(loss_fn, optimizer, schedule, ema_decay=ema), donate_argnums=0)
        mem = step.lower(state, batches, frozen).compile().memory_analysis()
        args, temp, out, alias = (int(getattr(mem, f"{n}_size_in_bytes", 0)) for n in
                                  ("argument", "temp", "output", "alias"))
        report["memory_xla_cpu_gb"] = (args + temp + out - alias) / GB
    return report


def format_report(r: dict) -> str:
    lines = [f"{r['model']}: {r['parameters'] / 1e6:.2f} M parameters, widths {r['widths']}, "
             f"{r['gflops_per_forward']:.2f} GFLOP per forward on a {r['grid'][0]}×{r['grid'][1]} grid (batch 1); "
             f"channels state {r['channels']['state']}, forcing {r['channels']['forcing']}, "
             f"static {r['channels']['static']}"]
    if "memory_estimate_gb" in r:
        lines.append(f"  one training step (micro-batch {r['micro_batch']} × {r['grad_accum']} accumulation, "
                     f"remat {r['remat']}): ≈ {r['memory_estimate_gb']:.2f} GiB = static {r['memory_static_gb']:.2f}"
                     f" (weights, gradients, optimizer, EMA, batch) + activations {r['memory_activations_gb']:.2f}"
                     f" + 2 × attention scores {r['memory_attention_gb']:.2f} ({r['attention']} attention)"
                     + (f"; XLA:CPU compiled {r['memory_xla_cpu_gb']:.2f} GiB" if "memory_xla_cpu_gb" in r
                        else ""))
    return "\n".join(lines)
