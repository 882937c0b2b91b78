"""The Held–Suarez study's configuration (experiments/heldsuarez/run.py): the ``heldsuarez`` preset with 16 members,
10-day forecasts and the validation-tuned settings chosen by CRPS.
``--config=experiments/heldsuarez/config.py:WORKDIR``; the store is the world every study shares,
``data/heldsuarez.zarr`` of the repository (made once by run.py)."""

from pathlib import Path

from configs.presets import get_config as preset

ROOT = Path(__file__).resolve().parents[2]


def get_config(arg: str | None = None):
    c = preset("heldsuarez")
    c.preset = "heldsuarez_study"
    c.data.store = str(ROOT / "data" / "heldsuarez.zarr")
    c.ensemble.members = 16
    c.ensemble.lead_hours = 240
    c.ensemble.lead_chunk = 40
    c.tuning.criterion = "crps"  # as the mini-HRRR study: spread/skill alone favours a biased small λ
    return c
