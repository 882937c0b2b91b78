"""prepare --from-xarray: an ERA5/WeatherBench-style lat-lon dataset into the same store schema."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from data_prep.from_xarray import parse_var_map, prepare_from_xarray
from data_prep.grib_read import Region
from def_jax.catalogue import load_catalogue
from def_jax.data import schema
from def_jax.errors import UserError

LEVELS = [50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000]


def era5_like(times) -> xr.Dataset:
    """WeatherBench-style names; latitude north→south like ERA5; pressure levels reversed; one missing time."""
    rng = np.random.default_rng(0)
    lat = np.linspace(87.1875, -87.1875, 32)
    lon = np.arange(64) * 5.625
    nt = len(times)
    level3 = lambda off: (("time", "level", "lat", "lon"),  # noqa: E731
                          (off + rng.standard_normal((nt, 13, 32, 64))).astype(np.float32))
    level2 = lambda off: (("time", "lat", "lon"), (off + rng.standard_normal((nt, 32, 64))).astype(np.float32))  # noqa
    ds = xr.Dataset(
        {"geopotential": level3(5e4), "temperature": level3(250), "specific_humidity": level3(0.005),
         "u_component_of_wind": level3(5), "v_component_of_wind": level3(0), "2m_temperature": level2(280),
         "10m_u_component_of_wind": level2(1), "10m_v_component_of_wind": level2(-1),
         "toa_incident_solar_radiation": level2(1e6), "orography": (("lat", "lon"), rng.random((32, 64)) * 3e3),
         "lsm": (("time", "lat", "lon"), np.broadcast_to(rng.random((32, 64)) > 0.6, (nt, 32, 64)).astype("f4"))},
        coords={"time": times, "level": LEVELS[::-1], "lat": lat, "lon": lon})
    ds["temperature"].attrs["units"] = "K"
    return ds


@pytest.fixture
def dataset(tmp_path):
    times = pd.date_range("2017-01-01", periods=9, freq="6h").delete(4)  # 8 times, one 6-h gap
    ds = era5_like(times)
    path = tmp_path / "era5.nc"
    ds.to_netcdf(path)
    return ds, path


def test_era5_like_netcdf_into_the_store(tmp_path, dataset):
    ds, path = dataset
    out = tmp_path / "era5.zarr"
    summary = prepare_from_xarray(str(path), out, load_catalogue("era5_paper"), dt_hours=6, progress=False,
                                  log=lambda m: None)  # every name found by its ERA5/WeatherBench long name
    assert summary == {"written": 8, "already": 0, "missing": 1, "failed": 0, "slots": 9}
    st = schema.open_store(out)
    assert st.sizes == {"time": 9, "level": 13, "y": 32, "x": 64}
    np.testing.assert_array_equal(st[schema.STATUS].values, [1, 1, 1, 1, 0, 1, 1, 1, 1])
    src = ds.sortby("lat").sel(level=LEVELS)  # south→north, catalogue level order
    np.testing.assert_array_equal(st["t"].values[[0, 1, 2, 3, 5, 6, 7, 8]], src["temperature"].values)
    np.testing.assert_array_equal(st["t2m"].values[8], src["2m_temperature"].values[-1])
    assert np.all(np.isnan(st["t"].values[4]))
    np.testing.assert_array_equal(st["orog"].values, src["orography"].values.astype(np.float32))
    np.testing.assert_array_equal(st["lsm"].values, src["lsm"].values[0])  # time-constant static: first time
    np.testing.assert_array_equal(st["latitude"].values[:, 0], np.sort(ds["lat"].values))
    assert st["crs"].attrs["grid_mapping_name"] == "latitude_longitude" and st.attrs["dt_hours"] == 6
    assert st["t"].attrs["source_variable"] == "temperature" and st["t"].attrs["units"] == "K"
    # rerun: nothing to do
    again = prepare_from_xarray(str(path), out, load_catalogue("era5_paper"), var_map={"orog": "orography"},
                                dt_hours=6, progress=False, log=lambda m: None)
    assert again["written"] == 0 and again["already"] == 8


def test_workers_and_several_files_write_the_same_store(tmp_path, dataset):
    """Two worker processes over blocks of 3 times, from the dataset split into two netCDF files (a glob), give the
    store one process writes from the single file; the statics come from the first file, not concatenated."""
    ds, path = dataset
    for k, times in enumerate((slice(0, 5), slice(5, None))):
        ds.isel(time=times).to_netcdf(tmp_path / f"part{k}.nc")
    one, two = tmp_path / "one.zarr", tmp_path / "two.zarr"
    cat = load_catalogue("era5_paper")
    prepare_from_xarray(str(path), one, cat, dt_hours=6, progress=False, log=lambda m: None)
    summary = prepare_from_xarray(str(tmp_path / "part*.nc"), two, cat, dt_hours=6, block=3, workers=2,
                                  progress=False, log=lambda m: None)
    assert summary == {"written": 8, "already": 0, "missing": 1, "failed": 0, "slots": 9}
    a, b = schema.open_store(one), schema.open_store(two)
    for name in ("z", "t", "q", "u", "v", "t2m", "u10", "v10", "tisr", "orog", "lsm", schema.STATUS):
        np.testing.assert_array_equal(b[name].values, a[name].values, err_msg=name)


def test_region_and_errors(tmp_path, dataset):
    _, path = dataset
    out = tmp_path / "crop.zarr"
    prepare_from_xarray(str(path), out, load_catalogue("era5_paper"), var_map={"orog": "orography"}, dt_hours=6,
                        region=Region.parse("8:24,0:64", 2), progress=False, log=lambda m: None)
    assert schema.open_store(out).sizes["y"] == 8 and schema.open_store(out).sizes["x"] == 32
    partial = tmp_path / "partial.nc"
    xr.open_dataset(path).drop_vars("toa_incident_solar_radiation").to_netcdf(partial)
    with pytest.raises(UserError, match=r"no variable for tisr .*--var-map tisr=NAME"):
        prepare_from_xarray(str(partial), tmp_path / "x.zarr", load_catalogue("era5_paper"), dt_hours=6,
                            progress=False, log=lambda m: None)
    with pytest.raises(UserError, match=r"--var-map orog=orographie: .* has no variable 'orographie'"):
        prepare_from_xarray(str(path), tmp_path / "x.zarr", load_catalogue("era5_paper"),
                            var_map={"orog": "orographie"}, dt_hours=6, progress=False, log=lambda m: None)
    with pytest.raises(UserError, match="not on a 4-hourly axis"):
        prepare_from_xarray(str(path), tmp_path / "y.zarr", load_catalogue("era5_paper"),
                            var_map={"orog": "orography"}, dt_hours=4, progress=False, log=lambda m: None)
    with pytest.raises(UserError, match="expected STORE_NAME=DATASET_NAME"):
        parse_var_map("orog")
