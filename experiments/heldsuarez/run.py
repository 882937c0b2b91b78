"""The Held–Suarez study (issue 18, docs/RESULTS.md): DEF against the baseline ensembles and the deterministic G_φ
run on the heldsuarez world at the paper's setting (5.625°, 6 h steps, 10-day forecasts), over three ε_θ seeds, with
bootstrap intervals over the test cycles.

    .venv/bin/python experiments/heldsuarez/run.py [WORKDIR]   (default runs/heldsuarez_study)

The stages are those of experiments/ensemble_study/run.py (G_φ, ε_θ per seed, tuning on the validation quarter,
test forecasts, evaluation, tables, figures); each resumes or reuses what is finished. Stage 1 makes the world once
for every study: ``synth --world=held-suarez`` (two years after a 200-day spin-up, about 50 min of one core) →
``data/held_suarez.nc``, then ``prepare --from-xarray`` and ``stats`` → ``data/heldsuarez.zarr``. Test cycles start
``EVERY`` hours apart (default 204: 8.5 days, so that the initial times go round 00, 06, 12 and 18 UTC; 21 cycles of
10 days fit the test half-year). Environment as in ensemble_study: SEEDS, GSEEDS, EVERY, JOBS.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("ensemble_study_run", ROOT / "experiments" / "ensemble_study" / "run.py")
study = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = study  # its dataclasses look their module up there
_spec.loader.exec_module(study)

WORLD_NC = ROOT / "data" / "held_suarez.nc"
STORE = ROOT / "data" / "heldsuarez.zarr"
GRIDS = {
    "def": {"scales": "0.1,0.2,0.35,0.5,0.7,1", "walks": "1"},
    "gaussian": {"scales": "0.25,0.5,1,2"},
    "correlated": {"scales": "0.25,0.5,1,2"},
    "bred": {"scales": "0.5,1,2,4"},
    "lagged": {"scales": "1,2,4"},
}
SUMMARY = {
    "leads": [6, 24, 48, 72, 120, 168, 240],
    "variables": [["z", 500.0, "m² s⁻²"], ["t", 850.0, "K"], ["u", 250.0, "m/s"], ["v", 500.0, "m/s"],
                  ["sp", None, "Pa"]],
    "storm": None,
    "spread_variables": [["z", 500.0, "m² s⁻²"], ["t", 850.0, "K"], ["u", 250.0, "m/s"]],
}


def world(w: Path, c: list) -> None:
    """The shared world: data/held_suarez.nc and data/heldsuarez.zarr with its statistics (made once)."""
    hs = ["--config=heldsuarez"]
    if not WORLD_NC.exists():
        study.run([study.DJ, "synth", "--world=held-suarez", *hs, "--days=730", f"--out={WORLD_NC}"],
                  w / "logs" / "world.log")
    if not STORE.exists() or not study.has_stats(STORE):
        study.run([study.DJ, "prepare", *hs, f"--from-xarray={WORLD_NC}", "--dt-hours=6", "--workers=2"],
                  w / "logs" / "world.log")
        study.run([study.DJ, "stats", *hs], w / "logs" / "world.log")


PLAN = study.Plan(config=ROOT / "experiments" / "heldsuarez" / "config.py", world=world, grids=GRIDS,
                  tune_flags=("--every=102", "--max_cycles=4"), plot_variables="z500,t850,u250",
                  every=204, default_workdir="runs/heldsuarez_study", summary=SUMMARY)

if __name__ == "__main__":
    sys.exit(study.run_study(PLAN))
