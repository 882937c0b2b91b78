"""def-jax evaluate on a hand-built store and hand-written forecast files (docs/DATA.md, docs/FORECASTS.md)."""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import scoringrules as sr
import xarray as xr
from scipy.ndimage import uniform_filter

from def_jax.catalogue import Catalogue
from def_jax.errors import UserError
from def_jax.evaluation import bootstrap, metrics
from def_jax.evaluation.evaluate import RANK_COLUMNS, RELIABILITY_COLUMNS, SCORES_COLUMNS, SPECTRA_COLUMNS, evaluate
from def_jax.evaluation.tables import read_scores_by_cycle
from def_jax.geo import LambertConformal

START = np.datetime64("2024-06-01T00", "ns")
NT, NY, NX = 30, 12, 10
LEVELS = (500.0, 850.0)
TRAIN = "2024-06-01T00:2024-06-01T11"  # slots 0..11
MISSING = 20  # never written (time_status 0)
CATALOGUE = {"name": "evaluate_test", "variables": [
    {"name": "t", "shortName": "t", "typeOfLevel": "isobaricInhPa", "levels": list(LEVELS), "units": "K",
     "long_name": "temperature", "role": "state"},
    {"name": "refc", "shortName": "refc", "typeOfLevel": "atmosphere", "units": "dBZ",
     "long_name": "composite reflectivity", "role": "state", "min": -10.0},
]}
CRS = {"grid_mapping_name": "lambert_conformal_conic", "standard_parallel": [38.5, 38.5],
       "longitude_of_central_meridian": 262.5, "latitude_of_projection_origin": 38.5, "earth_radius": 6371229.0}
THRESHOLDS = (20.0, 35.0)
QUIET = lambda message: None  # noqa: E731


def eval_config(weighting: str = "uniform") -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.evaluation = ml_collections.ConfigDict(dict(
        fair_crps=True, refc_thresholds=THRESHOLDS, cape_thresholds=(500.0,), fss_windows=(1, 3),
        area_weighting=weighting))
    return cfg


def write_store(path: Path) -> Path:
    """A schema-1 store: t on 2 levels and refc on a 12 × 10 Lambert grid, 30 hourly slots, slot 20 missing."""
    rng = np.random.default_rng(0)
    hours = np.arange(NT)[:, None, None]
    yy, xx = np.meshgrid(np.arange(NY), np.arange(NX), indexing="ij")
    t = np.stack([255.0 + 0.3 * yy + 2 * np.sin(2 * np.pi * hours / 24) + rng.normal(0, 0.5, (NT, NY, NX)),
                  285.0 - 0.5 * yy + 0.1 * xx + 4 * np.sin(2 * np.pi * hours / 24) + rng.normal(0, 0.8, (NT, NY, NX))],
                 axis=1)  # [T, 2, Y, X]
    storm = 60.0 * np.exp(-((yy - 4 - hours / 6) ** 2 + (xx - 5) ** 2) / 6.0)  # a moving cell
    refc = np.maximum(-10.0, storm - 12.0 + rng.normal(0, 6.0, (NT, NY, NX)))  # [T, Y, X], floor −10 dBZ
    status = np.ones(NT, np.int8)
    status[MISSING] = 0
    t[MISSING], refc[MISSING] = np.nan, np.nan
    lat = 30.0 + 0.027 * np.arange(NY)[:, None] + 0.001 * np.arange(NX)[None, :]
    lon = 250.0 + 0.031 * np.arange(NX)[None, :] - 0.002 * np.arange(NY)[:, None]
    ds = xr.Dataset(coords={
        "time": ("time", START + np.arange(NT) * np.timedelta64(1, "h")),
        "level": ("level", np.asarray(LEVELS, np.float32), {"units": "hPa"}),
        "y": ("y", 3000.0 * np.arange(NY) - 1.5e6, {"units": "m"}),
        "x": ("x", 3000.0 * np.arange(NX) - 2.0e6, {"units": "m"}),
    })
    ds["latitude"] = (("y", "x"), lat, {"units": "degrees_north"})
    ds["longitude"] = (("y", "x"), lon, {"units": "degrees_east"})
    ds["crs"] = ((), np.int32(0), CRS)
    ds["t"] = (("time", "level", "y", "x"), t.astype(np.float32),
               {"units": "K", "role": "state", "grid_mapping": "crs"})
    ds["refc"] = (("time", "y", "x"), refc.astype(np.float32), {"units": "dBZ", "role": "state", "grid_mapping": "crs",
                                                               "valid_min": -10.0})
    ds["time_status"] = ("time", status)
    train = slice(0, 12)
    ds["t_mean"] = ("level", t[train].mean(axis=(0, 2, 3)))
    ds["t_std"] = ("level", t[train].std(axis=(0, 2, 3)))
    ds["refc_mean"] = ((), refc[train].mean())
    ds["refc_std"] = ((), refc[train].std())
    ds.attrs.update({"def_jax_schema": 1, "catalogue": Catalogue.from_dict(CATALOGUE).to_json(), "dt_hours": 1,
                     "source": "xarray", "stats_train_period": TRAIN})
    encoding = {name: {"chunks": (1,) + ds[name].shape[1:]} for name in ("t", "refc")}
    ds.to_zarr(path, mode="w", zarr_format=3, consolidated=False, encoding=encoding)
    return path


