"""The sampler a configuration names: one frozen dataclass per solver, each the home of its settings' defaults.

``config.sampler`` is one flat section (``name`` and the fields of every solver). :func:`sampler_config` turns it
into the named solver's dataclass:

| ``name`` | dataclass | its own fields |
| --- | --- | --- |
| ``dpm_solver_pp`` | :class:`DPMSolverPP` | ``steps``, ``spacing``, ``order``, ``method``, ``lower_order_final`` |
| ``dpm_solver_pp_adaptive`` | :class:`DPMSolverPPAdaptive` | ``order``, ``atol``, ``rtol``, ``max_nfe`` |
| ``ddim`` | :class:`DDIM` | ``steps``, ``spacing``, ``eta`` |
| ``ddpm`` | :class:`DDPM` | ``steps``, ``spacing`` |

and every one has ``t_end``, ``denoise_to_zero`` and ``x0_clip`` (:class:`SamplerConfig`). A field of the section
that the named solver does not have must keep its default (the default of the dataclasses that have it), so no
setting is silently ignored; a field without a default (``steps``, which every fixed-step solver must be given and
the adaptive one chooses itself) is never rejected. Each dataclass validates its own fields (``ValueError`` naming
the field) and builds the uniform ``sample(eps_fn, x_T, schedule, key) -> x`` of :mod:`def_jax.diffusion.samplers`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Mapping, Optional

import jax

from def_jax.diffusion import samplers as S
from def_jax.diffusion.schedules import VPSchedule
from def_jax.diffusion.timesteps import SPACINGS

Sampler = Callable[[S.EpsFn, jax.Array, VPSchedule, jax.Array], jax.Array]  # sample(eps_fn, x_T, schedule, key)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    """The settings every solver has.

    Attributes:
      t_end: the time the reverse diffusion stops at; None = 1/T (1e-3 for T = 1000).
      denoise_to_zero: return x̂_0(x, t_end) instead of x at t_end (one more network evaluation).
      x0_clip: threshold the data prediction x̂_0 to [−x0_clip, x0_clip] (:func:`~def_jax.diffusion.samplers.
        clipped_eps`); None = off.
    """

    name: ClassVar[str]
    t_end: Optional[float] = None
    denoise_to_zero: bool = False
    x0_clip: Optional[float] = None

    def __post_init__(self):
        if self.x0_clip is not None and not self.x0_clip > 0:
            raise ValueError(f"x0_clip must be > 0 (or None); got {self.x0_clip}")

    def solve(self, eps_fn: S.EpsFn, x_T: jax.Array, schedule: VPSchedule, key: jax.Array) -> jax.Array:
        """The solver's sample at ``t_end`` from ``x_T`` (``key``: the stochastic solvers' PRNG key); DPM-Solver++'s
        also takes ``corrector``, a map applied after every update (:func:`~def_jax.diffusion.samplers.dpm_solver_pp`).
        """
        raise NotImplementedError

    def sampler(self, corrector: Optional[Callable] = None) -> Sampler:
        """``sample(eps_fn, x_T, schedule, key) -> x``: :meth:`solve` on the (optionally clipped) ε-function, with
        ``corrector`` after every update (DPM-Solver++ only; a ``ValueError`` for the others)."""
        if corrector is not None and not isinstance(self, DPMSolverPP):
            raise ValueError(f"ensemble.corrector: the {self.name} sampler has no corrector; use dpm_solver_pp")

        def sample(eps_fn: S.EpsFn, x_T: jax.Array, schedule: VPSchedule, key: jax.Array) -> jax.Array:
            if self.x0_clip is not None:
                eps_fn = S.clipped_eps(eps_fn, schedule, float(self.x0_clip))
            if corrector is None:
                return self.solve(eps_fn, x_T, schedule, key)
            return self.solve(eps_fn, x_T, schedule, key, corrector=corrector)

        return sample


@dataclasses.dataclass(frozen=True, kw_only=True)
class FixedStepSampler(SamplerConfig):
    """A solver with a fixed number of network evaluations ``steps`` (S) on a time grid of ``spacing``
    (``logSNR``, ``time_uniform`` or ``time_quadratic``, :mod:`def_jax.diffusion.timesteps`)."""

    steps: int
    spacing: str = "logSNR"

    def __post_init__(self):
        super().__post_init__()
        if not self.steps >= 1:
            raise ValueError(f"steps must be >= 1; got {self.steps}")
        S.check_choice("spacing", self.spacing, SPACINGS)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPMSolverPP(FixedStepSampler):
    """DPM-Solver++ (:func:`~def_jax.diffusion.samplers.dpm_solver_pp`): ``order`` 1–3, ``method`` multistep
    (2M/3M) or singlestep (2S/3S), ``lower_order_final``: the last multistep steps at lower order when S < 15."""

    name: ClassVar[str] = "dpm_solver_pp"
    order: int = 2
    method: str = "multistep"
    lower_order_final: bool = True

    def __post_init__(self):
        super().__post_init__()
        S.check_choice("order", self.order, (1, 2, 3))
        S.check_choice("method", self.method, S.METHODS)

    def solve(self, eps_fn, x_T, schedule, key, corrector=None):
        return S.dpm_solver_pp(eps_fn, x_T, schedule, steps=self.steps, order=self.order, method=self.method,
                               spacing=self.spacing, t_end=self.t_end, lower_order_final=self.lower_order_final,
                               denoise_to_zero=self.denoise_to_zero, corrector=corrector)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPMSolverPPAdaptive(SamplerConfig):
    """Adaptive step-size DPM-Solver++ (:func:`~def_jax.diffusion.samplers.dpm_solver_pp_adaptive`): ``order`` 2
    (DPM-Solver-12) or 3 (-23), error tolerances ``atol``/``rtol``, at most ``max_nfe`` evaluations (the sample is
    NaN if they run out before ``t_end``). It chooses its own steps."""

    name: ClassVar[str] = "dpm_solver_pp_adaptive"
    order: int = 2
    atol: float = 0.0078
    rtol: float = 0.05
    max_nfe: int = 1000

    def __post_init__(self):
        super().__post_init__()
        S.check_choice("order", self.order, (2, 3))

    def solve_with_info(self, eps_fn: S.EpsFn, x_T: jax.Array, schedule: VPSchedule
                        ) -> tuple[jax.Array, S.AdaptiveInfo]:
        """The sample and the solve's statistics (NFE, accepted and rejected steps); no clipping."""
        return S.dpm_solver_pp_adaptive(eps_fn, x_T, schedule, order=self.order, t_end=self.t_end, atol=self.atol,
                                        rtol=self.rtol, max_nfe=self.max_nfe, denoise_to_zero=self.denoise_to_zero)

    def solve(self, eps_fn, x_T, schedule, key):
        return self.solve_with_info(eps_fn, x_T, schedule)[0]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DDIM(FixedStepSampler):
    """DDIM (:func:`~def_jax.diffusion.samplers.ddim`) with stochasticity ``eta`` ≥ 0 (0: deterministic)."""

    name: ClassVar[str] = "ddim"
    eta: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if not self.eta >= 0:
            raise ValueError(f"eta must be >= 0; got {self.eta}")

    def solve(self, eps_fn, x_T, schedule, key):
        return S.ddim(eps_fn, x_T, schedule, steps=self.steps, eta=self.eta, spacing=self.spacing, t_end=self.t_end,
                      key=key if self.eta > 0 else None, denoise_to_zero=self.denoise_to_zero)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DDPM(FixedStepSampler):
    """DDPM ancestral sampling (:func:`~def_jax.diffusion.samplers.ddpm`)."""

    name: ClassVar[str] = "ddpm"

    def solve(self, eps_fn, x_T, schedule, key):
        return S.ddpm(eps_fn, x_T, schedule, key=key, steps=self.steps, spacing=self.spacing, t_end=self.t_end,
                      denoise_to_zero=self.denoise_to_zero)


