"""Tables of docs/RESULTS.md from the study's evaluation directories (experiments/def_vs_deterministic/run.sh).

    python experiments/def_vs_deterministic/summarize.py runs/study > tables.md
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from def_jax.tuning import pick_best, summarize

KEYS = [("t2m", None), ("u10", None), ("refc", None), ("cape", None), ("z", 500.0), ("t", 850.0)]


def load(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "evaluation" / "scores.csv")


def value(df, system, var, level, lead, score, threshold=None, window=None):
    q = (df.system == system) & (df.variable == var) & (df.lead_hours == lead) & (df.score == score)
    q &= df.level.isna() if level is None else np.isclose(df.level, level)
    if threshold is not None:
        q &= np.isclose(df.threshold, threshold)
    if window is not None:
        q &= df.window == window
    v = df.loc[q, "value"]
    return float(v.iloc[0]) if len(v) else float("nan")


def fmt(x, d=3):
    return "–" if not np.isfinite(x) else f"{x:.{d}g}"


def per_lead(df, leads) -> list[str]:
    out = []
    for var, level in KEYS:
        name = var if level is None else f"{var}{int(level)}"
        out += [f"**{name}**", "", "| lead (h) | RMSE DEF mean | RMSE deterministic | fair CRPS DEF | MAE deterministic |"
                " CRPS persistence | spread/skill |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for lead in leads:
            r = [value(df, "def", var, level, lead, "rmse"), value(df, "deterministic", var, level, lead, "rmse"),
                 value(df, "def", var, level, lead, "crps"), value(df, "deterministic", var, level, lead, "mae"),
                 value(df, "persistence", var, level, lead, "crps"), value(df, "def", var, level, lead, "ssr")]
            out.append(f"| {lead} | " + " | ".join(fmt(x) for x in r) + " |")
        out.append("")
    out += ["**P(REFC ≥ 35 dBZ)**", "", "| lead (h) | observed frequency | Brier DEF | Brier deterministic | "
            "Brier climatology | BSS DEF | BSS deterministic | BSS persistence | FSS DEF (9 pts) | "
            "FSS deterministic (9 pts) |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for lead in leads:
        r = [value(df, "def", "refc", None, lead, "observed_frequency", 35.0)]  # NaN from tables made before it
        r += [value(df, s, "refc", None, lead, "brier", 35.0) for s in ("def", "deterministic", "climatology")]
        r += [value(df, s, "refc", None, lead, "bss", 35.0) for s in ("def", "deterministic", "persistence")]
        r += [value(df, s, "refc", None, lead, "fss", 35.0, 9) for s in ("def", "deterministic")]
        out.append(f"| {lead} | " + " | ".join(fmt(x) for x in r) + " |")
    return out + [""]


def reliability(run: Path, lead) -> list[str]:
    rel = pd.read_csv(run / "evaluation" / "reliability.csv")
    rel = rel[(rel.system == "def") & (rel.variable == "refc") & np.isclose(rel.threshold, 35.0)
              & (rel.lead_hours == lead) & (rel["count"] > 0)]
    out = [f"Reliability of P(REFC ≥ 35 dBZ) at {lead} h (DEF):", "",
           "| bin | mean forecast probability | observed frequency | points |", "| --- | ---: | ---: | ---: |"]
    for _, r in rel.iterrows():
        out.append(f"| [{r.bin_lower:.1f}, {r.bin_upper:.1f}) | {fmt(r.forecast_probability, 2)} | "
                   f"{fmt(r.observed_frequency, 2)} | {int(r['count'])} |")
    return out + [""]


def sweep(runs: dict[str, Path], label: str, lead) -> list[str]:
    out = [f"| {label} | mean spread/skill | mean CRPS DEF / MAE deterministic | mean RMSE DEF / RMSE deterministic "
           f"| BSS P(REFC ≥ 35) at {lead} h |", "| ---: | ---: | ---: | ---: | ---: |"]
    for name, run in runs.items():
        df = load(run)
        t = summarize(df)  # the same criteria as `def-jax tune-guidance`
        r = [t["mean_ssr"], t["crps_over_deterministic_mae"], t["rmse_over_deterministic"],
             value(df, "def", "refc", None, lead, "bss", 35.0)]
        out.append(f"| {name} | " + " | ".join(fmt(x) for x in r) + " |")
    return out + [""]


def tuned_scales(root: Path) -> dict[str, float]:
    """From ``def-jax tune-guidance``'s table (if the study ran it): λ with spread/skill nearest 1 (its choice) and
    λ with the lowest CRPS relative to the deterministic MAE."""
    table = root / "tuning" / "tuning.csv"
    if not table.exists():
        return {}
    rows = pd.read_csv(table).to_dict("records")
    ssr, crps = pick_best(rows, "spread_skill"), pick_best(rows, "crps")
    if ssr is None:
        return {}
    return {"spread/skill nearest 1 on validation": float(ssr["guidance_scale"]),
            "lowest validation CRPS": float(crps["guidance_scale"])}


def main(root: Path) -> None:
    main_run = root / "lambda0.5"
    df = load(main_run)
    leads = sorted(int(x) for x in df.lead_hours.unique())
    shown = sorted({1, 3, 6, 9, leads[-1]} & set(leads))
    labels: dict[float, list[str]] = {0.5: ["the authors' default"]}
    for why, lam in tuned_scales(root).items():
        labels.setdefault(lam, []).append(why)
    runs = [(f"{lam:g}: {', '.join(why)}", root / f"lambda{lam:.1f}") for lam, why in labels.items()]  # lambda0.7
    for label, run in runs:
        if not (run / "evaluation").exists():
            continue
        print(f"### Per lead time (λ = {label}; K = 2)\n")
        print("\n".join(per_lead(load(run), shown)))
        print("\n".join(reliability(run, leads[-1])))
    print("### Guidance-scale sweep (K = 2)\n")
    print("\n".join(sweep({f"λ = {p.name[6:]}": p for p in sorted(root.glob("lambda*")) if (p / "evaluation").exists()},
                          "λ", leads[-1])))
    print("### Walks sweep (λ = 0.5)\n")
    runs = {f"K = {p.name[5:]}": p for p in sorted(root.glob("walks*")) if (p / "evaluation").exists()}
    runs = {"K = 2": main_run, **runs}
    print("\n".join(sweep(dict(sorted(runs.items())), "K", leads[-1])))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/study"))
