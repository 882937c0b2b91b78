"""The ensemble study's configuration (docs/RESULTS.md): the demo preset on a longer convective mini-HRRR, with
longer training, 16 members and 24 h forecasts. ``--config=experiments/ensemble_study/config.py:WORKDIR`` puts the
store (and the GRIB files) under WORKDIR."""

from configs.presets import get_config as preset


def get_config(arg: str | None = None):
    c = preset("demo")
    c.preset = "ensemble_study"
    workdir = arg or "runs/ensemble_study"
    c.data.store = f"{workdir}/mini_hrrr.zarr"
    # eight weeks of the convective mini-HRRR: five to train on (as the demo), one to validate (tuning), two to test
    c.data.synth.hours = 8 * 7 * 24
    c.data.train_period = "2024-06-01T00:2024-07-04T23"
    c.data.val_period = "2024-07-05T00:2024-07-11T23"
    c.data.test_period = "2024-07-12T00:2024-07-25T23"
    c.training.forecaster.max_steps = 2000  # ~20 epochs of the 816 training windows at batch 8
    c.training.diffusion.max_steps = 3000
    c.training.forecaster.eval_every = c.training.forecaster.checkpoint_every = 250
    c.training.diffusion.eval_every = c.training.diffusion.checkpoint_every = 250
    c.ensemble.members = 16
    c.ensemble.lead_hours = 24
    c.ensemble.lead_chunk = 24
    # each ensemble's setting is the one of lowest validation CRPS: by spread/skill alone, DEF's smallest λ wins with a
    # spread that comes with a shifted member mean (validation CRPS above the deterministic MAE; docs/RESULTS.md)
    c.tuning.criterion = "crps"
    return c
