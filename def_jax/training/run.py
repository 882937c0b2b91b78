"""A training run's pieces, built from the config: data sources of the train and validation periods, the networks
(:mod:`def_jax.models.build`), the objective of G_φ or ε_θ, per-channel weights, and the jitted update (the loss's
area weights are the store's cell areas, :meth:`def_jax.data.store.StoreReader.area_weights`).

:func:`build_run` assembles them into a :class:`Run`; :func:`update_program` gives its initial state and jitted
update. The loop that runs them (resume, logging, validation, checkpoints) is :mod:`def_jax.training.loop`; ``bench
train`` times the same update.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from def_jax import parallel
from def_jax.catalogue import Catalogue
from def_jax.data.pipeline import source_from_config
from def_jax.data.source import WindowSource
from def_jax.diffusion.schedules import make_schedule
from def_jax.errors import UserError
from def_jax.models.build import build_denoiser, build_forecaster, init_params, null_prior, store_channels
from def_jax.models.networks import Channels
from def_jax.training import objectives
from def_jax.training.checkpoint import config_dict, load_trained
from def_jax.training.state import TrainState, init_train_state, make_optimizer, make_train_step

KINDS = ("forecaster", "diffusion")


# --- the objective -----------------------------------------------------------------------------------------------


def training_objective(kind: str, cfg: Any, graphdef: nnx.GraphDef, forecaster_graphdef: Optional[nnx.GraphDef], *,
                       rollout_steps: int = 1, channel_weights=None, deterministic: bool = False) -> Callable:
    """The ``loss_fn(params, batch, key, frozen)`` of G_φ or ε_θ as the config defines it."""
    if kind == "forecaster":
        return objectives.forecaster_objective(graphdef, rollout_steps=rollout_steps,
                                               discount=float(cfg.training.forecaster.rollout_discount),
                                               channel_weights=channel_weights, deterministic=deterministic,
                                               restandardize=cfg.data.normalization == "per_sample")
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
