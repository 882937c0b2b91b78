"""The presets hold DEF_METHOD §9's values and every one of them validates."""

import pytest

from configs import presets
from def_jax import configuration


@pytest.mark.parametrize("variant", presets.VARIANTS)
def test_every_preset_validates(variant):
    cfg = presets.get_config(variant)
    assert cfg.preset == variant
    configuration.validate(cfg)


@pytest.mark.parametrize(
    "variant, base, steps, members, walks, guidance",
    [
        ("demo", 16, 10, 8, 2, 0.5),
        ("hrrr_4090", 64, 200, 50, 1, 1.0),
        ("hrrr_expanded", 128, 10, 16, 8, 0.1),
        ("hrrr_production", 256, 999, 50, 1, 1.0),
        ("era5_paper", 256, 10, 32, 3, 0.5),
        ("heldsuarez", 32, 10, 16, 2, 0.5),
    ],
)
def test_preset_table(variant, base, steps, members, walks, guidance):
    cfg = presets.get_config(variant)
    assert cfg.denoiser.base_channels == base
    assert cfg.sampler.steps == steps
    assert (cfg.ensemble.members, cfg.ensemble.walks, cfg.ensemble.guidance_scale) == (members, walks, guidance)
    assert cfg.diffusion.num_steps == 1000


def test_era5_paper_is_the_authors_setting():
    cfg = presets.get_config("era5_paper")
    widths = lambda u: tuple(int(round(u.base_channels * m)) for m in u.channel_mults)  # noqa: E731
    assert widths(cfg.forecaster) == (128, 256, 384, 512)
    assert widths(cfg.denoiser) == (256, 384, 512, 768)
    assert cfg.diffusion.schedule == "linear" and cfg.data.dt_hours == 6 and tuple(cfg.data.grid_shape) == (32, 64)
    assert cfg.data.normalization == "global" and not cfg.ensemble.corrector  # DEF_METHOD §2's default: it forecasts
    assert cfg.training.forecaster.rollout_steps == 4
    assert tuple(cfg.tuning.walks) == (1, 3, 7) and tuple(cfg.tuning.guidance_scales) == (0.3, 0.5, 0.7, 1.0)


def test_seed_one_training_defaults():
    cfg = presets.get_config("hrrr_expanded")
    t = cfg.training.forecaster
    assert (t.batch_size * t.grad_accum, t.epochs, t.grad_clip, t.lr_schedule) == (16, 20, 1.0, "cosine")
    assert cfg.diffusion.schedule == "cosine" and cfg.ensemble.lead_hours == 240
    assert cfg.training.diffusion.ema_decay > 0


def test_unknown_variant():
    with pytest.raises(ValueError, match="unknown config variant 'demo2'"):
        presets.get_config("demo2")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("sampler.order", 4, "config.sampler: order must be one of 1, 2, 3"),
        ("sampler.name", "euler", "config.sampler.name: must be one of"),
        ("diffusion.p_uncond", 1.5, "config.diffusion.p_uncond: must be in"),
        ("ensemble.members", 0, "config.ensemble.members: must be >= 1"),
        ("ensemble.lead_hours", 7, "config.ensemble.lead_hours"),
        ("denoiser.attention_levels", (5,), "config.denoiser.attention_levels"),
        ("data.normalization", "minmax", "config.data.normalization"),
        ("denoiser.skip_coefficients", "fixed", "config.denoiser.skip_coefficients: must be one of learned, exact"),
        ("diffusion.mode", "direct", "config.denoiser.skip_coefficients: 'exact' is DEF's answer"),
        ("diffusion.conditional", "network", "config.diffusion.p_uncond: 1.0 never trains the conditional branch"),
        ("denoiser.skip_coefficients", "learned", "config.denoiser.null_prior: 'spectral' is the null condition's"),
        ("diffusion.conditional", "analytic", "config.diffusion.conditional: must be one of network, exact"),
        ("ensemble.perturbation", "noise", "config.ensemble.perturbation: must be one of def, gaussian"),
        ("ensemble.lag_steps", 0, "config.ensemble.lag_steps: must be >= 1"),
        ("ensemble.perturbation_scale", -0.1, "config.ensemble.perturbation_scale: must be finite and >= 0"),
        ("tuning.criterion", "rmse", "config.tuning.criterion: must be one of spread_skill, crps"),
        ("data.test_period", "2024-07-04T12:2024-07-20T23", "config.data.train_period: 2024-06-01T00:2024-07-04T23 "
         "overlaps data.test_period 2024-07-04T12:2024-07-20T23: splits must be disjoint"),
        ("data.val_period", "2024-07-11", "config.data.val_period: value '2024-07-11': expected START:END"),
        ("forecaster.attention", "flash", "config.forecaster.attention: must be one of auto, xla, blocked, cudnn, chunked"),
    ],
)
def test_invalid_values_are_named(field, value, message):
    cfg = presets.get_config("era5_paper" if field == "ensemble.lead_hours" else "demo")
    section, name = field.rsplit(".", 1)
    holder = cfg
    for part in section.split("."):
        holder = holder[part]
    holder[name] = value
    with pytest.raises(configuration.ConfigError, match=message.replace("(", r"\(")):
        configuration.validate(cfg)


def test_settings_that_belong_to_the_def_mode_are_refused_elsewhere():
    cfg = presets.get_config("hrrr_4090")  # direct mode
    cfg.ensemble.perturbation = "gaussian"
    with pytest.raises(configuration.ConfigError, match="config.ensemble.perturbation: 'gaussian' perturbs DEF"):
        configuration.validate(cfg)
    cfg = presets.get_config("hrrr_4090")
    cfg.diffusion.conditional = "exact"
    with pytest.raises(configuration.ConfigError, match="config.diffusion.conditional: 'exact' is the closed form"):
        configuration.validate(cfg)
    cfg = presets.get_config("demo")
    assert (cfg.diffusion.p_uncond, cfg.diffusion.conditional, cfg.denoiser.null_prior) == (1.0, "exact", "spectral")
    configuration.validate(cfg)


def test_field_suggestions():
    cfg = presets.get_config("demo")
    assert "sampler.steps" in configuration.suggest_field(cfg, "sampler.stepz")
    assert configuration.has_field(cfg, "denoiser.base_channels")
    assert not configuration.has_field(cfg, "denoiser.base_chanels")


def test_values_print_as_overrides_read_them():
    """config --flat prints each field with format_value, ready to paste back as --config.FIELD=VALUE."""
    fmt = configuration.format_value
    assert fmt((1, 2)) == "(1, 2)" and fmt((2,)) == "(2,)" and fmt([0.5, "a"]) == "(0.5, a)"
    assert fmt("") == "''" and fmt("demo") == "demo" and fmt(None) == "None" and fmt(True) == "True"


def test_choice_fields_list_what_they_accept():
    assert configuration.choices("ensemble.format") == ("netcdf", "zarr")
    assert "def" in configuration.choices("ensemble.perturbation")
