"""``def-jax train-forecaster`` and ``def-jax train-diffusion``: the training loop, top to bottom.

1. Data: windows of the store's train and validation periods (:mod:`def_jax.data.pipeline`), this process's shard.
2. Models: G_φ or ε_θ built from the config and the store's channel counts; parameters initialized under ``jit``.
3. State: AdamW + warmup/cosine + clipping (+ EMA for the denoiser); restored from the latest checkpoint of the run
   directory when there is one (optimizer, EMA, base key, step and the data iterator's position: an exact resume).
   For ε_θ, the frozen G_φ comes from ``WORKDIR/forecaster`` (best or latest checkpoint).
4. Loop: one jitted, mesh-sharded update per step (gradient accumulation inside); logs, periodic validation (and the
   persistence baseline for G_φ), periodic and best-by-validation checkpoints; a non-finite loss stops the run with a
   message and leaves the last good checkpoint in place.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from def_jax import parallel
from def_jax.catalogue import Catalogue
from def_jax.data import schema
from def_jax.data.pipeline import make_loader, source_from_config
from def_jax.data.source import WindowSource
from def_jax.diffusion.schedules import make_schedule
from def_jax.diffusion.spectral import SpectralPrior
from def_jax.errors import UserError
from def_jax.evaluation import metrics  # pure area weights (no I/O, no models)
from def_jax.geo import LambertConformal
from def_jax.models import model_rngs
from def_jax.models.networks import Channels, Denoiser, Forecaster
from def_jax.models.unet import UNetConfig
from def_jax.training import objectives
from def_jax.training.checkpoint import Checkpoints, abstract, check_compatible, config_dict
from def_jax.training.logging import MetricLogger
from def_jax.training.state import TrainState, init_train_state, make_optimizer, make_train_step

KINDS = ("forecaster", "diffusion")


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


# --- models ------------------------------------------------------------------------------------------------------


def channels_of_store(cfg: Any) -> tuple[str, ...]:
    """The state channel names of the config's store (its catalogue, in the models' order)."""
    return tuple(schema.store_catalogue(schema.open_store(cfg.data.store)).channels("state"))


def store_channels(source: WindowSource) -> Channels:
    return Channels(state=len(source.state_channels), forcing=len(source.forcing_channels),
                    static=len(source.static_channels), time=4 if source.time_encodings else 0)


def build_forecaster(cfg: Any, channels: Channels, seed: int) -> nnx.Module:
    return Forecaster(channels, cfg.data.history, UNetConfig.from_config(cfg.forecaster),
                      predict_increment=cfg.forecaster.predict_increment, rngs=model_rngs(seed))


def denoiser_condition_channels(cfg: Any, channels: Channels) -> int:
    if cfg.diffusion.mode == "def":
        return channels.state
    return channels.direct_condition(cfg.diffusion.direct_history, cfg.diffusion.direct_residual)


def null_prior(cfg: Any, state_channels: Optional[tuple[str, ...]]) -> Optional[SpectralPrior]:
    """ε_θ's spectral null prior from the store's statistics (``denoiser.null_prior = "spectral"``), else None.
    Without ``state_channels`` (abstract builds: ``info``) a white prior of the config's channel count stands in: the
    same computation, no store read."""
    if cfg.denoiser.get("null_prior", "white") != "spectral":
        return None
    if state_channels is None:
        from def_jax.catalogue import load_catalogue

        return SpectralPrior.white(load_catalogue(cfg.data.catalogue, cfg.data.levels).num_channels("state"))
    store = str(cfg.data.store)
    cov, modes = schema.spectral_covariance(schema.open_store(store), store, tuple(state_channels))
    return SpectralPrior.from_covariance(cov, modes)


def build_denoiser(cfg: Any, channels: Channels, seed: int, prior: Optional[SpectralPrior] = None) -> nnx.Module:
    return Denoiser(channels.state, denoiser_condition_channels(cfg, channels),
                    UNetConfig.from_config(cfg.denoiser), rngs=model_rngs(seed),
                    linear_skip=bool(cfg.denoiser.linear_skip),
                    skip_coefficients=str(cfg.denoiser.get("skip_coefficients", "learned")),
                    schedule=cfg.diffusion.schedule, num_steps=int(cfg.diffusion.num_steps), null_prior=prior)


def training_objective(kind: str, cfg: Any, graphdef: nnx.GraphDef, forecaster_graphdef: Optional[nnx.GraphDef], *,
                       rollout_steps: int = 1, channel_weights=None, deterministic: bool = False) -> Callable:
    """The ``loss_fn(params, batch, key, frozen)`` of G_φ or ε_θ as the config defines it."""
    if kind == "forecaster":
        return objectives.forecaster_objective(graphdef, rollout_steps=rollout_steps,
                                               discount=float(cfg.training.forecaster.rollout_discount),
                                               channel_weights=channel_weights, deterministic=deterministic)
    schedule = make_schedule(cfg.diffusion.schedule, cfg.diffusion.num_steps)
    if cfg.diffusion.mode == "direct":
        return objectives.direct_denoiser_objective(
            graphdef, forecaster_graphdef, schedule, p_uncond=cfg.diffusion.p_uncond,
            residual=cfg.diffusion.direct_residual, forecaster_history=cfg.data.history, deterministic=deterministic)
    return objectives.def_denoiser_objective(
        graphdef, forecaster_graphdef, schedule, p_uncond=cfg.diffusion.p_uncond, p_advance=cfg.diffusion.p_advance,
        forecaster_history=cfg.data.history, deterministic=deterministic)


def needs_forecaster(cfg: Any) -> bool:
    """Whether ε_θ's training uses the frozen G_φ: DEF's random advancement (which only conditional samples get, so
    not with p_uncond = 1), or the direct mode's residual."""
    if cfg.diffusion.mode == "def":
        return float(cfg.diffusion.p_uncond) < 1.0 and float(cfg.diffusion.p_advance) > 0.0
    return bool(cfg.diffusion.direct_residual)


