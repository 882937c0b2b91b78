"""def-jax synth --world=held-suarez: the dinosaur Held–Suarez world → netCDF → prepare --from-xarray → store.

At T21 with 6 σ levels, 1 day of spin-up and 2 saved days, so the whole file runs in seconds; the physical numbers of a
default-resolution run are in docs/DATA.md."""

import sys

import numpy as np
import pytest
import xarray as xr

from data_prep import heldsuarez
from def_jax import cli
from def_jax.data import schema
from def_jax.errors import UserError

LEVELS = (250.0, 500.0, 850.0)
TINY = dict(days=2, spinup_days=1, truncation="T21", sigma_levels=6, pressure_levels=LEVELS, progress=False,
            log=lambda message: None)
VARIABLES = ("u_component_of_wind", "v_component_of_wind", "temperature", "geopotential", "surface_pressure")


def run_cli(capsys, *args):
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """Three tiny runs: seed 1 twice, seed 2 once (the model is compiled once and reused)."""
    root = tmp_path_factory.mktemp("held_suarez")
    paths = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        paths[name] = root / f"{name}.nc"
        heldsuarez.synth_held_suarez(paths[name], seed=seed, **TINY)
    return paths


def test_the_world_is_written_in_era5_names_and_ingested_by_prepare(capsys, tmp_path, worlds):
    ds = xr.open_dataset(worlds["a"])
    assert sorted(ds.data_vars) == sorted(VARIABLES)
    assert ds["temperature"].dims == ("time", "level", "latitude", "longitude")
    assert ds["surface_pressure"].dims == ("time", "latitude", "longitude")
    assert ds.sizes == {"time": 8, "level": 3, "latitude": 32, "longitude": 64}
    np.testing.assert_allclose(ds["latitude"], -87.1875 + 5.625 * np.arange(32))
    np.testing.assert_allclose(ds["longitude"], 5.625 * np.arange(64))
    np.testing.assert_array_equal(ds["level"], LEVELS)
    assert ds["geopotential"].attrs["units"] == "m2 s-2" and ds["surface_pressure"].attrs["units"] == "Pa"
    assert ds.attrs["seed"] == 1 and ds.attrs["truncation"] == "T21" and ds.attrs["spinup_days"] == 1
    assert "Held" in ds.attrs["references"] and np.isfinite(ds.attrs["sanity_jet_u_ms"])
    assert (ds["time"].values[1] - ds["time"].values[0]) == np.timedelta64(6, "h")
    ds.close()
    assert not list(worlds["a"].parent.glob(".*tmp*"))  # written atomically: no temporary left behind

    store = tmp_path / "hs.zarr"
    catalogue = heldsuarez.catalogue_path(worlds["a"])
    code, _, err = run_cli(capsys, "prepare", f"--from-xarray={worlds['a']}", f"--catalogue={catalogue}",
                           f"--out={store}", "--dt-hours=6", "--workers=1")
    assert code == 0, err
    st = schema.open_store(store)
    assert st.sizes == {"time": 8, "level": 3, "y": 32, "x": 64}
    lat = st["latitude"].values[:, 0]
    assert np.all(np.diff(lat) > 0) and lat[0] == pytest.approx(-87.1875)
    values = {name: st[name].values for name in ("z", "t", "u", "v", "sp")}
    assert all(np.isfinite(x).all() for x in values.values())
    assert 150 < values["t"].min() and values["t"].max() < 350
    assert 0.9e5 < values["sp"].min() and values["sp"].max() < 1.1e5
    assert np.abs(values["u"]).max() < 100 and np.abs(values["v"]).max() < 100
    # the cells' areas on the sphere: cos φ, mean 1 (a float64 reference), picked by default on a lat-lon grid
    from def_jax.data.store import StoreReader

    w = StoreReader(store).area_weights()
    expected = np.broadcast_to(np.cos(np.radians(lat))[:, None], (32, 64))
    np.testing.assert_allclose(w, expected / expected.mean(), rtol=1e-6)
    with pytest.raises(UserError, match="map_factor needs a Lambert conformal grid"):
        StoreReader(store).area_weights("map_factor")
    z500 = values["z"][:, 1] / 9.80665  # geopotential height of 500 hPa, m
    assert 4500 < z500.min() and z500.max() < 6500
    assert np.all(values["z"][:, 0] > values["z"][:, 1]) and np.all(values["z"][:, 1] > values["z"][:, 2])


def test_same_seed_same_values_other_seed_other_values(worlds):
    a, b, c = (xr.load_dataset(worlds[k]) for k in "abc")
    for name in VARIABLES:
        np.testing.assert_array_equal(a[name].values, b[name].values)
    assert not np.array_equal(a["surface_pressure"].values, c["surface_pressure"].values)
    assert not np.array_equal(a["temperature"].values, c["temperature"].values)


def test_diagnostics_are_pure_numpy():
    lat = heldsuarez.LATITUDES
    u = np.zeros((2, 3, 32, 64))
    u[:, 0, 25] = 31.0  # northern jet at the top level
    u[:, 1, 6] = 22.0
    jets = heldsuarez.jet_diagnostics(u, LEVELS)
    assert jets["jet_u_ms"] == 31.0 and jets["jet_latitude"] == lat[25] and jets["jet_pressure_hpa"] == 250.0
    assert jets["jet_south_u_ms"] == 22.0 and jets["jet_south_latitude"] == lat[6]
    grow = heldsuarez.growth([1e-3, 2e-3, 4e-3], hours_between=24)
    assert grow["twin_growth_factor"] == pytest.approx(4.0) and grow["twin_doubling_days"] == pytest.approx(1.0)


def test_cli_rejects_flags_of_the_other_world(capsys, tmp_path):
    code, out, err = run_cli(capsys, "synth", "--world=held-suarez", "--hours=3", f"--out={tmp_path / 'x.nc'}")
    assert code == 2 and out == "" and err.strip().count("\n") == 0
    assert "--hours: mini-HRRR flag(s), not used by --world=held-suarez" in err
    code, _, err = run_cli(capsys, "synth", "--days=3", f"--out={tmp_path}")
    assert code == 2 and "--days: held-suarez flag(s); add --world=held-suarez" in err
    assert not list(tmp_path.iterdir())


def test_cli_names_the_extra_when_dinosaur_is_missing(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "dinosaur", None)  # import dinosaur now fails as if it were not installed
    monkeypatch.delitem(sys.modules, "data_prep.heldsuarez", raising=False)
    code, _, err = run_cli(capsys, "synth", "--world=held-suarez", f"--out={tmp_path / 'x.nc'}")
    assert code == 2 and err.strip().count("\n") == 0
    assert "pip install -e '.[worlds]'" in err
