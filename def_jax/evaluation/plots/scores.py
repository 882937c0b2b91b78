"""Figures of scores against lead time (scores.csv, skill.csv), with the tables' bootstrap intervals shaded where
they have them: spread and skill, CRPS, Brier skill score per threshold, FSS against neighbourhood size, and the
skill of each ensemble relative to the deterministic rollout."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from def_jax.evaluation.plots.common import (
    Evaluation,
    Key,
    VariableMeta,
    band,
    interval_note,
    lead_axis,
    num,
    pick_leads,
    rows_of,
    series_frame,
)


def spread_skill_figure(ev: Evaluation, key: Key, meta: VariableMeta) -> Optional[Figure]:
    """Ensemble-mean RMSE and spread (plus single-forecast RMSE) and the spread/skill ratio against lead time."""
    scores = ev.scores
    ensembles = [s for s in ev.names(scores, ensembles_only=True) if series_frame(scores, key, s, "rmse") is not None]
    if not ensembles:
        return None
    fig = Figure(figsize=(11.5, 4.4), layout="constrained")
    ax, ax_ssr = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.45, 1.0]})
    for system in ensembles:
        style = ev.style(system)
        rmse, spread = series_frame(scores, key, system, "rmse"), series_frame(scores, key, system, "spread")
        ax.plot(rmse.index, rmse["value"], color=style.color, marker=style.marker, ms=4, lw=1.8,
                label=f"{style.label}: RMSE of the mean")
        band(ax, rmse, style.color)
        if spread is not None:
            ax.plot(spread.index, spread["value"], color=style.color, ls="--", lw=1.8, label=f"{style.label}: spread")
            band(ax, spread, style.color, alpha=0.1)
        ssr = series_frame(scores, key, system, "ssr")
        if ssr is not None:
            ax_ssr.plot(ssr.index, ssr["value"], color=style.color, marker=style.marker, ms=4, lw=1.8,
                        label=style.label)
            band(ax_ssr, ssr, style.color)
    for system in ("deterministic", "persistence"):
        rmse = series_frame(scores, key, system, "rmse")
        if rmse is not None:
            style = ev.style(system)
            ax.plot(rmse.index, rmse["value"], color=style.color, marker=style.marker, ms=3.5, lw=1.3,
                    ls="-." if system == "deterministic" else ":", label=f"{style.label}: RMSE")
            band(ax, rmse, style.color, alpha=0.1)
    name = key[0]
    ax.set_ylabel(f"RMSE, spread{meta.unit_label(name)}")
    ax.set_title("RMSE and ensemble spread")
    ax.set_ylim(bottom=0)
    lead_axis(ax)
    ax.legend(fontsize=8, loc="best")
    ax_ssr.axhline(1.0, color="k", ls="--", lw=1, label="SSR = 1 (calibrated)")
    ax_ssr.set_ylabel("spread/skill ratio (1)")
    ax_ssr.set_title("Spread/skill ratio (finite-ensemble corrected)")
    top = max([1.3] + [float(np.nanmax(line.get_ydata())) * 1.1 for line in ax_ssr.lines[:-1]])
    ax_ssr.set_ylim(0, top)
    lead_axis(ax_ssr)
    ax_ssr.legend(fontsize=8, loc="best")
    fig.suptitle(f"Spread and skill: {meta.title(key)}{interval_note(scores)}", fontsize=12)
    return fig


def crps_figure(ev: Evaluation, key: Key, meta: VariableMeta) -> Optional[Figure]:
    """CRPS of every system against lead time (single forecasts: the table's CRPS is their MAE)."""
    lines = [(s, series_frame(ev.scores, key, s, "crps")) for s in ev.names(ev.scores)]
    lines = [(s, v) for s, v in lines if v is not None]
    if not lines:
        return None
    fig = Figure(figsize=(7.5, 4.4), layout="constrained")
    ax = fig.subplots()
    for system, values in lines:
        style = ev.style(system)
        label = style.label if style.ensemble else f"{style.label} (CRPS = MAE)"
        ax.plot(values.index, values["value"], color=style.color, marker=style.marker, ms=4,
                lw=1.8 if style.ensemble else 1.3, ls="-" if style.ensemble else "--", label=label)
        band(ax, values, style.color, alpha=0.18 if style.ensemble else 0.1)
    ax.set_ylabel(f"CRPS{meta.unit_label(key[0])}")
    ax.set_ylim(bottom=0)
    lead_axis(ax)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"CRPS (fair): {meta.title(key)}" + interval_note(ev.scores), fontsize=10)
    return fig


def _thresholds(scores: pd.DataFrame, var: str, score: str) -> list[float]:
    rows = rows_of(scores, (var, None), score=score).dropna(subset=["threshold", "value"])
    return sorted(set(rows["threshold"]))


