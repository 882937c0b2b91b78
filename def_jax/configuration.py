"""Checking and printing resolved configurations (the files themselves live in ``configs/``).

``validate(config)`` raises :class:`ConfigError` naming the first offending field, so every command fails early with
one line such as ``config.sampler.order: must be one of 1, 2, 3; got 5`` instead of deep inside a run.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Callable, Iterator

import ml_collections

from def_jax.diffusion.sampler_configs import SAMPLERS, sampler_config
from def_jax.diffusion.schedules import SCHEDULES
from def_jax.data.windows import as_period, first_overlap, overlap_message
from def_jax.diffusion.timesteps import SPACINGS
from def_jax.errors import UserError
from def_jax.models.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS


class ConfigError(UserError):
    """A configuration field holds a value the code cannot use."""

    def __init__(self, field: str, message: str):
        super().__init__(f"config.{field}: {message}")
        self.field = field


def iter_fields(cfg: ml_collections.ConfigDict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every leaf field, in sorted order."""
    for key in sorted(cfg.keys()):
        value = cfg[key]
        path = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            yield from iter_fields(value, path + ".")
        else:
            yield path, value


def _get(cfg: ml_collections.ConfigDict, path: str) -> Any:
    for part in path.split("."):
        cfg = cfg[part]
    return cfg


def has_field(cfg: ml_collections.ConfigDict, path: str) -> bool:
    """Whether ``path`` names a field (leaf or section) of ``cfg``."""
    try:
        _get(cfg, path)
        return True
    except (KeyError, AttributeError, TypeError):
        return False