def init_params(build: Callable[[], nnx.Module], sharding) -> tuple[nnx.GraphDef, Any]:
    """Graph definition and parameters, initialized in one compiled program placed with ``sharding``."""
    graphdef = nnx.graphdef(nnx.eval_shape(build))
    params = jax.jit(lambda: nnx.state(build()), out_shardings=sharding)()
    return graphdef, params


# --- weights -----------------------------------------------------------------------------------------------------


def channel_weights(spec: Optional[str], channels: tuple[str, ...], catalogue: Catalogue) -> Optional[np.ndarray]:
    """Per-channel loss weights from ``{"name": weight}`` (a variable name applies to all its levels)."""
    if not spec:
        return None
    try:
        table = json.loads(spec)
        assert isinstance(table, dict)
    except (ValueError, AssertionError):
        raise UserError(f"config.training.forecaster.variable_weights: expected a JSON object such as "
                        f'{{"refc": 2.0, "t500": 0.5}}; got {spec!r}') from None
    w = np.ones(len(channels), np.float32)
    for name, value in table.items():
        hits = [i for i, c in enumerate(channels)
                if c == name or (name in {v.name for v in catalogue.variables} and c in catalogue[name].channels)]
        if not hits:
            raise UserError(f"config.training.forecaster.variable_weights: {name!r} is not a state variable or "
                            f"channel of the catalogue")
        w[hits] = float(value)
    return w


def area_weights(store: str) -> np.ndarray:
    """Cell areas on the sphere, normalized to mean 1 over the grid: (Δ/k)² on a Lambert grid (k the map scale
    factor), cos(latitude) on a latitude-longitude grid. [H, W] float32."""
    ds = schema.open_store(store)
    lat = ds["latitude"].values
    crs = ds[schema.CRS].attrs
    if crs.get("grid_mapping_name") == "lambert_conformal_conic":
        sp = np.atleast_1d(crs["standard_parallel"])
        proj = LambertConformal(float(sp[0]), float(sp[-1]), crs["latitude_of_projection_origin"],
                                crs["longitude_of_central_meridian"])
        return metrics.lambert_cell_area_weights(lat, proj).astype(np.float32)
    return metrics.coslat_weights(lat).astype(np.float32)


# --- batches -----------------------------------------------------------------------------------------------------

BATCH_KEYS = ("inputs", "targets", "forcings", "time_features", "statics")


