"""def-jax prepare: real GRIB2 files read exactly as cfgrib reads them; errors; parallel, dask and resumable runs."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from grib_fixtures import small_catalogue, write_hours

from data_prep.grib_read import GRID_KEYS, PROVENANCE_KEYS, Region, read_slot
from data_prep.prepare import PrepareOptions, prepare
from data_prep.store_writer import log_path
from def_jax.catalogue import Catalogue, load_catalogue
from def_jax.data import schema
from def_jax.errors import UserError
from def_jax.geo import HRRR_CONUS, LambertConformal

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "grib"
HRRR_FILE = SHARED / "subset_20201214_hrrr.t00z.wrfsfcf12.grib2"
NAM_FILE = SHARED / "nam.t00z.awp21100.tm00.grib2"


def cfgrib(path, **keys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = xr.open_dataset(path, engine="cfgrib", backend_kwargs={"filter_by_keys": keys, "indexpath": ""})
    (name,) = list(ds.data_vars)
    return ds[name]


def user_catalogue(tmp_path, variables) -> Catalogue:
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps({"variables": variables}))
    return load_catalogue(str(path))


def run(tmp_path, sources, catalogue, name="store.zarr", **kw):
    out = tmp_path / name
    summary = prepare(PrepareOptions(sources=[str(s) for s in sources], out=out, catalogue=catalogue,
                                     progress=False, **kw), log=lambda msg: None)
    return out, summary


# --- the real files ---------------------------------------------------------------------------------------------------

APCP = [{"name": "apcp_0_12", "shortName": "tp", "typeOfLevel": "surface", "stepRange": "0-12", "role": "forcing"},
        {"name": "apcp_11_12", "shortName": "tp", "typeOfLevel": "surface", "stepRange": "11-12", "role": "forcing"}]


def test_real_hrrr_file_equals_cfgrib_and_the_hrrr_grid(tmp_path):
    out, summary = run(tmp_path, [HRRR_FILE], user_catalogue(tmp_path, APCP), workers=1)
    assert summary["written"] + summary["already"] == 1
    ds = schema.open_store(out)
    assert ds["time"].values[0] == np.datetime64("2020-12-14T12:00")  # valid time of the f12 file
    for name, step in (("apcp_0_12", "0-12"), ("apcp_11_12", "11-12")):  # both accumulations, none dropped
        ref = cfgrib(HRRR_FILE, stepRange=step)
        np.testing.assert_array_equal(ds[name].values[0], ref.values)
    assert not np.array_equal(ds["apcp_0_12"].values, ds["apcp_11_12"].values)
    ref = cfgrib(HRRR_FILE, stepRange="0-12")
    np.testing.assert_array_equal(ds["latitude"].values, ref["latitude"].values)
    np.testing.assert_array_equal(ds["longitude"].values, ref["longitude"].values)
    # ... which is the real HRRR grid: our Lambert geometry of HRRR_CONUS reproduces it.
    lat, lon = HRRR_CONUS.latlon()
    np.testing.assert_allclose(ds["latitude"].values, lat, atol=1e-9)
    np.testing.assert_allclose(ds["longitude"].values, lon, atol=1e-9)
    crs = ds["crs"].attrs
    assert crs["grid_mapping_name"] == "lambert_conformal_conic" and crs["longitude_of_central_meridian"] == 262.5
    assert ds["apcp_11_12"].attrs["GRIB_stepRange"] == "11-12" and ds["apcp_11_12"].attrs["grid_mapping"] == "crs"
    assert not list(SHARED.glob("*.idx")), "cfgrib wrote an index beside the input"


def test_region_and_stride_crop_exactly(tmp_path):
    out, _ = run(tmp_path, [HRRR_FILE], user_catalogue(tmp_path, APCP[1:]), region=Region.parse("400:528,800:1056", 4))
    ds = schema.open_store(out)
    ref = cfgrib(HRRR_FILE, stepRange="11-12")
    np.testing.assert_array_equal(ds["apcp_11_12"].values[0], ref.values[400:528:4, 800:1056:4])
    np.testing.assert_array_equal(ds["latitude"].values, ref["latitude"].values[400:528:4, 800:1056:4])
    assert ds.sizes["y"] == 32 and ds.sizes["x"] == 64 and ds.attrs["stride"] == 4
    # projection coordinates match the cropped lat/lon
    proj = LambertConformal(38.5, 38.5, 38.5, 262.5)
    lat, lon = proj.inverse(*np.meshgrid(ds["x"].values, ds["y"].values))
    np.testing.assert_allclose(lat, ds["latitude"].values, atol=1e-6)


NAM_VARS = [
    {"name": "z", "shortName": "gh", "typeOfLevel": "isobaricInhPa", "levels": [1000, 850, 500, 250], "units": "gpm"},
    {"name": "t", "shortName": "t", "typeOfLevel": "isobaricInhPa", "levels": [1000, 850, 500, 250]},
    {"name": "u", "shortName": "u", "typeOfLevel": "isobaricInhPa", "levels": [1000, 850, 500, 250]},
    {"name": "v", "shortName": "v", "typeOfLevel": "isobaricInhPa", "levels": [1000, 850, 500, 250]},
    {"name": "t2m", "shortName": "2t", "typeOfLevel": "heightAboveGround", "level": 2},
    {"name": "u10", "shortName": "10u", "typeOfLevel": "heightAboveGround", "level": 10},
    {"name": "sp", "shortName": "sp", "typeOfLevel": "surface"},
    {"name": "cape", "shortName": "cape", "typeOfLevel": "surface", "min": 0},
    {"name": "pwat", "shortName": "pwat", "typeOfLevel": "atmosphereSingleLayer", "role": "forcing"},
    {"name": "orog", "shortName": "orog", "typeOfLevel": "surface", "role": "static"},
]


def test_real_nam_file_equals_cfgrib(tmp_path):
    out, _ = run(tmp_path, [NAM_FILE], user_catalogue(tmp_path, NAM_VARS))
    ds = schema.open_store(out)
    assert ds["time"].values[0] == np.datetime64("2018-09-17T00:00")
    for item in NAM_VARS:
        keys = {"shortName": item["shortName"], "typeOfLevel": item["typeOfLevel"]}
        if "level" in item:
            keys["level"] = item["level"]
        ref = cfgrib(NAM_FILE, **keys)
        got = ds[item["name"]].values
        if "levels" in item:  # catalogue order, whatever cfgrib's (descending) order
            ref = ref.sel(isobaricInhPa=item["levels"])
            assert list(ds[item["name"]].coords["level"].values) == item["levels"]
        np.testing.assert_array_equal(got if item.get("role") == "static" else got[0], ref.values)
    ref = cfgrib(NAM_FILE, shortName="2t")
    np.testing.assert_array_equal(ds["latitude"].values, ref["latitude"].values)
    np.testing.assert_array_equal(ds["longitude"].values, ref["longitude"].values)
    assert ds["u"].attrs["GRIB_uvRelativeToGrid"] == 1  # NCEP winds are grid-relative: recorded
    assert ds["cape"].attrs["valid_min"] == 0


def test_read_slot_equals_cfgrib_fields_attributes_and_grid(tmp_path):
    """One ecCodes pass per file reads what cfgrib reads: every field, the provenance and grid attributes, the
    latitude/longitude (the NAM file packs u and v in one multi-field message, the HRRR file has two accumulations of
    tp at the same step); without ``metadata`` the same fields and nothing else."""
    for path, items in ((NAM_FILE, NAM_VARS), (HRRR_FILE, APCP)):
        catalogue = user_catalogue(tmp_path, items)
        slot = read_slot({None: [path]}, catalogue, Region())
        for var in catalogue.variables:
            ref = cfgrib(path, **var.filter_keys())
            if var.levels is not None:
                ref = ref.sel({var.type_of_level: list(var.levels)})
            np.testing.assert_array_equal(slot.fields[var.name], ref.values.astype(np.float32), err_msg=var.name)
            expected = {k: ref.attrs[k] for k in PROVENANCE_KEYS if k in ref.attrs}
            expected.update({"GRIB_stepRange": var.step_range} if var.step_range else {})
            assert slot.provenance[var.name] == expected, var.name
        first = cfgrib(path, **catalogue.variables[0].filter_keys())
        assert slot.grid_attrs == {k: first.attrs[k] for k in GRID_KEYS if k in first.attrs}
        np.testing.assert_array_equal(slot.latitude, first["latitude"].values)
        np.testing.assert_array_equal(slot.longitude, first["longitude"].values)
        assert slot.valid_time == first["valid_time"].values
        bare = read_slot({None: [path]}, catalogue, Region(), metadata=False)
        assert bare.fields.keys() == slot.fields.keys() and bare.latitude is None and bare.provenance is None
        for name, values in slot.fields.items():
            np.testing.assert_array_equal(bare.fields[name], values)


def test_messages_that_the_catalogue_does_not_tell_apart_are_an_error(tmp_path):
    catalogue = user_catalogue(tmp_path, [{"name": "apcp", "shortName": "tp", "typeOfLevel": "surface"}])
    with pytest.raises(UserError, match=r"subset_20201214.*apcp \(shortName tp on surface\) has several messages; "
                                        r"give the catalogue entry a stepRange"):
        read_slot({None: [HRRR_FILE]}, catalogue, Region())


def test_absent_variable_names_variable_level_and_file(tmp_path):
    cat = user_catalogue(tmp_path, [{"name": "q", "shortName": "q", "typeOfLevel": "isobaricInhPa",
                                     "levels": [500]}])
    with pytest.raises(UserError, match=r"q \(shortName q on isobaricInhPa\) not found in .*nam\.t00z"):
        run(tmp_path, [NAM_FILE], cat)
    cat = user_catalogue(tmp_path, [{"name": "t", "shortName": "t", "typeOfLevel": "isobaricInhPa",
                                     "levels": [500, 975]}])
    with pytest.raises(UserError, match=r"nam\.t00z.*t \(shortName t on isobaricInhPa 975\) not found"):
        run(tmp_path, [NAM_FILE], cat, name="b.zarr")


# --- many hours ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hours(tmp_path_factory):
    root = tmp_path_factory.mktemp("grib")
    truth = write_hours(root, small_catalogue(), "2024-06-01T00", 12, skip_hours=(7,))
    return root, truth


def store_arrays(out):
    ds = schema.open_store(out)
    return {k: ds[k].values for k in ds.data_vars if k != "crs"}


def test_hours_values_and_missing_slots(tmp_path, hours):
    root, truth = hours
    out, summary = run(tmp_path, [root], small_catalogue(), workers=1)
    assert summary == {"written": 10, "already": 1, "failed": 0, "missing": 1, "slots": 12}
    ds = schema.open_store(out)
    np.testing.assert_array_equal(ds[schema.STATUS].values, [1] * 7 + [0] + [1] * 4)
    assert np.all(np.isnan(ds["t2m"].values[7]))  # a missing hour is recorded, never filled
    for (name, level, hour), values in list(truth.items())[::7]:
        var = ds[name]
        got = var.values if "time" not in var.dims else var.values[hour]
        if "level" in var.dims:
            got = got[list(var["level"].values).index(level)]
        np.testing.assert_allclose(got, values, atol=2e-3 * max(1.0, np.abs(values).max()))  # 16-bit packing
    # the same bytes cfgrib decodes, exactly
    sfc = sorted(root.rglob("hrrr.t03z.wrfsfcf00.grib2"))[0]
    np.testing.assert_array_equal(ds["cape"].values[3], cfgrib(sfc, shortName="cape", typeOfLevel="surface").values)


def test_parallel_workers_give_the_same_store(tmp_path, hours):
    root, _ = hours
    a, _ = run(tmp_path, [root], small_catalogue(), name="a.zarr", workers=1)
    b, _ = run(tmp_path, [root], small_catalogue(), name="b.zarr", workers=2)
    for name, values in store_arrays(a).items():
        np.testing.assert_array_equal(store_arrays(b)[name], values, err_msg=name)


def test_dask_distributed_cluster(tmp_path, hours):
    from distributed import LocalCluster

    root, _ = hours
    a, _ = run(tmp_path, [root], small_catalogue(), name="a.zarr", workers=1)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        b, summary = run(tmp_path, [root], small_catalogue(), name="b.zarr", scheduler=cluster.scheduler_address)
    assert summary["written"] == 10
    for name, values in store_arrays(a).items():
        np.testing.assert_array_equal(store_arrays(b)[name], values, err_msg=name)


def test_truncated_file_fails_naming_it_or_is_skipped(tmp_path, hours):
    root, _ = hours
    bad_root = tmp_path / "bad"
    for src in root.rglob("*.grib2"):
        dst = bad_root / src.relative_to(root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
    bad = sorted(bad_root.rglob("hrrr.t05z.wrfprsf00.grib2"))[0]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(UserError, match=r"hrrr\.t05z\.wrfprsf00\.grib2"):
        run(tmp_path, [bad_root], small_catalogue(), name="fail.zarr", workers=1)
    out, summary = run(tmp_path, [bad_root], small_catalogue(), name="skip.zarr", workers=1, on_error="skip")
    assert summary["failed"] == 1 and summary["written"] + summary["already"] == 10
    status = schema.open_store(out)[schema.STATUS].values
    assert status[5] == schema.FAILED and status[7] == schema.MISSING and (status == schema.WRITTEN).sum() == 10
    log = [json.loads(line) for line in log_path(out).read_text().splitlines()]
    assert any(r["status"] == "failed" and "t05z.wrfprsf00" in r["error"] for r in log)


def test_rerun_completes_and_checks_compatibility(tmp_path, hours):
    root, _ = hours
    out, _ = run(tmp_path, [root], small_catalogue(), workers=1)
    again = prepare(PrepareOptions([str(root)], out, small_catalogue(), progress=False), log=lambda m: None)
    assert again["written"] == 0 and again["already"] == 11
    with pytest.raises(UserError, match="differs from the requested"):
        run(tmp_path, [root], load_catalogue("hrrr_expanded", (500.0,)), workers=1)
    with pytest.raises(UserError, match="region"):
        run(tmp_path, [root], small_catalogue(), region=Region.parse("0:6,0:8"))


def test_killed_prepare_resumes_to_an_identical_store(tmp_path):
    """SIGKILL mid-run, rerun: the store completes, equal to an uninterrupted run, and no slot that looked written
    at the kill differs from the final data (no half-written slot counted as valid)."""
    root = tmp_path / "grib"
    write_hours(root, small_catalogue(), "2024-06-01T00", 40, shape=(24, 32))
    cat = tmp_path / "cat.json"
    cat.write_text(small_catalogue().to_json())
    cmd = [str(Path(sys.executable).parent / "def-jax"), "prepare", f"--src={root}", f"--catalogue={cat}",
           "--workers=1"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    killed = tmp_path / "killed.zarr"
    proc = subprocess.Popen(cmd + [f"--out={killed}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    status = None
    while time.time() < deadline:
        time.sleep(0.2)
        if (killed / schema.STATUS).exists():
            status = np.asarray(zarr.open_group(killed, mode="r")[schema.STATUS][:])
            if status.sum() >= 8:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert status is not None and 8 <= status.sum() < 40, f"not killed mid-run: {status}"
    at_kill = store_arrays(killed)
    written_at_kill = at_kill[schema.STATUS] == 1
    rerun = subprocess.run(cmd + [f"--out={killed}"], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    n_done = int(written_at_kill.sum())
    assert f"{n_done} already written, {40 - n_done} to write" in rerun.stdout, rerun.stdout
    fresh, _ = run(tmp_path, [root], load_catalogue(str(cat)), name="fresh.zarr", workers=1)
    final, reference = store_arrays(killed), store_arrays(fresh)
    for name, values in reference.items():
        np.testing.assert_array_equal(final[name], values, err_msg=name)
        if name != schema.STATUS and values.ndim and values.shape[0] == 40:
            np.testing.assert_array_equal(at_kill[name][written_at_kill], values[written_at_kill], err_msg=name)


def test_cli_errors_are_one_line(tmp_path, capsys):
    from def_jax import cli

    code = cli.main(["prepare", f"--src={tmp_path}/nothing*.grib2", f"--out={tmp_path}/x.zarr"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "matches no GRIB file" in err
    code = cli.main(["prepare", f"--src={NAM_FILE}", f"--out={tmp_path}/x.zarr", "--region=a:b"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--region 'a:b'" in err
