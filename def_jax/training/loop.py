"""``def-jax train-forecaster`` and ``def-jax train-diffusion``: the training loop, top to bottom.

1. Data: windows of the store's train and validation periods (:mod:`def_jax.data.pipeline`), this process's shard.
2. Models: G_φ or ε_θ built from the config and the store's channel counts; parameters initialized under ``jit``
   (1 and 2: :func:`def_jax.training.run.build_run`).
3. State: AdamW + warmup/cosine + clipping (+ EMA for the denoiser); restored from the latest checkpoint of the run
   directory when there is one (optimizer, EMA, base key, step and the data iterator's position: an exact resume).
   For ε_θ, the frozen G_φ comes from ``WORKDIR/forecaster`` (best or latest checkpoint).
4. Loop: one jitted, mesh-sharded update per step (gradient accumulation inside); logs, periodic validation (and the
   persistence baseline for G_φ), periodic and best-by-validation checkpoints; a non-finite loss stops the run with a
   message and leaves the last good checkpoint in place.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from def_jax import parallel
from def_jax.data.pipeline import make_loader
from def_jax.errors import UserError
from def_jax.training.checkpoint import Checkpoints, abstract, check_compatible, config_dict
from def_jax.training.logging import MetricLogger
from def_jax.training.run import Run, build_run, stack_micro_batches, update_program


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


def _validate(run: Run, eval_step, params, frozen, batches: int, area) -> dict[str, float]:
    """Mean of the eval metrics over the first ``batches`` validation batches (time order, full grid)."""
    tcfg = run.cfg.training[run.kind]
    loader = make_loader(run.val_source, batch_size=int(tcfg.batch_size) // jax.process_count(), shuffle=False,
                         num_epochs=1, drop_remainder=True, crop_shape=(0, 0), shard_index=jax.process_index(),
                         shard_count=jax.process_count())
    sums: dict[str, float] = {}
    n = 0
    with iter(loader) as it:
        for batch in it:
            if n >= batches:
                break
            b = parallel.global_batch(stack_micro_batches([batch], area), run.mesh, batch_axis=1)
            b = {k: v[0] for k, v in b.items()}
            for k, v in jax.device_get(eval_step(params, b, frozen)).items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
    return {k: v / max(n, 1) for k, v in sums.items()}


def process_data_state(data_state: dict, rank: int, n_proc: int, where: Path) -> bytes:
    """This process's data-iterator state from a checkpoint's ``data`` item: one per process
    (``grain_per_process``); a checkpoint of a single-process run may hold it as ``grain`` (before per-process
    states). Resuming with another number of processes would change every process's shard: a UserError."""
    states = data_state.get("grain_per_process") or [data_state["grain"]]
    if len(states) != n_proc:
        raise UserError(f"{where}: the checkpoint holds the data positions of {len(states)} process(es); resuming "
                        f"with {n_proc} would change every process's shard of the data. Resume with "
                        f"{len(states)} process(es), or start a new run directory")
    return states[rank].encode()


