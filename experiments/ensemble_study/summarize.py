"""The tables of docs/RESULTS.md from a finished ensemble study (experiments/ensemble_study/run.py):

    .venv/bin/python experiments/ensemble_study/summarize.py runs/ensemble_study > RESULTS_tables.md

What is tabled comes from ``W/study.json`` (written by run.py from its plan: ``leads`` in hours, ``variables`` as
[name, level or null, units], ``storm`` {``variable``, ``threshold``} or null, ``spread_variables``, ``ensembles``);
missing keys take the mini-HRRR study's values below.

Every number pools the test cycles and the training seeds (each score computed per seed and averaged), with a 90 %
percentile bootstrap interval over the cycles (1000 resamples of the cycles, the same resamples for every ensemble
and seed, so comparisons pair: def_jax/evaluation/bootstrap.py). Consecutive cycles 18 h apart share weather, so the
intervals are narrower than independent cycles would give: read them as a lower bound of the uncertainty.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from def_jax.evaluation import bootstrap
from def_jax.evaluation.tables import read_scores_by_cycle

ENSEMBLES = ("def", "gaussian", "correlated", "bred", "lagged")
LEADS = (1, 3, 6, 12, 18, 24)
VARIABLES = (("t2m", None, "K"), ("u10", None, "m/s"), ("refc", None, "dBZ"), ("cape", None, "J/kg"),
             ("z", 500.0, "gpm"), ("t", 850.0, "K"))
STORM = {"variable": "refc", "threshold": 35.0}
SPREAD_VARIABLES = (("t2m", None, "K"), ("z", 500.0, "gpm"), ("refc", None, "dBZ"))
R, CONFIDENCE = 1000, 0.9


def settings(w: Path) -> dict:
    """What to table (module docstring): ``W/study.json`` over the mini-HRRR defaults."""
    given = json.loads((w / "study.json").read_text()) if (w / "study.json").exists() else {}
    out = {"leads": LEADS, "variables": VARIABLES, "storm": STORM, "spread_variables": SPREAD_VARIABLES,
           "ensembles": ENSEMBLES} | given
    for key in ("variables", "spread_variables"):
        out[key] = [tuple(v) for v in out[key]]
    return out


def fmt(v: float, lo: float = np.nan, hi: float = np.nan, digits: int = 3) -> str:
    if not np.isfinite(v):
        return "–"
    text = f"{v:.{digits}g}"
    return text + (f" [{lo:.{digits}g}, {hi:.{digits}g}]" if np.isfinite(lo) and np.isfinite(hi) else "")


def interval(samples: np.ndarray) -> tuple[float, float]:
    """The percentile interval of resampled values [R]."""
    lo, hi = bootstrap.percentile_interval(np.asarray(samples, np.float64)[:, None], CONFIDENCE)
    return float(lo[0]), float(hi[0])


class Study:
    """The per-cycle statistics of every ensemble (seeds combined) and the shared resamples."""

    def __init__(self, w: Path, ensembles=ENSEMBLES):
        self.w = w
        self.seeds = sorted(int(p.name[1:]) for p in w.glob("s[0-9]*") if p.is_dir())
        self.stats = {}
        for kind in ensembles:
            dirs = [w / f"s{s}" / kind / "evaluation" for s in self.seeds]
            dirs = [d for d in dirs if (d / "scores_by_cycle.csv").exists()]
            if dirs:
                self.stats[kind] = read_scores_by_cycle(dirs)
        inits = {k: tuple(v[0].inits) for k, v in self.stats.items()}
        common = sorted(set.intersection(*(set(i) for i in inits.values())))
        self.stats = {k: [s.take(common) for s in v] for k, v in self.stats.items()}
        # an ensemble's label is its folder; the system its evaluation scores (e.g. folder gaussian_matched holds
        # system gaussian) is the one ensemble system there
        self.system = {k: ensemble_system(v[0].members, k) for k, v in self.stats.items()}
        self.inits = np.asarray(common)
        n = len(common)
        self.point = np.ones((1, n))
        self.weights = bootstrap.resample_counts(n, R, seed=0)
        self.members = {k: v[0].members[self.system[k]] for k, v in self.stats.items()}
        self.pooled: dict[str, tuple[dict, dict]] = {}

    def scores(self, kind: str, keys: list) -> dict:
        """key → (point value, resampled values [R]) of the score keys ``keys`` that ``kind`` has."""
        if kind not in self.pooled:  # every score of every slot once: pooling a few slots costs almost as much
            self.pooled[kind] = (bootstrap.pool(self.stats[kind], self.point),
                                 bootstrap.pool(self.stats[kind], self.weights))
        point, res = self.pooled[kind]
        return {k: (float(point[k][0]), res[k]) for k in keys if k in point}


def ensemble_system(members: dict, label: str) -> str:
    """The ensemble system of an evaluation whose ``members`` maps ensemble systems to member counts."""
    if label in members:
        return label
    if len(members) != 1:
        raise SystemExit(f"{label}: expected one ensemble system in its evaluation, found {sorted(members)}")
    return next(iter(members))


def channel_means(study: Study, kind: str, lead: int) -> dict:
    """Means over all state channels at ``lead`` of CRPS/MAE_det and RMSE/RMSE_det, geometric mean of SSR."""
    slots = [s for s in study.stats[kind][0].slots if s[2] == lead]
    out = {}
    for score, agg in (("crps_over_deterministic_mae", "mean"), ("rmse_over_deterministic_rmse", "mean"),
                       ("ssr", "gmean")):
        keys = [(study.system[kind], v, lv, ld, score, None, None) for v, lv, ld in slots]
        got = study.scores(kind, keys)
        if not got:
            continue
        point = np.array([p for p, _ in got.values()])
        res = np.stack([r for _, r in got.values()])  # [channels, R]
        ok = np.isfinite(point) & (point > 0)
        if agg == "mean":
            value, samples = point[ok].mean(), np.nanmean(res[ok], axis=0)
        else:
            value, samples = np.exp(np.log(point[ok]).mean()), np.exp(np.nanmean(np.log(res[ok]), axis=0))
        out[score] = (value, *interval(samples))
    return out


def binned(study: Study, kind: str, quantity: str, var: str, level, threshold=None) -> dict:
    """A binned quantity pooled over every lead, per seed: point sums [comp, bins] and resampled [R, comp, bins]."""
    st = study.stats[kind]
    system = study.system[kind]
    return {"point": [p[0] for p in bootstrap.binned_sums(st, study.point, quantity, system, var, level, threshold)],
            "res": bootstrap.binned_sums(st, study.weights, quantity, system, var, level, threshold)}


def reliability_table(study: Study, kind: str, storm: dict) -> list[str]:
    b = binned(study, kind, "reliability", storm["variable"], None, storm["threshold"])
    count = sum(p[0] for p in b["point"])
    fcst = sum(p[1] for p in b["point"]) / np.maximum(count, 1)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # resamples without a point in a bin stay NaN
        obs = np.mean([p[2] / p[0] for p in b["point"]], axis=0)
        obs_r = np.nanmean([r[:, 2] / r[:, 0] for r in b["res"]], axis=0)  # [R, bins]
    lines = [f"| bin | forecast probability | observed frequency [90 %] | points | within ±0.1 |",
             "| --- | ---: | ---: | ---: | :---: |"]
    worst = 0.0
    n_bins = len(count)
    for i in range(n_bins):
        lo, hi = interval(obs_r[:, i]) if count[i] > 0 else (np.nan, np.nan)
        ok = abs(obs[i] - fcst[i]) <= 0.1 if count[i] > 0 else False
        if count[i] >= 100:
            worst = max(worst, abs(obs[i] - fcst[i]))
        lines.append(f"| {i / n_bins:.1f}–{(i + 1) / n_bins:.1f} | {fmt(fcst[i])} | {fmt(obs[i], lo, hi)} | "
                     f"{int(count[i])} | {'yes' if ok else 'no'} |")
    return lines + ["", f"Largest |observed − forecast| over bins with ≥ 100 points: {worst:.3f}.", ""]


def spread_error_table(study: Study, kind: str, var: str, level) -> list[str]:
    b = binned(study, kind, "spread_error", var, level)
    m = study.members[kind]
    rows = []
    for p in b["point"]:
        with np.errstate(invalid="ignore", divide="ignore"):
            rows.append((p[0], np.sqrt((m + 1) / m * p[2] / p[1]), np.sqrt(p[3] / p[1])))
    count = sum(r[0] for r in rows)
    with warnings.catch_warnings():  # bins empty for every seed stay NaN (and are not listed)
        warnings.simplefilter("ignore", RuntimeWarning)
        spread, rmse = np.nanmean([r[1] for r in rows], axis=0), np.nanmean([r[2] for r in rows], axis=0)
    lines = ["| predicted spread | RMSE of the ensemble mean | points |", "| ---: | ---: | ---: |"]
    for i in np.flatnonzero(count >= 100):
        lines.append(f"| {fmt(spread[i])} | {fmt(rmse[i])} | {int(count[i])} |")
    return lines + [""]


def main() -> int:
    w = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/ensemble_study")
    plan = settings(w)
    study = Study(w, plan["ensembles"])
    kinds = list(study.stats)
    out = [f"# Ensemble study tables ({w})", "",
           f"{len(study.inits)} test cycles from {study.inits[0]} to {study.inits[-1]}, seeds {study.seeds}; "
           f"intervals: {int(CONFIDENCE * 100)} % bootstrap over cycles ({R} resamples, paired).", ""]
    chosen = w / "chosen_settings.json"
    if chosen.exists():
        out += ["## Settings chosen on the validation period", "",
                "| ensemble | walks K | scale | validation spread/skill | validation CRPS / det. MAE |",
                "| --- | ---: | ---: | ---: | ---: |"]
        for kind, row in json.loads(chosen.read_text()).items():
            out.append(f"| {kind} | {row['walks']} | {row['scale']:g} | {row['mean_ssr']:.3f} | "
                       f"{row['crps_over_deterministic_mae']:.3f} |")
        out.append("")

    n_channels = len({(v, lv) for v, lv, _ in study.stats[kinds[0]][0].slots})
    out += [f"## All {n_channels} channels: means over channels per lead", "",
            "CRPS ÷ deterministic MAE and ensemble-mean RMSE ÷ deterministic RMSE (mean over channels; < 1: better "
            "than the single run), spread/skill (geometric mean over channels; 1: calibrated).", ""]
    for score, title in (("crps_over_deterministic_mae", "CRPS ÷ deterministic MAE"),
                         ("rmse_over_deterministic_rmse", "ensemble-mean RMSE ÷ deterministic RMSE"),
                         ("ssr", "spread/skill")):
        out += [f"**{title}**", "", "| lead (h) | " + " | ".join(kinds) + " |",
                "| ---: | " + " | ".join("---:" for _ in kinds) + " |"]
        for lead in plan["leads"]:
            cells = []
            for kind in kinds:
                v = channel_means(study, kind, lead).get(score)
                cells.append(fmt(*v) if v else "–")
            out.append(f"| {lead} | " + " | ".join(cells) + " |")
        out.append("")

    out += ["## Per variable", ""]
    for var, level, units in plan["variables"]:
        name = var + (f"{level:g}" if level is not None else "")
        out += [f"**{name}** ({units}): CRPS ÷ deterministic MAE, and spread/skill", "",
                "| lead (h) | " + " | ".join(f"{k} CRPS/MAE" for k in kinds) + " | " +
                " | ".join(f"{k} SSR" for k in kinds) + " |",
                "| ---: | " + " | ".join("---:" for _ in range(2 * len(kinds))) + " |"]
        for lead in plan["leads"]:
            cells = [[], []]
            for kind in kinds:
                keys = [(study.system[kind], var, level, lead, "crps_over_deterministic_mae", None, None),
                        (study.system[kind], var, level, lead, "ssr", None, None)]
                got = study.scores(kind, keys)
                for i, k in enumerate(keys):
                    cells[i].append(fmt(got[k][0], *interval(got[k][1])) if k in got else "–")
            out.append(f"| {lead} | " + " | ".join(cells[0] + cells[1]) + " |")
        out.append("")

    if plan["storm"]:
        out += storm_tables(study, kinds, plan)
    out += ["## Spread and error: RMSE of the ensemble mean in bins of predicted spread", "",
            "All leads and seeds pooled; bins with ≥ 100 points; the predicted spread includes the factor "
            "sqrt((M+1)/M), so a calibrated ensemble has RMSE ≈ spread in every bin.", ""]
    for var, level, units in plan["spread_variables"]:
        for kind in kinds:
            name = var + (f"{level:g}" if level is not None else "")
            out += [f"**{name}, {kind}** ({units})", ""] + spread_error_table(study, kind, var, level)
    out += ["## Rank histograms: the shares of the lowest and the highest rank", "",
            "Counts of every seed and cycle pooled (evaluate's rank_histogram.csv; `plot` draws the whole histograms). "
            "A calibrated ensemble of M members puts 1/(M+1) of the truths in each rank; larger end shares mean too "
            "little spread (or a bias, when one end alone is large). RMS: the root-mean-square deviation of all "
            "ranks' shares from 1/(M+1), divided by 1/(M+1).", ""]
    for var, level, units in plan["spread_variables"]:
        name = var + (f"{level:g}" if level is not None else "")
        out += [f"**{name}** (% of the truths)", "",
                "| lead (h) | 1/(M+1) | " + " | ".join(f"{k} lowest / highest / RMS" for k in kinds) + " |",
                "| ---: | ---: | " + " | ".join("---:" for _ in kinds) + " |"]
        for lead in plan["leads"]:
            cells = [rank_shares(w, study.seeds, kind, study.system[kind], var, level, lead) for kind in kinds]
            uniform = next((u for _, u in filter(None, cells)), None)
            if uniform is not None:
                out.append(f"| {lead} | {100 * uniform:.1f} | " + " | ".join(c[0] if c else "–" for c in cells)
                           + " |")
        out.append("")
    out += gphi_seed_table(w, plan)
    print("\n".join(out))
    return 0


def rank_shares(w: Path, seeds: list, kind: str, system: str, var: str, level,
                lead: int) -> Optional[tuple[str, float]]:
    """("lowest % / highest % / RMS", 1/(M+1)) of the pooled rank histogram of ensemble ``kind`` (its folder; the
    ensemble system ``system``; None if it has none at ``lead``)."""
    import pandas as pd

    frames = [pd.read_csv(f) for s in seeds if (f := w / f"s{s}" / kind / "evaluation" / "rank_histogram.csv").exists()]
    if not frames:
        return None
    df = pd.concat(frames)
    df = df[(df.system == system) & (df.variable == var) & (df.lead_hours == lead)
            & ((df.level.isna()) if level is None else np.isclose(df.level, level))]
    counts = df.groupby("rank")["count"].sum().to_numpy(np.float64)
    if counts.sum() == 0:
        return None
    share, uniform = counts / counts.sum(), 1.0 / len(counts)
    rms = np.sqrt(np.mean((share - uniform) ** 2)) / uniform
    return f"{100 * share[0]:.1f} / {100 * share[-1]:.1f} / {rms:.2f}", uniform


def storm_tables(study: Study, kinds: list, plan: dict) -> list[str]:
    """Brier and fractions skill scores per lead, and each ensemble's reliability, of P(storm variable ≥ threshold).
    """
    var, threshold = plan["storm"]["variable"], float(plan["storm"]["threshold"])
    out = [f"## Storms: P({var.upper()} ≥ {threshold:g} dBZ)", "",
           "Brier skill score against the training-period base rate (> 0: better than climatology), and the "
           "fractions skill score at 1, 3 and 9 grid points (6, 18, 54 km).", "",
           "| lead (h) | observed frequency | " + " | ".join(f"BSS {k}" for k in kinds) + " | BSS deterministic | "
           + " | ".join(f"FSS {k} 1/3/9" for k in kinds) + " |",
           "| ---: | ---: | " + " | ".join("---:" for _ in range(2 * len(kinds) + 1)) + " |"]
    for lead in plan["leads"]:
        bss, fss, freq, det = [], [], "–", "–"
        for kind in kinds:
            system = study.system[kind]
            keys = [(system, var, None, lead, "bss", threshold, None),
                    ("deterministic", var, None, lead, "bss", threshold, None),
                    (system, var, None, lead, "observed_frequency", threshold, None)]
            keys += [(system, var, None, lead, "fss", threshold, win) for win in (1, 3, 9)]
            got = study.scores(kind, keys)
            k0 = keys[0]
            bss.append(fmt(got[k0][0], *interval(got[k0][1]), digits=2) if k0 in got else "–")
            fss.append("/".join(f"{got[k][0]:.2f}" if k in got and np.isfinite(got[k][0]) else "–"
                                for k in keys[3:]))
            if keys[1] in got:
                det = fmt(got[keys[1]][0], *interval(got[keys[1]][1]), digits=2)
            if keys[2] in got:
                freq = f"{got[keys[2]][0]:.4f}"
        out.append(f"| {lead} | {freq} | " + " | ".join(bss) + f" | {det} | " + " | ".join(fss) + " |")
    out.append("")

    for kind in kinds:
        out += [f"**Reliability of {kind}'s P({var.upper()} ≥ {threshold:g} dBZ)**, all leads and seeds pooled", ""]
        out += reliability_table(study, kind, plan["storm"])
    return out


def gphi_seed_table(w: Path, plan: dict) -> list[str]:
    """CRPS ÷ deterministic MAE per ensemble and lead for the study's G_φ and each further G_φ seed (run.py stage 7:
    ``W/gseed<g>``), with each lead's ranking: does the forecaster's training seed change which ensemble wins?"""
    ensembles = plan["ensembles"]
    studies = {0: Study(w, ensembles)} | {int(p.name[5:]): Study(p, ensembles) for p in sorted(w.glob("gseed[0-9]*"))
                                          if any(p.glob("s*/*/evaluation/scores_by_cycle.csv"))}
    if len(studies) < 2:
        return []
    out = ["## G_φ seeds: CRPS ÷ deterministic MAE and the ranking of the ensembles", "",
           "G_φ seed 0 is the study's (its ε_θ seeds pooled); every further seed has its own G_φ and one ε_θ (the first "
           "ε_θ seed) and runs every ensemble at the settings chosen with seed 0's models. Each seed on its own "
           "test cycles' scores (its deterministic run is its own G_φ's).", "",
           "| lead (h) | G_φ seed | " + " | ".join(ensembles) + " | ranking (best first) |",
           "| ---: | ---: | " + " | ".join("---:" for _ in ensembles) + " | --- |"]
    for lead in plan["leads"]:
        for g, study in studies.items():
            values = {k: channel_means(study, k, lead).get("crps_over_deterministic_mae") for k in ensembles
                      if k in study.stats}
            ranked = sorted((v[0], k) for k, v in values.items() if v)
            out.append(f"| {lead} | {g} | " + " | ".join(fmt(*values[k]) if values.get(k) else "–"
                                                      for k in ensembles)
                       + " | " + " > ".join(k for _, k in ranked) + " |")
    return out + [""]


if __name__ == "__main__":
    sys.exit(main())
