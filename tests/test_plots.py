"""Figures of ``def_jax.evaluation.plots`` from small synthetic inputs that follow docs/FORECASTS.md and docs/DATA.md.

``build_inputs(root)`` writes the evaluation tables (``scores.csv``, ``rank_histogram.csv``, ``reliability.csv``), one
forecast file (16 × 20 grid, ``refc`` and ``t2m``, 6 members, leads 1–6 h) and a Zarr store with the matching truth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from def_jax.catalogue import Catalogue
from def_jax.errors import UserError
from def_jax.evaluation.plots import key_name, make_plots, select_keys

NY, NX, B = 16, 20, 6
INIT = np.datetime64("2024-06-02T12", "ns")
FORECAST_LEADS = np.arange(1, 7, dtype=np.int32)
TABLE_LEADS = np.arange(1, 13)
REFC_THRESHOLDS = (20.0, 35.0, 45.0)
CAPE_THRESHOLDS = (500.0, 1000.0)
# (variable, level): what the tables hold; z has two levels, the default selection plots 500 hPa only.
TABLE_KEYS = (("t2m", np.nan), ("refc", np.nan), ("z", 500.0), ("z", 850.0))
SCALE = {"t2m": 1.2, "refc": 6.0, "z": 12.0}
CATALOGUE = {"name": "plots_test", "variables": [
    {"name": "t2m", "shortName": "2t", "typeOfLevel": "heightAboveGround", "level": 2, "units": "K",
     "long_name": "2 m temperature", "min": 0.0},
    {"name": "refc", "shortName": "refc", "typeOfLevel": "atmosphere", "units": "dBZ",
     "long_name": "composite reflectivity", "min": -10.0},
    {"name": "z", "shortName": "gh", "typeOfLevel": "isobaricInhPa", "levels": [500, 850], "units": "gpm",
     "long_name": "geopotential height"},
]}
LEVELS = np.asarray([500.0, 850.0], np.float32)


# --- evaluation tables --------------------------------------------------------------------------------------------


def _score_rows() -> list[dict]:
    rows = []

    def add(system, var, level, lead, score, value, threshold=np.nan, window=np.nan):
        rows.append({"system": system, "variable": var, "level": level, "lead_hours": lead, "score": score,
                     "threshold": threshold, "window": window, "value": value, "count": 4, "weighting": "cos_lat"})

    for var, level in TABLE_KEYS:
        s = SCALE[var] * (1.3 if level == 850.0 else 1.0)
        for lead in TABLE_LEADS:
            rmse = s * (0.4 + 0.12 * lead) ** 0.8
            spread = rmse * (0.75 + 0.01 * lead)
            add("def", var, level, lead, "rmse", rmse)
            add("def", var, level, lead, "spread", spread)
            add("def", var, level, lead, "ssr", spread / rmse * np.sqrt((B + 1) / B))
            add("def", var, level, lead, "crps", 0.45 * rmse)
            add("def", var, level, lead, "crps_standard", 0.48 * rmse)
            add("def", var, level, lead, "mae", 0.8 * rmse)
            add("def", var, level, lead, "bias", 0.05 * s)
            add("deterministic", var, level, lead, "rmse", 1.12 * rmse)
            add("deterministic", var, level, lead, "crps", 0.8 * 1.12 * rmse)
            add("persistence", var, level, lead, "rmse", s * 0.5 * lead ** 0.6)
            add("persistence", var, level, lead, "crps", s * 0.4 * lead ** 0.6)
            add("climatology", var, level, lead, "rmse", 2.2 * s)
            add("climatology", var, level, lead, "crps", 1.7 * s)
            if var == "refc":
                for thr in REFC_THRESHOLDS:
                    add("def", var, level, lead, "brier", 0.02 + 0.002 * lead, threshold=thr)
                    add("def", var, level, lead, "bss", 0.4 - 0.02 * lead, threshold=thr)
                    add("def", var, level, lead, "fss", 0.7 - 0.03 * lead, threshold=thr, window=9)
    return rows


def _rank_rows() -> list[dict]:
    rows = []
    for var, level in TABLE_KEYS:
        for lead in TABLE_LEADS:
            ranks = np.arange(B + 1)
            u_shape = 1.0 + (0.5 - 0.03 * lead) * ((ranks - B / 2) / (B / 2)) ** 2  # under-dispersive, improving
            for r, w in zip(ranks, u_shape):
                rows.append({"system": "def", "variable": var, "level": level, "lead_hours": lead, "rank": int(r),
                             "count": int(1000 * w)})
    return rows


def _reliability_rows() -> list[dict]:
    rows = []
    for var, thresholds in (("refc", REFC_THRESHOLDS), ("cape", CAPE_THRESHOLDS)):
        for k, thr in enumerate(thresholds):
            for lead in TABLE_LEADS:
                for i in range(10):
                    lower, upper = i / 10, (i + 1) / 10
                    count = int(20000 * (0.4 + 0.01 * lead) ** i * (1 + 0.3 * k)) if i < 8 - k else 0
                    fp = lower + 0.05 + 0.01 * np.sin(i + lead) if count else np.nan
                    obs = float(np.clip(0.02 + 0.85 * fp - 0.01 * lead * fp, 0, 1)) if count else np.nan
                    rows.append({"system": "def", "variable": var, "threshold": thr, "lead_hours": lead,
                                 "bin_lower": lower, "bin_upper": upper, "forecast_probability": fp,
                                 "observed_frequency": obs, "count": count})
    return rows


def write_tables(directory: Path, drop: tuple[str, str] | None = None) -> Path:
    """Write the three tables into ``directory``; ``drop=(file, column)`` leaves a column out of one of them."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in (("scores.csv", _score_rows()), ("rank_histogram.csv", _rank_rows()),
                       ("reliability.csv", _reliability_rows())):
        df = pd.DataFrame(rows)
        if drop is not None and drop[0] == name:
            df = df.drop(columns=[drop[1]])
        df.to_csv(directory / name, index=False)
    return directory


