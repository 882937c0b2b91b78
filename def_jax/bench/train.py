"""``def-jax bench train``: the training update of G_φ and of ε_θ as the config defines it, on this machine.

For each model the real update program of ``def-jax train-forecaster`` / ``train-diffusion`` is built (the config's
U-Net, objective, optimizer, EMA, gradient accumulation, device mesh and shardings; ε_θ's DEF objective runs the frozen
G_φ inside it), with random initial weights: throughput does not depend on their values, so no trained G_φ is needed.
One batch of ``batch × grad_accum`` real training windows is read from the store once and fed to every update; the
input pipeline's own rate is ``def-jax bench loader``'s subject, and the training run's console shows both together.

Reported per model: parameters, compile seconds, XLA's FLOP count of one update (forward, backward and optimizer for
the whole global batch), the median update time over ``steps`` timed updates after a warm-up, updates/s, samples/s,
achieved GFLOP/s and its fraction of the machine's float32 matmul rate (measured in the same run), the loss of the last
update (finite: the updates did real work), and the process's peak resident memory.
"""

from __future__ import annotations

import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import jax
import ml_collections
import numpy as np

from def_jax import parallel
from def_jax.bench import attention_used, peak_device_memory_gb
from def_jax.bench.rollout import matmul_gflops
from def_jax.bench.sampler import _flops
from def_jax.errors import UserError

MODELS = ("forecaster", "diffusion")


def bench_model(kind: str, cfg: ml_collections.ConfigDict, *, steps: int = 20, batch: Optional[int] = None,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Compile and time ``steps`` training updates of ``kind`` (forecaster | diffusion); a JSON-able dict."""
    from def_jax.data.pipeline import make_loader
    from def_jax.training import run as training_run

    if kind not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}; got {kind!r}")
    if batch:
        cfg = cfg.copy_and_resolve_references()
        cfg.training[kind].batch_size = int(batch)
    tcfg = cfg.training[kind]
    batch_size, grad_accum = int(tcfg.batch_size), int(tcfg.grad_accum)
    # the run train-forecaster / train-diffusion builds; nothing is read from or written to the workdir
    run = training_run.build_run(kind, cfg, Path("."), log=lambda message: None, frozen="random")

    loader = make_loader(run.train_source, batch_size=batch_size, seed=int(cfg.seed), shuffle=True, num_epochs=None,
                         crop_shape=tuple(cfg.data.crop_shape), worker_count=0, shard_index=0, shard_count=1)
    with iter(loader) as it:  # one global batch, read once
        micro = [next(it) for _ in range(grad_accum)]
    area = run.train_source.store_reader.area_weights() if kind == "forecaster" and tcfg.area_weights else None
    batches = parallel.global_batch(training_run.stack_micro_batches(micro, area), run.mesh, batch_axis=1)  # [A, B, ...]
    sample_shape = tuple(int(s) for s in batches["inputs"].shape[2:])  # [(T,) H, W, C] of one window's inputs
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(run.params))

    log(f"[{kind}] compiling the update: {n_params / 1e6:.2f} M parameters, global batch {batch_size}×{grad_accum}, "
        f"inputs {sample_shape}, {run.mesh.size} device(s)")
    state, update = training_run.update_program(run, steps + 1)
    t0 = time.perf_counter()
    step_fn = update.lower(state, batches, run.frozen).compile()
    compile_s = time.perf_counter() - t0
    flops = _flops(step_fn)

    state, metrics = step_fn(state, batches, run.frozen)  # warm-up
    jax.block_until_ready(state)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = step_fn(state, batches, run.frozen)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
    loss = float(jax.device_get(metrics["loss"]))
    if not np.isfinite(loss):
        raise UserError(f"bench train: the {kind} loss became {loss}; check the store's statistics and the config")
    median = statistics.median(times)
    samples = batch_size * grad_accum
    result = {
        "model": kind,
        "parameters": n_params,
        "global_batch": samples,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "input_shape": list(sample_shape),
        "devices": run.mesh.size,
        "compile_s": compile_s,
        "timed_updates": steps,
        "updates_done": int(jax.device_get(state.step)),
        "update_s_median": median,
        "update_s_min": min(times),
        "updates_per_s": 1.0 / median,
        "samples_per_s": samples / median,
        "gflop_per_update": flops / 1e9,
        "achieved_gflops_per_s": flops / median / 1e9,
        "last_loss": loss,
        "attention": attention_used(cfg["forecaster" if kind == "forecaster" else "denoiser"], sample_shape[-3:-1]),
        "peak_device_memory_gb": peak_device_memory_gb(),
    }
    log(f"[{kind}] {result['updates_per_s']:.2f} updates/s ({result['samples_per_s']:.1f} samples/s), "
        f"{result['gflop_per_update']:.2f} GFLOP/update")
    return result


def run_train_bench(cfg: ml_collections.ConfigDict, *, models: Sequence[str] = MODELS, steps: int = 20,
                    batch: Optional[int] = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """:func:`bench_model` for each of ``models`` after measuring the matmul reference; a JSON-able dict."""
    reference = matmul_gflops()
    log(f"matmul reference: {reference:.1f} GFLOP/s float32")
    results = [bench_model(kind, cfg, steps=steps, batch=batch, log=log) for kind in models]
    for r in results:
        r["achieved_fraction_of_matmul"] = r["achieved_gflops_per_s"] / reference
    return {
        "benchmark": "train",
        "store": str(cfg.data.store),
        "grid": list(cfg.data.grid_shape),
        "crop": list(cfg.data.crop_shape),
        "matmul_gflops_per_s": reference,
        "models": results,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [f"bench train on {result['store']} ({result['backend']}, matmul {result['matmul_gflops_per_s']:.0f} "
             f"GFLOP/s, peak RSS {result['peak_rss_mb']:.0f} MB)",
             f"{'model':<11} {'params (M)':>10} {'batch':>7} {'compile s':>9} {'update ms':>9} {'updates/s':>9} "
             f"{'samples/s':>9} {'GFLOP/upd':>9} {'GFLOP/s':>8} {'of matmul':>9}"]
    for r in result["models"]:
        lines.append(f"{r['model']:<11} {r['parameters'] / 1e6:>10.2f} {r['batch_size']:>4}×{r['grad_accum']:<2} "
                     f"{r['compile_s']:>9.1f} {1e3 * r['update_s_median']:>9.1f} {r['updates_per_s']:>9.2f} "
                     f"{r['samples_per_s']:>9.1f} {r['gflop_per_update']:>9.2f} {r['achieved_gflops_per_s']:>8.1f} "
                     f"{100 * r['achieved_fraction_of_matmul']:>8.0f}%")
    return "\n".join(lines)
