"""``def-jax bench sampler`` with the real networks (the default, ``--eps=unet``): the config's U-Net denoiser ε_θ
and forecaster G_φ (random weights: throughput does not depend on their values) on a grid.

Measured in one run, each compiled program timed by its median over ``repeats`` after a warm-up:

* the machine's float32 matmul GFLOP/s (a 2048² × 2048² product), the reference for what the networks achieve;
* one DEF perturbation for B members (a reverse diffusion of S solver steps with classifier-free guidance, 2B
  samples per network call when 0 < λ < 1): members × steps/s, NFE/s, achieved GFLOP/s from XLA's FLOP count; in
  the direct mode (DEF_METHOD §6) the same for one sample of the next state, conditioned on the past states,
  forcings, time features and statics (and G_φ's forecast in the residual variant);
* one denoiser call on the guided batch alone, and one G_φ step on B members alone;
* the full rollout program of L forecast steps with K walks (the ``lax.scan`` of :mod:`def_jax.forecast.rollout`),
  against its cost predicted from the parts: L × (K × S × denoiser call + G_φ step) → the rollout's overhead (direct
  mode: L × (S × denoiser call + the G_φ step of the residual variant));
* compile seconds of the perturbation and rollout programs; XLA's memory analysis of the rollout program and the
  process's peak resident memory.
"""

from __future__ import annotations

import platform
import resource
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from def_jax import parallel
from def_jax.bench import attention_used, peak_device_memory_gb
from def_jax.bench.sampler import _flops
from def_jax.bench.sampler import _median_seconds as _timed
from def_jax.diffusion.sampler_configs import sampler_from_config
from def_jax.diffusion.samplers import static_guidance
from def_jax.diffusion.schedules import make_schedule
from def_jax.forecast.rollout import RolloutSpec, make_rollout, member_keys, perturb, sample_members


def _median(fn: Callable[[], Any], repeats: int) -> float:
    return _timed(fn, repeats)[0]