@functools.lru_cache(maxsize=4)
def _store_arrays(store: Path) -> dict[str, np.ndarray]:
    ds = xr.open_zarr(store, consolidated=False)
    return {v: np.asarray(ds[v].values, np.float64) for v in ("t", "refc", "latitude")}


def store_truth(store: Path, var: str, slots) -> np.ndarray:
    return _store_arrays(store)[var][list(slots)]


def write_forecast(path: Path, store: Path, init_slot: int, leads, members: dict, deterministic: dict | None = None,
                   mode: str = "def", x_shift: float = 0.0, nx: int = NX, perturbation: str | None = None) -> Path:
    """A forecast file as docs/FORECASTS.md describes it; members[var] is [M, N, (L,) Y, X] in physical units
    (``perturbation``: the attribute naming a baseline ensemble; None: no attribute)."""
    st = xr.open_zarr(store, consolidated=False)
    init = START + init_slot * np.timedelta64(1, "h")
    leads = np.asarray(leads, np.int32)
    m = next(iter(members.values())).shape[0]
    hours = float((init - np.datetime64("1970-01-01T00", "ns")) / np.timedelta64(1, "h"))
    tunits = {"units": "hours since 1970-01-01 00:00:00", "calendar": "proleptic_gregorian"}
    ds = xr.Dataset(coords={
        "init_time": ("init_time", [hours], tunits),
        "lead_time": ("lead_time", leads, {"units": "hours"}),
        "member": ("member", np.arange(m, dtype=np.int32)),
        "level": ("level", np.asarray(LEVELS, np.float32), {"units": "hPa"}),
        "y": ("y", st["y"].values, {"units": "m"}),
        "x": ("x", st["x"].values[:nx] + x_shift, {"units": "m"}),
        "refc_threshold": ("refc_threshold", np.asarray(THRESHOLDS, np.float32), {"units": "dBZ"}),
    })
    ds["valid_time"] = (("init_time", "lead_time"), hours + leads[None].astype(np.float64), tunits)
    ds["latitude"] = (("y", "x"), st["latitude"].values[:, :nx], {"units": "degrees_north"})
    ds["longitude"] = (("y", "x"), st["longitude"].values[:, :nx], {"units": "degrees_east"})
    ds["crs"] = ((), np.int32(0), CRS)
    for var, data in members.items():
        dims = ("lead_time", "level", "y", "x") if data.ndim == 5 else ("lead_time", "y", "x")
        attrs = {"units": "K" if var == "t" else "dBZ", "long_name": var, "grid_mapping": "crs",
                 "coordinates": "latitude longitude"}
        ds[var] = (("init_time", "member") + dims, data[None].astype(np.float32), attrs)
        ds[f"{var}_mean"] = (("init_time",) + dims, data.mean(0)[None].astype(np.float32), attrs)
        ds[f"{var}_std"] = (("init_time",) + dims, data.std(0)[None].astype(np.float32), attrs)
        if deterministic is not None:
            ds[f"{var}_deterministic"] = (("init_time",) + dims, deterministic[var][None].astype(np.float32), attrs)
    thr = np.asarray(THRESHOLDS)[:, None, None, None]
    prob = (members["refc"][:, None] >= thr).mean(0)  # [thresholds, N, Y, X]
    ds["refc_probability"] = (("init_time", "refc_threshold", "lead_time", "y", "x"), prob[None].astype(np.float32),
                              {"units": "1"})
    ds.attrs.update({"Conventions": "CF-1.8", "def_jax_forecast": 1, "mode": mode, "members": m, "walks": 1,
                     "dt_hours": 1})
    if perturbation is not None:
        ds.attrs["perturbation"] = perturbation
    encoding = {v: {"zlib": True} for v in ds.data_vars if v != "crs"}
    ds.to_netcdf(path, engine="netcdf4", encoding=encoding)
    return path