def train(kind: str, cfg: Any, workdir: Path, log: Callable[[str], None] = print) -> dict:
    """Train G_φ (``kind="forecaster"``) or ε_θ (``"diffusion"``) in ``workdir/kind``; resume if checkpoints exist.
    Returns a summary (final step, last train loss, best validation loss)."""
    run = build_run(kind, cfg, Path(workdir), log)
    tcfg = cfg.training[kind]
    run.run_dir.mkdir(parents=True, exist_ok=True)
    main = jax.process_index() == 0
    cfg_dict = config_dict(cfg)
    catalogue_json = run.train_source.catalogue.to_json()
    if main:
        (run.run_dir / "config.json").write_text(json.dumps(cfg_dict, indent=2) + "\n")
        (run.run_dir / "catalogue.json").write_text(catalogue_json + "\n")
    replicated = parallel.replicated(run.mesh)
    state, step_fn = update_program(run, run.total_steps)
    ckpt = Checkpoints(run.run_dir, keep=tcfg.keep_checkpoints)
    data_state = None
    start = ckpt.latest_step()
    if start is not None:
        check_compatible(ckpt.restore_meta(start), cfg_dict, catalogue_json, kind, run.run_dir / "checkpoints")
        state, data_state, meta = ckpt.restore(start, abstract(state))
        log(f"resuming {run.run_dir} from step {start}")
    step = int(jax.device_get(state.step))
    if step >= run.total_steps:
        log(f"{run.run_dir}: already trained to step {step} of {run.total_steps}")
        ckpt.close()
        return {"step": step, "total_steps": run.total_steps}

    n_proc, rank = jax.process_count(), jax.process_index()
    if int(tcfg.eval_batches) > 0:  # validation batches are whole grids on the training mesh: rows over `space`
        parallel.check_spatial(run.mesh, run.val_source.grid_shape[0])
    if int(tcfg.batch_size) % n_proc:
        raise UserError(f"config.training.{kind}.batch_size={tcfg.batch_size} must be divisible by the "
                        f"{n_proc} processes")
    loader = make_loader(run.train_source, batch_size=int(tcfg.batch_size) // n_proc, seed=cfg.seed, shuffle=True,
                         num_epochs=None, crop_shape=tuple(cfg.data.crop_shape), worker_count=int(cfg.data.workers),
                         shard_index=rank, shard_count=n_proc)
    it = loader.iterator(process_data_state(data_state, rank, n_proc, ckpt.run_dir)) if data_state else iter(loader)
    area = run.train_source.store_reader.area_weights() if kind == "forecaster" and tcfg.area_weights else None

    eval_step = jax.jit(run.eval_fn, out_shardings=replicated)
    logger = MetricLogger(run.run_dir, total_steps=run.total_steps, name=kind, tensorboard=cfg.training.tensorboard,
                          wandb=cfg.training.wandb, wandb_project=cfg.training.wandb_project, config=cfg_dict,
                          console_every=int(tcfg.log_every), is_main_process=main, start_step=step)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(run.params))
    logger.text(f"{n_params / 1e6:.2f} M parameters; {len(run.train_source)} training windows "
                f"({run.steps_per_epoch} steps/epoch); {run.total_steps} steps; global batch "
                f"{tcfg.batch_size}×{tcfg.grad_accum}; {run.mesh.size} device(s) "
                f"(data {run.mesh.shape[parallel.DATA]} × space {run.mesh.shape[parallel.SPACE]})")

    def save(step, val_loss=None):
        meta = {"step": step, "kind": kind, "config": cfg_dict, "catalogue": catalogue_json,
                "val_loss": val_loss, "time": time.time()}
        # every process's position in its own shard of the data (a collective), saved by the primary process
        positions = [p.decode() for p in parallel.gather_bytes(it.get_state())]
        ckpt.save(step, state, {"grain_per_process": positions}, meta, val_loss)

    best = None
    last = {}
    try:
        while step < run.total_steps:
            micro = [next(it) for _ in range(int(tcfg.grad_accum))]
            batch = parallel.global_batch(stack_micro_batches(micro, area), run.mesh, batch_axis=1)
            state, metrics = step_fn(state, batch, run.frozen)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not np.isfinite(metrics["loss"]) or not np.isfinite(metrics["grad_norm"]):
                good = ckpt.latest_step()
                raise TrainingDiverged(
                    f"{kind}: loss became {metrics['loss']} (gradient norm {metrics['grad_norm']}) at step {step + 1};"
                    f" stopped without applying it. Last good checkpoint: "
                    f"{'step ' + str(good) + ' in ' + str(run.run_dir / 'checkpoints') if good else 'none'}. "
                    f"Lower config.training.{kind}.learning_rate or check the data.")
            step += 1
            last = metrics
            logger.log(step, metrics)
            evaluate = int(tcfg.eval_batches) > 0 and (step % int(tcfg.eval_every) == 0 or step == run.total_steps)
            val_loss = None
            if evaluate:
                params = state.ema if state.ema is not None else state.params
                val = _validate(run, eval_step, params, run.frozen, int(tcfg.eval_batches), area)
                logger.log(step, val, prefix="val")
                val_loss = val.get("loss")
                best = val_loss if best is None or (val_loss is not None and val_loss < best) else best
            if evaluate or step % int(tcfg.checkpoint_every) == 0:
                save(step, val_loss)
    finally:
        ckpt.close()
        logger.close()
        it.close()
    return {"step": step, "total_steps": run.total_steps, "loss": last.get("loss"), "best_val_loss": best}
