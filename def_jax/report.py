"""``report.md`` of a demo (or any) run: the settings, the metric tables of ``evaluation/scores.csv``, the figures, and
what the numbers mean, written for a reader who has never seen DEF. Every number comes from the run's own files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

INTRO = """\
**What DEF is.** A weather model run once gives one future; the atmosphere's chaos means many futures are possible,
and a forecaster wants their probabilities ("40 % chance of storms"). DEF (Diffusion-augmented Ensemble
Forecasting, Millard et al. 2025) builds such an ensemble from two networks: a deterministic forecaster G_φ that
steps the state forward one hour, and a diffusion model ε_θ of the weather's climate. At each hour every member's
state is perturbed by K reverse diffusions ("walks") guided toward it, then stepped forward by G_φ; the guidance scale
λ sets how far the perturbations stray (λ = 1 none, λ = 0 a draw from the climate). Simpler ensembles (noise added
to the states, bred vectors, lagged starts) are the yardstick DEF must beat. The ensembles are judged by proper
scores: the CRPS (lower is better; for one forecast it equals the absolute error), the spread/skill ratio (1 means
the ensemble's spread matches its error: calibrated), and for storms the reliability of P(reflectivity ≥ 35 dBZ)
(a forecast of 40 % should verify 40 % of the time) and its Brier skill against climatology (BSS > 0 beats it).
Intervals in brackets are 90 % bootstrap intervals over the forecast cycles.
"""


def _fmt_ci(v: tuple, digits: int = 3) -> str:
    value, lo, hi = v
    if not np.isfinite(value):
        return "–"
    return _fmt(value, digits) + (f" [{_fmt(lo, digits)}, {_fmt(hi, digits)}]" if np.isfinite(lo) and
                                  np.isfinite(hi) else "")


def _finite_mean(values: pd.Series) -> float:
    """The mean of the finite values (a channel the deterministic run predicts exactly has an infinite ratio)."""
    v = values.to_numpy(np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else np.nan


def ensemble_systems(df: pd.DataFrame) -> list[str]:
    from def_jax.evaluation.tables import ENSEMBLES

    return [s for s in ENSEMBLES if (df.system == s).any()]


def answers(workdir: Path, df: pd.DataFrame, leads: Sequence[int], threshold: float) -> list[str]:
    """The two questions a forecaster asks first, answered from the evaluation tables: is the ensemble better than
    one run (skill.csv), and is its storm probability reliable (reliability.csv, pooled over leads)?"""
    ev = Path(workdir) / "evaluation"
    systems = ensemble_systems(df)
    lines = ["## First: is the ensemble better than one run, and is its storm probability reliable?", ""]
    skill_path = ev / "skill.csv"
    if skill_path.exists() and systems:
        skill = pd.read_csv(skill_path)
        lines += ["Over all state channels (means of the per-channel ratios; < 1 is better than the deterministic "
                  "run; spread/skill: geometric mean, 1 is calibrated):", "",
                  "| lead (h) | " + " | ".join(f"{s}: CRPS ÷ det. MAE | {s}: RMSE ÷ det. RMSE | {s}: spread/skill"
                                              for s in systems) + " |",
                  "| ---: | " + " | ".join("---: | ---: | ---:" for _ in systems) + " |"]
        last = {}
        for lead in leads:
            cells = []
            for s in systems:
                sub = skill[(skill.system == s) & (skill.lead_hours == lead)]
                crps, rmse = (_finite_mean(sub[sub.score == name].value)
                              for name in ("crps_over_deterministic_mae", "rmse_over_deterministic_rmse"))
                ssr = df[(df.system == s) & (df.lead_hours == lead) & (df.score == "ssr")].value
                ssr = ssr[np.isfinite(ssr) & (ssr > 0)]
                g = float(np.exp(np.log(ssr).mean())) if len(ssr) else np.nan
                cells += [_fmt(crps), _fmt(rmse), _fmt(g)]
                last[s] = (crps, rmse, g)
            lines.append(f"| {lead} | " + " | ".join(cells) + " |")
        lines.append("")
        lead = max(leads)
        for s in systems:
            crps, rmse, g = last[s]
            if not np.isfinite(crps):
                continue
            verdict = "better" if crps < 1 else "not better"
            lines.append(f"- **{s}** at {lead} h: {verdict} than one run as a distribution (CRPS "
                         f"{100 * abs(1 - crps):.0f} % {'below' if crps < 1 else 'above'} the deterministic MAE on "
                         f"average), its mean {'closer to' if rmse < 1 else 'further from'} the truth than the single "
                         f"run (RMSE ratio {rmse:.2f}), spread/skill {g:.2f}"
                         f"{' (under-dispersive)' if g < 0.8 else ' (over-dispersive)' if g > 1.2 else ''}.")
        lines.append("")
    reliability_path = ev / "reliability.csv"
    if reliability_path.exists():
        rel = pd.read_csv(reliability_path)
        rel = rel[(rel.variable == "refc") & np.isclose(rel.threshold, threshold)]
        for s in systems:
            lines += _reliability_lines(ev, rel[rel.system == s], s, threshold)
    return lines


def _reliability_lines(ev: Path, rel: pd.DataFrame, system: str, threshold: float) -> list[str]:
    """The reliability of P(REFC ≥ threshold) pooled over leads (point sums from reliability.csv; intervals from
    scores_by_cycle.csv when it exists)."""
    if not len(rel):
        return []
    bins = rel.groupby("bin_lower")
    count = bins["count"].sum()
    fcst = (rel.forecast_probability.fillna(0) * rel["count"]).groupby(rel.bin_lower).sum() / count.where(count > 0)
    obs = (rel.observed_frequency.fillna(0) * rel["count"]).groupby(rel.bin_lower).sum() / count.where(count > 0)
    low = high = None
    if (ev / "scores_by_cycle.csv").exists():
        from def_jax.evaluation import bootstrap
        from def_jax.evaluation.tables import read_scores_by_cycle

        stats = read_scores_by_cycle([ev])
        n = len(stats[0].inits)
        res = bootstrap.binned_sums(stats, bootstrap.resample_counts(n, 1000, 0), "reliability", system, "refc",
                                    None, threshold)[0]  # [R, 3, bins]
        if res.size:
            with np.errstate(invalid="ignore", divide="ignore"):
                low, high = bootstrap.percentile_interval(res[:, 2] / res[:, 0], 0.9)
    lines = [f"**Reliability of {system}'s P(REFC ≥ {threshold:g} dBZ)**, all leads pooled:", "",
             "| forecast probability bin | mean forecast | observed frequency | points |", "| --- | ---: | ---: | ---: |"]
    worst, thin = 0.0, 0
    for i, (edge, n_pts) in enumerate(count.items()):
        upper = rel[rel.bin_lower == edge].bin_upper.iloc[0]
        ci = (obs[edge], low[i], high[i]) if low is not None else (obs[edge], np.nan, np.nan)
        lines.append(f"| {edge:.1f}–{upper:.1f} | {_fmt(fcst[edge])} | {_fmt_ci(ci)} | {int(n_pts)} |")
        if n_pts >= 100:
            worst = max(worst, abs(obs[edge] - fcst[edge]))
        else:
            thin += 1
    verdict = "reliable within ±0.1" if worst <= 0.1 else "not reliable within ±0.1"
    return lines + ["", f"- {system}'s storm probability is {verdict} in the bins with at least 100 points "
                        f"(largest |observed − forecast| {worst:.2f}; {thin} bin(s) have fewer points).", ""]


def _val(df: pd.DataFrame, system: str, variable: str, level, lead: int, score: str, threshold=None) -> float:
    q = (df.system == system) & (df.variable == variable) & (df.lead_hours == lead) & (df.score == score)
    q &= df.level.isna() if level is None else (df.level == level)
    if threshold is not None:
        q &= np.isclose(df.threshold, threshold)
    v = df.loc[q, "value"]
    return float(v.iloc[0]) if len(v) else float("nan")


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if not np.isfinite(x) else f"{x:.{digits}g}"


def _split(key: str, levels: Sequence[float]) -> tuple[str, Any]:
    for lv in sorted(levels, key=lambda v: -len(str(int(v)))):
        tag = str(int(lv))
        if key.endswith(tag) and key[:-len(tag)].isalpha():
            return key[:-len(tag)], float(lv)
    return key, None


def score_table(df: pd.DataFrame, key: str, leads: Sequence[int], units: str, levels: Sequence[float]) -> list[str]:
    var, level = _split(key, levels)
    rows = [f"**{key}** ({units})", "",
            "| lead (h) | RMSE DEF mean | RMSE deterministic | RMSE persistence | CRPS DEF | MAE deterministic | "
            "spread DEF | spread/skill |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for lead in leads:
        r = [_val(df, "def", var, level, lead, "rmse"), _val(df, "deterministic", var, level, lead, "rmse"),
             _val(df, "persistence", var, level, lead, "rmse"), _val(df, "def", var, level, lead, "crps"),
             _val(df, "deterministic", var, level, lead, "mae"), _val(df, "def", var, level, lead, "spread"),
             _val(df, "def", var, level, lead, "ssr")]
        rows.append(f"| {lead} | " + " | ".join(_fmt(x) for x in r) + " |")
    return rows + [""]


def storm_table(df: pd.DataFrame, leads: Sequence[int], threshold: float) -> list[str]:
    rows = [f"**P(REFC ≥ {threshold:g} dBZ)**", "",
            "| lead (h) | observed frequency | Brier DEF | Brier deterministic | Brier persistence | "
            "Brier climatology | BSS DEF | BSS deterministic | CSI DEF | FSS DEF (9 points) |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for lead in leads:
        r = [_val(df, "def", "refc", None, lead, "observed_frequency", threshold)]
        r += [_val(df, s, "refc", None, lead, "brier", threshold)
              for s in ("def", "deterministic", "persistence", "climatology")]
        r += [_val(df, "def", "refc", None, lead, "bss", threshold),
              _val(df, "deterministic", "refc", None, lead, "bss", threshold),
              _val(df, "def", "refc", None, lead, "csi", threshold)]
        q = (df.system == "def") & (df.variable == "refc") & (df.lead_hours == lead) & (df.score == "fss") & \
            np.isclose(df.threshold, threshold) & (df.window == 9)
        r.append(float(df.loc[q, "value"].iloc[0]) if q.any() else float("nan"))
        rows.append(f"| {lead} | " + " | ".join(_fmt(x) for x in r) + " |")
    return rows + [""]


def findings(df: pd.DataFrame, keys: Sequence[str], leads: Sequence[int], levels, threshold: float) -> list[str]:
    """Plain sentences about what the numbers show, including where DEF does not help."""
    out = []
    last = max(leads)
    better_rmse, better_crps, ssr = [], [], []
    for key in keys:
        var, level = _split(key, levels)
        r_def = _val(df, "def", var, level, last, "rmse")
        r_det = _val(df, "deterministic", var, level, last, "rmse")
        c_def = _val(df, "def", var, level, last, "crps")
        m_det = _val(df, "deterministic", var, level, last, "mae")
        s = _val(df, "def", var, level, last, "ssr")
        if np.isfinite(r_def) and np.isfinite(r_det):
            better_rmse.append((key, 100 * (1 - r_def / r_det)))
        if np.isfinite(c_def) and np.isfinite(m_det):
            better_crps.append((key, 100 * (1 - c_def / m_det)))
        if np.isfinite(s):
            ssr.append((key, s))

    def listing(items, fmt):
        return ", ".join(fmt.format(k, v) for k, v in items)

    if better_rmse:
        wins = sum(v > 0 for _, v in better_rmse)
        verdict = ("the ensemble mean beats the single run for most of them, as averaging members smooths out the "
                   "unpredictable parts" if wins > len(better_rmse) / 2 else
                   "the ensemble mean is worse than the single run for most of them: here the perturbations add "
                   "more error than averaging removes")
        out.append(f"- **Ensemble mean vs the deterministic rollout** at {last} h (RMSE, % lower for DEF; negative = "
                   f"worse): {listing(better_rmse, '{} {:+.0f} %')}; {verdict}.")
    if better_crps:
        out.append(f"- **Probabilistic skill** at {last} h: the DEF CRPS is lower than the deterministic MAE by "
                   f"{listing(better_crps, '{} {:+.0f} %')} (the CRPS of a single forecast is its MAE, so this is "
                   f"the value of having a distribution).")
    if ssr:
        under = [k for k, v in ssr if v < 0.8]
        over = [k for k, v in ssr if v > 1.2]
        text = f"- **Calibration** (spread/skill at {last} h; 1 is calibrated): {listing(ssr, '{} {:.2f}')}."
        if under:
            damaged = [k for k in under if _bias_dominates(df, k, levels, last) or dict(better_rmse).get(k, 0) < 0]
            text += (f" Below 0.8 ({', '.join(under)}) the ensemble is under-dispersive: it is more confident than "
                     f"its errors justify.")
            if damaged:
                text += (f" For {', '.join(damaged)} the perturbations themselves are the problem: the ensemble "
                         f"mean is further from the truth than the unperturbed run (or biased by more than the "
                         f"spread), because with λ < 1 each walk pulls the state towards the unconditional model; "
                         f"a larger λ, fewer walks or a longer-trained ε_θ help more than extra spread would "
                         f"(`def-jax tune-guidance` measures it).")
            rest = [k for k in under if k not in damaged]
            if rest:
                text += f" For {', '.join(rest)} a smaller guidance scale λ or more walks K would widen the ensemble."
        if over:
            text += f" Above 1.2 ({', '.join(over)}) it is over-dispersive; a larger λ narrows it."
        out.append(text)
    bss = _val(df, "def", "refc", None, last, "bss", threshold)
    bss_det = _val(df, "deterministic", "refc", None, last, "bss", threshold)
    observed = _val(df, "def", "refc", None, last, "observed_frequency", threshold)
    event = f"REFC ≥ {threshold:g} dBZ"
    if np.isfinite(bss):
        verdict = "beats" if bss > 0 else "does not beat"
        out.append(f"- **Storms**: {event} covered {100 * observed:.2g} % of the points at {last} h in the test "
                   f"cycles. The DEF probability of it has a Brier skill score of {_fmt(bss, 2)} against the "
                   f"training-period base rate ({verdict} climatology), against {_fmt(bss_det, 2)} for the "
                   f"deterministic yes/no forecast.")
    elif observed == 0:
        out.append(f"- **Storms**: no {event} was observed at {last} h in the test cycles, so the Brier skill score "
                   f"is undefined there (any forecast that never predicts the event would score 1); the leads "
                   f"with storms are in the table above.")
    return out


def _steps(workdir: Path, kind: str, default: int) -> int:
    """The updates a run actually made (its last logged step), else the configured number."""
    from def_jax.training.logging import read_metrics

    path = Path(workdir) / kind / "metrics.jsonl"
    steps = [r["step"] for r in read_metrics(path)] if path.exists() else []
    return int(max(steps)) if steps else int(default)


def _bias_dominates(df: pd.DataFrame, key: str, levels, lead: int) -> bool:
    var, level = _split(key, levels)
    bias, spread = _val(df, "def", var, level, lead, "bias"), _val(df, "def", var, level, lead, "spread")
    return bool(np.isfinite(bias) and np.isfinite(spread) and abs(bias) > spread)


def write_report(workdir: Path, cfg, inits: Sequence[np.datetime64], figures: Sequence[Path],
                 minutes: float, variables: Sequence[str] = ("refc", "t2m", "u10", "cape", "z500")) -> Path:
    """Write ``workdir/report.md`` (atomically) and return its path."""
    from def_jax.catalogue import load_catalogue
    from def_jax.training.logging import read_metrics

    workdir = Path(workdir)
    df = pd.read_csv(workdir / "evaluation" / "scores.csv")
    leads = sorted(int(x) for x in df.lead_hours.unique())
    shown = sorted({leads[0], *leads[len(leads) // 4 - 1:len(leads):max(len(leads) // 4, 1)], leads[-1]})
    cat = load_catalogue(cfg.data.catalogue, cfg.data.levels)
    levels = list(cfg.data.levels)
    e, s, t = cfg.ensemble, cfg.sampler, cfg.training
    lines = ["# def-jax demo report", "", INTRO, "## Settings", ""]
    val = {k: [r for r in read_metrics(workdir / k) if r["split"] == "val"] if (workdir / k / "metrics.jsonl").exists()
           else [] for k in ("forecaster", "diffusion")}
    lines += [
        f"- Data: the embedded mini-HRRR, {cfg.data.grid_shape[0]}×{cfg.data.grid_shape[1]} points of the HRRR "
        f"Lambert grid (every {cfg.data.synth.stride or 1} point(s), {3 * (cfg.data.synth.stride or 1)} km), "
        f"{cat.num_channels('state')} state channels ({', '.join(v.name for v in cat.by_role('state'))}), hourly; "
        f"train {cfg.data.train_period}, validation {cfg.data.val_period}, test {cfg.data.test_period}.",
        f"- G_φ: U-Net width {cfg.forecaster.base_channels}, {_steps(workdir, 'forecaster', t.forecaster.max_steps)} "
        f"updates"
        + (f"; validation MSE {val['forecaster'][-1]['loss']:.4f} vs persistence "
           f"{val['forecaster'][-1]['persistence_mse']:.4f} (normalized units)" if val["forecaster"] else "") + ".",
        f"- ε_θ: U-Net width {cfg.denoiser.base_channels}, {cfg.diffusion.schedule} schedule, T = "
        f"{cfg.diffusion.num_steps}, p_uncond = {cfg.diffusion.p_uncond}, p_advance = {cfg.diffusion.p_advance}, "
        f"{_steps(workdir, 'diffusion', t.diffusion.max_steps)} updates" + (f"; validation ε-loss {val['diffusion'][-1]['loss']:.3g}"
                                               if val["diffusion"] else "") + ".",
        f"- Ensemble: B = {e.members} members, K = {e.walks} walks per hour, λ = {e.guidance_scale}, {s.name} "
        f"(order {s.order}, {s.method}) with S = {s.steps} steps; {len(inits)} cycles from {str(inits[0])[:13]} to "
        f"{str(inits[-1])[:13]}, {e.lead_hours} h each; forecasts in `forecasts/`.",
        f"- Scores: `evaluation/scores.csv` (all variables, levels, leads and scores), area weighting "
        f"{cfg.evaluation.area_weighting}; persistence = the initial state, climatology = the training-period mean "
        f"(and base rate for events).",
        f"- This run of the demo took {minutes:.1f} minutes (a rerun reuses the stages an earlier run finished).", "",
    ]
    lines += answers(workdir, df, shown, 35.0) + ["## Results", ""]
    units = {v.name: v.units or "1" for v in cat}
    for key in variables:
        var, _ = _split(key, levels)
        if (df.variable == var).any():
            lines += score_table(df, key, shown, units.get(var, "1"), levels)
    if (df.variable == "refc").any():
        lines += storm_table(df, shown, 35.0)
    lines += ["## What the numbers show", ""] + findings(df, [k for k in variables if (df.variable == _split(
        k, levels)[0]).any()], shown, levels, 35.0) + [""]
    lines += ["## Figures", ""]
    for fig in sorted(figures, key=lambda p: (not p.name.startswith(("spread", "crps", "reliab")), p.name)):
        rel = os.path.relpath(fig, workdir)
        lines += [f"![{fig.stem}]({rel})", ""]
    path = workdir / "report.md"
    tmp = path.with_name(".report.md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path