def stack_micro_batches(batches: list[dict], area: Optional[np.ndarray]) -> dict:
    """Micro-batches → arrays with a leading [A] axis, plus per-sample area weights cropped like the sample."""
    out = {k: np.stack([b[k] for b in batches]) for k in BATCH_KEYS}  # [A, B, ...]
    if area is not None:
        h, w = out["inputs"].shape[-3:-1]
        out["area_weights"] = np.stack([np.stack([area[y:y + h, x:x + w] for y, x in b["crop_offset"]])
                                        for b in batches])  # [A, B, H, W]
    return out


# --- the run -----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """What a training run is built from (kept together so that tests and ``info`` can reuse the pieces)."""

    kind: str
    cfg: Any
    run_dir: Path
    mesh: jax.sharding.Mesh
    train_source: WindowSource
    val_source: WindowSource
    channels: Channels
    graphdef: nnx.GraphDef
    params: Any
    frozen: Any  # the frozen forecaster's parameters (diffusion), else None
    loss_fn: Callable
    eval_fn: Callable  # (params, batch, frozen) -> {"loss": ..., ...}
    total_steps: int
    steps_per_epoch: int


def load_trained(kind: str, cfg: Any, workdir: Path, channels: Channels, mesh, catalogue_json: str, cfg_dict: dict,
                 which: str = "best", log: Callable = print) -> tuple[nnx.GraphDef, Any, dict]:
    """The trained weights of ``WORKDIR/<kind>`` (``best`` by validation, falling back to the latest, or ``latest``),
    checked against the config and catalogue: the EMA weights when the run kept them. Returns (graphdef, params,
    info) with ``info = {"path", "step", "which"}``."""
    if which not in ("best", "latest"):
        raise UserError(f"checkpoint choice {which!r}: expected best or latest")
    run = workdir / kind
    command = "train-forecaster" if kind == "forecaster" else "train-diffusion"
    if not (run / "checkpoints").exists():
        raise UserError(f"no {kind} checkpoint in {run}: run def-jax {command} with the same --workdir first")
    ckpt = Checkpoints(run, keep=1)
    best = which == "best" and ckpt.best_step() is not None
    step = ckpt.best_step() if best else ckpt.latest_step()
    if step is None:
        ckpt.close()
        raise UserError(f"no {kind} checkpoint in {run}: run def-jax {command} with the same --workdir first")
    where = run / ("best" if best else "checkpoints")
    meta = ckpt.restore_meta(step, best=best)
    check_compatible(meta, cfg_dict, catalogue_json, kind, where)
    prior = null_prior(cfg, channels_of_store(cfg)) if kind == "diffusion" else None
    build = (lambda: build_forecaster(cfg, channels, cfg.seed)) if kind == "forecaster" else \
        (lambda: build_denoiser(cfg, channels, cfg.seed + 1, prior))
    graphdef, params = init_params(build, parallel.replicated(mesh))
    tcfg = cfg.training[kind]
    optimizer, _ = make_optimizer(tcfg, 1)
    template = abstract(init_train_state(params, optimizer, seed=cfg.seed, ema_decay=tcfg.ema_decay))
    state, _, _ = ckpt.restore(step, template, best=best)
    ckpt.close()
    params = state.ema if state.ema is not None else state.params
    log(f"{kind}: {where} step {step} ({'best by validation' if best else 'latest'}"
        f"{', EMA weights' if state.ema is not None else ''})")
    return graphdef, params, {"path": str(where), "step": int(step), "which": "best" if best else "latest"}