def weighted_mean(a: np.ndarray, weights: np.ndarray) -> float:
    return float(np.sum(weights * a) / np.sum(weights))


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames), list(reader)


def value(rows, **match) -> float:
    hits = [r for r in rows if all(str(r[k]) == str(v) for k, v in match.items())]
    assert len(hits) == 1, (match, len(hits))
    return float(hits[0]["value"])


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return write_store(tmp_path_factory.mktemp("evaluate") / "store.zarr")


INITS, LEADS = (2, 18), (1, 2, 3)  # the second cycle's lead 2 is valid at the missing slot 20


def perfect_members(store: Path, init: int, m: int = 4) -> tuple[dict, dict]:
    slots = [init + lead for lead in LEADS]
    truth = {v: np.nan_to_num(store_truth(store, v, slots), nan=0.0) for v in ("t", "refc")}  # [N, (L,) Y, X]
    return {v: np.repeat(a[None], m, axis=0) for v, a in truth.items()}, truth


def test_perfect_forecast_columns_and_persistence(store, tmp_path):
    files = []
    for init in INITS:
        members, det = perfect_members(store, init)
        files.append(write_forecast(tmp_path / f"forecast_{init}.nc", store, init, LEADS, members, det))
    # A direct-mode forecast of the first cycle: its own system; the single forecasts still count once per field.
    files.append(write_forecast(tmp_path / "direct.nc", store, INITS[0], LEADS, perfect_members(store, INITS[0])[0],
                                mode="direct_residual"))
    out, messages = tmp_path / "eval", []
    summary = evaluate(files, store, out, config=eval_config(), log=messages.append)
    assert summary["cycles"] == 3 and summary["leads_skipped"] == 1 and summary["leads_evaluated"] == 8
    assert any("skipped 1 of 9 leads" in m for m in messages)
    assert summary["systems"] == ["def", "direct", "deterministic", "persistence", "climatology"]

    for name, columns in (("scores", SCORES_COLUMNS), ("rank_histogram", RANK_COLUMNS),
                          ("reliability", RELIABILITY_COLUMNS), ("spectra", SPECTRA_COLUMNS)):
        header, rows = read_csv(out / f"{name}.csv")
        assert tuple(header) == columns and rows, name
    assert tuple(SCORES_COLUMNS) == ("system", "variable", "level", "lead_hours", "score", "threshold", "window",
                                     "value", "count", "weighting", "value_low", "value_high")
    _, scores = read_csv(out / "scores.csv")
    assert {r["weighting"] for r in scores} == {"uniform"}
    for lead in LEADS:
        n = 1 if lead == 2 else 2
        for var, level in (("t", "500"), ("t", "850"), ("refc", "")):
            for score in ("rmse", "crps", "crps_standard", "mae", "spread"):
                assert value(scores, system="def", variable=var, level=level, lead_hours=lead, score=score) == 0.0
            assert value(scores, system="deterministic", variable=var, level=level, lead_hours=lead,
                         score="rmse") == 0.0
            row = [r for r in scores if r["system"] == "def" and r["variable"] == var and r["level"] == level
                   and r["lead_hours"] == str(lead) and r["score"] == "rmse"][0]
            assert int(row["count"]) == n
            for system in ("persistence", "climatology", "deterministic"):
                row = [r for r in scores if r["system"] == system and r["variable"] == var and r["level"] == level
                       and r["lead_hours"] == str(lead) and r["score"] == "rmse"][0]
                assert int(row["count"]) == n
            assert value(scores, system="direct", variable=var, level=level, lead_hours=lead, score="crps") == 0.0
        for thr in THRESHOLDS:
            assert value(scores, system="def", variable="refc", lead_hours=lead, score="brier", threshold=f"{thr:g}") \
                == 0.0
            assert value(scores, system="def", variable="refc", lead_hours=lead, score="fss", threshold=f"{thr:g}",
                         window=3) == pytest.approx(1.0)

    # Persistence RMSE by hand: sqrt of the mean over cycles of the grid-mean squared error.
    for lead in LEADS:
        for var, li, level in (("t", 0, "500"), ("t", 1, "850"), ("refc", None, "")):
            mse = []
            for init in INITS:
                if init + lead == MISSING:
                    continue
                y, p = store_truth(store, var, [init + lead])[0], store_truth(store, var, [init])[0]
                if li is not None:
                    y, p = y[li], p[li]
                mse.append(np.mean((p - y) ** 2))
            assert value(scores, system="persistence", variable=var, level=level, lead_hours=lead,
                         score="rmse") == pytest.approx(np.sqrt(np.mean(mse)), rel=1e-5)

    _, ranks = read_csv(out / "rank_histogram.csv")
    t500 = [int(r["count"]) for r in ranks if r["system"] == "def" and r["variable"] == "t" and r["level"] == "500"
            and r["lead_hours"] == "1"]
    assert len(t500) == 5 and sum(t500) == 2 * NY * NX


