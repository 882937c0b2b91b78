"""def-jax configuration presets (DEF_METHOD.md §9), ml-collections style.

Use from the command line as ``--config=configs/presets.py:VARIANT`` and override any field with
``--config.FIELD=VALUE``, e.g. ``--config.sampler.steps=20 --config.ensemble.guidance_scale=0.3``.

Variants:
  demo             the embedded mini-HRRR (64×64), small U-Nets; the default of every command.
  hrrr_expanded    seed 1: HRRR 3 km, expanded variables, base width 128, DPM-Solver++ 2M, B=16, K=8, λ=0.1, 240 h.
  hrrr_4090        seed 2 phase 1 (one RTX 4090): direct generative mode on the past 4 h, width 64, 200 sampler steps,
                   batch 1 on crops, 50 members.
  hrrr_production  seed 2 phase 2: multi-GPU, a year of data, width 256, 1000-step ancestral sampling, 50 members.
  era5_paper       the DEF authors' ERA5 5.625° setting: 32×64, 6 h, linear schedule, DPM-Solver++ 2M 10 steps,
                   32 members, K=3 (sweep 1/3/7), λ=0.5 (global normalization; the authors' per-sample one optional).
  heldsuarez       the era5_paper setting on the Held–Suarez world of `synth --world=held-suarez`, sized for a
                   2-core CPU: width 32, 16 members, K=2, forecasts to 10 days.

Every field is listed here with its meaning; ``def-jax config`` prints the resolved values. Which command consumes a
section is noted in its comment (docs/CONFIG.md).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from def_jax.catalogue import WEATHERBENCH_LEVELS
from def_jax.diffusion.sampler_configs import DDIM, DPMSolverPP, DPMSolverPPAdaptive, SamplerConfig

VARIANTS = ("demo", "hrrr_expanded", "hrrr_4090", "hrrr_production", "era5_paper", "heldsuarez")

# The 13 HRRR pressure levels of the expanded set (hPa), DEF_METHOD §2.
HRRR_LEVELS = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000)


def _unet(base_channels: int, channel_mults, attention_levels, **kw) -> ml_collections.ConfigDict:
    """U-Net hyperparameters shared by the forecaster G_φ and the denoiser ε_θ (:mod:`def_jax.models.unet`)."""
    return ml_collections.ConfigDict(
        dict(
            base_channels=base_channels,  # width of the first level
            channel_mults=tuple(channel_mults),  # width of level l = round(base_channels * channel_mults[l])
            num_res_blocks=kw.get("num_res_blocks", 2),  # residual blocks per level
            attention_levels=tuple(attention_levels),  # levels (0 = full resolution) with self-attention
            mid_attention=True,  # self-attention in the middle block
            attention_gates=True,  # attention gates on the skip connections (seed 1)
            num_heads=kw.get("num_heads", 4),
            norm_groups=kw.get("norm_groups", 8),  # GroupNorm groups
            dropout=kw.get("dropout", 0.0),
            time_embedding_dim=kw.get("time_embedding_dim", 4 * base_channels),
            remat=False,  # rematerialize each block in the backward pass (memory for compute)
            dtype="float32",  # compute dtype: float32 | bfloat16 (parameters stay float32)
            # how self-attention is computed (not what): auto | xla (scores in memory) | blocked (scores in memory,
            # 256 query rows at a time: XLA:CPU's fastest) | cudnn (fused, NVIDIA GPUs, bfloat16/float16) | chunked
            # (memory-efficient, any backend); auto = blocked on CPU, cudnn on GPUs where it applies, else chunked
            # (def_jax/models/attention.py)
            attention="auto",
            attention_chunk=1024,  # chunked: tokens per query and per key chunk
        )
    )


def _denoiser(*args, **kw) -> ml_collections.ConfigDict:
    """The denoiser's U-Net plus ε_θ's own field."""
    c = _unet(*args, **kw)
    c.linear_skip = True  # ε = U-Net + a(τ) x_τ + b(τ) P c (networks.Denoiser): ε keeps every channel's noise
    # "exact": the skip path is the schedule's (x_τ − α_τ c)/σ_τ with a condition and σ_τ x_τ without (networks.Denoiser);
    # "learned": a(τ), b(τ), P trained (what a checkpoint without this field computes with)
    c.skip_coefficients = "exact"
    # the null condition's skip path with the exact coefficients: "white" (σ_τ x_τ, the exact ε of N(0, I) data) |
    # "spectral" (the exact ε of a stationary Gaussian climate with the training states' cross-channel power spectrum,
    # from def-jax stats; def_jax/diffusion/spectral.py)
    c.null_prior = "white"
    return c


def _training(**kw) -> ml_collections.ConfigDict:
    """Optimizer and loop settings for one model (seed 1 defaults: AdamW, warmup + cosine, clip 1.0)."""
    cfg = ml_collections.ConfigDict(
        dict(
            epochs=kw.get("epochs", 20),  # passes over the training period (seed 1: 20 for G_φ)
            max_steps=kw.get("max_steps", 0),  # > 0 caps the optimizer steps (overrides epochs)
            batch_size=kw.get("batch_size", 4),  # global batch per optimizer micro-step
            grad_accum=kw.get("grad_accum", 1),  # micro-steps per optimizer update
            optimizer="adamw",  # adamw | sgd (plain SGD: for checks where Adam would hide a gradient-scale error)
            learning_rate=kw.get("learning_rate", 2e-4),
            warmup_steps=kw.get("warmup_steps", 500),
            lr_schedule="cosine",  # warmup + cosine decay | constant
            min_lr_ratio=0.01,  # final learning rate / peak
            weight_decay=kw.get("weight_decay", 1e-4),
            grad_clip=1.0,  # global-norm gradient clipping
            ema_decay=kw.get("ema_decay", 0.0),  # > 0 keeps an EMA of the weights (used for sampling)
            eval_every=kw.get("eval_every", 500),
            eval_batches=kw.get("eval_batches", 8),  # validation batches per evaluation (0 = no validation)
            checkpoint_every=kw.get("checkpoint_every", 500),
            keep_checkpoints=3,
            log_every=kw.get("log_every", 50),
        )
    )
    return cfg


def _base() -> ml_collections.ConfigDict:
    """The demo preset; the other presets start from it and change what differs."""
    c = ml_collections.ConfigDict()
    c.preset = "demo"
    c.seed = 0

    # --- data (prepare, stats, synth, loader) ---------------------------------------------------------------------
    c.data = ml_collections.ConfigDict()
    c.data.store = "demo_output/mini_hrrr.zarr"  # the Zarr store every stage reads
    c.data.catalogue = "hrrr_expanded"  # channel catalogue: built-in name or a YAML/JSON file
    c.data.levels = HRRR_LEVELS  # pressure levels (hPa) of the 3-D variables
    c.data.grid_shape = (64, 64)  # (ny, nx) of the fields the models see
    c.data.crop_shape = (0, 0)  # random training crops (0, 0) = full grid
    c.data.dt_hours = 1  # Δt of one forecaster step
    c.data.history = 1  # past states given to G_φ (direct mode: diffusion.direct_history)
    c.data.normalization = "global"  # global (training-period mean/std per channel) | per_sample (authors)
    c.data.time_encodings = True  # sin/cos of hour-of-day and day-of-year as input channels
    c.data.statics = ("orography", "land_mask", "latitude", "longitude")
    c.data.train_period = "2024-06-01T00:2024-06-10T23"
    c.data.val_period = "2024-06-11T00:2024-06-12T23"
    c.data.test_period = "2024-06-13T00:2024-06-14T23"
    c.data.workers = 0  # Grain worker processes (0 = in-process)
    # hold each period's states and forcings in memory (read once per reading process) instead of reading every
    # window from the store: for stores that fit (at most half of the machine's memory per period; docs/DATA.md)
    c.data.in_memory = False
    c.data.synth = ml_collections.ConfigDict(  # the embedded mini-HRRR generator (def-jax synth)
        dict(start="2024-06-01T00", hours=336, stride=0, seed=0)
    )

    # --- models --------------------------------------------------------------------------------------------------
    c.forecaster = _unet(32, (1, 2, 4), attention_levels=(2,))
    c.forecaster.predict_increment = True  # G_φ predicts X_{t+1} − X_t
    c.denoiser = _denoiser(32, (1, 2, 4), attention_levels=(2,))

    # --- diffusion (train-diffusion, samplers) -------------------------------------------------------------------
    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.schedule = "cosine"  # cosine (seed 1) | linear (authors)
    c.diffusion.num_steps = 1000  # T, discrete training steps
    c.diffusion.p_uncond = 0.1  # classifier-free guidance condition dropout (fraction of ∅ samples in training)
    # DEF's conditional branch ε_θ(x, τ, c): "network" (the U-Net with the condition) | "exact" ((x_τ − α_τ c)/σ_τ,
    # the closed form of DEF's point-mass condition c = x_0: no network call, so the U-Net is the unconditional
    # model alone and p_uncond = 1 gives it every training sample; docs/TRAINING.md)
    c.diffusion.conditional = "network"
    c.diffusion.p_advance = 0.5  # random advancement through G_φ (DEF_METHOD §4)
    c.diffusion.mode = "def"  # def (perturbation walks + G_φ) | direct (sample X_{t+1} from the past)
    c.diffusion.direct_history = 4  # direct mode: past hourly states in the condition (seed 2)
    c.diffusion.direct_residual = False  # direct mode: diffuse X_{t+1} − G_φ(X_t) (StormCast-style)

    # --- training ------------------------------------------------------------------------------------------------
    c.training = ml_collections.ConfigDict()
    c.training.forecaster = _training(epochs=20, batch_size=8, warmup_steps=100, eval_every=200)
    c.training.forecaster.rollout_steps = 1  # k-step autoregressive loss (authors: 4)
    c.training.forecaster.rollout_discount = 0.99  # γ of the k-step loss
    c.training.forecaster.area_weights = False
    c.training.forecaster.variable_weights = config_dict.placeholder(str)  # JSON {channel: weight} or None
    c.training.diffusion = _training(epochs=20, batch_size=8, warmup_steps=100, ema_decay=0.999, eval_every=200)
    c.training.diffusion.forecaster_checkpoint = "best"  # frozen G_φ: best | latest checkpoint of WORKDIR/forecaster
    c.training.tensorboard = True  # TensorBoard event files in the run directory
    c.training.wandb = False  # also log to Weights & Biases (needs wandb installed)
    c.training.wandb_project = "def-jax"

    # --- sampler (forecast, bench sampler) -----------------------------------------------------------------------
    # one flat section for every solver; the defaults are the solvers' dataclasses' (def_jax/diffusion/
    # sampler_configs.py), and a field the named solver does not use must keep its default
    c.sampler = ml_collections.ConfigDict()
    c.sampler.name = DPMSolverPP.name  # dpm_solver_pp | dpm_solver_pp_adaptive | ddim | ddpm
    c.sampler.steps = 10  # S, network evaluations per reverse diffusion (fixed-step samplers)
    c.sampler.order = DPMSolverPP.order  # dpm_solver_pp: 1-3; adaptive: 2-3
    c.sampler.method = DPMSolverPP.method  # dpm_solver_pp: multistep | singlestep
    c.sampler.spacing = DPMSolverPP.spacing  # logSNR | time_uniform | time_quadratic (fixed-step samplers)
    c.sampler.t_end = config_dict.placeholder(float)  # None = 1/T (1e-3 for T = 1000)
    c.sampler.lower_order_final = DPMSolverPP.lower_order_final  # dpm_solver_pp multistep, < 15 steps
    c.sampler.denoise_to_zero = SamplerConfig.denoise_to_zero  # finish with x̂_0 at t_end (+1 NFE)
    c.sampler.eta = DDIM.eta  # ddim stochasticity
    c.sampler.atol = DPMSolverPPAdaptive.atol  # adaptive: absolute tolerance
    c.sampler.rtol = DPMSolverPPAdaptive.rtol  # adaptive: relative tolerance
    c.sampler.max_nfe = DPMSolverPPAdaptive.max_nfe  # adaptive: evaluation budget (NaN output if exceeded)
    c.sampler.x0_clip = config_dict.placeholder(float)  # clip the data prediction x̂_0 to ±x0_clip (None = off)

    # --- ensemble (forecast) -------------------------------------------------------------------------------------
    c.ensemble = ml_collections.ConfigDict()
    # what the members are made of (def_jax/forecast/ensemble.py): def (K guided walks of ε_θ before every G_φ step)
    # | gaussian (white noise) | correlated (Gaussian random fields) | bred (± bred vectors of G_φ on the initial
    # state) | lagged (earlier analyses run forward to the initial time)
    c.ensemble.perturbation = "def"
    c.ensemble.members = 8  # B
    c.ensemble.walks = 2  # def: K chained perturbation walks per step
    c.ensemble.guidance_scale = 0.5  # def (and the direct mode): λ
    # gaussian, correlated, bred: amplitude per channel = this × the channel's normalized one-step-difference std
    c.ensemble.perturbation_scale = 1.0
    c.ensemble.noise_every_step = True  # gaussian, correlated: before every G_φ step (False: the initial state only)
    c.ensemble.correlation_length_km = 50.0  # correlated: L of the covariance exp(−r²/(2L²))
    c.ensemble.breeding_steps = 6  # bred: breeding cycles (one G_φ step each) before the initial time
    c.ensemble.lag_steps = 1  # lagged: member b starts b × lag_steps steps before the initial time
    c.ensemble.lead_hours = 24
    # per_sample normalization only: standardize each sample's fields after every DPM-Solver++ update (the authors')
    c.ensemble.corrector = False
    c.ensemble.include_deterministic = True  # also run the unperturbed G_φ rollout
    # forecast files: netcdf (CF NetCDF-4, written by process 0) | zarr (a Zarr store every process writes its own
    # members and rows into; resumes after a kill at the first unfinished member chunk)
    c.ensemble.format = "netcdf"
    c.ensemble.member_chunk = 0  # members per device pass (0 = all); a multiple of the data-axis devices
    c.ensemble.lead_chunk = 24  # forecast steps per compiled call (outputs stream to disk after each chunk)
    c.ensemble.checkpoint = "best"  # weights of G_φ and ε_θ for forecasts: best (by validation) | latest
    c.ensemble.init_times = config_dict.placeholder(str)  # forecast --init default (None: test_period start)

    # --- tuning an ensemble's scale (tune, tune-guidance) ----------------------------------------------------------
    c.tuning = ml_collections.ConfigDict()
    c.tuning.guidance_scales = (0.3, 0.5, 0.7, 1.0)  # def: λ, the authors' grid
    c.tuning.walks = (1, 3, 7)  # def: K, the authors' grid
    c.tuning.perturbation_scales = (0.25, 0.5, 1.0, 2.0)  # gaussian, correlated, bred: ensemble.perturbation_scale
    c.tuning.lag_steps = (1, 2, 3)  # lagged: ensemble.lag_steps
    c.tuning.criterion = "spread_skill"  # spread_skill (mean |log SSR| smallest) | crps (lowest CRPS / det. MAE)

    # --- evaluation ----------------------------------------------------------------------------------------------
    c.evaluation = ml_collections.ConfigDict()
    c.evaluation.fair_crps = True
    c.evaluation.refc_thresholds = (20.0, 35.0, 45.0)  # dBZ
    c.evaluation.cape_thresholds = (500.0, 1000.0, 2000.0)  # J/kg
    c.evaluation.fss_windows = (1, 3, 9)  # neighbourhood sizes (grid points)
    c.evaluation.area_weighting = "uniform"  # uniform | map_factor (Lambert) | coslat (lat-lon)
    # score only these state channels, named as the catalogue names them (z500, t850, sp); () = every state channel
    c.evaluation.channels = ()
    # Percentile bootstrap intervals over forecast cycles (value_low/value_high in the tables): resamples of the
    # cycles (0 = no intervals), their confidence, and the seed of the resamples (the same for every system and score)
    c.evaluation.bootstrap_samples = 1000
    c.evaluation.confidence = 0.9
    c.evaluation.bootstrap_seed = 0

    # --- parallelism ---------------------------------------------------------------------------------------------
    c.parallel = ml_collections.ConfigDict()
    c.parallel.data_axis = -1  # devices on the data (batch/member) axis; -1 = all that remain
    c.parallel.spatial_axis = 1  # devices sharding the y dimension of full-domain fields
    c.parallel.coordinator_address = ""  # multi-host: host:port of process 0 ("" = auto-detect or single host)
    c.parallel.num_processes = 0  # multi-host: 0 = auto-detect
    c.parallel.process_id = -1  # multi-host: -1 = auto-detect
    return c


def _bf16(c: ml_collections.ConfigDict) -> None:
    """Mixed precision for GPUs: bfloat16 compute, float32 parameters and optimizer state."""
    c.forecaster.dtype = c.denoiser.dtype = "bfloat16"


def _hrrr_grid(c: ml_collections.ConfigDict) -> None:
    c.data.store = "data/hrrr.zarr"
    c.data.grid_shape = (1059, 1799)  # native HRRR CONUS, 3 km
    # Grain reading processes per host: a 512² crop is 159 MB of store bytes, ~3.5 s to read per process at the
    # 45 MB/s measured here; raise it until bench loader keeps up with bench train on the GPU host (docs/SCALING.md)
    c.data.workers = 8
    c.data.train_period = "2024-01-01T00:2024-09-30T23"
    c.data.val_period = "2024-10-01T00:2024-11-15T23"
    c.data.test_period = "2024-11-16T00:2024-12-31T23"


def _def_unconditional(c: ml_collections.ConfigDict) -> None:
    """DEF's ε_θ as the unconditional model alone (docs/TRAINING.md, measured on the demo): the conditional branch in
    closed form, every training sample unconditional, the null condition's skip the training climate's Gaussian
    model (its U-Net's ε-loss at τ ≤ 10 fell from 1.0 to 0.2-0.3 and its samples' spectra from up to 1900× the data's
    to 1-2×, at the same 800 updates)."""
    c.diffusion.conditional = "exact"
    c.diffusion.p_uncond = 1.0
    c.denoiser.null_prior = "spectral"


def _hrrr_expanded(c: ml_collections.ConfigDict) -> None:
    _hrrr_grid(c)
    c.forecaster = _unet(128, (1, 2, 2, 4), attention_levels=(2, 3))
    c.forecaster.predict_increment = True
    c.denoiser = _denoiser(128, (1, 2, 2, 4), attention_levels=(2, 3))
    c.data.crop_shape = (512, 512)
    for t in (c.training.forecaster, c.training.diffusion):
        t.batch_size, t.grad_accum = 4, 4  # batch 4, accumulation to 16
        t.warmup_steps, t.eval_every, t.checkpoint_every = 1000, 1000, 1000
    _bf16(c)
    c.sampler.steps = 10  # DPM-Solver++ 2M
    c.ensemble.members, c.ensemble.walks, c.ensemble.guidance_scale = 16, 8, 0.1
    c.ensemble.lead_hours = 240
    _def_unconditional(c)


def _hrrr_4090(c: ml_collections.ConfigDict) -> None:
    _hrrr_grid(c)
    c.data.train_period = "2024-06-01T00:2024-06-14T23"  # 14 days (seed 2 phase 1)
    c.data.val_period = "2024-06-15T00:2024-06-17T23"
    c.data.test_period = "2024-06-18T00:2024-06-20T23"
    c.data.crop_shape = (256, 256)
    c.forecaster = _unet(64, (1, 2, 4, 4), attention_levels=(3,))
    c.forecaster.predict_increment = True
    c.denoiser = _denoiser(64, (1, 2, 4, 4), attention_levels=(3,))
    c.denoiser.remat = True
    c.diffusion.mode = "direct"  # seed 2: sample X_{t+1} conditioned on the past 4 hours
    c.denoiser.skip_coefficients = "learned"  # the exact path is DEF mode's (the condition is the state)
    for t in (c.training.forecaster, c.training.diffusion):
        t.batch_size, t.grad_accum = 1, 1
    _bf16(c)
    c.sampler.steps = 200
    c.ensemble.members, c.ensemble.walks, c.ensemble.guidance_scale = 50, 1, 1.0
    c.ensemble.lead_hours = 24
    c.ensemble.member_chunk = 5


def _hrrr_production(c: ml_collections.ConfigDict) -> None:
    _hrrr_grid(c)
    c.data.crop_shape = (512, 512)
    c.forecaster = _unet(256, (1, 2, 2, 4), attention_levels=(2, 3))
    c.forecaster.predict_increment = True
    c.denoiser = _denoiser(256, (1, 2, 2, 4), attention_levels=(2, 3))
    c.diffusion.mode = "direct"
    c.denoiser.skip_coefficients = "learned"  # the exact path is DEF mode's (the condition is the state)
    for t in (c.training.forecaster, c.training.diffusion):
        t.batch_size, t.grad_accum = 1, 1  # global batch per micro-step (set it to the data-parallel devices × 1)
    _bf16(c)
    # 1000-step sampling = DDPM's full chain: 999 ancestral steps τ = 1000 → 1, then the noise-free step to τ = 0.
    c.sampler.name, c.sampler.steps, c.sampler.spacing = "ddpm", 999, "time_uniform"
    c.sampler.denoise_to_zero = True
    c.ensemble.members, c.ensemble.walks, c.ensemble.guidance_scale = 50, 1, 1.0
    c.ensemble.lead_hours = 48
    c.ensemble.member_chunk = 10


def _era5_paper(c: ml_collections.ConfigDict) -> None:
    c.data.store = "data/era5_5.625deg.zarr"
    c.data.catalogue = "era5_paper"
    c.data.grid_shape = (32, 64)
    c.data.dt_hours = 6
    # DEF_METHOD §2: global per-channel statistics are the default; the authors' per-sample standardization
    # (--config.data.normalization=per_sample --config.ensemble.corrector=true) trains and forecasts too, with
    # physical units from the initial state's spatial statistics (docs/FORECASTS.md)
    c.data.normalization = "global"
    c.data.statics = ("orography", "land_mask", "latitude", "longitude")
    c.data.train_period = "1979-01-01T00:2015-12-31T18"
    c.data.val_period = "2016-01-01T00:2016-12-31T18"
    c.data.test_period = "2017-01-01T00:2018-12-31T18"
    c.forecaster = _unet(128, (1, 2, 3, 4), attention_levels=(2, 3))  # (128, 256, 384, 512)
    c.forecaster.predict_increment = False
    c.denoiser = _denoiser(256, (1, 1.5, 2, 3), attention_levels=(2, 3))  # (256, 384, 512, 768)
    c.diffusion.schedule = "linear"
    c.training.forecaster.rollout_steps = 4  # authors: k = 4, γ = 0.99
    for t in (c.training.forecaster, c.training.diffusion):
        t.batch_size, t.grad_accum = 32, 2  # "32×2"
    c.sampler.steps = 10
    c.evaluation.area_weighting = "coslat"
    c.ensemble.members, c.ensemble.walks, c.ensemble.guidance_scale = 32, 3, 0.5
    c.ensemble.corrector = False
    c.ensemble.lead_hours = 240


def _heldsuarez(c: ml_collections.ConfigDict) -> None:
    """DEF's published setting (era5_paper: the 5.625° grid, 6 h steps, forecasts to 10 days, cos-latitude area
    weights) on a real dry atmosphere, sized for a 2-core CPU. The world (docs/DATA.md): ``def-jax synth
    --world=held-suarez --config=heldsuarez --days=730`` (two years after a 200-day spin-up, T42, labelled from
    2000-01-01T00; 3 s of one core per model day here), then ``def-jax prepare --config=heldsuarez
    --from-xarray=data/held_suarez.nc --dt-hours=6`` and ``def-jax stats --config=heldsuarez``."""
    _era5_paper(c)
    c.data.store = "data/heldsuarez.zarr"
    c.data.catalogue = "held_suarez"  # z, t, u, v on the levels below, surface pressure
    c.data.levels = WEATHERBENCH_LEVELS
    c.data.statics = ("latitude", "longitude")  # a flat, uniform planet: no orography or land
    c.data.time_encodings = False  # Held–Suarez forcing has no diurnal or seasonal cycle
    c.data.workers = 1
    c.data.train_period = "2000-01-01T00:2001-03-31T18"
    c.data.val_period = "2001-04-01T00:2001-06-30T18"
    c.data.test_period = "2001-07-01T00:2001-12-30T18"  # the world's 730 days end on 30 December (2000 is leap)
    c.forecaster = _unet(32, (1, 2, 4), attention_levels=(2,))
    c.forecaster.predict_increment = True
    c.denoiser = _denoiser(32, (1, 2, 4), attention_levels=(2,))
    c.training.forecaster.area_weights = True  # cos-latitude weights in G_φ's loss
    for t in (c.training.forecaster, c.training.diffusion):
        t.batch_size, t.grad_accum, t.warmup_steps = 16, 1, 200
        t.eval_every, t.checkpoint_every, t.eval_batches, t.log_every = 500, 500, 8, 100
    c.training.forecaster.max_steps = 3000
    c.training.diffusion.max_steps = 4000
    _def_unconditional(c)
    c.ensemble.members, c.ensemble.walks = 16, 2
    c.ensemble.lead_chunk = 40  # the 40 steps of a 10-day forecast in one compiled call
    c.ensemble.correlation_length_km = 1000.0  # correlated noise of synoptic scale (the grid spacing is ~600 km)


def _demo(c: ml_collections.ConfigDict) -> None:
    """The end-to-end demo within ~20 minutes on a 2-core CPU: six weeks of a 32×32 mini-HRRR at 6 km (every second
    HRRR point, 192 km square), U-Nets of width 16 (0.3 GFLOP per denoiser call and sample, measured in docs/BENCHMARKS.md),
    600 updates of G_φ and 800 of ε_θ, 12 h forecasts every 12 h through the test period."""
    c.data.grid_shape = (32, 32)
    c.data.synth.stride = 2
    c.data.synth.hours = 1008  # six weeks: five to train on (816 windows), four days each to validate and to test
    c.data.train_period = "2024-06-01T00:2024-07-04T23"
    c.data.val_period = "2024-07-05T00:2024-07-08T23"
    c.data.test_period = "2024-07-09T00:2024-07-12T23"
    # Each period held in memory (train: 242 MiB, read in 5 s), the windows sliced in the training process: G_φ
    # 7.0 updates/s against 6.3 with one Grain worker reading the store and 5.1 in the demo before (the update
    # alone 7.85 /s; docs/BENCHMARKS.md), same losses
    c.data.in_memory = True
    c.data.workers = 0
    for name in ("forecaster", "denoiser"):
        c[name].base_channels, c[name].time_embedding_dim = 16, 64
    for t in (c.training.forecaster, c.training.diffusion):
        t.batch_size, t.warmup_steps = 8, 50
        t.eval_every, t.checkpoint_every, t.eval_batches, t.log_every = 200, 200, 8, 50
    c.training.forecaster.max_steps = 600
    c.training.diffusion.max_steps = 800
    c.training.diffusion.learning_rate = 1e-3  # ε_θ learns several times faster than at 2e-4 (docs/TRAINING.md)
    _def_unconditional(c)
    c.sampler.x0_clip = 10.0  # a short-trained ε_θ: keep x̂_0 within ±10 σ (see samplers.clipped_eps)
    c.ensemble.lead_hours = 12
    c.ensemble.lead_chunk = 12


_PRESETS = {
    "demo": _demo,
    "hrrr_expanded": _hrrr_expanded,
    "hrrr_4090": _hrrr_4090,
    "hrrr_production": _hrrr_production,
    "era5_paper": _era5_paper,
    "heldsuarez": _heldsuarez,
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The named preset (default ``demo``)."""
    variant = arg or "demo"
    if variant not in _PRESETS:
        raise ValueError(f"unknown config variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    c = _base()
    _PRESETS[variant](c)
    c.preset = variant
    return c