def _compile(fn, *args) -> tuple[Any, float]:
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """This machine's float32 matmul throughput: 2n³ / the median time of an n×n by n×n product."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    jax.block_until_ready(f(a, b))
    return 2 * n**3 / _median(lambda: f(a, b), repeats) / 1e9


def run_unet_bench(cfg: ml_collections.ConfigDict, *, batch: int, height: int, width: int, repeats: int = 3,
                   lead_steps: int = 2, log: Callable[[str], None] = print) -> dict[str, Any]:
    """See the module docstring. ``batch`` = ensemble members B."""
    from flax import nnx

    from def_jax.models.networks import def_condition, direct_condition
    from def_jax.models.build import build_denoiser, build_forecaster, config_channels, init_params, null_prior

    direct = cfg.diffusion.mode == "direct"
    residual = direct and bool(cfg.diffusion.direct_residual)
    channels = config_channels(cfg)
    # the config's mesh: members over `data` (when they split evenly), the grid's rows over `space`
    mesh = parallel.make_mesh(cfg.parallel.data_axis, cfg.parallel.spatial_axis)
    parallel.check_spatial(mesh, height)
    sharded = batch % mesh.shape[parallel.DATA] == 0
    member_axis = 0 if sharded else None
    rep = parallel.replicated(mesh)
    lead = parallel.leading_sharding(mesh) if sharded else rep

    def field(ndim, y_axis, members=member_axis):
        return parallel.field_sharding(mesh, ndim, y_axis, members)
    gflops_ref = matmul_gflops()
    log(f"matmul reference: {gflops_ref:.1f} GFLOP/s float32")
    kf = int(cfg.data.history)  # G_φ's input states
    k = int(cfg.diffusion.direct_history) if direct else kf  # the states the rollout carries
    d_graph, d_params = init_params(lambda: build_denoiser(cfg, channels, 1, null_prior(cfg, None)), rep)
    f_graph, f_params = init_params(lambda: build_forecaster(cfg, channels, 0), rep)
    schedule = make_schedule(cfg.diffusion.schedule, cfg.diffusion.num_steps)
    sample = sampler_from_config(cfg.sampler)
    lam = float(cfg.ensemble.guidance_scale)
    walks = 0 if direct else max(int(cfg.ensemble.walks), 1)
    conditional = "network" if direct else str(cfg.diffusion.conditional)
    mode = "direct" if direct else "def"
    spec1 = RolloutSpec(mode=mode, walks=1, history=k, forecaster_history=kf, residual=residual,
                        static_guidance=static_guidance(lam), conditional=conditional)
    # the exact conditional branch is not a network call: the guided batch is then B
    guided_batch = batch * (2 if spec1.static_guidance is None and conditional == "network" else 1)
    h, w, c = height, width, channels.state
    rng = np.random.default_rng(0)
    x_host = rng.normal(size=(batch, h, w, c)).astype(np.float32)
    x = parallel.put(x_host, field(4, 1))  # [B, H, W, C]
    keys = parallel.put(np.asarray(member_keys(jax.random.PRNGKey(0), jnp.arange(batch, dtype=jnp.int32))), lead)
    states = parallel.put(np.broadcast_to(x_host[:, None], (batch, k, h, w, c)), field(5, 2))  # [B, k, H, W, C]
    forc = parallel.put(np.zeros((batch, k, h, w, channels.forcing), np.float32), field(5, 2))
    tf = parallel.put(np.zeros((batch, k + 1, channels.time), np.float32), lead)
    st = parallel.put(np.zeros((batch, h, w, channels.static), np.float32), field(4, 1))

    def eps_net(params):
        net = nnx.merge(d_graph, params)
        return lambda xx, tau, cc: net(xx, tau, cc)

    def g_fn(params):
        net = nnx.merge(f_graph, params)
        return lambda s, f, tf, st: net(s, f, tf, st)

    # every program takes its arrays as arguments (a multi-host program cannot close over other hosts' data)
    if direct:  # the condition of one direct step: the past k states, forcings, time features, statics (+ G_φ)
        def make_condition(fp, states, forc, tf, st):
            forecast = g_fn(fp)(states[:, k - kf:], forc[:, k - kf:], tf[:, k - kf:], st) if residual else None
            return direct_condition(states, forc, tf, st, forecast)

        condition = jax.jit(make_condition, out_shardings=field(4, 1))(f_params, states, forc, tf, st)  # [B,H,W,C_c]

        def perturbation(params, x, keys, cond):  # one sample of the next state
            return sample_members(eps_net(params), sample, schedule, spec1, cond, keys, jnp.float32(lam),
                                  x.shape[1:])
        what = "one sample of the next state (direct mode)"
    else:
        condition = def_condition(x)  # DEF's condition is the state itself

        def perturbation(params, x, keys, cond):  # one perturbation walk: B reverse diffusions of S steps
            return perturb(eps_net(params), sample, schedule, spec1, x, keys, jnp.float32(lam))
        what = "one perturbation"

    log(f"compiling {what} ({batch} members, {cfg.sampler.name} S={cfg.sampler.steps}, {h}×{w}×{c})...")
    p_args = (d_params, x, keys, condition)
    p_compiled, p_compile_s = _compile(perturbation, *p_args)
    jax.block_until_ready(p_compiled(*p_args))
    p_s = _median(lambda: p_compiled(*p_args), repeats)
    nfe = int(cfg.sampler.steps) + int(cfg.sampler.denoise_to_zero)

    # the denoiser alone on the guided batch, G_φ alone on B members
    copies = guided_batch // batch
    d_args = (d_params, jnp.concatenate([x] * copies), jnp.concatenate([condition] * copies))
    d_compiled, _ = _compile(lambda p, xx, cc: eps_net(p)(xx, jnp.float32(500.0), cc), *d_args)
    jax.block_until_ready(d_compiled(*d_args))
    d_s = _median(lambda: d_compiled(*d_args), max(repeats, 5))
    d_flops = _flops(d_compiled)
    g_args = (f_params, states, forc, tf, st)
    g_compiled, _ = _compile(lambda p, s, f, t, a: g_fn(p)(s[:, k - kf:], f[:, k - kf:], t[:, k - kf:], a), *g_args)
    jax.block_until_ready(g_compiled(*g_args))
    g_s = _median(lambda: g_compiled(*g_args), max(repeats, 5))
    g_flops = _flops(g_compiled)

    # the full rollout: L steps × (K walks + G_φ), or L direct samples (+ G_φ in the residual variant)
    spec = RolloutSpec(mode=mode, walks=walks, history=k, forecaster_history=kf, residual=residual,
                       static_guidance=static_guidance(lam), lead_steps=lead_steps, conditional=conditional)

    def program(fp, dp, states, ids, key, forcings, tfs, statics):
        r = make_rollout(g_fn(fp), eps_net(dp), sample, schedule, spec, condition_fn=direct_condition)
        return r(states, ids, key, jnp.int32(0), forcings, tfs, statics, jnp.float32(lam))

    ids = parallel.put(np.arange(batch, dtype=np.int32), lead)
    forcings = parallel.put(np.zeros((k + lead_steps - 1, h, w, channels.forcing), np.float32), field(4, 1, None))
    tfs = parallel.put(np.zeros((k + lead_steps, channels.time), np.float32), rep)
    statics = parallel.put(np.zeros((h, w, channels.static), np.float32), field(3, 0, None))
    args = (f_params, d_params, states, ids, parallel.put(np.asarray(jax.random.PRNGKey(1)), rep), forcings, tfs,
            statics)
    log(f"compiling the rollout ({lead_steps} steps" + (", direct samples)..." if direct else f" × K={walks} walks)..."))
    r_compiled, r_compile_s = _compile(program, *args)
    jax.block_until_ready(r_compiled(*args))
    r_s = _median(lambda: r_compiled(*args), repeats)
    predicted = lead_steps * ((nfe * d_s + (g_s if residual else 0.0)) if direct else (walks * nfe * d_s + g_s))
    mem = r_compiled.memory_analysis()
    xla_bytes = None if mem is None else int(mem.temp_size_in_bytes + mem.argument_size_in_bytes
                                              + mem.output_size_in_bytes)
    member_steps_per_s = batch * nfe / p_s
    return {
        "eps": "unet", "mode": "direct_residual" if residual else mode,
        "sampler": cfg.sampler.name, "order": cfg.sampler.order, "method": cfg.sampler.method,
        "spacing": cfg.sampler.spacing, "schedule": cfg.diffusion.schedule, "steps": int(cfg.sampler.steps),
        "nfe": nfe, "members": batch, "guidance_scale": lam, "guided_batch": guided_batch, "walks": walks,
        "shape": [batch, h, w, c], "denoiser_width": int(cfg.denoiser.base_channels),
        "channel_mults": list(cfg.denoiser.channel_mults), "dtype": cfg.denoiser.dtype,
        "devices": mesh.size, "batch_sharded": sharded, "spatial_axis": mesh.shape[parallel.SPACE],
        "processes": jax.process_count(),
        "matmul_gflops_per_s": gflops_ref,
        "compile_s": p_compile_s, "rollout_compile_s": r_compile_s,
        "persistent_cache": bool(jax.config.jax_compilation_cache_dir),
        "run_s": p_s, "member_steps_per_s": member_steps_per_s, "nfe_per_s": nfe / p_s,
        "member_nfe_per_s": member_steps_per_s, "ms_per_step": 1e3 * p_s / nfe,
        "denoiser_gflop_per_sample": d_flops / guided_batch / 1e9,
        "denoiser_call_ms": 1e3 * d_s, "denoiser_gflops_per_s": d_flops / d_s / 1e9,
        "achieved_gflops_per_s": d_flops * nfe / p_s / 1e9,
        "achieved_fraction_of_matmul": d_flops * nfe / p_s / 1e9 / gflops_ref,
        "solver_overhead_pct": 100.0 * (p_s - nfe * d_s) / p_s,
        "forecaster_gflop_per_member": g_flops / batch / 1e9, "forecaster_step_ms": 1e3 * g_s,
        "rollout_lead_steps": lead_steps, "rollout_s": r_s, "rollout_predicted_s": predicted,
        "rollout_overhead_pct": 100.0 * (r_s - predicted) / r_s,
        "rollout_member_hours_per_s": batch * lead_steps / r_s,
        "xla_rollout_bytes": xla_bytes, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_device_memory_gb": peak_device_memory_gb(), "attention": attention_used(cfg.denoiser, (h, w)),
        "repeats": repeats,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "backend": jax.default_backend(), "jax": jax.__version__, "devices": mesh.size},
    }


def format_table(r: dict[str, Any]) -> str:
    rows = [
        ("sampler", f"{r['sampler']} (order {r['order']}, {r['method']}, {r['spacing']}), S={r['steps']}, "
                    f"{r['schedule']} schedule"),
        ("state", f"{r['members']} members × {'×'.join(map(str, r['shape'][1:]))} on {r['devices']} device(s)"
                  + (" (member-sharded)" if r["batch_sharded"] else "")),
        ("denoiser", f"U-Net width {r['denoiser_width']} {tuple(r['channel_mults'])}, {r['dtype']}, "
                     f"{r['denoiser_gflop_per_sample']:.3f} GFLOP per sample"),
        ("guidance", f"λ={r['guidance_scale']}: {r['guided_batch']} samples per network call"),
        ("compile", f"{r['compile_s']:.1f} s (perturbation), {r['rollout_compile_s']:.1f} s (rollout)"),
        ("one sample (direct)" if r["mode"].startswith("direct") else "one perturbation", f"{r['run_s']:.3f} s"),
        ("members × steps/s", f"{r['member_steps_per_s']:.2f}"),
        ("NFE/s", f"{r['nfe_per_s']:.2f} (network calls on the guided batch)"),
        ("denoiser call", f"{r['denoiser_call_ms']:.1f} ms → {r['denoiser_gflops_per_s']:.1f} GFLOP/s"),
        ("achieved", f"{r['achieved_gflops_per_s']:.1f} GFLOP/s = {100 * r['achieved_fraction_of_matmul']:.0f} % of "
                     f"this machine's matmul {r['matmul_gflops_per_s']:.1f} GFLOP/s"),
        ("solver overhead", f"{r['solver_overhead_pct']:.1f} % of the perturbation"),
        ("G_φ step", f"{r['forecaster_step_ms']:.1f} ms for {r['members']} members "
                     f"({r['forecaster_gflop_per_member']:.3f} GFLOP each)"),
        ("rollout", f"{r['rollout_lead_steps']} steps × "
                    + (f"{r['mode']} samples" if r["mode"].startswith("direct") else f"K={r['walks']}")
                    + f": {r['rollout_s']:.3f} s, predicted from the "
                    f"parts {r['rollout_predicted_s']:.3f} s → overhead {r['rollout_overhead_pct']:.1f} %"),
        ("memory", (f"XLA rollout program {r['xla_rollout_bytes'] / 2**20:.0f} MiB; " if r["xla_rollout_bytes"]
                    else "") + f"process peak {r['peak_rss_mb']:.0f} MB"
                   + (f"; device peak {r['peak_device_memory_gb']:.2f} GiB" if r["peak_device_memory_gb"] else "")),
        ("attention", r["attention"]),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
