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

After the ensemble study's stages, a last stage compares DEF with the Gaussian baseline at DEF's spread rather than
at its own best CRPS (:func:`matched_gaussian` → ``W/s0/gaussian_matched``, ``W/matched_spread.json``), and
``references.py`` tables the ensemble mean against the climatology and a damped run.
"""

from __future__ import annotations

import importlib.util
import json
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


def spread_ratio(scores_csv: Path, reference_csv: Path) -> float:
    """The geometric mean over state channels and leads of one ensemble's validation spread over another's (the
    ``spread`` rows of two ``scores.csv``)."""
    import numpy as np
    import pandas as pd

    from def_jax.evaluation.tables import ENSEMBLES

    def spreads(path: Path):
        df = pd.read_csv(path)
        df = df[df.system.isin(ENSEMBLES) & (df.score == "spread")]
        return df.set_index(["variable", "level", "lead_hours"]).value

    ratio = (spreads(scores_csv) / spreads(reference_csv)).replace([np.inf, -np.inf], np.nan).dropna()
    ratio = ratio[ratio > 0]
    if ratio.empty:
        raise SystemExit(f"{scores_csv} and {reference_csv}: no common spread to compare")
    return float(np.exp(np.log(ratio).mean()))


def matched_amplitude(scales: list[float], ratios: list[float]) -> float:
    """The Gaussian amplitude whose spread equals DEF's: ``ratios[i]`` is the spread at amplitude ``scales[i]`` (in
    increasing order) over DEF's; interpolated in log amplitude against log ratio inside the grid, and beyond it
    extrapolated from the nearest end at spread ∝ amplitude."""
    import numpy as np

    la, lr = np.log(scales), np.log(ratios)
    if lr[0] <= 0 <= lr[-1]:
        return float(np.exp(np.interp(0.0, lr, la)))
    end = 0 if lr[0] > 0 else -1
    return float(np.exp(la[end] - lr[end]))


def matched_gaussian(run: "study.StudyRun") -> list[str]:
    """DEF against the Gaussian baseline at DEF's spread (issue 18): the amplitude at which the Gaussian ensemble's
    validation spread equals that of DEF's chosen setting (geometric mean over channels and leads of the ratio,
    :func:`matched_amplitude`), forecast over the test cycles (the first seed's folder) → ``W/s<seed>/gaussian_matched``
    and evaluated; the study tables and plots it beside the other ensembles."""
    from def_jax.tuning import setting_tag

    w, seed = run.w, run.seeds[0]
    d = json.loads((w / "chosen_settings.json").read_text())["def"]
    ref = w / "tuning" / "def" / setting_tag("def", int(d["walks"]), float(d["scale"])) / "evaluation" / "scores.csv"
    scales = [float(x) for x in GRIDS["gaussian"]["scales"].split(",")]
    ratios = [spread_ratio(w / "tuning" / "gaussian" / setting_tag("gaussian", 0, a) / "evaluation" / "scores.csv", ref)
              for a in scales]
    amplitude = matched_amplitude(scales, ratios)
    record = {"amplitude": amplitude, "def_setting": {"scale": d["scale"], "walks": d["walks"]},
              "grid": dict(zip(map(str, scales), ratios))}
    (w / "matched_spread.json").write_text(json.dumps(record, indent=1) + "\n")
    study.log(f"last stage: gaussian at DEF's validation spread: amplitude {amplitude:.3g} (spread ÷ DEF's over the "
              "grid " + ", ".join(f"{a:g}: {r:.2f}" for a, r in zip(scales, ratios)) + ")")
    out = w / f"s{seed}" / "gaussian_matched"
    study.run(*run.forecast_job(w / f"s{seed}", seed, ["--config.ensemble.perturbation=gaussian",
                                                       f"--config.ensemble.perturbation_scale={amplitude:.6g}"],
                                out, "gaussian_matched"))
    job = run.evaluate_job(out, "gaussian_matched")
    if job:
        study.run(*job)
    return ["gaussian_matched"]


PLAN = study.Plan(config=ROOT / "experiments" / "heldsuarez" / "config.py", world=world, grids=GRIDS,
                  tune_flags=("--every=102", "--max_cycles=4"), plot_variables="z500,t850,u250",
                  every=204, default_workdir="runs/heldsuarez_study", summary=SUMMARY,
                  # the tables' channels: all 53 of 21 ten-day cycles take 35 s per cycle and ensemble on one core
                  evaluate_flags=("--config.evaluation.channels=('z500','t850','u250','v500','sp')",),
                  last_stage=matched_gaussian)


if __name__ == "__main__":
    sys.exit(study.run_study(PLAN))
