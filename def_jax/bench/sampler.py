"""``def-jax bench sampler --eps=conv|analytic``: throughput of the reverse-diffusion solvers with a stand-in
ε-network, so that the numbers are the solver's own (the default ``--eps=unet``, the config's U-Net denoiser inside
the DEF rollout, is :mod:`def_jax.bench.rollout`):

* ``conv``: a small convolutional ε-network (3×3 conv C→w, SiLU, 3×3 conv w→w plus a time embedding, SiLU,
  3×3 conv w→C), random weights passed as arguments of the compiled program (not baked-in constants);
* ``analytic``: the exact ε of Gaussian data (elementwise), which measures the solver's own overhead.

Reported: compile seconds of the whole sampler program (cold: ``def-jax bench`` leaves the persistent compilation
cache off), wall time per run, network evaluations (NFE) per second,
members × NFE per second, ms per solver step, the network's FLOPs per forward (XLA cost analysis) and achieved GFLOP/s,
and the overhead of the solver over NFE × one forward pass timed on its own.
"""

from __future__ import annotations

import platform
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from def_jax import parallel
from def_jax.diffusion.sampler_configs import DPMSolverPPAdaptive, sampler_config
from def_jax.diffusion.schedules import make_schedule

EPS_KINDS = ("conv", "analytic")


# --- stand-in ε networks ---------------------------------------------------------------------------------------


def conv_eps_init(key: jax.Array, channels: int, width: int) -> dict[str, jax.Array]:
    """He-initialized weights of the 3-layer convolutional ε-network (HWIO kernels)."""
    k1, k2, k3, k4 = jax.random.split(key, 4)

    def kernel(k, cin, cout):
        return jax.random.normal(k, (3, 3, cin, cout), jnp.float32) * np.sqrt(2.0 / (9 * cin))

    return {
        "w1": kernel(k1, channels, width),
        "w2": kernel(k2, width, width),
        "w3": kernel(k3, width, channels) * 0.1,
        "t_proj": jax.random.normal(k4, (16, width), jnp.float32) / 4.0,
    }


