"""def-jax stats: streaming per-channel statistics equal NumPy on the full arrays."""

import numpy as np
import pytest
from grib_fixtures import small_catalogue, write_hours

from data_prep.prepare import PrepareOptions, prepare
from data_prep.stats import Moments, compute_stats
from def_jax.data import schema
from def_jax.errors import UserError


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("stats")
    write_hours(root / "grib", small_catalogue(), "2024-06-01T00", 30, skip_hours=(9, 20))
    out = root / "store.zarr"
    prepare(PrepareOptions([str(root / "grib")], out, small_catalogue(), progress=False, workers=1),
            log=lambda m: None)
    return out


def reference(ds, name, lo, hi):
    """NumPy float64 on the full arrays: slots lo..hi (inclusive) that are written; pairs both written."""
    x = ds[name].values.astype(np.float64)  # [T, (L,) Y, X]
    ok = ds[schema.STATUS].values == schema.WRITTEN
    idx = np.arange(len(ok))
    sel = ok & (idx >= lo) & (idx <= hi)
    pair = sel[:-1] & sel[1:]
    axes = (0, 2, 3) if x.ndim == 4 else (0, 1, 2)
    d = (x[1:] - x[:-1])[pair]
    return x[sel].mean(axis=axes), x[sel].std(axis=axes), d.mean(axis=axes), d.std(axis=axes)


@pytest.mark.parametrize("block", [1, 4, 24])
def test_stats_equal_numpy(store, block):
    period = "2024-06-01T03:2024-06-02T02"  # slots 3..26: excludes the first and last hours, spans both gaps
    result = compute_stats(store, period, block=block, progress=False, log=lambda m: None)
    ds = schema.open_store(store)
    for var in small_catalogue().variables:
        if var.role == "static":
            v = ds[var.name].values.astype(np.float64)
            np.testing.assert_allclose(result[var.name]["mean"], [v.mean()], rtol=1e-10)
            np.testing.assert_allclose(result[var.name]["std"], [v.std()], rtol=1e-10)
            continue
        mean, std, dmean, dstd = reference(ds, var.name, 3, 26)
        got = result[var.name]
        np.testing.assert_allclose(got["mean"], mean, rtol=1e-5, err_msg=var.name)
        np.testing.assert_allclose(got["std"], std, rtol=1e-5, err_msg=var.name)
        np.testing.assert_allclose(got["diff_mean"], dmean, rtol=1e-5, atol=1e-7 * std.max(), err_msg=var.name)
        np.testing.assert_allclose(got["diff_std"], dstd, rtol=1e-5, err_msg=var.name)
        # written into the store, per level
        reopened = schema.open_store(store)
        np.testing.assert_allclose(reopened[f"{var.name}_mean"].values.ravel(), mean, rtol=1e-5)
        np.testing.assert_allclose(reopened[f"{var.name}_diff_std"].values.ravel(), dstd, rtol=1e-5)
    attrs = schema.open_store(store).attrs
    assert attrs["stats_train_period"] == period and attrs["stats_slots"] == 24 - 2 and attrs["stats_pairs"] == 23 - 4


def test_level_dims_of_stats(store):
    compute_stats(store, "2024-06-01T00:2024-06-02T05", progress=False, log=lambda m: None)
    ds = schema.open_store(store)
    assert ds["t_mean"].dims == ("level",) and ds["t2m_std"].dims == () and ds["orog_mean"].dims == ()


def test_a_plain_open_zarr_reads_the_consolidated_metadata(store):
    """prepare and stats leave consolidated metadata: xr.open_zarr with its defaults opens the store without the
    fallback warning, statistics and attributes included, and agrees with the unconsolidated reading."""
    import warnings

    import xarray as xr

    compute_stats(store, "2024-06-01T00:2024-06-02T05", progress=False, log=lambda m: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(store)
    listed = schema.open_store(store)
    assert set(ds.variables) == set(listed.variables) and "t_mean" in ds
    assert ds.attrs == listed.attrs and ds.attrs["stats_train_period"] == "2024-06-01T00:2024-06-02T05"
    np.testing.assert_array_equal(ds[schema.STATUS].values, listed[schema.STATUS].values)


def test_chan_merge_is_stable_for_large_offsets():
    rng = np.random.default_rng(0)
    x = (1e5 + rng.standard_normal((40, 2, 500))).astype(np.float64)  # surface pressure-like: huge mean, unit std
    m = Moments.empty(2)
    for i in range(40):
        m = m.merge(Moments.of(x[i:i + 1]))
    np.testing.assert_allclose(m.mean, x.transpose(1, 0, 2).reshape(2, -1).mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(m.std, x.transpose(1, 0, 2).reshape(2, -1).std(axis=1), rtol=1e-9)


def test_empty_period_is_a_clear_error(store):
    with pytest.raises(UserError, match="no written time slot in the training period 2025"):
        compute_stats(store, "2025-01-01T00:2025-01-02T00", progress=False, log=lambda m: None)
    with pytest.raises(UserError, match="expected START:END"):
        compute_stats(store, "2024-06-01", progress=False, log=lambda m: None)
