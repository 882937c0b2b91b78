"""Orbax checkpoints of a training run, with the config and channel catalogue saved beside the weights.

Layout of a run directory (``WORKDIR/forecaster`` or ``WORKDIR/diffusion``)::

    checkpoints/<step>/{state, data, meta}   the latest ``keep`` checkpoints (periodic saves)
    best/<step>/{state, data, meta}          the checkpoint with the lowest validation loss
    config.json, catalogue.json              the resolved config and the store's catalogue of the run
    metrics.jsonl, events.*                  logs

``state`` is the :class:`~def_jax.training.state.TrainState` (parameters, optimizer, EMA, base key, step), ``data`` the
input pipeline's iterator state of every process (``grain_per_process``: each process reads its own shard, so each has
its own position; gathered and written by the primary process, as Orbax writes JSON items), ``meta`` the step, validation loss, config and catalogue. Orbax writes each checkpoint
to a temporary directory and renames it when complete, so a run killed mid-save leaves the previous one intact.

Resuming, or loading a model for another stage, checks that the saved config agrees with the current one on every
field that shapes the model or its data (:data:`ARCHITECTURE_FIELDS`) and that the catalogue is the same; otherwise the
error lists what differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import orbax.checkpoint as ocp
from flax import nnx

from def_jax import parallel
from def_jax.errors import UserError
from def_jax.models.build import abstract_params, build_denoiser, build_forecaster, channels_of_store, null_prior
from def_jax.models.networks import Channels
from def_jax.training.state import init_train_state, make_optimizer

# Fields that must agree between a checkpoint and the config that loads it (prefix match on dotted paths).
ARCHITECTURE_FIELDS = {
    "forecaster": ("forecaster.", "data.history", "data.dt_hours", "data.normalization", "data.statics",
                   "data.time_encodings", "data.levels"),
    "diffusion": ("denoiser.", "diffusion.schedule", "diffusion.num_steps", "diffusion.mode",
                  "diffusion.direct_history", "diffusion.direct_residual", "data.history", "data.dt_hours",
                  "data.normalization", "data.statics", "data.time_encodings", "data.levels"),
}

# Fields of the model sections that choose how a network is computed, not what it computes: they may differ between a
# checkpoint and the config that loads it (train with cuDNN attention on a GPU, forecast with XLA's on a CPU).
COMPUTE_FIELDS = ("remat", "attention", "attention_chunk")

# Fields that a checkpoint's saved config may lack, with the value such a checkpoint computes with: it matches a config
# that sets the field to this value.
LEGACY_DEFAULTS = {"denoiser.skip_coefficients": "learned", "denoiser.null_prior": "white"}


def config_dict(cfg: Any) -> dict:
    """A JSON-able dict of an ml_collections config (tuples become lists)."""
    return json.loads(cfg.to_json_best_effort())


def flatten_config(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``: a nested config dict by dotted field name."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: dict, current: dict, fields: tuple[str, ...]) -> list[str]:
    """``field: saved → current`` for every differing field that starts with one of ``fields``."""
    a, b = flatten_config(saved), flatten_config(current)
    # a saved config without a field of LEGACY_DEFAULTS has that field's value (compared where the config has the field)
    a = {**{k: v for k, v in LEGACY_DEFAULTS.items() if a and k in b}, **a}
    keys = sorted(k for k in set(a) | set(b) if any(k == f or k.startswith(f) for f in fields)
                  and k.rsplit(".", 1)[-1] not in COMPUTE_FIELDS)
    return [f"{k}: {a.get(k, '<absent>')!r} → {b.get(k, '<absent>')!r}" for k in keys if a.get(k) != b.get(k)]


def check_compatible(meta: dict, cfg_dict: dict, catalogue_json: str, kind: str, where: Path) -> None:
    """Raise a UserError listing what differs between a checkpoint's config/catalogue and the current ones."""
    diffs = config_differences(meta.get("config", {}), cfg_dict, ARCHITECTURE_FIELDS[kind])
    if json.loads(meta.get("catalogue", "{}")).get("variables") != json.loads(catalogue_json)["variables"]:
        diffs.append("catalogue: the store's channel catalogue differs from the checkpoint's")
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise UserError(f"checkpoint {where} does not match the config: {shown}")


class Checkpoints:
    """The periodic and best-by-validation checkpoints of one run directory."""

    def __init__(self, run_dir: Path, *, keep: int):
        self.run_dir = Path(run_dir).absolute()
        # The two managers save the same step at once; in a multi-process run their barriers (named by step) must
        # not collide, so each gets its own barrier prefix.
        self.latest = ocp.CheckpointManager(self.run_dir / "checkpoints", options=ocp.CheckpointManagerOptions(
            max_to_keep=max(int(keep), 1),
            multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix="latest")))
        self.best = ocp.CheckpointManager(self.run_dir / "best", options=ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda m: m["val_loss"], best_mode="min",
            multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix="best")))

    def save(self, step: int, state: Any, data_state: Optional[dict], meta: dict,
             val_loss: Optional[float] = None) -> None:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state or {}),
                                  meta=ocp.args.JsonSave(meta))
        self.latest.save(step, args=args, force=True)
        if val_loss is not None:
            self.best.save(step, args=args, metrics={"val_loss": float(val_loss)}, force=True)

    def latest_step(self) -> Optional[int]:
        return self.latest.latest_step()

    def best_step(self) -> Optional[int]:
        return self.best.best_step()

    def restore(self, step: int, abstract_state: Any, *, best: bool = False) -> tuple[Any, dict, dict]:
        """(state, data iterator state, meta) of ``step``, the state placed like ``abstract_state``."""
        manager = self.best if best else self.latest
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore()))
        return restored["state"], restored["data"], restored["meta"]

    def restore_meta(self, step: int, *, best: bool = False) -> dict:
        manager = self.best if best else self.latest
        return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.latest.close()
        self.best.close()


def abstract(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a pytree of arrays, the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                        tree)


# --- loading a trained network -----------------------------------------------------------------------------------


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
    replicated = parallel.replicated(mesh)
    graphdef, params = abstract_params(build, replicated)
    tcfg = cfg.training[kind]
    optimizer, _ = make_optimizer(tcfg, 1)
    # the training state's structure (optimizer moments, EMA, step, key) without computing it, every leaf replicated
    shapes = jax.eval_shape(lambda p: init_train_state(p, optimizer, seed=cfg.seed, ema_decay=tcfg.ema_decay), params)
    template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), shapes)
    state, _, _ = ckpt.restore(step, template, best=best)
    ckpt.close()
    params = state.ema if state.ema is not None else state.params
    log(f"{kind}: {where} step {step} ({'best by validation' if best else 'latest'}"
        f"{', EMA weights' if state.ema is not None else ''})")
    return graphdef, params, {"path": str(where), "step": int(step), "which": "best" if best else "latest"}
