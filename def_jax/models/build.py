"""Building and initializing the networks from a config and the store's channels: the forecaster G_φ and the
denoiser ε_θ (:mod:`def_jax.models.networks`), ε_θ's spectral null prior, and parameters initialized under ``jit``.

Training (:mod:`def_jax.training.run`), checkpoint loading (:func:`def_jax.training.checkpoint.load_trained`), the
forecast, ``info`` and the benchmarks all build their networks here.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
from flax import nnx

from def_jax.catalogue import load_catalogue
from def_jax.data import schema
from def_jax.data.store import COORD_STATICS, resolve_statics
from def_jax.diffusion.spectral import SpectralPrior
from def_jax.models import model_rngs
from def_jax.models.networks import TIME_FEATURES, Channels, Denoiser, Forecaster
from def_jax.models.unet import UNetConfig


def channels_of_store(cfg: Any) -> tuple[str, ...]:
    """The state channel names of the config's store (its catalogue, in the models' order)."""
    return tuple(schema.store_catalogue(schema.open_store(cfg.data.store)).channels("state"))


def store_channels(source: Any) -> Channels:
    """The networks' channel counts from what is read: ``source`` has ``state_channels``, ``forcing_channels``,
    ``static_channels`` and ``time_encodings`` (a training :class:`~def_jax.data.source.WindowSource`, a forecast's
    :class:`~def_jax.forecast.inputs.ForecastInputs`)."""
    return Channels(state=len(source.state_channels), forcing=len(source.forcing_channels),
                    static=len(source.static_channels), time=TIME_FEATURES if source.time_encodings else 0)


def config_channels(cfg: Any) -> Channels:
    """The networks' channel counts from the config's catalogue and statics alone (no store read: ``info``, benchmarks
    on abstract or random inputs)."""
    catalogue = load_catalogue(cfg.data.catalogue, cfg.data.levels)
    statics = resolve_statics(tuple(cfg.data.statics), catalogue)
    static = sum(1 if n in COORD_STATICS else catalogue[n].num_channels for n in statics)
    return Channels(catalogue.num_channels("state"), catalogue.num_channels("forcing"), static,
                    TIME_FEATURES if cfg.data.time_encodings else 0)


def build_forecaster(cfg: Any, channels: Channels, seed: int) -> nnx.Module:
    """G_φ of ``config.forecaster`` on ``config.data.history`` input states (DEF_METHOD §1), initialized from ``seed``."""
    return Forecaster(channels, cfg.data.history, UNetConfig.from_config(cfg.forecaster),
                      predict_increment=cfg.forecaster.predict_increment, rngs=model_rngs(seed))


def denoiser_condition_channels(cfg: Any, channels: Channels) -> int:
    """ε_θ's condition channels: G_φ's one-step forecast in DEF mode (the state's channels), else the direct mode's
    history of states (and residual)."""
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


def init_params(build: Callable[[], nnx.Module], sharding) -> tuple[nnx.GraphDef, Any]:
    """Graph definition and parameters, initialized in one compiled program placed with ``sharding`` (the module is
    built once, under the trace; its graph definition holds no arrays)."""
    graphdefs = []

    def initialize():
        graphdef, state = nnx.split(build())
        graphdefs.append(graphdef)
        return state

    params = jax.jit(initialize, out_shardings=sharding)()
    return graphdefs[0], params


def abstract_params(build: Callable[[], nnx.Module], sharding) -> tuple[nnx.GraphDef, Any]:
    """Graph definition and the parameters' shapes, dtypes and placement ``sharding``, without computing any value:
    the target of a checkpoint restore (the trained weights replace every initial value)."""
    graphdef, state = nnx.split(nnx.eval_shape(build))
    return graphdef, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)