def test_aggregation_equals_the_pooled_computation(store, tmp_path):
    """Two cycles scored by evaluate (map-factor weights) = NumPy/scoringrules on the concatenated fields."""
    rng = np.random.default_rng(1)
    m, leads = 4, (1, 3)
    files, pooled = [], {"t": [], "refc": [], "truth_t": [], "truth_refc": []}
    for init in INITS:
        slots = [init + lead for lead in leads]
        members = {}
        for var, noise in (("t", 1.0), ("refc", 8.0)):
            y = store_truth(store, var, slots)  # [N, (L,) Y, X]
            members[var] = y[None] + rng.normal(0, noise, (m,) + y.shape) + rng.normal(0, noise, y.shape)[None]
            if var == "refc":
                members[var] = np.maximum(members[var], -10.0)
            members[var] = members[var].astype(np.float32).astype(np.float64)
            pooled[var].append(members[var])
            pooled["truth_" + var].append(y)
        files.append(write_forecast(tmp_path / f"forecast_{init}.nc", store, init, leads, members, mode="direct"))
    out = tmp_path / "eval"
    evaluate(files, store, out, config=eval_config("map_factor"), log=QUIET)
    _, scores = read_csv(out / "scores.csv")
    _, rank_rows = read_csv(out / "rank_histogram.csv")
    _, rel_rows = read_csv(out / "reliability.csv")
    assert {r["system"] for r in scores} == {"direct", "persistence", "climatology"}
    assert {r["weighting"] for r in scores if r["score"] == "rmse"} == {"map_factor"}

    w = metrics.lambert_cell_area_weights(_store_arrays(store)["latitude"], LambertConformal(38.5, 38.5, 38.5, 262.5))
    train = store_truth(store, "refc", range(12))
    for j, lead in enumerate(leads):
        for var, li, level in (("t", 1, "850"), ("refc", None, "")):
            ens = np.stack([a[:, j] for a in pooled[var]], axis=1)  # [M, 2, (L,) Y, X]
            y = np.stack([a[j] for a in pooled["truth_" + var]], axis=0)  # [2, (L,) Y, X]
            if li is not None:
                ens, y = ens[:, :, li], y[:, li]
            ww = np.broadcast_to(w, y.shape)  # [2, Y, X]
            wmean = functools.partial(weighted_mean, weights=ww)
            got = functools.partial(value, scores, system="direct", variable=var, level=level, lead_hours=lead)
            rmse = np.sqrt(wmean((ens.mean(0) - y) ** 2))
            spread = np.sqrt(wmean(ens.var(0, ddof=1)))
            assert got(score="rmse") == pytest.approx(rmse, rel=1e-5)
            assert got(score="spread") == pytest.approx(spread, rel=1e-5)
            assert got(score="ssr") == pytest.approx(np.sqrt((m + 1) / m) * spread / rmse, rel=1e-5)
            for score, estimator in (("crps", "fair"), ("crps_standard", "nrg")):
                crps = sr.crps_ensemble(y, ens, m_axis=0, estimator=estimator, backend="numpy")
                assert got(score=score) == pytest.approx(wmean(crps), rel=1e-5)
            sw = np.sqrt(ww).reshape(2, -1)
            energy = sr.es_ensemble(y.reshape(2, -1) * sw, np.moveaxis(ens.reshape(m, 2, -1) * sw, 0, 1),
                                     estimator="fair", backend="numpy")  # [2]: one per cycle
            assert got(score="energy") == pytest.approx(float(np.mean(energy)), rel=1e-5)
            if var == "t":  # no ties: the rank is the number of members below
                counts = [int(r["count"]) for r in rank_rows if r["variable"] == "t" and r["level"] == "850"
                          and r["lead_hours"] == str(lead)]
                np.testing.assert_array_equal(counts, np.bincount((ens < y).sum(0).ravel(), minlength=m + 1))
                continue
            for thr in THRESHOLDS:
                t = f"{thr:g}"
                prob, obs = np.mean(ens >= thr, axis=0), (y >= thr).astype(np.float64)
                brier = wmean((prob - obs) ** 2)
                assert got(score="brier", threshold=t) == pytest.approx(brier, rel=1e-5)
                base = float(np.sum((train >= thr) * w) / (12 * w.sum()))
                ref = wmean((base - obs) ** 2)
                assert got(score="observed_frequency", threshold=t) == pytest.approx(wmean(obs), rel=1e-5)
                if obs.any():
                    assert got(score="bss", threshold=t) == pytest.approx(1 - brier / ref, rel=1e-5)
                else:  # no event observed: the BSS is undefined, not the 1 of a forecast that never gives it
                    assert np.isnan(got(score="bss", threshold=t))
                assert value(scores, system="climatology", variable="refc", lead_hours=lead, score="brier",
                             threshold=t) == pytest.approx(ref, rel=1e-5)
                yes, ev = prob >= 0.5, obs > 0.5
                hits, misses, false = np.sum(yes & ev), np.sum(~yes & ev), np.sum(yes & ~ev)
                for score, expected in (("csi", hits / (hits + misses + false)), ("pod", hits / (hits + misses)),
                                        ("far", false / (hits + false))):
                    assert got(score=score, threshold=t) == pytest.approx(expected, rel=1e-6)
                for window in (1, 3):  # zero padding = scipy's uniform filter with mode "constant"
                    pf = uniform_filter(prob, size=(1, window, window), mode="constant")
                    po = uniform_filter(obs, size=(1, window, window), mode="constant")
                    fss = 1 - np.sum((pf - po) ** 2) / (np.sum(pf ** 2) + np.sum(po ** 2))
                    assert got(score="fss", threshold=t, window=window) == pytest.approx(fss, rel=1e-5)
                rows = [r for r in rel_rows if r["system"] == "direct" and r["threshold"] == t
                        and r["lead_hours"] == str(lead)]
                idx = np.minimum(np.floor(prob * 10).astype(int), 9).ravel()
                n = np.bincount(idx, minlength=10)
                assert [int(r["count"]) for r in rows] == n.tolist()
                with np.errstate(invalid="ignore"):
                    fp = np.bincount(idx, prob.ravel(), 10) / n
                    fo = np.bincount(idx, obs.ravel(), 10) / n
                np.testing.assert_allclose([float(r["forecast_probability"]) for r in rows], fp, rtol=1e-6)
                np.testing.assert_allclose([float(r["observed_frequency"]) for r in rows], fo, rtol=1e-6)


