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
import os
import shlex
import subprocess
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
                  every=204, default_workdir="runs/heldsuarez_study", summary=SUMMARY,
                  # the tables' channels: all 53 of 21 ten-day cycles take 35 s per cycle and ensemble on one core
                  evaluate_flags=("--config.evaluation.channels=('z500','t850','u250','v500','sp')",))

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


def matched_gaussian(w: Path, every: int, seeds: list[int]) -> None:
    """DEF against the Gaussian baseline at DEF's spread (issue 18): the amplitude at which the Gaussian ensemble's
    validation spread equals that of DEF's chosen setting (geometric mean over channels and leads of the ratio,
    interpolated in log amplitude between the tuning grid's points, extrapolated at spread ∝ amplitude beyond it),
    forecast over the test cycles (seed 0) → ``W/s0/gaussian_matched``, evaluated, and tabled by summarize.py."""
    import numpy as np

    from def_jax.tuning import setting_tag

    settings = json.loads((w / "chosen_settings.json").read_text())
    d = settings["def"]
    ref = w / "tuning" / "def" / setting_tag("def", int(d["walks"]), float(d["scale"])) / "evaluation" / "scores.csv"
    scales = [float(x) for x in GRIDS["gaussian"]["scales"].split(",")]
    ratios = [spread_ratio(w / "tuning" / "gaussian" / setting_tag("gaussian", 0, a) / "evaluation" / "scores.csv", ref)
              for a in scales]
    la, lr = np.log(scales), np.log(ratios)
    if lr[0] <= 0 <= lr[-1]:
        amplitude = float(np.exp(np.interp(0.0, lr, la)))
    else:  # beyond the grid: spread ∝ amplitude from the nearest end
        end = 0 if lr[0] > 0 else -1
        amplitude = float(np.exp(la[end] - lr[end]))
    record = {"amplitude": amplitude, "def_setting": {"scale": d["scale"], "walks": d["walks"]},
              "grid": dict(zip(map(str, scales), ratios))}
    (w / "matched_spread.json").write_text(json.dumps(record, indent=1) + "\n")
    study.log(f"last stage: gaussian at DEF's validation spread: amplitude {amplitude:.3g} (spread ÷ DEF's over the "
              "grid " + ", ".join(f"{a:g}: {r:.2f}" for a, r in zip(scales, ratios)) + ")")
    inits, init = study.test_inits(study.study_config(PLAN, w), every)
    s0, out = w / f"s{seeds[0]}", w / f"s{seeds[0]}" / "gaussian_matched"
    c = [f"--config={PLAN.config}:{w}", *shlex.split(os.environ.get("STUDY_FLAGS", ""))]
    study.run([study.DJ, "forecast", *c, f"--workdir={s0}", f"--config.seed={seeds[0]}",
               "--config.ensemble.perturbation=gaussian", f"--config.ensemble.perturbation_scale={amplitude:.6g}",
               f"--init={init}", f"--cycles={len(inits)}", f"--every={every}", f"--out={out / 'forecasts'}"],
              w / "logs" / "forecast_gaussian_matched.log")
    if not (out / "evaluation" / "scores.csv").exists():
        study.run([study.DJ, "evaluate", *c, *PLAN.evaluate_flags, f"--forecasts={out / 'forecasts'}",
                   f"--out={out / 'evaluation'}"],
                  w / "logs" / "evaluate_gaussian_matched.log")
    plan = json.loads((w / "study.json").read_text())
    plan["ensembles"] = [*PLAN.ensembles, "gaussian_matched"]
    (w / "study.json").write_text(json.dumps(plan, indent=1) + "\n")
    with open(w / "RESULTS_tables.md", "w") as f:
        if subprocess.run([sys.executable, str(study.CONFIG.parent / "summarize.py"), str(w)], stdout=f,
                          cwd=ROOT).returncode:
            raise SystemExit("summarize.py failed")


def main() -> int:
    code = study.run_study(PLAN)
    w = Path(sys.argv[1] if len(sys.argv) > 1 else PLAN.default_workdir).absolute()
    matched_gaussian(w, int(os.environ.get("EVERY", str(PLAN.every))),
                     [int(s) for s in os.environ.get("SEEDS", "0 1 2").split()])
    study.log(f"done: {w / 'RESULTS_tables.md'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