# --- forecast file and store --------------------------------------------------------------------------------------


def _grid() -> dict[str, np.ndarray]:
    """A 27 km Lambert-like grid over the southern Great Plains (longitudes 0–360 °E, as cfgrib reads HRRR)."""
    iy, ix = np.meshgrid(np.arange(NY), np.arange(NX), indexing="ij")
    return {"y": 27000.0 * np.arange(NY) - 8.0e5, "x": 27000.0 * np.arange(NX) - 4.0e5,
            "lat": 32.0 + 0.243 * iy + 0.012 * ix, "lon": 259.5 + 0.29 * ix - 0.015 * iy, "iy": iy, "ix": ix}


def _storm(g: dict, hour: float, shift: tuple[float, float] = (0.0, 0.0), amp: float = 62.0) -> np.ndarray:
    """A reflectivity blob with a weaker trailing band, moving east; floor −10 dBZ (no echo)."""
    cy, cx = 6.0 + 0.25 * (hour - 12) + shift[0], 4.0 + 1.6 * (hour - 12) + shift[1]
    r2 = (g["iy"] - cy) ** 2 + ((g["ix"] - cx) / 1.4) ** 2
    band = 30.0 * np.exp(-((g["ix"] - cx + 3.0 + 0.3 * (g["iy"] - cy)) ** 2) / 2.0) * (np.abs(g["iy"] - cy) < 5)
    return np.maximum(-10.0 + (amp + 10.0) * np.exp(-r2 / 6.0) + band, -10.0)


def _t2m(g: dict, hour: float, rng: np.random.Generator, noise: float) -> np.ndarray:
    return (303.0 - 0.9 * g["iy"] + 0.15 * g["ix"] + 2.0 * np.sin(2 * np.pi * (hour - 9) / 24)
            + rng.normal(0.0, noise, g["iy"].shape))