def test_bad_files_raise_user_errors_naming_them(store, tmp_path):
    members, _ = perfect_members(store, INITS[0])
    good = write_forecast(tmp_path / "good.nc", store, INITS[0], LEADS, members)
    shifted = write_forecast(tmp_path / "shifted.nc", store, INITS[0], LEADS, members, x_shift=3000.0)
    with pytest.raises(UserError, match="shifted.nc: x coordinates differ"):
        evaluate([good, shifted], store, tmp_path / "eval", config=eval_config(), log=QUIET)
    small = {v: a[..., :NX - 1] for v, a in members.items()}
    narrow = write_forecast(tmp_path / "narrow.nc", store, INITS[0], LEADS, small, nx=NX - 1)
    with pytest.raises(UserError, match=r"narrow.nc: grid 12×9 differs from the store's 12×10"):
        evaluate([narrow], store, tmp_path / "eval", config=eval_config(), log=QUIET)
    other = tmp_path / "other.nc"
    xr.Dataset({"a": ("x", np.zeros(3))}).to_netcdf(other, engine="netcdf4")
    with pytest.raises(UserError, match="other.nc: not a def-jax forecast file"):
        evaluate([other], store, tmp_path / "eval", config=eval_config(), log=QUIET)
    again = tmp_path / "again.nc"
    again.write_bytes(good.read_bytes())
    with pytest.raises(UserError, match="again.nc: a second def forecast from 2024-06-01T02"):
        evaluate([good, again], store, tmp_path / "eval", config=eval_config(), log=QUIET)
    assert not (tmp_path / "eval" / "scores.csv").exists()
    with pytest.raises(UserError, match="area_weighting"):
        evaluate([good], store, tmp_path / "eval", config=eval_config("equal_area"), log=QUIET)


