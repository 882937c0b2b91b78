"""The Held–Suarez study's configuration (experiments/heldsuarez/run.py): the ``heldsuarez`` preset with 16 members,
10-day forecasts and the validation-tuned settings chosen by CRPS, at budgets that fit the study into about two hours
of this 2-core machine.

The budgets, from ``def-jax bench train`` / ``bench sampler`` pinned to one core (docs/RESULTS.md): at the preset's
width 32, G_φ with the authors' k = 4 loss trains at 0.24 updates/s on two cores (3000 updates = 3.5 h), so both
U-Nets here have width 16 (1.0 and 1.1 M parameters; 3 levels, attention at the coarsest); at batch 8 on one core
G_φ (k = 4) runs 0.81 updates/s and ε_θ 2.44 updates/s. G_φ: 1000 updates (4.4 passes over the 1824 training
states); ε_θ: 2000 updates per seed (8.8 passes). A guided DEF step of 16 members (K = 1, S = 10) takes 1.82 s of
one core (73 s per 10-day forecast), so the solver takes S = 5 DPM-Solver++ 2M steps: the walks start at λ T with
λ ≤ 0.7, a short stretch of the reverse process.

``--config=experiments/heldsuarez/config.py:WORKDIR``; the store is the world every study shares,
``data/heldsuarez.zarr`` of the repository (made once by run.py)."""

from pathlib import Path

from configs.presets import get_config as preset

ROOT = Path(__file__).resolve().parents[2]


def get_config(arg: str | None = None):
    c = preset("heldsuarez")
    c.preset = "heldsuarez_study"
    c.data.store = str(ROOT / "data" / "heldsuarez.zarr")
    for net in (c.forecaster, c.denoiser):
        net.base_channels, net.time_embedding_dim = 16, 64
    for t in (c.training.forecaster, c.training.diffusion):
        t.batch_size, t.warmup_steps = 8, 100
        t.eval_every, t.checkpoint_every = 250, 250
    c.training.forecaster.max_steps = 1000  # rollout_steps = 4 (the authors' k-step loss, era5_paper)
    c.training.diffusion.max_steps = 2000
    c.sampler.steps = 5
    c.ensemble.members = 16
    c.ensemble.lead_hours = 240
    c.ensemble.lead_chunk = 40
    c.tuning.criterion = "crps"  # as the mini-HRRR study: spread/skill alone favours a biased small λ
    return c