SAMPLER_CONFIGS: dict[str, type[SamplerConfig]] = {c.name: c for c in (DPMSolverPP, DPMSolverPPAdaptive, DDIM, DDPM)}
SAMPLERS = tuple(SAMPLER_CONFIGS)


def _field_defaults() -> dict[str, Any]:
    """Every field of the section with a default, and that default (the same in every dataclass that has it)."""
    out: dict[str, Any] = {}
    for cls in SAMPLER_CONFIGS.values():
        for f in dataclasses.fields(cls):
            if f.default is dataclasses.MISSING:
                continue
            if out.setdefault(f.name, f.default) != f.default:
                raise AssertionError(f"sampler field {f.name}: defaults {out[f.name]!r} and {f.default!r} disagree")
    return out


FIELD_DEFAULTS = _field_defaults()
FIELDS = frozenset(f.name for cls in SAMPLER_CONFIGS.values() for f in dataclasses.fields(cls))


def sampler_config(section: Mapping[str, Any]) -> SamplerConfig:
    """The dataclass of the solver ``section["name"]`` names, from a flat section such as ``config.sampler``.

    Raises ``ValueError`` naming the field: an unknown sampler, a field no solver has, a field the named solver does
    not use that is away from its default, or a value the solver's own checks reject.
    """
    settings = dict(section.items())
    name = settings.pop("name")
    S.check_choice("sampler", name, SAMPLERS)
    cls = SAMPLER_CONFIGS[name]
    own = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - FIELDS)
    if unknown:
        raise ValueError(f"unknown sampler field(s) {', '.join(unknown)}")
    unused = sorted(k for k, v in settings.items()
                    if k not in own and k in FIELD_DEFAULTS and v != FIELD_DEFAULTS[k])
    missing = sorted(f.name for f in dataclasses.fields(cls)
                     if f.default is dataclasses.MISSING and f.name not in settings)
    if missing:
        raise ValueError(f"sampler {name!r} needs {', '.join(missing)}")
    config = cls(**{k: v for k, v in settings.items() if k in own})
    if unused:
        raise ValueError(f"sampler {name!r} does not use {', '.join(unused)}; leave them at their defaults")
    return config


def sampler_from_config(section: Mapping[str, Any], corrector: Optional[Callable] = None) -> Sampler:
    """``sample(eps_fn, x_T, schedule, key) -> x`` of the solver a flat sampler section names (:func:`sampler_config`),
    with ``corrector`` after every update (:meth:`SamplerConfig.sampler`)."""
    return sampler_config(section).sampler(corrector)