def test_brier_skill_is_undefined_where_no_event_was_observed():
    """scores.csv rows from pooled Brier sums [Σ w (p − o)², Σ w, Σ w (p_clim − o)², Σ w o]: a forecast that never
    gives the event scores BS = 0 where none happened, which would read BSS = 1 against climatology's p_clim² > 0."""
    from types import SimpleNamespace

    from def_jax.evaluation.tables import Accumulator, score_rows

    acc = Accumulator()
    p_clim = 0.05
    acc.add(("def", "refc", None, 1, "brier", 35.0, None), [0.0, 100.0, 100 * p_clim ** 2, 0.0])  # no event
    acc.add(("def", "refc", None, 2, "brier", 35.0, None), [4.0, 100.0, 8.0, 10.0])  # 10 % of the points
    acc.add(("def", "refc", None, 2, "brier", 35.0, None), [1.0, 100.0, 2.0, 0.0])  # a second cycle, no event
    rows = score_rows(acc, SimpleNamespace(fair_crps=True, weighting="uniform"), {"refc": 0})
    got = {(r[3], r[4]): (float(r[7]), r[8]) for r in rows}
    assert got[(1, "brier")] == (0.0, 1) and got[(1, "observed_frequency")] == (0.0, 1)
    assert np.isnan(got[(1, "bss")][0])
    assert got[(2, "observed_frequency")] == (pytest.approx(10 / 200), 2)
    assert got[(2, "brier")][0] == pytest.approx(5 / 200) and got[(2, "bss")][0] == pytest.approx(1 - 5 / 10)


# --- ensemble systems, per-cycle statistics and bootstrap intervals ---------------------------------------------


def noisy_members(store: Path, init: int, leads, rng, m: int = 4) -> tuple[dict, dict]:
    """Members and a deterministic forecast: the truth plus noise (a shared error, spread between members)."""
    members, det = {}, {}
    slots = [init + lead for lead in leads]
    for var, noise in (("t", 1.0), ("refc", 8.0)):
        y = store_truth(store, var, slots)  # [N, (L,) Y, X]
        members[var] = y[None] + rng.normal(0, noise, (m,) + y.shape) + rng.normal(0, noise, y.shape)[None]
        det[var] = y + rng.normal(0, 1.3 * noise, y.shape)
        if var == "refc":
            members[var], det[var] = np.maximum(members[var], -10.0), np.maximum(det[var], -10.0)
    return members, det


def test_ensemble_systems_are_named_by_perturbation(store, tmp_path):
    rng = np.random.default_rng(2)
    leads = (1,)
    files = [write_forecast(tmp_path / "def.nc", store, 2, leads, *noisy_members(store, 2, leads, rng)),
             write_forecast(tmp_path / "gauss.nc", store, 2, leads, *noisy_members(store, 2, leads, rng),
                            perturbation="gaussian"),
             write_forecast(tmp_path / "bred.nc", store, 5, leads, noisy_members(store, 5, leads, rng)[0],
                            perturbation="bred"),
             write_forecast(tmp_path / "direct.nc", store, 5, leads, noisy_members(store, 5, leads, rng)[0],
                            mode="direct", perturbation="gaussian")]  # direct mode: the system is "direct"
    cfg = eval_config()
    cfg.evaluation.bootstrap_samples = 0
    out = tmp_path / "eval"
    summary = evaluate(files, store, out, config=cfg, log=QUIET)
    assert summary["systems"] == ["def", "direct", "gaussian", "bred", "deterministic", "persistence", "climatology"]
    _, scores = read_csv(out / "scores.csv")
    for system in ("def", "gaussian", "bred", "direct"):
        assert value(scores, system=system, variable="t", level="500", lead_hours=1, score="ssr") > 0
    rows = [r for r in scores if r["system"] == "persistence" and r["score"] == "rmse" and r["variable"] == "refc"]
    assert [r["count"] for r in rows] == ["2"]  # one per cycle, whatever the number of ensembles
    assert {r["value_low"] for r in scores} == {""} == {r["value_high"] for r in scores}  # bootstrap_samples = 0
    _, skill = read_csv(out / "skill.csv")
    assert {r["system"] for r in skill} == {"def", "gaussian"}  # bred and direct files have no deterministic run
    bad = write_forecast(tmp_path / "breed.nc", store, 8, leads, noisy_members(store, 8, leads, rng)[0],
                         perturbation="breed")
    with pytest.raises(UserError, match=r"breed.nc: perturbation 'breed' is not one of def, gaussian, correlated, "
                                        r"bred, lagged$"):
        evaluate(files + [bad], store, out, config=cfg, log=QUIET)
    cfg.evaluation.confidence = 1.5
    with pytest.raises(UserError, match=r"evaluation.confidence: must be in \(0, 1\)"):
        evaluate(files, store, out, config=cfg, log=QUIET)


