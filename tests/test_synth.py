"""def-jax synth: real GRIB2 encoded like NOAA's HRRR f00 files on a sub-grid of the real HRRR grid, and the whole
data path synth → prepare → stats → loader."""

import json
import warnings
from pathlib import Path

import eccodes
import numpy as np
import pytest
import xarray as xr

from data_prep.grib_write import GribEncoder
from data_prep.synth import synth, synth_grid
from def_jax import cli
from def_jax.catalogue import load_catalogue
from def_jax.data import schema
from def_jax.errors import UserError
from def_jax.geo import HRRR_CONUS

REAL_HRRR = Path(__file__).resolve().parents[2] / "shared" / "data" / "grib" / \
    "subset_20201214_hrrr.t00z.wrfsfcf12.grib2"
GRID_KEYS = ("gridType", "shapeOfTheEarth", "LaDInDegrees", "LoVInDegrees", "Latin1InDegrees", "Latin2InDegrees",
             "DxInMetres", "DyInMetres", "scanningMode", "projectionCentreFlag", "resolutionAndComponentFlags",
             "centre", "generatingProcessIdentifier", "significanceOfReferenceTime", "typeOfGeneratingProcess")


def messages(path):
    out = []
    with open(path, "rb") as f:
        while (h := eccodes.codes_grib_new_from_file(f)) is not None:
            out.append({k: eccodes.codes_get(h, k) for k in (*GRID_KEYS, "shortName", "typeOfLevel", "level",
                                                                "units", "Nx", "Ny", "stepRange", "dataDate",
                                                                "dataTime")})
            eccodes.codes_release(h)
    return out


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    files = synth(out, "2024-06-01T00", 3, load_catalogue("hrrr_expanded"), ny=24, nx=32, seed=1, progress=False,
                  log=lambda m: None)
    return out, files


def test_files_named_and_encoded_like_noaa(synth_dir):
    out, files = synth_dir
    names = sorted(str(p.relative_to(out)) for p in files)
    assert names[:2] == ["hrrr.20240601/conus/hrrr.t00z.wrfprsf00.grib2", "hrrr.20240601/conus/hrrr.t00z.wrfsfcf00.grib2"]
    assert len(files) == 6 and json.loads((out / "synth.json").read_text())["seed"] == 1
    real = messages(REAL_HRRR)[0]
    cat = load_catalogue("hrrr_expanded")
    for kind, n_expected in (("wrfprsf", 65), ("wrfsfcf", 13)):
        msgs = messages(out / f"hrrr.20240601/conus/hrrr.t01z.{kind}00.grib2")
        assert len(msgs) == n_expected
        for m in msgs:
            for key in GRID_KEYS:  # the real HRRR grid and product header
                if key not in ("typeOfGeneratingProcess",):
                    assert m[key] == real[key], (key, m[key], real[key])
            assert (m["Nx"], m["Ny"], m["stepRange"], m["dataDate"], m["dataTime"]) == (32, 24, "0", 20240601, 100)
        found = {(m["shortName"], m["typeOfLevel"], float(m["level"])) for m in msgs}
        for var in cat.variables:
            if var.source != kind:
                continue
            for lev in var.levels or [var.level or 0.0]:
                assert (var.short_name, var.type_of_level, float(lev)) in found, (var.name, lev)


def test_grid_is_a_window_of_the_real_hrrr_grid(synth_dir):
    out, _ = synth_dir
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        syn = xr.open_dataset(out / "hrrr.20240601/conus/hrrr.t00z.wrfsfcf00.grib2", engine="cfgrib",
                              backend_kwargs={"filter_by_keys": {"shortName": "2t"}, "indexpath": ""})
        real = xr.open_dataset(REAL_HRRR, engine="cfgrib", backend_kwargs={"indexpath": "",
                                                                           "filter_by_keys": {"stepRange": "0-12"}})
    lat, lon = real["latitude"].values, real["longitude"].values
    iy, ix = np.unravel_index(np.argmin(np.abs(lat - syn["latitude"].values[0, 0]) +
                                        np.abs(lon - syn["longitude"].values[0, 0])), lat.shape)
    np.testing.assert_allclose(syn["latitude"].values, lat[iy:iy + 24, ix:ix + 32], atol=2e-6)  # GRIB µ° rounding
    np.testing.assert_allclose(syn["longitude"].values, lon[iy:iy + 24, ix:ix + 32], atol=2e-6)


