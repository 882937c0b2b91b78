"""Calibration figures: rank histograms (rank_histogram.csv), reliability diagrams with their sample counts
(reliability.csv) and the spread–error relationship (spread_error.csv)."""

from __future__ import annotations

from typing import Optional

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from def_jax.evaluation.plots.common import FEW_SAMPLES, Evaluation, Key, VariableMeta, num, pick_leads, rows_of


def rank_histogram_figure(ev: Evaluation, key: Key, meta: VariableMeta) -> Optional[Figure]:
    """Normalized rank histograms of the ensemble systems at a few leads, with the flat line 1/(B+1)."""
    rows = rows_of(ev.ranks, key)
    rows = rows[rows["system"].isin(ev.names(rows, ensembles_only=True))]
    rows = rows.dropna(subset=["lead_hours", "rank", "count"])
    if rows.empty:
        return None
    systems = ev.names(rows, ensembles_only=True)
    leads = pick_leads(rows["lead_hours"])
    n_ranks = int(rows["rank"].max()) + 1
    fig = Figure(figsize=(2.9 * len(leads) + 0.8, 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(leads), sharey=True, squeeze=False)[0])
    width = 0.8 / len(systems)
    top = 1.0 / n_ranks
    for ax, lead in zip(axes, leads):
        for i, system in enumerate(systems):
            sub = rows[(rows["system"] == system) & (rows["lead_hours"] == lead)]
            counts = sub.groupby("rank")["count"].sum().reindex(range(n_ranks), fill_value=0.0)
            total = counts.sum()
            freq = counts / total if total > 0 else counts
            style = ev.style(system)
            ax.bar(np.arange(n_ranks) + (i - (len(systems) - 1) / 2) * width, freq.values, width=width,
                   color=style.color, alpha=0.85, label=style.label)
        ax.axhline(1.0 / n_ranks, color="k", ls="--", lw=1, label=f"flat: 1/(B+1) = 1/{n_ranks}")
        ax.set_title(f"lead {num(lead)} h")
        ax.set_xlim(-0.6, n_ranks - 0.4)
        top = max(top, max((p.get_height() for p in ax.patches), default=0.0))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylim(0, 1.3 * top)  # headroom for the legend
    axes[0].set_ylabel("normalized frequency")
    axes[0].legend(fontsize=7.5, loc="upper center", ncols=2)
    fig.supxlabel(f"rank of the truth among the B = {n_ranks - 1} members", fontsize=10)
    fig.suptitle(f"Rank histogram: {meta.title(key)}", fontsize=12)
    return fig


def reliability_figure(ev: Evaluation, var: str, meta: VariableMeta) -> Optional[Figure]:
    """Reliability diagrams (one column per threshold, one row pair per ensemble system) with the number of points
    per bin below (sharpness); bins with fewer than FEW_SAMPLES points are hollow, intervals drawn as error bars."""
    table = ev.reliability
    rows = table[(table["variable"] == var) & table["system"].isin(ev.names(table, ensembles_only=True))]
    rows = rows.dropna(subset=["threshold", "lead_hours"])
    if rows.empty:
        return None
    systems = ev.names(rows, ensembles_only=True)
    thresholds = sorted(set(rows["threshold"]))
    leads = pick_leads(rows["lead_hours"])
    cmap = matplotlib.colormaps["viridis"]
    lead_colors = {lead: cmap(0.9 * i / max(len(leads) - 1, 1)) for i, lead in enumerate(leads)}
    fig = Figure(figsize=(3.3 * len(thresholds) + 0.8, 4.7 * len(systems) + 0.6), layout="constrained")
    grid = fig.add_gridspec(2 * len(systems), len(thresholds), height_ratios=[3.0, 1.1] * len(systems))
    units = meta.units(var)
    for r, system in enumerate(systems):
        for c, thr in enumerate(thresholds):
            ax = fig.add_subplot(grid[2 * r, c])
            ax_n = fig.add_subplot(grid[2 * r + 1, c], sharex=ax)
            sub = rows[(rows["system"] == system) & np.isclose(rows["threshold"], thr)]
            _reliability_panel(ax, ax_n, sub, leads, lead_colors)
            ax.set_title(f"{ev.style(system).label}: {var} ≥ {num(thr)} {units}".strip(), fontsize=10)
            if c == 0:
                ax.set_ylabel("observed frequency")
                ax_n.set_ylabel("points per bin")
            ax_n.set_xlabel("forecast probability")
            ax.tick_params(labelbottom=False)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    handles.append(Line2D([], [], color="0.3", marker="o", mfc="white", ls="none", ms=4.5))
    labels.append(f"bin with < {FEW_SAMPLES} points")
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8)
    fig.suptitle(f"Reliability: {meta.title((var, None))}", fontsize=12)
    return fig