@pytest.fixture(scope="module")
def bootstrap_evaluation(store, tmp_path_factory):
    """Five cycles of a noisy ensemble with its deterministic rollout, evaluated (uniform weights, 200 resamples)."""
    root = tmp_path_factory.mktemp("bootstrap")
    rng = np.random.default_rng(7)
    leads = (1, 3)
    files = [write_forecast(root / f"forecast_{i}.nc", store, i, leads, *noisy_members(store, i, leads, rng))
             for i in (2, 5, 8, 11, 14)]
    cfg = eval_config()
    cfg.evaluation.bootstrap_samples, cfg.evaluation.bootstrap_seed = 200, 3
    evaluate(files, store, root / "eval", config=cfg, log=QUIET)
    evaluate(files[2:], store, root / "later", config=cfg, log=QUIET)  # the last three cycles only
    return root, cfg


def test_scores_by_cycle_reproduce_the_tables_and_their_intervals(bootstrap_evaluation):
    root, cfg = bootstrap_evaluation
    out = root / "eval"
    _, scores = read_csv(out / "scores.csv")
    _, skill = read_csv(out / "skill.csv")
    [stats] = read_scores_by_cycle([out])
    assert len(stats.inits) == 5 and stats.members == {"def": 4}
    pooled = bootstrap.pool(stats, np.ones((1, 5)))  # unit weights: the pooled tables
    counts = bootstrap.resample_counts(5, 200, seed=3)
    intervals = bootstrap.score_intervals(stats, counts, 0.9)
    number = lambda text: None if text == "" else float(text)  # noqa: E731
    for row in scores + [dict(r, threshold="", window="") for r in skill]:
        key = (row["system"], row["variable"], number(row["level"]), int(row["lead_hours"]), row["score"],
               number(row["threshold"]), None if row["window"] == "" else int(row["window"]))
        expected = [float(row[c]) for c in ("value", "value_low", "value_high")]
        got = [pooled[key][0], *intervals[key]]
        np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-12, equal_nan=True, err_msg=str(key))
        if row["score"] in ("rmse", "mae", "crps", "crps_standard", "spread", "energy", "brier"):  # monotone in means
            assert expected[1] <= expected[0] <= expected[2], key
            assert expected[1] < expected[2] or row["system"] == "climatology" and row["score"] == "rmse", key
    crps = value(scores, system="def", variable="t", level="850", lead_hours=3, score="crps")
    mae = value(scores, system="deterministic", variable="t", level="850", lead_hours=3, score="mae")
    assert value(skill, system="def", variable="t", level="850", lead_hours=3,
                 score="crps_over_deterministic_mae") == pytest.approx(crps / mae, rel=1e-8)
    # two evaluations: their common cycles (the last three), each score averaged over both inside every resample
    both = read_scores_by_cycle([out, root / "later"])
    assert [len(s.inits) for s in both] == [3, 3]
    key = ("def", "refc", None, 1, "crps", None, None)
    later = float(value(read_csv(root / "later" / "scores.csv")[1], system="def", variable="refc", lead_hours=1,
                        score="crps"))
    assert bootstrap.pool(both, np.ones((1, 3)))[key][0] == pytest.approx(later, rel=1e-8)  # the same three cycles


def test_spread_error_table_adds_up_to_the_scores(bootstrap_evaluation):
    """Uniform weights: pooled over the bins, the spread–error sums give scores.csv's RMSE and spread."""
    root, _ = bootstrap_evaluation
    _, scores = read_csv(root / "eval" / "scores.csv")
    _, rows = read_csv(root / "eval" / "spread_error.csv")
    m = 4
    for var, level in (("t", "500"), ("t", "850"), ("refc", "")):
        for lead in (1, 3):
            at = [r for r in rows if r["system"] == "def" and r["variable"] == var and r["level"] == level
                  and r["lead_hours"] == str(lead)]
            n = np.array([int(r["count"]) for r in at])
            assert n.sum() == 5 * NY * NX and (n > 0).all()
            spread, rmse = (np.array([float(r[c]) for r in at]) for c in ("mean_spread", "rmse"))
            got = functools.partial(value, scores, system="def", variable=var, level=level, lead_hours=lead)
            assert np.sqrt(np.sum(n * rmse ** 2) / n.sum()) == pytest.approx(got(score="rmse"), rel=1e-6)
            assert np.sqrt(np.sum(n * spread ** 2) * m / (m + 1) / n.sum()) == pytest.approx(got(score="spread"),
                                                                                           rel=1e-6)
            lower, upper = (np.array([float(r[c]) for r in at]) for c in ("bin_lower", "bin_upper"))
            np.testing.assert_array_less(lower, upper)
            low, high = (np.array([float(r[c]) for r in at]) for c in ("rmse_low", "rmse_high"))
            assert ((low <= rmse + 1e-9) & (rmse <= high + 1e-9)).all()