def test_synth_is_deterministic(tmp_path, synth_dir):
    out, files = synth_dir
    again = synth(tmp_path, "2024-06-01T00", 3, load_catalogue("hrrr_expanded"), ny=24, nx=32, seed=1,
                  progress=False, log=lambda m: None)
    for a, b in zip(files, again, strict=True):
        assert a.read_bytes() == b.read_bytes()


def test_grid_choices():
    g = synth_grid(64, 64)
    assert (g.ny, g.nx, g.dx) == (64, 64, 3000.0)
    lat, lon = g.latlon()
    assert 34 < lat.mean() < 38 and 260 < lon.mean() < 265  # southern Great Plains
    full = synth_grid(None, None, 30)
    assert (full.ny, full.nx, full.dx) == (36, 60, 90000.0)
    np.testing.assert_allclose(full.latlon()[0][0, 0], HRRR_CONUS.lat_first, atol=1e-9)
    with pytest.raises(UserError, match="go together"):
        synth_grid(64, None)
    with pytest.raises(UserError, match="does not fit"):
        synth_grid(600, 64, 2)


def test_encoder_keeps_full_precision_after_a_constant_field():
    """ecCodes lowers bitsPerValue to what a field needs (0 for a constant one); the encoder must reset it."""
    grid = HRRR_CONUS.subgrid(0, 0, 8, 8)
    code = load_catalogue("hrrr_expanded")["t2m"].grib
    varying = 280.0 + np.linspace(0, 5, 64).reshape(8, 8)
    with GribEncoder(grid) as enc:
        enc.encode(code, 2, np.full((8, 8), 300.0), np.datetime64("2024-06-01T00"))
        h = eccodes.codes_new_from_message(enc.encode(code, 2, varying, np.datetime64("2024-06-01T01")))
        decoded = eccodes.codes_get_values(h)
        eccodes.codes_release(h)
    np.testing.assert_allclose(decoded, varying.ravel(), atol=5 / 2**15)


def test_synth_prepare_stats_loader_end_to_end(tmp_path, capsys):
    """The demo's data path through the command line: 30 hours of 32×32 mini-HRRR."""
    grib, store = tmp_path / "grib", tmp_path / "store.zarr"
    assert cli.main(["synth", f"--out={grib}", "--start=2024-06-01T00", "--hours=30", "--ny=32", "--nx=32"]) == 0
    assert cli.main(["prepare", f"--src={grib}", f"--out={store}", "--workers=2"]) == 0
    assert cli.main(["stats", f"--store={store}", "--train-period=2024-06-01T00:2024-06-01T23"]) == 0
    capsys.readouterr()
    ds = schema.open_store(store)
    assert ds.sizes["time"] == 30 and (ds[schema.STATUS].values == 1).all()
    assert float(ds["refc"].min()) >= -10.0 and float(ds["q"].min()) >= 0
    # CIN ≤ 0 up to the 16-bit GRIB packing: the packed values are min + k·2^E, so the simulator's 0 J/kg (the top of
    # a range down to several hundred J/kg) comes back as the nearest of them, within half a step above 0
    cin = ds["cin"].values
    assert cin.max() <= (cin.max() - cin.min()) / 2**15
    assert float(ds["cape_std"]) > 0 and ds["t_mean"].dims == ("level",)

    from def_jax.demo import event_frequencies  # the demo's table of storm events per period

    periods = {"first": "2024-06-01T00:2024-06-01T17", "rest": "2024-06-01T18:2024-06-02T05",
               "none": "2025-01-01T00:2025-01-01T23"}
    freq = event_frequencies(store, periods, (20.0, 35.0))
    refc = ds["refc"].values
    for name, sl in (("first", slice(0, 18)), ("rest", slice(18, 30))):
        assert freq[name] == {t: float((refc[sl] >= t).mean()) for t in (20.0, 35.0)}
    assert np.isnan(freq["none"][35.0])

    from def_jax.data.pipeline import make_loader
    from def_jax.data.source import WindowSource

    source = WindowSource(store, history=4, lead_steps=1, period="2024-06-01T00:2024-06-01T23")
    batch = next(iter(make_loader(source, batch_size=2, seed=0, crop_shape=(16, 16), shard_index=0, shard_count=1)))
    assert batch["inputs"].shape == (2, 4, 16, 16, 73) and batch["targets"].shape == (2, 1, 16, 16, 73)
    assert batch["forcings"].shape == (2, 5, 16, 16, 3) and batch["statics"].shape == (2, 16, 16, 4)
    assert np.all(np.isfinite(batch["inputs"])) and abs(float(batch["inputs"].mean())) < 1.0
