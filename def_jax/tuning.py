"""``def-jax tune-guidance``: choose the guidance scale λ (and walks K) from validation data so that the ensemble is
calibrated, i.e. its spread/skill ratio is near 1 (DEF_METHOD §5: "give users a way to choose it from data").

For each (K, λ) of the grid (``tuning.walks`` × ``tuning.guidance_scales``): DEF forecasts from initial times in
``data.val_period`` (never the test period), scored against the store like ``def-jax evaluate``. The criterion is
the mean over state channels and lead times of |log SSR| (SSR = spread/skill with the finite-ensemble correction):
0 for a perfectly calibrated ensemble, symmetric in under- and over-dispersion. The fair CRPS relative to the
deterministic rollout's MAE is reported beside it (lower is better), so a calibrated but useless setting is visible.
Results go to ``OUT/tuning.csv`` (one row per setting) and the chosen setting is printed as config overrides.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from def_jax.errors import UserError

COLUMNS = ("walks", "guidance_scale", "mean_ssr", "mean_abs_log_ssr", "crps_over_deterministic_mae",
           "rmse_over_deterministic", "cycles", "forecasts")


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


def tune_guidance(cfg: Any, workdir: Path, out_dir: Path, *, scales: Sequence[float], walks: Sequence[int],
                  every_hours: float = 12.0, max_cycles: int = 4, log: Callable[[str], None] = print) -> dict:
    """Run the grid (module docstring); return ``{"rows": [...], "best": row, "table": path}``."""
    from def_jax.evaluation.evaluate import evaluate
    from def_jax.forecast.run import forecast

    if not scales or not walks:
        raise UserError("tune-guidance needs at least one guidance scale and one walks value")
    inits = validation_inits(cfg, every_hours, max_cycles)
    out_dir = Path(out_dir)
    rows = []
    for k in walks:
        for lam in scales:
            c = cfg.copy_and_resolve_references()
            c.ensemble.walks, c.ensemble.guidance_scale = int(k), float(lam)
            c.ensemble.include_deterministic = True
            tag = f"K{int(k)}_lambda{float(lam):g}"
            log(f"tune-guidance: K={k}, λ={lam:g} on {len(inits)} validation cycle(s)")
            files = forecast(c, workdir, out_dir / tag / "forecasts", inits, log=log)
            result = evaluate(files, Path(c.data.store), out_dir / tag / "evaluation", config=c, log=lambda m: None)
            row = {"walks": int(k), "guidance_scale": float(lam), **summarize(pd.read_csv(result["tables"]["scores"])),
                   "cycles": len(inits), "forecasts": str(out_dir / tag / "forecasts")}
            log(f"  spread/skill {row['mean_ssr']:.3f} (mean |log SSR| {row['mean_abs_log_ssr']:.3f}), CRPS / "
                f"deterministic MAE {row['crps_over_deterministic_mae']:.3f}")
            rows.append(row)
    best = pick_best(rows)
    if best is None:
        raise UserError("tune-guidance: no setting produced a finite spread/skill ratio (are there ≥ 2 members?)")
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