def suggest_field(cfg: ml_collections.ConfigDict, path: str) -> str:
    """A 'did you mean' hint for a misspelled field path ('' if nothing is close)."""
    leaves = [p for p, _ in iter_fields(cfg)]
    sections = sorted({p.rsplit(".", 1)[0] for p in leaves if "." in p})
    close = difflib.get_close_matches(path, leaves + sections, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def format_config(cfg: ml_collections.ConfigDict, indent: int = 0) -> str:
    """Nested ``key: value`` text, tuples as (a, b), sorted keys."""
    lines = []
    for key in sorted(cfg.keys()):
        value = cfg[key]
        pad = "  " * indent
        if isinstance(value, ml_collections.ConfigDict):
            lines.append(f"{pad}{key}:")
            lines.append(format_config(value, indent + 1))
        else:
            lines.append(f"{pad}{key}: {format_value(value)}")
    return "\n".join(lines)


def format_value(value: Any) -> str:
    """One field's value as ``config`` prints it and ``--config.FIELD=`` reads it back: tuples as (a, b), ``''`` for
    the empty string, everything else as ``str``."""
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(format_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, str):
        return repr(value) if value == "" else value
    return str(value)


# --- rules ------------------------------------------------------------------------------------------------------

_CHOICES: dict[str, tuple] = {
    "data.normalization": ("global", "per_sample"),
    "diffusion.schedule": SCHEDULES,
    "diffusion.mode": ("def", "direct"),
    "diffusion.conditional": ("network", "exact"),
    "ensemble.perturbation": ("def", "gaussian", "correlated", "bred", "lagged"),
    "denoiser.skip_coefficients": ("learned", "exact"),
    "denoiser.null_prior": ("white", "spectral"),
    "sampler.name": SAMPLERS,
    "sampler.method": ("multistep", "singlestep"),
    "sampler.spacing": SPACINGS,
    "forecaster.dtype": ("float32", "bfloat16"),
    "denoiser.dtype": ("float32", "bfloat16"),
    "forecaster.attention": ATTENTION_IMPLEMENTATIONS,
    "denoiser.attention": ATTENTION_IMPLEMENTATIONS,
    "training.forecaster.lr_schedule": ("cosine", "constant"),
    "training.diffusion.lr_schedule": ("cosine", "constant"),
    "training.forecaster.optimizer": ("adamw", "sgd"),
    "training.diffusion.optimizer": ("adamw", "sgd"),
    "training.diffusion.forecaster_checkpoint": ("best", "latest"),
    "ensemble.checkpoint": ("best", "latest"),
    "ensemble.format": ("netcdf", "zarr"),
    "evaluation.area_weighting": ("uniform", "map_factor", "coslat"),
    "tuning.criterion": ("spread_skill", "crps"),
}


def choices(path: str) -> tuple:
    """The values the choice field ``path`` accepts, e.g. ``choices("ensemble.format") == ("netcdf", "zarr")``."""
    return _CHOICES[path]


def _at_least(lo: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= lo else f"must be >= {lo}; got {v}"


def _within(lo: float, hi: float) -> Callable[[Any], str | None]:
    return lambda v: None if lo <= v <= hi else f"must be in [{lo}, {hi}]; got {v}"


def _positive_pair(v: Any) -> str | None:
    if len(v) != 2 or any(int(n) < 0 for n in v):
        return f"must be two non-negative integers (ny, nx); got {v}"
    return None


def _unet_rules(name: str) -> dict[str, Callable]:
    return {
        f"{name}.base_channels": _at_least(1),
        f"{name}.num_res_blocks": _at_least(1),
        f"{name}.num_heads": _at_least(1),
        f"{name}.norm_groups": _at_least(1),
        f"{name}.dropout": _within(0.0, 1.0),
        f"{name}.attention_chunk": _at_least(1),
        f"{name}.channel_mults": lambda v: None if len(v) >= 1 and all(m > 0 for m in v)
        else f"must be a non-empty tuple of positive numbers; got {v}",
    }


_RULES: dict[str, Callable[[Any], str | None]] = {
    "data.dt_hours": _at_least(1),
    "data.history": _at_least(1),
    "data.grid_shape": _positive_pair,
    "data.crop_shape": _positive_pair,
    "data.workers": _at_least(0),
    "diffusion.num_steps": _at_least(2),
    "diffusion.p_uncond": _within(0.0, 1.0),
    "diffusion.p_advance": _within(0.0, 1.0),
    "diffusion.direct_history": _at_least(1),
    "sampler.steps": _at_least(1),
    "sampler.eta": _at_least(0.0),
    "sampler.max_nfe": _at_least(2),
    "sampler.t_end": lambda v: None if v is None or 0.0 < v < 1.0 else f"must be in (0, 1) or None; got {v}",
    "ensemble.members": _at_least(1),
    "training.forecaster.batch_size": _at_least(1),
    "training.diffusion.batch_size": _at_least(1),
    "training.forecaster.grad_accum": _at_least(1),
    "training.diffusion.grad_accum": _at_least(1),
    "training.forecaster.rollout_steps": _at_least(1),
    "training.forecaster.eval_every": _at_least(1),
    "training.forecaster.eval_batches": _at_least(0),
    "training.diffusion.eval_batches": _at_least(0),
    "training.diffusion.eval_every": _at_least(1),
    "training.forecaster.checkpoint_every": _at_least(1),
    "training.diffusion.checkpoint_every": _at_least(1),
    "training.forecaster.log_every": _at_least(1),
    "training.diffusion.log_every": _at_least(1),
    "training.diffusion.ema_decay": _within(0.0, 0.99999),
    "training.forecaster.ema_decay": _within(0.0, 0.99999),
    "ensemble.walks": _at_least(0),
    "ensemble.guidance_scale": lambda v: None if math.isfinite(v) and v >= 0 else f"must be finite and >= 0; got {v}",
    "ensemble.lead_hours": _at_least(0),
    "ensemble.member_chunk": _at_least(0),
    "ensemble.lead_chunk": _at_least(1),
    "ensemble.perturbation_scale": lambda v: None if math.isfinite(v) and v >= 0 else f"must be finite and >= 0; got {v}",
    "ensemble.correlation_length_km": _at_least(0.0),
    "ensemble.breeding_steps": _at_least(0),
    "ensemble.lag_steps": _at_least(1),
    **_unet_rules("forecaster"),
    **_unet_rules("denoiser"),
}


def validate(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Check every constrained field; raise :class:`ConfigError` naming the first bad one. Returns ``cfg``."""
    for path, choices in _CHOICES.items():
        value = _get(cfg, path)
        if value not in choices:
            raise ConfigError(path, f"must be one of {', '.join(map(str, choices))}; got {value!r}")
    for path, rule in _RULES.items():
        problem = rule(_get(cfg, path))
        if problem:
            raise ConfigError(path, problem)
    for name in ("forecaster", "denoiser"):
        levels = len(cfg[name].channel_mults)
        bad = [lvl for lvl in cfg[name].attention_levels if not 0 <= lvl < levels]
        if bad:
            raise ConfigError(f"{name}.attention_levels", f"levels {bad} do not exist (channel_mults has {levels})")
    if cfg.denoiser.skip_coefficients == "exact" and cfg.denoiser.linear_skip and cfg.diffusion.mode != "def":
        raise ConfigError("denoiser.skip_coefficients", "'exact' is DEF's answer for a condition that is the state; "
                          f"diffusion.mode={cfg.diffusion.mode!r} needs 'learned'")
    if cfg.denoiser.null_prior == "spectral" and not (cfg.denoiser.linear_skip and
                                                      cfg.denoiser.skip_coefficients == "exact"):
        raise ConfigError("denoiser.null_prior", "'spectral' is the null condition's path of the exact skip; it needs "
                          "denoiser.linear_skip=True and denoiser.skip_coefficients=exact")
    if cfg.diffusion.conditional == "exact" and cfg.diffusion.mode != "def":
        raise ConfigError("diffusion.conditional", "'exact' is the closed form of DEF's condition (the state itself); "
                          f"diffusion.mode={cfg.diffusion.mode!r} needs 'network'")
    if cfg.diffusion.p_uncond == 1.0 and cfg.diffusion.conditional == "network":
        raise ConfigError("diffusion.p_uncond", "1.0 never trains the conditional branch that "
                          "diffusion.conditional='network' samples with; set diffusion.conditional=exact")
    if cfg.diffusion.mode == "direct" and cfg.ensemble.perturbation != "def":
        raise ConfigError("ensemble.perturbation", f"{cfg.ensemble.perturbation!r} perturbs DEF's rollout; the "
                          "direct generative mode (diffusion.mode=direct) samples its members: leave it at 'def'")
    # the splits must not share a time (leakage): checked here, so every command that reads a period refuses overlap
    periods = {s: _get(cfg, f"data.{s}_period") for s in ("train", "val", "test")}
    parsed = {}
    for split, text in periods.items():
        try:
            parsed.update({split: as_period(text, "value")} if text else {})
        except UserError as err:
            raise ConfigError(f"data.{split}_period", str(err)) from None
    pair = first_overlap(parsed)
    if pair:
        raise ConfigError(f"data.{pair[0]}_period", overlap_message(parsed, *pair).split(" ", 1)[1])
    lead, dt = cfg.ensemble.lead_hours, cfg.data.dt_hours
    if lead % dt:
        raise ConfigError("ensemble.lead_hours", f"must be a multiple of data.dt_hours={dt}; got {lead}")
    if cfg.sampler.t_end is not None and cfg.sampler.t_end < 0.1 / cfg.diffusion.num_steps:
        raise ConfigError("sampler.t_end", f"{cfg.sampler.t_end} is far below 1/T = {1 / cfg.diffusion.num_steps}")
    try:
        sampler_config(cfg.sampler)
    except ValueError as err:
        raise ConfigError("sampler", str(err)) from None
    return cfg