def test_brier_decomposition_rows_from_the_reliability_table(bootstrap_evaluation):
    """scores.csv's Murphy (1973) terms of each ensemble event = those of reliability.csv's bins in float64 NumPy
    (n_b points, mean probability p̄_b, observed frequency ō_b per bin): REL = Σ n_b (p̄_b − ō_b)² / N,
    RES = Σ n_b (ō_b − ō)² / N, UNC = ō (1 − ō); counts over grid points (weighting uniform), every cycle."""
    root, _ = bootstrap_evaluation
    _, scores = read_csv(root / "eval" / "scores.csv")
    _, rel_rows = read_csv(root / "eval" / "reliability.csv")
    checked = 0
    for lead in (1, 3):
        for t in (f"{thr:g}" for thr in THRESHOLDS):
            rows = [r for r in rel_rows if r["system"] == "def" and r["threshold"] == t and r["lead_hours"] == str(lead)]
            n_b = np.array([float(r["count"]) for r in rows])
            filled = n_b > 0
            p_b = np.array([float(r["forecast_probability"]) for r in rows])[filled]
            o_b = np.array([float(r["observed_frequency"]) for r in rows])[filled]
            n_b = n_b[filled]
            total, o_all = n_b.sum(), np.sum(n_b * o_b) / n_b.sum()
            expected = {"brier_reliability": np.sum(n_b * (p_b - o_b) ** 2) / total,
                        "brier_resolution": np.sum(n_b * (o_b - o_all) ** 2) / total,
                        "brier_uncertainty": o_all * (1 - o_all)}
            for name, ref in expected.items():
                [row] = [r for r in scores if r["system"] == "def" and r["variable"] == "refc" and r["score"] == name
                         and r["threshold"] == t and r["lead_hours"] == str(lead)]
                assert float(row["value"]) == pytest.approx(ref, rel=1e-6, abs=1e-9), (name, t, lead)
                assert row["weighting"] == "uniform" and row["count"] == "5"
                checked += 1
    assert checked == 12
    assert not any(r["score"].startswith("brier_") and r["system"] != "def" for r in scores)  # ensembles only


def test_bad_scores_by_cycle_are_named(bootstrap_evaluation, tmp_path):
    root, _ = bootstrap_evaluation
    with pytest.raises(UserError, match=r"nowhere/scores_by_cycle.csv: not found"):
        read_scores_by_cycle([tmp_path / "nowhere"])
    text = (root / "eval" / "scores_by_cycle.csv").read_text()
    (tmp_path / "scores_by_cycle.csv").write_text(text.replace(",crps_fair,", ",crps_fiar,", 1))
    with pytest.raises(UserError, match=r"scores_by_cycle.csv: unknown statistic 'crps_fiar'"):
        read_scores_by_cycle([tmp_path])
    (tmp_path / "scores_by_cycle.csv").write_text(text.replace("init_time", "init", 1))
    with pytest.raises(UserError, match=r"scores_by_cycle.csv: missing column 'init_time'"):
        read_scores_by_cycle([tmp_path])


def test_evaluation_channels_score_only_the_named_channels(store, tmp_path):
    """``evaluation.channels``: the rows of the named channels equal those of a full evaluation, no other channel is
    scored, and a name the store does not have is refused with the list of its channels."""
    rng = np.random.default_rng(3)
    members = {v: a + rng.normal(0.0, 0.5, a.shape).astype(np.float32)
               for v, a in perfect_members(store, INITS[0])[0].items()}
    path = write_forecast(tmp_path / "f.nc", store, INITS[0], LEADS, members)
    evaluate([path], store, tmp_path / "all", config=eval_config(), log=QUIET)
    cfg = eval_config()
    cfg.evaluation.channels = ("t850",)
    evaluate([path], store, tmp_path / "t850", config=cfg, log=QUIET)
    _, full = read_csv(tmp_path / "all" / "scores.csv")
    _, some = read_csv(tmp_path / "t850" / "scores.csv")
    assert {(r["variable"], r["level"]) for r in some} == {("t", "850")}
    keys = ("system", "lead_hours", "score", "threshold", "window")
    expected = {tuple(r[k] for k in keys): r["value"] for r in full if (r["variable"], r["level"]) == ("t", "850")}
    assert {tuple(r[k] for k in keys): r["value"] for r in some} == expected
    cfg.evaluation.channels = ("t850", "z500")
    with pytest.raises(UserError, match=r"evaluation.channels: z500 not among the store's state channels \(refc, "
                                        r"t500, t850\)"):
        evaluate([path], store, tmp_path / "bad", config=cfg, log=QUIET)