def _conv(x: jax.Array, w: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_eps_apply(params: dict[str, jax.Array], x: jax.Array, t: jax.Array) -> jax.Array:
    """ε(x, t) for x [B, H, W, C] and scalar t."""
    freqs = jnp.exp(jnp.linspace(0.0, np.log(1000.0), 8))
    emb = jnp.concatenate([jnp.sin(t * freqs), jnp.cos(t * freqs)]) @ params["t_proj"]  # [w]
    h = jax.nn.silu(_conv(x, params["w1"]))  # [B, H, W, w]
    h = jax.nn.silu(_conv(h, params["w2"]) + emb)
    return _conv(h, params["w3"])  # [B, H, W, C]


def gaussian_eps(schedule, data_std: float = 0.5) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
    """Exact ε*(x, t) = σ_t x / (α_t² s² + σ_t²) for N(0, s²) data (no parameters)."""

    def eps(_params, x, t):
        a, s = schedule.marginal_alpha(t), schedule.marginal_std(t)
        return (s * x / (a**2 * data_std**2 + s**2)).astype(x.dtype)

    return eps


# --- the benchmark -----------------------------------------------------------------------------------------------


def _median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    out, times = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def run_sampler_bench(
    cfg: ml_collections.ConfigDict,
    *,
    batch: int,
    height: int,
    width: int,
    channels: int,
    eps_kind: str = "conv",
    net_width: int = 64,
    repeats: int = 3,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Compile and time the configured sampler on a [batch, height, width, channels] state. Returns the results."""
    if eps_kind not in EPS_KINDS:
        raise ValueError(f"eps must be one of {', '.join(EPS_KINDS)}; got {eps_kind!r}")
    schedule = make_schedule(cfg.diffusion.schedule, cfg.diffusion.num_steps)
    sc = cfg.sampler
    solver = sampler_config(sc)
    sample = solver.sampler()
    if eps_kind == "conv":
        params = conv_eps_init(jax.random.key(0), channels, net_width)
        eps_apply = conv_eps_apply
    else:
        params, eps_apply = {}, gaussian_eps(schedule)

    mesh = parallel.make_mesh(cfg.parallel.data_axis, cfg.parallel.spatial_axis)
    n_data = mesh.shape[parallel.DATA]
    sharded = batch % n_data == 0 and n_data > 1
    x_sharding = parallel.leading_sharding(mesh) if sharded else parallel.replicated(mesh)
    x_T = jax.device_put(jax.random.normal(jax.random.key(1), (batch, height, width, channels)), x_sharding)
    params = jax.device_put(params, parallel.replicated(mesh))
    key = jax.random.key(2)

    if isinstance(solver, DPMSolverPPAdaptive):  # its NFE is its own: the solve's statistics come back

        def program(params, x, key):
            return solver.solve_with_info(lambda x, t: eps_apply(params, x, t), x, schedule)

    else:

        def program(params, x, key):
            return sample(lambda x, t: eps_apply(params, x, t), x, schedule, key), None

    log(f"compiling {sc.name} for a {batch}×{height}×{width}×{channels} state on {mesh.size} device(s)...")
    # `def-jax bench` runs without the persistent compilation cache, so this is a cold compile; a caller that has
    # the cache on (the demo) gets `persistent_cache: true` in the result.
    t0 = time.perf_counter()
    compiled = jax.jit(program).lower(params, x_T, key).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(params, x_T, key))  # warm-up
    run_s, (x_0, info) = _median_seconds(lambda: compiled(params, x_T, key), repeats)
    nfe = (int(info.nfe) if info is not None else sc.steps) + int(sc.denoise_to_zero)
    finite = bool(jnp.all(jnp.isfinite(x_0)))

    forward = jax.jit(eps_apply).lower(params, x_T, jnp.float32(0.5)).compile()
    jax.block_until_ready(forward(params, x_T, jnp.float32(0.5)))
    forward_s, _ = _median_seconds(lambda: forward(params, x_T, jnp.float32(0.5)), max(repeats, 5))
    flops = _flops(forward)

    return {
        "sampler": sc.name,
        "order": sc.order,
        "method": sc.method,
        "spacing": sc.spacing,
        "schedule": cfg.diffusion.schedule,
        "steps": sc.steps,
        "nfe": nfe,
        "shape": [batch, height, width, channels],
        "eps": eps_kind,
        "net_width": net_width if eps_kind == "conv" else None,
        "devices": mesh.size,
        "batch_sharded": sharded,
        "compile_s": compile_s,
        "persistent_cache": bool(jax.config.jax_compilation_cache_dir),
        "run_s": run_s,
        "ms_per_step": 1e3 * run_s / nfe,
        "nfe_per_s": nfe / run_s,
        "member_nfe_per_s": batch * nfe / run_s,
        "forward_ms": 1e3 * forward_s,
        "flops_per_forward": flops,
        "gflops_per_s": flops * nfe / run_s / 1e9,
        "solver_overhead_pct": 100.0 * (run_s - nfe * forward_s) / run_s,
        "output_finite": finite,
        "repeats": repeats,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "backend": jax.default_backend(),
            "jax": jax.__version__,
        },
    }


def format_table(result: dict[str, Any]) -> str:
    """Two-column text table of the headline numbers."""
    rows = [
        ("sampler", f"{result['sampler']} (order {result['order']}, {result['method']}, {result['spacing']})"),
        ("state", "×".join(map(str, result["shape"])) + f" on {result['devices']} device(s)"
         + (" (batch-sharded)" if result["batch_sharded"] else "")),
        ("ε network", result["eps"] + (f" (width {result['net_width']})" if result["net_width"] else "")),
        ("NFE", f"{result['nfe']}"),
        ("compile", f"{result['compile_s']:.2f} s"),
        ("run", f"{1e3 * result['run_s']:.1f} ms"),
        ("per solver step", f"{result['ms_per_step']:.2f} ms"),
        ("NFE/s", f"{result['nfe_per_s']:.1f}"),
        ("members × NFE/s", f"{result['member_nfe_per_s']:.1f}"),
        ("forward alone", f"{result['forward_ms']:.2f} ms, {result['flops_per_forward'] / 1e9:.3f} GFLOP"),
        ("achieved", f"{result['gflops_per_s']:.1f} GFLOP/s"),
        ("solver overhead", f"{result['solver_overhead_pct']:.1f} % of run time"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