def build_run(kind: str, cfg: Any, workdir: Path, log: Callable = print, *, frozen: str = "trained") -> Run:
    """The pieces of a training run of ``kind``. ``frozen``: ε_θ's frozen G_φ (DEF's random advancement, the direct
    mode's residual) is the trained one of ``workdir/forecaster`` (``"trained"``) or randomly initialized
    (``"random"``: for ``bench train``, whose throughput does not depend on the weights)."""
    if kind not in KINDS:
        raise ValueError(kind)
    if frozen not in ("trained", "random"):
        raise ValueError(f"frozen must be 'trained' or 'random'; got {frozen!r}")
    tcfg = cfg.training[kind]
    mesh = parallel.make_mesh(cfg.parallel.data_axis, cfg.parallel.spatial_axis)
    n_data = mesh.shape[parallel.DATA]
    if int(tcfg.batch_size) % n_data:
        raise UserError(f"config.training.{kind}.batch_size={tcfg.batch_size} must be divisible by the {n_data} "
                        f"devices of the data axis (config.parallel.data_axis)")
    direct = kind == "diffusion" and cfg.diffusion.mode == "direct"
    history = cfg.diffusion.direct_history if direct else cfg.data.history
    if direct and cfg.diffusion.direct_residual and history < cfg.data.history:
        raise UserError("config.diffusion.direct_history must be >= data.history for the residual variant")
    lead = max(1, int(tcfg.rollout_steps)) if kind == "forecaster" else 1
    train_source = source_from_config(cfg.data, "train", lead_steps=lead, history=history)
    val_source = source_from_config(cfg.data, "val", lead_steps=lead, history=history)
    channels = store_channels(train_source)
    catalogue_json = train_source.catalogue.to_json()
    cfg_dict = config_dict(cfg)
    global_micro = int(tcfg.batch_size) * int(tcfg.grad_accum)
    steps_per_epoch = max(len(train_source) // global_micro, 1)
    total_steps = int(tcfg.max_steps) if tcfg.max_steps > 0 else int(tcfg.epochs) * steps_per_epoch
    replicated = parallel.replicated(mesh)
    cw = channel_weights(tcfg.get("variable_weights"), train_source.state_channels, train_source.catalogue) \
        if kind == "forecaster" else None
    frozen_params = None
    f_graphdef = None
    if kind == "forecaster":
        graphdef, params = init_params(lambda: build_forecaster(cfg, channels, cfg.seed), replicated)
    else:
        prior = null_prior(cfg, train_source.state_channels)
        graphdef, params = init_params(lambda: build_denoiser(cfg, channels, cfg.seed + 1, prior), replicated)
        if needs_forecaster(cfg) and frozen == "random":
            f_graphdef, frozen_params = init_params(lambda: build_forecaster(cfg, channels, cfg.seed), replicated)
        elif needs_forecaster(cfg):
            f_graphdef, frozen_params, _ = load_trained("forecaster", cfg, workdir, channels, mesh, catalogue_json,
                                                        cfg_dict, cfg.training.diffusion.forecaster_checkpoint, log)
    cw = None if cw is None else jnp.asarray(cw)
    loss_fn = training_objective(kind, cfg, graphdef, f_graphdef, rollout_steps=lead, channel_weights=cw)
    if kind == "diffusion":
        eval_fn = objectives.denoiser_validation(
            graphdef, f_graphdef, make_schedule(cfg.diffusion.schedule, cfg.diffusion.num_steps),
            mode=cfg.diffusion.mode, conditional=str(cfg.diffusion.conditional),
            forecaster_history=int(cfg.data.history), residual=bool(cfg.diffusion.direct_residual))
    else:
        eval_loss = training_objective(kind, cfg, graphdef, f_graphdef, rollout_steps=lead, channel_weights=cw,
                                       deterministic=True)

        def eval_fn(params, batch, frozen):
            loss, aux = eval_loss(params, batch, jax.random.PRNGKey(0), frozen)
            return {"loss": loss, "mse_step1": aux["mse_step1"],
                    "persistence_mse": objectives.persistence_mse(batch, cw)}

    return Run(kind, cfg, workdir / kind, mesh, train_source, val_source, channels, graphdef, params, frozen_params,
               loss_fn, eval_fn, total_steps, steps_per_epoch)


def update_program(run: Run, total_steps: int) -> tuple[TrainState, Callable]:
    """The initial train state of ``run`` (replicated) and its jitted update ``step(state, batches, frozen)``, the
    state donated; the learning-rate schedule spans ``total_steps``."""
    tcfg = run.cfg.training[run.kind]
    ema_decay = float(tcfg.ema_decay)
    optimizer, schedule = make_optimizer(tcfg, total_steps)
    replicated = parallel.replicated(run.mesh)
    state = jax.jit(lambda p: init_train_state(p, optimizer, seed=run.cfg.seed, ema_decay=ema_decay),
                    out_shardings=replicated)(run.params)
    step = jax.jit(make_train_step(run.loss_fn, optimizer, schedule, ema_decay=ema_decay), donate_argnums=0,
                   out_shardings=(replicated, replicated))
    return state, step


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
    area = area_weights(run.train_source.store) if kind == "forecaster" and tcfg.area_weights else None

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
