"""What an ensemble is made of: ``config.ensemble`` resolved into the static shapes of its programs.

The ensemble's ``kind`` is the system its forecast files are scored as (docs/FORECASTS.md):

| kind | members from | its scale (``Ensemble.scale``, the value tuning varies) |
| --- | --- | --- |
| ``def`` | K guided walks of ε_θ before every G_φ step (DEF_METHOD §5) | λ, ``ensemble.guidance_scale`` |
| ``gaussian`` | white noise before every G_φ step (or at the initial time only) | ``ensemble.perturbation_scale`` |
| ``correlated`` | Gaussian random fields of ``ensemble.correlation_length_km``, likewise | ``ensemble.perturbation_scale`` |
| ``bred`` | ± bred vectors of G_φ (``ensemble.breeding_steps`` cycles) on the initial state | ``ensemble.perturbation_scale`` |
| ``lagged`` | analyses ``b × ensemble.lag_steps`` steps before the initial time, run forward | ``ensemble.lag_steps`` |
| ``direct`` | samples of the direct generative mode (``diffusion.mode = direct``) | λ, ``ensemble.guidance_scale`` |

Noise and bred vectors have per-channel amplitude = scale × the channel's normalized one-step-difference standard
deviation (:meth:`def_jax.forecast.inputs.ForecastInputs.one_step_std`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from def_jax.diffusion.samplers import static_guidance
from def_jax.errors import UserError
from def_jax.forecast import perturbations as pert
from def_jax.forecast.rollout import InitialSpec, RolloutSpec

SCALE_FIELDS = {"def": "ensemble.guidance_scale", "direct": "ensemble.guidance_scale",
                "gaussian": "ensemble.perturbation_scale", "correlated": "ensemble.perturbation_scale",
                "bred": "ensemble.perturbation_scale", "lagged": "ensemble.lag_steps"}


@dataclasses.dataclass(frozen=True)
class Ensemble:
    """The ensemble of a config (see the module docstring)."""

    kind: str
    members: int
    walks: int
    scale: float
    conditional: str = "network"
    every_step: bool = True
    correlation_length_km: float = 0.0
    breeding_steps: int = 0
    lag_steps: int = 1

    @classmethod
    def from_config(cls, cfg: Any) -> "Ensemble":
        e = cfg.ensemble
        kind = str(e.perturbation)
        if kind not in pert.PERTURBATIONS:
            raise UserError(f"config.ensemble.perturbation: expected one of {', '.join(pert.PERTURBATIONS)}; "
                            f"got {kind!r}")
        if cfg.diffusion.mode == "direct":
            if kind != "def":
                raise UserError(f"config.ensemble.perturbation={kind!r}: the direct generative mode samples its "
                                f"members; perturbations belong to diffusion.mode=def")
            kind = "direct"
        scale = {"def": e.guidance_scale, "direct": e.guidance_scale, "lagged": e.lag_steps}.get(
            kind, e.perturbation_scale)
        return cls(kind=kind, members=int(e.members), walks=int(e.walks) if kind == "def" else 0,
                   scale=float(scale), conditional=str(cfg.diffusion.conditional),
                   every_step=bool(e.noise_every_step), correlation_length_km=float(e.correlation_length_km),
                   breeding_steps=int(e.breeding_steps), lag_steps=int(e.lag_steps))

    def with_scale(self, scale: float) -> "Ensemble":
        """The same ensemble at another scale (for ``lagged`` the lag in steps)."""
        if self.kind == "lagged":
            if float(scale) != int(scale) or scale < 1:
                raise UserError(f"lagged ensemble: the scale is the lag in steps, a whole number >= 1; got {scale}")
            return dataclasses.replace(self, scale=float(int(scale)), lag_steps=int(scale))
        if not scale >= 0:
            raise UserError(f"{self.kind} ensemble: the scale must be >= 0; got {scale}")
        return dataclasses.replace(self, scale=float(scale))

    @property
    def uses_denoiser(self) -> bool:
        return self.kind == "direct" or (self.kind == "def" and self.walks > 0)

    @property
    def uses_amplitude(self) -> bool:
        """Whether the programs take the per-channel amplitude (noise and bred vectors)."""
        return self.kind in pert.NOISE or self.kind == "bred"

    @property
    def pre_steps(self) -> int:
        """Steps before the initial time whose analyses and forcings the initial states need."""
        if self.kind == "bred":
            return self.breeding_steps
        if self.kind == "lagged":
            return (self.members - 1) * self.lag_steps
        return 0

    def correlation_length_px(self, dx_km: float) -> float:
        return self.correlation_length_km / dx_km if self.kind == "correlated" else 0.0

    def step_spec(self, cfg: Any, history: int, lead_steps: int, dx_km: float, trace_scale: bool = False
                  ) -> RolloutSpec:
        """The rollout of the members after the initial time. ``trace_scale``: λ always a traced argument (one
        program for every λ; otherwise λ = 0 and λ = 1 get their exact one-branch shortcut)."""
        if self.kind in ("def", "direct"):
            step = "def"
        else:
            step = self.kind if self.kind in pert.NOISE and self.every_step else "none"
        return RolloutSpec(mode="direct" if self.kind == "direct" else "def", walks=self.walks, history=history,
                           forecaster_history=int(cfg.data.history), residual=bool(cfg.diffusion.direct_residual),
                           static_guidance=None if trace_scale else static_guidance(self.scale),
                           lead_steps=lead_steps, perturbation=step,
                           conditional=self.conditional, correlation_length=self.correlation_length_px(dx_km))

    def initial_spec(self, history: int, forecaster_history: int, dx_km: float) -> InitialSpec:
        """The program of the members' initial states."""
        kind = self.kind if self.kind in pert.INITIAL or (self.kind in pert.NOISE and not self.every_step) \
            else "none"
        return InitialSpec(kind=kind, history=history, forecaster_history=forecaster_history,
                           pre_steps=self.pre_steps, lag=self.lag_steps,
                           correlation_length=self.correlation_length_px(dx_km))

    def settings(self) -> dict:
        """The settings this ensemble uses (NetCDF attributes, logs), by name."""
        out: dict[str, Any] = {"perturbation": self.kind, "walks": self.walks}
        if self.kind in ("def", "direct"):
            out["guidance_scale"] = self.scale
            out["conditional"] = self.conditional if self.kind == "def" else "network"
        if self.kind == "def":
            out["walks"] = self.walks
        if self.uses_amplitude:
            out["perturbation_scale"] = self.scale
        if self.kind in pert.NOISE:
            out["noise_every_step"] = int(self.every_step)
        if self.kind == "correlated":
            out["correlation_length_km"] = self.correlation_length_km
        if self.kind == "bred":
            out["breeding_steps"] = self.breeding_steps
        if self.kind == "lagged":
            out["lag_steps"] = self.lag_steps
        return out

    def describe(self) -> str:
        return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.settings().items())
