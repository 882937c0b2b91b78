"""``def-jax tune``: choose an ensemble's scale (DEF's guidance scale λ and walks K, a baseline's noise amplitude, a
lagged ensemble's lag) from validation data, so that the ensemble is calibrated or has the lowest CRPS (DEF_METHOD §5:
"give users a way to choose it from data"). ``def-jax tune-guidance`` is the same for DEF.

For each setting of the grid (the scales × for DEF the walks K): forecasts from initial times in
``data.val_period`` (never the test period), scored against the store like ``def-jax evaluate``. Criteria (``by``):
``spread_skill``, the mean over state channels and lead times of |log SSR| (SSR = spread/skill with the
finite-ensemble correction; 0 for a perfectly calibrated ensemble, symmetric in under- and over-dispersion, and not
cancelled between leads that are over- and under-dispersed), or ``crps``, the mean ratio of the fair CRPS to the
deterministic rollout's MAE (lower is better); each is reported beside the other, so a calibrated but useless setting
is visible. One forecaster (models loaded once) serves every scale of a K, with the scale a traced argument: the
grid compiles one rollout program per K (the lagged ensemble's lag changes the programs' shapes: one per lag).
Results go to ``OUT/tuning.csv`` (one row per setting); the chosen setting is printed as config overrides.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
import pandas as pd

from def_jax import parallel
from def_jax.errors import UserError

COLUMNS = ("perturbation", "walks", "scale", "mean_ssr", "mean_abs_log_ssr", "crps_over_deterministic_mae",
           "rmse_over_deterministic", "cycles", "forecasts")
CRITERIA = ("spread_skill", "crps")


def validation_inits(cfg: Any, every_hours: float, max_cycles: int) -> list[np.datetime64]:
    """Initial times every ``every_hours`` in ``data.val_period`` whose whole horizon stays inside it."""
    from def_jax.data.schema import parse_period

    start, end = parse_period(cfg.data.val_period, "config.data.val_period")
    step = np.timedelta64(int(round(every_hours * 3600)), "s")
    lead = np.timedelta64(int(cfg.ensemble.lead_hours), "h")
    inits, t = [], np.datetime64(start, "s")
    while t + lead <= end and len(inits) < max_cycles:
        inits.append(t)
        t = t + step
    if not inits:
        raise UserError(f"config.data.val_period {cfg.data.val_period} is shorter than one forecast of "
                        f"{cfg.ensemble.lead_hours} h; shorten --lead-hours or widen the period")
    return inits


def summarize(scores: pd.DataFrame) -> dict[str, float]:
    """The tuning criteria from a ``scores.csv`` table (docs/FORECASTS.md)."""
    from def_jax.evaluation.tables import ENSEMBLES

    ens = scores[scores.system.isin(ENSEMBLES)]
    ssr = ens[ens.score == "ssr"].value.to_numpy(float)
    ssr = ssr[np.isfinite(ssr) & (ssr > 0)]
    key = ["variable", "level", "lead_hours"]
    crps = ens[ens.score == "crps"].set_index(key).value
    rmse = ens[ens.score == "rmse"].set_index(key).value
    det = scores[scores.system == "deterministic"]
    mae_det = det[det.score == "mae"].set_index(key).value
    rmse_det = det[det.score == "rmse"].set_index(key).value
    ratio = (crps / mae_det).replace([np.inf, -np.inf], np.nan).dropna()
    r_ratio = (rmse / rmse_det).replace([np.inf, -np.inf], np.nan).dropna()
    return {"mean_ssr": float(np.exp(np.mean(np.log(ssr)))) if ssr.size else float("nan"),
            "mean_abs_log_ssr": float(np.mean(np.abs(np.log(ssr)))) if ssr.size else float("nan"),
            "crps_over_deterministic_mae": float(ratio.mean()) if len(ratio) else float("nan"),
            "rmse_over_deterministic": float(r_ratio.mean()) if len(r_ratio) else float("nan")}


def pick_best(rows: Sequence[dict], by: str = "spread_skill") -> Optional[dict]:
    """The chosen row of a tuning table (rows with COLUMNS' fields): by ``"spread_skill"`` the smallest mean |log SSR|
    (ties: the lower CRPS / deterministic MAE), by ``"crps"`` the lowest CRPS / deterministic MAE (ties: |log SSR|);
    None if no row has a finite spread/skill ratio."""
    keys = {"spread_skill": ("mean_abs_log_ssr", "crps_over_deterministic_mae"),
            "crps": ("crps_over_deterministic_mae", "mean_abs_log_ssr")}
    if by not in keys:
        raise ValueError(f"pick_best: by={by!r}, expected one of {sorted(keys)}")
    order = keys[by]
    finite = [r for r in rows if np.isfinite(r["mean_abs_log_ssr"])]
    return min(finite, key=lambda r: tuple(r[k] for k in order)) if finite else None


def setting_tag(perturbation: str, walks: int, scale: float) -> str:
    """The folder name of one setting: ``K2_lambda0.5`` for DEF, ``gaussian_scale0.3``, ``lagged_lag2``."""
    if perturbation in ("def", "direct"):
        return f"K{int(walks)}_lambda{float(scale):g}"
    return f"lagged_lag{int(scale)}" if perturbation == "lagged" else f"{perturbation}_scale{float(scale):g}"


def tune(cfg: Any, workdir: Path, out_dir: Path, *, scales: Sequence[float], walks: Sequence[int] = (1,),
         every_hours: float = 12.0, max_cycles: int = 4, by: str = "spread_skill",
         log: Callable[[str], None] = print) -> dict:
    """Run the grid of ``config.ensemble.perturbation`` (module docstring); return ``{"rows", "best", "table"}``.
    Finished forecast files of a setting are reused (the same settings make the same file)."""
    from def_jax.evaluation.evaluate import evaluate
    from def_jax.forecast.ensemble import Ensemble
    from def_jax.forecast.files import forecast_filename
    from def_jax.forecast.run import Forecaster

    if by not in CRITERIA:
        raise UserError(f"--by: expected one of {', '.join(CRITERIA)}; got {by!r}")
    if not scales or not walks:
        raise UserError("tune needs at least one scale (and, for DEF, one walks value)")
    main = jax.process_index() == 0  # multi-host: every process forecasts, process 0 writes and scores
    log = parallel.reporting(log)
    inits = [np.datetime64(t, "ns") for t in validation_inits(cfg, every_hours, max_cycles)]
    out_dir = Path(out_dir)
    kind = Ensemble.from_config(cfg).kind
    grid_walks = [int(k) for k in walks] if kind == "def" else [0]
    rows = []
    for k in grid_walks:
        c = cfg.copy_and_resolve_references()
        c.ensemble.include_deterministic = True
        if kind == "def":
            c.ensemble.walks = int(k)
        base = Ensemble.from_config(c)
        settings = [base.with_scale(float(s)) for s in scales]
        max_pre = max(e.pre_steps for e in settings)
        runner: Optional[Forecaster] = None
        for ens in settings:
            tag = setting_tag(kind, k, ens.scale)
            folder = out_dir / tag / "forecasts"
            files = [folder / forecast_filename(t, str(c.ensemble.format)) for t in inits]
            log(f"tune: {ens.describe()} on {len(inits)} validation cycle(s)")
            for t, path, done in zip(inits, files, parallel.agree([f.exists() for f in files])):
                if done:
                    log(f"  {path} exists: reused")
                    continue
                if runner is None:  # models loaded, inputs checked once per K
                    runner = Forecaster(c, workdir, log, inits=tuple(inits), trace_scale=True,
                                        max_pre_steps=max_pre)
                runner.run_cycle(t, folder, ensemble=ens)
            if not main:
                continue
            result = evaluate(files, Path(c.data.store), out_dir / tag / "evaluation", config=c, log=lambda m: None)
            row = {"perturbation": kind, "walks": int(k), "scale": ens.scale,
                   **summarize(pd.read_csv(result["tables"]["scores"])), "cycles": len(inits),
                   "forecasts": str(folder)}
            log(f"  spread/skill {row['mean_ssr']:.3f} (mean |log SSR| {row['mean_abs_log_ssr']:.3f}), CRPS / "
                f"deterministic MAE {row['crps_over_deterministic_mae']:.3f}")
            rows.append(row)
    if not main:
        return {"rows": [], "best": None, "table": None}
    best = pick_best(rows, by)
    if best is None:
        raise UserError("tune: no setting produced a finite spread/skill ratio (are there ≥ 2 members?)")
    table = out_dir / "tuning.csv"
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = table.with_name(".tuning.csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in COLUMNS})
    os.replace(tmp, table)
    return {"rows": rows, "best": best, "table": table}


def best_overrides(row: dict) -> str:
    """The chosen setting as config overrides."""
    from def_jax.forecast.ensemble import SCALE_FIELDS

    kind = row["perturbation"]
    scale = int(row["scale"]) if kind == "lagged" else f"{row['scale']:g}"
    parts = [] if kind == "direct" else [f"--config.ensemble.perturbation={kind}"]
    if kind == "def":
        parts.append(f"--config.ensemble.walks={row['walks']}")
    return " ".join(parts + [f"--config.{SCALE_FIELDS[kind]}={scale}"])