def _reliability_panel(ax, ax_n, sub: pd.DataFrame, leads: list[float], lead_colors: dict) -> None:
    weights = sub["count"].where(sub["observed_frequency"].notna(), 0.0)
    base = float((sub["observed_frequency"].fillna(0.0) * weights).sum() / weights.sum()) if weights.sum() else np.nan
    grid = np.array([0.0, 1.0])
    ax.plot(grid, grid, color="k", lw=1, ls="--", label="perfect reliability")
    if np.isfinite(base):
        ax.plot(grid, (grid + base) / 2, color="0.5", lw=1, ls=":", label="no skill")
        ax.axhline(base, color="0.7", lw=0.8, label="base rate (observed)")
        ax.text(0.98, base + 0.015, f"base rate {base:.2f}", ha="right", va="bottom", fontsize=7, color="0.4")
    intervals = "observed_frequency_low" in sub.columns and "observed_frequency_high" in sub.columns
    for lead in leads:
        at = sub[sub["lead_hours"] == lead].sort_values("bin_lower")
        ok = at.dropna(subset=["forecast_probability", "observed_frequency"])
        ok = ok[ok["count"] > 0]
        color = lead_colors[lead]
        ax.plot(ok["forecast_probability"], ok["observed_frequency"], color=color, lw=1.5,
                label=f"lead {num(lead)} h")
        few = ok["count"] < FEW_SAMPLES
        for mask, face in ((~few, color), (few, "white")):
            ax.plot(ok["forecast_probability"][mask], ok["observed_frequency"][mask], ls="none", marker="o", ms=4,
                    color=color, mfc=face)
        if intervals:
            bounded = ok.dropna(subset=["observed_frequency_low", "observed_frequency_high"])
            ax.errorbar(bounded["forecast_probability"], bounded["observed_frequency"],
                        yerr=[np.maximum(bounded["observed_frequency"] - bounded["observed_frequency_low"], 0),
                              np.maximum(bounded["observed_frequency_high"] - bounded["observed_frequency"], 0)],
                        fmt="none", ecolor=color, elinewidth=0.9, capsize=1.5, alpha=0.8)
        centers = (at["bin_lower"] + at["bin_upper"]) / 2
        ax_n.plot(centers, at["count"].where(at["count"] > 0), color=color, drawstyle="steps-mid", lw=1.2)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax_n.axhline(FEW_SAMPLES, color="0.5", lw=0.8, ls=":")
    ax_n.text(0.99, FEW_SAMPLES, f"{FEW_SAMPLES}", ha="right", va="bottom", fontsize=6.5, color="0.4",
              transform=ax_n.get_yaxis_transform())
    ax_n.set_yscale("log")
    ax_n.grid(True, alpha=0.3)
    ax_n.set_title("sharpness: points per bin", fontsize=8, loc="left", pad=2)


def spread_error_figure(ev: Evaluation, key: Key, meta: VariableMeta) -> Optional[Figure]:
    """Ensemble-mean RMSE against the (finite-ensemble corrected) spread in bins of predicted spread, at a few
    leads, on log axes: a calibrated ensemble lies on the diagonal; bins with < FEW_SAMPLES points hollow."""
    table = ev.spread_error
    if table is None:
        return None
    rows = rows_of(table, key).dropna(subset=["mean_spread", "rmse"])
    rows = rows[rows["system"].isin(ev.names(rows, ensembles_only=True)) & (rows["count"] > 0)]
    if rows.empty:
        return None
    systems = ev.names(rows, ensembles_only=True)
    leads = pick_leads(rows["lead_hours"])
    fig = Figure(figsize=(3.3 * len(leads) + 0.8, 3.9), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(leads), sharex=True, sharey=True, squeeze=False)[0])
    positive = rows[(rows["mean_spread"] > 0) & (rows["rmse"] > 0)]
    values = np.concatenate([positive["mean_spread"], positive["rmse"]])
    lo, hi = (float(values.min()) / 1.5, float(values.max()) * 1.5) if len(values) else (1e-3, 1.0)
    intervals = "rmse_low" in rows.columns and "rmse_high" in rows.columns
    for ax, lead in zip(axes, leads):
        ax.plot([lo, hi], [lo, hi], color="k", ls="--", lw=1, label="calibrated (RMSE = spread)")
        for system in systems:
            at = positive[(positive["system"] == system) & (positive["lead_hours"] == lead)].sort_values("bin")
            if at.empty:
                continue
            style = ev.style(system)
            ax.plot(at["mean_spread"], at["rmse"], color=style.color, lw=1.3, label=style.label)
            few = at["count"] < FEW_SAMPLES
            for mask, face in ((~few, style.color), (few, "white")):
                ax.plot(at["mean_spread"][mask], at["rmse"][mask], ls="none", marker=style.marker, ms=4.5,
                        color=style.color, mfc=face)
            if intervals:
                b = at.dropna(subset=["rmse_low", "rmse_high"])
                ax.errorbar(b["mean_spread"], b["rmse"], yerr=[np.maximum(b["rmse"] - b["rmse_low"], 0),
                                                               np.maximum(b["rmse_high"] - b["rmse"], 0)],
                            fmt="none", ecolor=style.color, elinewidth=0.9, capsize=1.5, alpha=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.grid(True, which="both", alpha=0.25)
        ax.set_title(f"lead {num(lead)} h", fontsize=10)
    units = meta.unit_label(key[0])
    axes[0].set_ylabel(f"RMSE of the ensemble mean{units}")
    axes[0].legend(fontsize=7.5, loc="upper left")
    fig.supxlabel(f"spread in the bin, sqrt((M+1)/M · mean variance){units}; hollow: < {FEW_SAMPLES} points",
                  fontsize=9.5)
    fig.suptitle(f"Spread–error relationship: {meta.title(key)}", fontsize=12)
    return fig