def _z(g: dict, hour: float, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Geopotential height [level, y, x] at 500 and 850 hPa: a trough moving east."""
    trough = np.exp(-((g["ix"] - 6.0 - 0.5 * (hour - 12)) ** 2) / 20.0)
    z500 = 5880.0 - 6.0 * g["iy"] - 40.0 * trough + rng.normal(0.0, noise, g["iy"].shape)
    return np.stack([z500, 1480.0 + 0.5 * (z500 - 5880.0)])


def write_forecast(path: Path, seed: int = 0) -> Path:
    """One forecast file as docs/FORECASTS.md describes it (``refc``, ``t2m``, ``z`` on 500/850 hPa, 6 members,
    leads 1–6 h)."""
    rng = np.random.default_rng(seed)
    g = _grid()
    hours = 12 + FORECAST_LEADS
    refc = np.stack([[_storm(g, h, tuple(rng.normal(0, 1.0, 2)), 55.0 + 8 * rng.random()) for h in hours]
                     for _ in range(B)])[None].astype(np.float32)  # [1, B, N, y, x]
    t2m = np.stack([[_t2m(g, h, rng, 0.6) for h in hours] for _ in range(B)])[None].astype(np.float32)
    z = np.stack([[_z(g, h, rng, 3.0) for h in hours] for _ in range(B)])[None].astype(np.float32)
    deterministic = {"refc": np.stack([_storm(g, h) for h in hours])[None],
                     "t2m": np.stack([_t2m(g, h, rng, 0.0) for h in hours])[None],
                     "z": np.stack([_z(g, h, rng, 0.0) for h in hours])[None]}
    thresholds = np.asarray(REFC_THRESHOLDS, np.float32)
    prob = (refc[:, :, None] >= thresholds[None, None, :, None, None, None]).mean(axis=1)  # [1, T, N, y, x]
    valid = INIT + FORECAST_LEADS.astype("timedelta64[h]")
    coords = {
        "init_time": ("init_time", [INIT]), "lead_time": ("lead_time", FORECAST_LEADS, {"units": "hours"}),
        "valid_time": (("init_time", "lead_time"), valid[None]), "member": ("member", np.arange(B, dtype=np.int32)),
        "level": ("level", LEVELS, {"units": "hPa"}),
        "y": ("y", g["y"], {"units": "m", "standard_name": "projection_y_coordinate"}),
        "x": ("x", g["x"], {"units": "m", "standard_name": "projection_x_coordinate"}),
        "latitude": (("y", "x"), g["lat"], {"units": "degrees_north"}),
        "longitude": (("y", "x"), g["lon"], {"units": "degrees_east"}),
        "refc_threshold": ("refc_threshold", thresholds, {"units": "dBZ"}),
    }
    ds = xr.Dataset(coords=coords)
    ds["crs"] = ((), np.int32(0), {"grid_mapping_name": "lambert_conformal_conic", "standard_parallel": [38.5, 38.5],
                                   "longitude_of_central_meridian": 262.5, "latitude_of_projection_origin": 38.5,
                                   "earth_radius": 6371229.0})
    for name, members, units, long_name in (("refc", refc, "dBZ", "composite reflectivity"),
                                            ("t2m", t2m, "K", "2 m temperature"),
                                            ("z", z, "gpm", "geopotential height")):
        lev = ("level",) if name == "z" else ()
        member_dims = ("init_time", "member", "lead_time") + lev + ("y", "x")
        stat_dims = ("init_time", "lead_time") + lev + ("y", "x")
        attrs = {"units": units, "long_name": long_name, "grid_mapping": "crs"}
        ds[name] = (member_dims, members, attrs)
        ds[f"{name}_mean"] = (stat_dims, members.mean(axis=1), {**attrs, "long_name": f"{long_name}, ensemble mean"})
        ds[f"{name}_std"] = (stat_dims, members.std(axis=1), {**attrs, "long_name": f"{long_name}, ensemble std"})
        ds[f"{name}_deterministic"] = (stat_dims, deterministic[name].astype(np.float32),
                                       {**attrs, "long_name": f"{long_name}, deterministic rollout"})
    ds["refc_probability"] = (("init_time", "refc_threshold", "lead_time", "y", "x"), prob.astype(np.float32),
                              {"units": "1", "long_name": "fraction of members with refc >= threshold",
                               "grid_mapping": "crs"})
    ds.attrs.update({"Conventions": "CF-1.8", "def_jax_forecast": 1, "mode": "def", "members": B, "walks": 2,
                     "guidance_scale": 0.5, "sampler": "dpm_solver", "sampler_steps": 8, "dt_hours": 1,
                     "store": "store.zarr", "seed": seed, "created": "2026-11-22T00:00:00Z",
                     "history": "tests/test_plots.py"})
    time_units = "hours since 1970-01-01 00:00:00"
    encoding = {name: {"zlib": True} for name in ds.data_vars if name != "crs"}
    encoding.update({"init_time": {"units": time_units}, "valid_time": {"units": time_units}})
    ds.to_netcdf(path, engine="netcdf4", encoding=encoding)
    return path


def write_store(path: Path, seed: int = 1) -> Path:
    """A Zarr store (docs/DATA.md, schema 1) with the truth of ``t2m``, ``refc``, ``z`` every hour of 2024-06-02."""
    rng = np.random.default_rng(seed)
    g = _grid()
    cat = Catalogue.from_dict(CATALOGUE)
    times = np.datetime64("2024-06-02T00", "ns") + np.arange(24) * np.timedelta64(1, "h")
    hours = np.arange(24)
    data = {"refc": np.stack([_storm(g, h, (0.8, -0.6)) for h in hours]),
            "t2m": np.stack([_t2m(g, h, rng, 0.8) for h in hours]),
            "z": np.stack([_z(g, h, rng, 4.0) for h in hours])}
    ds = xr.Dataset(coords={"time": ("time", times), "level": ("level", LEVELS, {"units": "hPa"}),
                            "y": ("y", g["y"], {"units": "m"}), "x": ("x", g["x"], {"units": "m"})})
    ds["latitude"] = (("y", "x"), g["lat"], {"units": "degrees_north"})
    ds["longitude"] = (("y", "x"), g["lon"], {"units": "degrees_east"})
    ds["crs"] = ((), np.int32(0), {"grid_mapping_name": "lambert_conformal_conic"})
    for v in cat:
        dims = ("time", "level", "y", "x") if v.levels else ("time", "y", "x")
        ds[v.name] = (dims, data[v.name].astype(np.float32),
                      {"units": v.units, "long_name": v.long_name, "role": v.role, "grid_mapping": "crs",
                       "GRIB_shortName": v.short_name, "GRIB_typeOfLevel": v.type_of_level, "valid_min": v.min})
    ds["time_status"] = ("time", np.ones(24, np.int8))
    ds.attrs.update({"def_jax_schema": 1, "catalogue": cat.to_json(), "dt_hours": 1, "source": "xarray",
                     "region": "", "stride": 1, "created": "2026-11-22T00:00:00Z", "history": "tests/test_plots.py"})
    encoding = {name: {"chunks": (1,) + ds[name].shape[1:]} for name in ("t2m", "refc", "z")}
    ds.to_zarr(path, mode="w", zarr_format=3, consolidated=False, encoding=encoding)
    return path


def build_inputs(root: Path) -> dict[str, Path]:
    """All inputs under ``root``: ``evaluation`` (tables), ``forecast`` (file) and ``store``."""
    root.mkdir(parents=True, exist_ok=True)
    return {"evaluation": write_tables(root / "evaluation"),
            "forecast": write_forecast(root / "forecast_20240602T12.nc"),
            "store": write_store(root / "store.zarr")}


# --- tests --------------------------------------------------------------------------------------------------------


def _check_png(path: Path) -> None:
    from matplotlib.image import imread

    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300 and image.shape[2] in (3, 4), path
    assert float(image[..., :3].std()) > 0.01, f"{path} is blank"


def test_make_plots_writes_every_figure(tmp_path):
    inputs = build_inputs(tmp_path / "in")
    out = tmp_path / "plots"
    messages: list[str] = []
    paths = make_plots(inputs["evaluation"], out, forecast_path=inputs["forecast"], store=inputs["store"],
                       log=messages.append)
    keys = ("t2m", "refc", "z500")  # surface variables + 500 hPa of the multi-level one; z850 is not plotted
    expected = {f"{kind}_{k}.png" for kind in ("spread_skill", "crps", "rank_histogram") for k in keys}
    expected |= {"reliability_refc.png", "reliability_cape.png", "bss_refc.png"}
    expected |= {f"maps_{v}_{lead}h.png" for v in ("refc", "t2m") for lead in (1, 3, 6)}  # 3 leads over 1–6 h
    assert {p.name for p in paths} == expected
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)  # no temporary files left
    for path in paths:
        _check_png(path)
    assert len(messages) == len(expected)


def test_selection_and_leads(tmp_path):
    inputs = build_inputs(tmp_path / "in")
    out = tmp_path / "plots"
    paths = make_plots(inputs["evaluation"], out, forecast_path=inputs["forecast"].parent, store=inputs["store"],
                       variables=["z500"], lead_hours=[2], members_to_show=2, log=lambda m: None)
    assert {p.name for p in paths} == {"spread_skill_z500.png", "crps_z500.png", "rank_histogram_z500.png",
                                       "maps_z500_2h.png"}  # a level of a multi-level variable, truth included
    _check_png(out / "maps_z500_2h.png")


def test_select_keys():
    scores = pd.DataFrame(_score_rows())
    assert select_keys(scores, None) == [("t2m", None), ("refc", None), ("z", 500.0)]
    assert select_keys(scores, "z850, t2m") == [("z", 850.0), ("t2m", None)]
    assert key_name(("z", 850.0)) == "z850" and key_name(("t2m", None)) == "t2m"


@pytest.mark.parametrize("file, column", [("scores.csv", "value"), ("rank_histogram.csv", "rank"),
                                          ("reliability.csv", "observed_frequency")])
def test_missing_column_is_named(tmp_path, file, column):
    evaluation = write_tables(tmp_path / "evaluation", drop=(file, column))
    with pytest.raises(UserError, match=rf"{file}: missing column '{column}'"):
        make_plots(evaluation, tmp_path / "plots", log=lambda m: None)


def test_input_errors(tmp_path):
    evaluation = write_tables(tmp_path / "evaluation")
    (evaluation / "rank_histogram.csv").unlink()
    with pytest.raises(UserError, match="rank_histogram.csv: not found"):
        make_plots(evaluation, tmp_path / "plots", log=lambda m: None)
    evaluation = write_tables(tmp_path / "evaluation")
    with pytest.raises(UserError, match="'q700': not in scores.csv"):
        make_plots(evaluation, tmp_path / "plots", variables=["t2m", "q700"], log=lambda m: None)
    forecast = write_forecast(tmp_path / "forecast_20240602T12.nc")
    with pytest.raises(UserError, match=r"lead time\(s\) \[9\] h not in the file"):
        make_plots(evaluation, tmp_path / "plots", forecast_path=forecast, variables=["refc"], lead_hours=[9],
                   log=lambda m: None)


# --- bootstrap intervals, the new figures, several evaluation folders ---------------------------------------------


def write_study_tables(directory: Path, system: str = "def", factor: float = 1.0) -> Path:
    """The tables of :func:`write_tables` with ``def`` renamed to ``system`` and its scores scaled by ``factor``, plus
    bootstrap intervals, FSS at three windows, skill.csv and spread_error.csv (refc and t2m)."""
    write_tables(directory)
    for name in ("scores.csv", "rank_histogram.csv", "reliability.csv"):
        df = pd.read_csv(directory / name)
        ens = df["system"] == "def"
        df.loc[ens, "system"] = system
        if name == "scores.csv":
            df.loc[ens, "value"] *= factor
            fss = df[df["score"] == "fss"]
            df = pd.concat([df] + [fss.assign(window=w, value=fss["value"] * (0.6 + 0.04 * w)) for w in (1, 3)])
            df["value_low"], df["value_high"] = df["value"] * 0.93, df["value"] * 1.06
        if name == "reliability.csv":
            df["observed_frequency_low"] = df["observed_frequency"] * 0.9
            df["observed_frequency_high"] = (df["observed_frequency"] * 1.1).clip(upper=1.0)
        df.to_csv(directory / name, index=False)
    skill, spread_error = [], []
    for var in ("refc", "t2m"):
        for lead in TABLE_LEADS:
            for score, v in (("crps_over_deterministic_mae", 0.55 + 0.01 * lead),
                             ("rmse_over_deterministic_rmse", 0.9 + 0.004 * lead)):
                v *= factor
                skill.append({"system": system, "variable": var, "level": np.nan, "lead_hours": lead, "score": score,
                              "value": v, "value_low": 0.95 * v, "value_high": 1.04 * v, "count": 4,
                              "weighting": "uniform"})
            for b in range(8, 20):
                s = SCALE[var] * 2.0 ** ((b - 20) / 2)
                spread_error.append({"system": system, "variable": var, "level": np.nan, "lead_hours": lead, "bin": b,
                                     "bin_lower": s / 1.4, "bin_upper": s, "mean_spread": s / 1.2,
                                     "rmse": factor * s / 1.2 * (0.8 + 0.02 * lead), "rmse_low": s / 1.4,
                                     "rmse_high": s, "count": int(50 * 1.6 ** (b - 8)), "weighting": "uniform"})
    pd.DataFrame(skill).to_csv(directory / "skill.csv", index=False)
    pd.DataFrame(spread_error).to_csv(directory / "spread_error.csv", index=False)
    return directory


def test_new_figures_with_bootstrap_bands(tmp_path):
    from def_jax.evaluation.plots import calibration, common, scores

    evaluation = write_study_tables(tmp_path / "evaluation")
    out = tmp_path / "plots"
    paths = make_plots(evaluation, out, variables="refc", log=lambda m: None)
    assert {p.name for p in paths} == {f"{kind}_refc.png" for kind in (
        "spread_skill", "crps", "rank_histogram", "skill", "spread_error", "reliability", "bss", "fss")}
    for path in paths:
        _check_png(path)
    ev, meta = common.load_evaluations([evaluation]), common.VariableMeta(None, None)
    for fig in (scores.crps_figure(ev, ("refc", None), meta), scores.skill_figure(ev, ("refc", None), meta),
                scores.bss_figure(ev, "refc", meta), scores.fss_figure(ev, "refc", meta)):
        assert all(ax.collections for ax in fig.axes), fig  # a shaded band in every panel
    fig = calibration.reliability_figure(ev, "refc", meta)
    hollow = [line for ax in fig.axes for line in ax.lines if line.get_markerfacecolor() == "white"
              and len(line.get_xdata())]
    assert hollow  # the bins with < 100 points (7th bin at 20 dBZ: ~40)
    assert fig.axes[1].get_ylabel() == "points per bin"
    # tables written before the bootstrap: the same figures, without bands
    plain = write_tables(tmp_path / "plain")
    fig = scores.crps_figure(common.load_evaluations([plain]), ("refc", None), meta)
    assert not fig.axes[0].collections


def test_several_evaluation_folders_are_overlaid(tmp_path, capsys):
    from def_jax import cli
    from def_jax.evaluation.plots import common, scores

    folders = [write_study_tables(tmp_path / "seed1" / "evaluation"),
               write_study_tables(tmp_path / "seed2" / "evaluation", factor=1.1),
               write_study_tables(tmp_path / "gauss" / "evaluation", system="gaussian", factor=1.3)]
    ev = common.load_evaluations(folders)
    assert list(ev.series)[:3] == ["seed1/evaluation", "seed2/evaluation", "gaussian"]
    fig = scores.crps_figure(ev, ("t2m", None), common.VariableMeta(None, None))
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["seed1/evaluation", "seed2/evaluation", "Gaussian noise", "deterministic G_φ (CRPS = MAE)",
                      "persistence (CRPS = MAE)", "climatology (CRPS = MAE)"]  # single forecasts once
    fig = scores.skill_figure(ev, ("t2m", None), common.VariableMeta(None, None))
    assert len(fig.axes[0].lines) == 4  # three ensembles and the line at 1

    store = write_store(tmp_path / "store.zarr")
    code = cli.main(["plot", f"--workdir={tmp_path}", f"--evaluation={','.join(map(str, folders))}",
                     f"--truth={store}", "--variables=z500", f"--out={tmp_path / 'plots'}"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "crps_z500.png", "rank_histogram_z500.png", "spread_skill_z500.png"]
    assert cli.main(["plot", f"--workdir={tmp_path}", "--evaluation=,", f"--truth={store}"]) == 2
    assert "--evaluation=,: expected a directory" in capsys.readouterr().err


def test_latlon_grid_maps_and_zonal_means(tmp_path):
    """A global 5.625° grid: longitudes 0 … 354.4 stay contiguous (no cell spans the date line), and the zonal-mean
    figure's lines are the float64 means over longitude."""
    from def_jax.evaluation.plots import maps
    from def_jax.evaluation.plots.common import VariableMeta, save_figure
    from def_jax.evaluation.plots.zonal import zonal_figure, zonal_means

    lat1, lon1 = -87.1875 + 5.625 * np.arange(32), 5.625 * np.arange(64)
    lon2, lat2 = np.meshgrid(lon1, lat1)
    ds = xr.Dataset({"z": (("y", "x"), np.zeros((32, 64)), {"units": "m2 s-2"})},
                    coords={"latitude": (("y", "x"), lat2), "longitude": (("y", "x"), lon2),
                            "init_time": ("init_time", [INIT])})
    assert maps.is_latlon(ds)
    lon = maps.plot_longitudes(lon2)
    assert np.all(np.diff(lon, axis=1) > 0) and lon.max() - lon.min() == pytest.approx(354.375)
    hrrr_like = np.array([[230.0, 250.0, 270.0], [231.0, 251.0, 271.0]])  # 0…360 longitudes of a regional grid
    np.testing.assert_allclose(maps.plot_longitudes(hrrr_like), hrrr_like - 360.0)
    across = np.array([[170.0, 179.0, -172.0, -163.0]])  # a grid across the date line stays contiguous
    np.testing.assert_allclose(maps.plot_longitudes(across), [[170.0, 179.0, 188.0, 197.0]])
    assert not maps.is_latlon(ds.assign_coords(latitude=(("y", "x"), lat2 + 0.01 * lon2)))

    rng = np.random.default_rng(0)
    truth = 5e4 + 1e3 * np.cos(np.radians(lat2)) + rng.normal(size=(32, 64))
    members = truth + rng.normal(scale=30.0, size=(5, 32, 64))
    members[0, 3, 7] = np.nan  # a missing point leaves its row's mean over the other 63
    np.testing.assert_allclose(zonal_means(members)[1:], members[1:].mean(axis=-1))
    np.testing.assert_allclose(zonal_means(members)[0, 3], np.nanmean(members[0, 3]))
    fields = {"members": members, "n_members": 5, "mean": np.nanmean(members, axis=0),
              "std": np.nanstd(members, axis=0), "truth": truth, "truth_note": "", "member_ids": np.arange(5),
              "valid": INIT}
    meta = VariableMeta(None, None)
    fig = zonal_figure(ds, ("z", 500.0), 24, fields, meta)
    left, right = fig.axes[:2]
    ens_line = next(line for line in left.lines if line.get_label() == "ensemble mean")
    np.testing.assert_allclose(ens_line.get_ydata(), fields["mean"].mean(axis=-1))
    rmse = next(line for line in right.lines if line.get_label() == "RMS error of the ensemble mean")
    np.testing.assert_allclose(rmse.get_ydata(), np.sqrt(np.mean((fields["mean"] - truth) ** 2, axis=-1)))
    _check_png(save_figure(fig, tmp_path / "zonal.png"))
    _check_png(save_figure(maps._map_figure(ds, ("z", 500.0), 24, dict(fields, members=members[:2]), meta),
                           tmp_path / "map.png"))
