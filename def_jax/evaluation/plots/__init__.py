"""Figures of an evaluation (``def-jax plot``): scores by lead time, calibration, and maps.

Inputs are the contracts of docs/FORECASTS.md: the evaluation tables written by ``def-jax evaluate`` (``scores.csv``,
``rank_histogram.csv`` and ``reliability.csv`` required; ``skill.csv`` and ``spread_error.csv`` drawn when present) of
one folder or of several (their ensembles overlaid: :func:`common.load_evaluations`), and optionally one forecast
file ``forecast_YYYYMMDDTHH.nc`` plus the Zarr store (docs/DATA.md) for maps against the truth. Every figure is a PNG
written atomically (temporary name in the output directory, then ``os.replace``), drawn on
:class:`matplotlib.figure.Figure` objects with the Agg canvas: no pyplot, no global figure state. Where the tables
carry bootstrap intervals (``value_low``/``value_high``, …) they are drawn as shaded bands or error bars.

Files (``<key>`` is ``t2m`` for a single-level variable, ``z500`` for a level of a multi-level one; ``<var>`` is a
thresholded variable of the tables, e.g. ``refc`` or ``cape``: :func:`event_variables`):

- ``spread_skill_<key>.png``: ensemble-mean RMSE and spread of each ensemble system, RMSE of the deterministic rollout
  and of persistence; spread/skill ratio with the line at 1 (:mod:`.scores`).
- ``crps_<key>.png``: CRPS of every system (for single forecasts the table's CRPS is their MAE).
- ``skill_<key>.png``: CRPS / deterministic MAE and RMSE / deterministic RMSE of each ensemble (skill.csv).
- ``bss_<var>.png``: Brier skill score against climatology by lead, one panel per threshold.
- ``fss_<var>.png``: FSS against neighbourhood size at a few leads, per threshold (when ≥ 2 windows were scored).
- ``rank_histogram_<key>.png``: rank histograms at a few leads (:mod:`.calibration`).
- ``reliability_<var>.png``: reliability diagrams per threshold with the points per bin (sharpness) below; bins with
  fewer than 100 points hollow.
- ``spread_error_<key>.png``: RMSE of the mean against spread in bins of predicted spread (spread_error.csv).
- ``maps_<key>_<lead>h.png``: truth, ensemble mean, spread, P(REFC ≥ 35 dBZ) and members on the grid (:mod:`.maps`);
  by default of refc and t2m, or where the forecast has neither, of the keys above.
- ``zonal_<key>_<lead>h.png`` (latitude-longitude grids): zonal means of the truth, the ensemble mean and every
  member against latitude, and the zonal RMS error of the ensemble mean beside the zonal RMS spread (:mod:`.zonal`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

from matplotlib.figure import Figure

from def_jax.evaluation.plots.calibration import rank_histogram_figure, reliability_figure, spread_error_figure
from def_jax.evaluation.plots.common import (  # noqa: F401  (part of this package's API)
    SYSTEM_STYLE,
    Evaluation,
    Key,
    VariableMeta,
    key_name,
    load_evaluations,
    read_table,
    save_figure,
    select_keys,
    unique,
)
from def_jax.evaluation.plots.maps import MapPlan, forecast_file, map_figures, reflectivity_cmap  # noqa: F401
from def_jax.evaluation.plots.scores import bss_figure, crps_figure, fss_figure, skill_figure, spread_skill_figure


def event_variables(ev: Evaluation) -> set[str]:
    """The variables with event scores in the tables (rows with a threshold: ``evaluation.<var>_thresholds``,
    scores.event_thresholds): those of the reliability, BSS and FSS figures."""
    return set(unique(ev.scores["variable"][ev.scores["threshold"].notna()])) | set(unique(ev.reliability["variable"]))


def make_plots(evaluation_dir: Path | Sequence[Path], out_dir: Path, *, forecast_path: Path | None = None,
               store: Path | None = None, lead_hours: Sequence[int] | None = None,
               variables: Sequence[str] | str | None = None, members_to_show: int = 4,
               log: Callable[[str], None] = print) -> list[Path]:
    """Write the evaluation figures of ``evaluation_dir`` into ``out_dir`` and return their paths.

    ``evaluation_dir`` is one folder of tables or several (their ensembles are overlaid in every figure; each labelled
    by its system, or by its folder where two folders have the same system; single forecasts from the first folder).
    ``variables`` selects what is plotted (e.g. ``["t2m", "refc", "z500"]`` or ``"t2m,z500"``); by default every
    single-level variable of ``scores.csv`` plus the 500 hPa level of multi-level ones. Maps are drawn when
    ``forecast_path`` (a forecast file, or a directory of them: the first is used) is given, against the truth of
    ``store`` when that is given too, at ``lead_hours`` (default: three leads spread over the horizon).
    """
    folders = [Path(evaluation_dir)] if isinstance(evaluation_dir, (str, Path)) else [Path(d) for d in evaluation_dir]
    out_dir = Path(out_dir)
    ev = load_evaluations(folders)
    keys = select_keys(ev.scores, variables)
    forecast = forecast_file(Path(forecast_path)) if forecast_path is not None else None
    meta = VariableMeta(forecast, Path(store) if store is not None else None)
    plan = None
    if forecast is not None:  # checked (variables, leads, grid) before anything is drawn
        plan = MapPlan(forecast, meta.store_path, keys if variables is not None else None, lead_hours, log,
                       default_keys=keys)
    try:
        return _draw_all(folders, out_dir, ev, keys, variables is None, meta, plan, members_to_show, log)
    finally:
        if plan is not None:
            plan.close()


def _draw_all(folders: list[Path], out_dir: Path, ev: Evaluation, keys: list[Key], default_selection: bool,
              meta: VariableMeta, plan: Optional[MapPlan], members_to_show: int,
              log: Callable[[str], None]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def emit(fig: Optional[Figure], name: str) -> None:
        if fig is not None:
            written.append(save_figure(fig, out_dir / name))
            log(f"plot: wrote {out_dir / name}")

    for key in keys:
        tag = key_name(key)
        emit(spread_skill_figure(ev, key, meta), f"spread_skill_{tag}.png")
        emit(crps_figure(ev, key, meta), f"crps_{tag}.png")
        emit(rank_histogram_figure(ev, key, meta), f"rank_histogram_{tag}.png")
        emit(skill_figure(ev, key, meta), f"skill_{tag}.png")
        emit(spread_error_figure(ev, key, meta), f"spread_error_{tag}.png")
    selected_names = {name for name, _ in keys}
    events = event_variables(ev)
    chosen = lambda var: var in events and (var in selected_names or default_selection)  # noqa: E731
    for var in unique(ev.reliability["variable"]):
        if chosen(var):
            emit(reliability_figure(ev, var, meta), f"reliability_{var}.png")
    for var in unique(ev.scores["variable"]):
        if chosen(var):
            emit(bss_figure(ev, var, meta), f"bss_{var}.png")
            emit(fss_figure(ev, var, meta), f"fss_{var}.png")
    if plan is not None:
        for fig, name in map_figures(plan, members_to_show, meta):
            emit(fig, name)
    if not written:
        log(f"plot: nothing to plot in {', '.join(map(str, folders))} for {', '.join(key_name(k) for k in keys)}")
    return written
