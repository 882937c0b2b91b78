"""Zonal-mean figures of a forecast on a latitude-longitude grid (``zonal_<key>_<lead>h.png``): a global model's
errors and spread organize by latitude (jets, storm tracks), which a map shows less clearly.

Left panel: the zonal mean (over longitude, one value per latitude row) of the truth, of the ensemble mean and of every
member. Right panel: the zonal RMS error of the ensemble mean against the truth, sqrt(mean_x (mean − truth)²), beside
the zonal RMS spread, sqrt(mean_x std²), so that spread and error can be compared latitude by latitude.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from def_jax.evaluation.plots.common import Key, VariableMeta


def zonal_means(field: np.ndarray) -> np.ndarray:
    """[..., y, x] → [..., y]: the mean over longitude of each latitude row (NaN where a row has no value)."""
    a = np.asarray(field, np.float64)
    count = np.isfinite(a).sum(axis=-1)
    total = np.where(np.isfinite(a), a, 0.0).sum(axis=-1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def zonal_figure(ds, key: Key, lead: int, fields: dict, meta: VariableMeta) -> Figure:
    """The two panels of the module docstring for one variable and lead; ``fields`` as ``maps._map_fields`` gives
    them, with every member."""
    name = key[0]
    units = str(ds[name].attrs.get("units", meta.units(name)))
    lat = np.asarray(ds["latitude"].values, np.float64)[:, 0]  # [y]
    fig = Figure(figsize=(10.5, 4.0), layout="constrained")
    left, right = fig.subplots(1, 2)
    for i, member in enumerate(fields["members"]):
        left.plot(lat, zonal_means(member), color="0.6", lw=0.7, alpha=0.8,
                  label=f"members ({fields['n_members']})" if i == 0 else None)
    left.plot(lat, zonal_means(fields["mean"]), color="C0", lw=2.0, label="ensemble mean")
    truth = fields["truth"]
    if truth is not None:
        left.plot(lat, zonal_means(truth), color="k", lw=1.5, ls="--", label="truth (store)")
    left.set_ylabel(f"zonal mean {name} ({units})", fontsize=9)
    right.plot(lat, np.sqrt(zonal_means(np.square(fields["std"]))), color="C1", lw=1.8, label="RMS spread")
    if truth is not None:
        right.plot(lat, np.sqrt(zonal_means(np.square(fields["mean"] - truth))), color="C0", lw=1.8,
                   label="RMS error of the ensemble mean")
    else:
        right.text(0.5, 0.92, f"no error: truth not available ({fields['truth_note']})", ha="center",
                   transform=right.transAxes, fontsize=8.5, color="0.3")
    right.set_ylabel(f"zonal RMS ({units})", fontsize=9)
    right.set_ylim(bottom=0.0)
    for ax in (left, right):
        ax.set_xlabel("latitude (°N)", fontsize=9)
        ax.set_xlim(-90.0, 90.0)
        ax.set_xticks(np.arange(-90, 91, 30))
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=8)
    init = pd.Timestamp(np.asarray(ds["init_time"].values)[0]).strftime("%Y-%m-%d %H:%M UTC")
    fig.suptitle(f"{meta.title(key)}, zonal means: init {init}, lead +{lead} h", fontsize=11)
    return fig