def bss_figure(ev: Evaluation, var: str, meta: VariableMeta) -> Optional[Figure]:
    """Brier skill score against climatology by lead, one panel per threshold (0 = no better than the base rate)."""
    thresholds = _thresholds(ev.scores, var, "bss")
    if not thresholds:
        return None
    fig = Figure(figsize=(3.9 * len(thresholds) + 0.8, 4.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(thresholds), sharey=True, squeeze=False)[0])
    units = meta.units(var)
    for ax, thr in zip(axes, thresholds):
        for system in ev.names(ev.scores):
            frame = series_frame(ev.scores, (var, None), system, "bss", threshold=thr)
            if frame is None:
                continue
            style = ev.style(system)
            ax.plot(frame.index, frame["value"], color=style.color, marker=style.marker, ms=4,
                    lw=1.8 if style.ensemble else 1.3, ls="-" if style.ensemble else "--", label=style.label)
            band(ax, frame, style.color, alpha=0.18 if style.ensemble else 0.1)
        ax.axhline(0.0, color="k", lw=1, ls=":")
        ax.set_title(f"P({var} ≥ {num(thr)} {units})".replace(" )", ")"), fontsize=10)
        lead_axis(ax)
    axes[0].set_ylabel("Brier skill score vs climatology (1)")
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(f"Brier skill score: {meta.title((var, None))}{interval_note(ev.scores)}", fontsize=11.5)
    return fig


def fss_figure(ev: Evaluation, var: str, meta: VariableMeta) -> Optional[Figure]:
    """FSS against neighbourhood size (grid points): rows of a few leads, columns of thresholds, one line per system;
    drawn when the table has at least two windows."""
    rows = rows_of(ev.scores, (var, None), score="fss").dropna(subset=["threshold", "window", "value"])
    if rows.empty or rows["window"].nunique() < 2:
        return None
    thresholds = sorted(set(rows["threshold"]))
    leads = pick_leads(rows["lead_hours"], 3)
    fig = Figure(figsize=(3.5 * len(thresholds) + 0.8, 2.9 * len(leads) + 0.7), layout="constrained")
    axes = fig.subplots(len(leads), len(thresholds), sharex=True, sharey=True, squeeze=False)
    units = meta.units(var)
    for r, lead in enumerate(leads):
        for c, thr in enumerate(thresholds):
            ax = axes[r, c]
            for system in ev.names(rows):
                at = rows[(rows["system"] == system) & np.isclose(rows["threshold"], thr)
                          & (rows["lead_hours"] == lead)].sort_values("window")
                if at.empty:
                    continue
                style = ev.style(system)
                ax.plot(at["window"], at["value"], color=style.color, marker=style.marker, ms=4,
                        lw=1.8 if style.ensemble else 1.3, ls="-" if style.ensemble else "--", label=style.label)
                band(ax, at.set_index("window"), style.color, alpha=0.18 if style.ensemble else 0.1)
            ax.set_ylim(0, 1)
            ax.grid(True, alpha=0.3)
            ax.set_title(f"{var} ≥ {num(thr)} {units}, lead {num(lead)} h".replace("  ", " "), fontsize=9.5)
            if c == 0:
                ax.set_ylabel("FSS (1)")
            if r == len(leads) - 1:
                ax.set_xlabel("neighbourhood (grid points)")
    windows = sorted(set(rows["window"]))
    axes[0, 0].set_xticks(windows)
    axes[0, 0].legend(fontsize=7.5, loc="lower right")
    fig.suptitle(f"Fractions skill score by neighbourhood: {meta.title((var, None))}{interval_note(ev.scores)}",
                 fontsize=11.5)
    return fig


def skill_figure(ev: Evaluation, key: Key, meta: VariableMeta) -> Optional[Figure]:
    """skill.csv: CRPS / deterministic MAE and ensemble-mean RMSE / deterministic RMSE by lead (< 1: the ensemble is
    better than the deterministic rollout), with the paired bootstrap intervals."""
    skill = ev.skill
    if skill is None:
        return None
    panels = (("crps_over_deterministic_mae", "CRPS / deterministic MAE"),
              ("rmse_over_deterministic_rmse", "RMSE of the mean / deterministic RMSE"))
    systems = [s for s in ev.names(skill) if any(series_frame(skill, key, s, p) is not None for p, _ in panels)]
    if not systems:
        return None
    fig = Figure(figsize=(11.0, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, (score, title) in zip(axes, panels):
        for system in systems:
            frame = series_frame(skill, key, system, score)
            if frame is None:
                continue
            style = ev.style(system)
            ax.plot(frame.index, frame["value"], color=style.color, marker=style.marker, ms=4, lw=1.8,
                    label=style.label)
            band(ax, frame, style.color)
        ax.axhline(1.0, color="k", ls="--", lw=1, label="= deterministic")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("ratio (1)")
        lead_axis(ax)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(f"Skill relative to the deterministic rollout: {meta.title(key)}{interval_note(skill)}",
                 fontsize=11.5)
    return fig
