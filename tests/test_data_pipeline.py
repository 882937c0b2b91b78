"""The input pipeline (windows, normalization, Grain source and loader, bench) on a small store per docs/DATA.md."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from store_fixtures import TEST, TRAIN, VAL, manual_window, write_store

from configs import presets
from def_jax.bench.loader import format_table, run_loader_bench
from def_jax.catalogue import load_catalogue
from def_jax.data import normalization as norm
from def_jax.data import windows
from def_jax.data.pipeline import loader_from_config, make_loader, source_from_config, split_window_counts
from def_jax.data.schema import open_store, parse_period
from def_jax.data.source import WindowSource
from def_jax.errors import UserError

HISTORY, LEAD = 2, 1
PERIODS = {"train": TRAIN, "val": VAL, "test": TEST}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("store") / "small.zarr")


@pytest.fixture(scope="module")
def train(store):
    return WindowSource(store, history=HISTORY, lead_steps=LEAD, period=TRAIN, split="train")


def _arrays_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# --- windows -------------------------------------------------------------------------------------------------------


def _brute_force(times, status, length, period=None, stride=1):
    out = []
    for i in range(len(times)):
        idx = [i + j * stride for j in range(length)]
        if idx[-1] >= len(times):
            break
        ok = all(status[t] == 1 for t in idx)
        ok &= all(times[b] - times[a] == np.timedelta64(stride, "h") for a, b in zip(idx, idx[1:]))
        if period is not None:
            ok &= all(period[0] <= times[t] <= period[1] for t in idx)
        out.append(i) if ok else None
    return out


def test_windows_exclude_gaps_failed_slots_and_irregular_steps():
    times = np.datetime64("2024-01-01T00", "ns") + np.arange(30) * np.timedelta64(1, "h")
    times[20:] += np.timedelta64(3, "h")  # a hole in the axis between slots 19 and 20
    status = np.ones(30, np.int8)
    status[5], status[12] = 0, 2
    period = parse_period("2024-01-01T02:2024-01-02T04")
    for length, stride in ((1, 1), (3, 1), (5, 1), (3, 2)):
        got = windows.valid_window_starts(times, status, length, stride=stride, dt=np.timedelta64(1, "h"))
        assert got.tolist() == _brute_force(times, status, length, stride=stride)
        got = windows.valid_window_starts(times, status, length, period=period, stride=stride)
        assert got.tolist() == _brute_force(times, status, length, period, stride)
    starts = windows.valid_window_starts(times, status, 3)
    assert 3 not in starts and 5 not in starts and 6 in starts and 17 in starts
    assert 18 not in starts  # 18, 19, 20 spans the hole


def test_split_windows_have_no_leakage_and_skip_gaps(store):
    ds = open_store(store)
    times, status = ds["time"].values, ds["time_status"].values
    splits = windows.split_windows(times, status, PERIODS, history=HISTORY, lead_steps=LEAD)
    assert windows.window_counts(splits) == {"train": 19, "val": 10, "test": 19}
    periods = {k: parse_period(v) for k, v in PERIODS.items()}
    for name, starts in splits.items():
        for i in starts:
            slot_times = times[i:i + HISTORY + LEAD]
            for other, (lo, hi) in periods.items():
                inside = (slot_times >= lo) & (slot_times <= hi)
                assert inside.all() if other == name else not inside.any(), (name, other, i)
            assert not {10, 40} & set(range(i, i + HISTORY + LEAD))  # missing and failed slots


def test_overlapping_and_empty_splits_are_user_errors(store):
    ds = open_store(store)
    times, status = ds["time"].values, ds["time_status"].values
    with pytest.raises(UserError, match="data.train_period .* overlaps data.val_period"):
        windows.split_windows(times, status, {"train": TRAIN, "val": "2024-06-01T20:2024-06-02T05"}, history=1)
    with pytest.raises(UserError, match=r"split 'val' \(period 2024-06-01T09:2024-06-01T12\) has no valid window: "
                                        r"a sample needs 3 consecutive"):
        windows.split_windows(times, status, {"val": "2024-06-01T09:2024-06-01T12"}, history=2)
    with pytest.raises(UserError, match=r"split 'test' \(period 2024-06-02T12:2024-06-02T13\) has no valid window"):
        WindowSource(store, history=2, period="2024-06-02T12:2024-06-02T13", split="test")


# --- samples ---------------------------------------------------------------------------------------------------------


def test_sample_shapes_dtypes_and_channel_order(train):
    assert train.state_channels == ("t500", "t850", "cape")
    assert train.forcing_channels == ("pwat",)
    assert train.static_channels == ("orog", "latitude", "longitude")
    s = train[5]
    shapes = {k: v.shape for k, v in s.items()}
    assert shapes == {"inputs": (2, 12, 16, 3), "targets": (1, 12, 16, 3), "forcings": (3, 12, 16, 1),
                      "time_features": (3, 4), "statics": (12, 16, 3), "time_index": (), "crop_offset": (2,)}
    assert all(s[k].dtype == np.float32 for k in ("inputs", "targets", "forcings", "time_features", "statics"))
    assert s["time_index"].dtype == np.int64 and int(s["time_index"]) == train.starts[5]


def test_values_equal_manual_reads_normalized_by_hand(store, train):
    j = 8  # window starting after the missing slot 10
    i = int(train.starts[j])
    assert i == 11
    s = train[j]
    m = manual_window(store, i, HISTORY + LEAD)
    ds = m["ds"]
    mean = np.array([*ds["t_mean"].sel(level=[500.0, 850.0]).values, ds["cape_mean"].values])
    std = np.array([*ds["t_std"].sel(level=[500.0, 850.0]).values, ds["cape_std"].values])
    expected = (m["states"] - mean) / std  # [T, H, W, 3]
    np.testing.assert_allclose(s["inputs"], expected[:HISTORY], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s["targets"], expected[HISTORY:], rtol=1e-5, atol=1e-5)
    pwat = (m["forcings"] - ds["pwat_mean"].values) / ds["pwat_std"].values
    np.testing.assert_allclose(s["forcings"], pwat, rtol=1e-5, atol=1e-5)
    for c, name in enumerate(("orog", "latitude", "longitude")):
        v = ds[name].values.astype(np.float64)
        np.testing.assert_allclose(s["statics"][..., c], (v - v.mean()) / v.std(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s["time_features"], norm.time_features(ds["time"].values[i:i + 3]))


def test_levels_are_looked_up_by_value(tmp_path, train):
    flipped = write_store(tmp_path / "flipped.zarr", level_order=(850.0, 500.0))
    other = WindowSource(flipped, history=HISTORY, lead_steps=LEAD, period=TRAIN, split="train")
    assert other.state_channels == train.state_channels
    np.testing.assert_allclose(other.state_stats.mean, train.state_stats.mean)
    assert _arrays_equal(other[3], train[3])


def test_per_sample_normalization(store):
    src = WindowSource(store, history=HISTORY, lead_steps=LEAD, period=VAL, split="val", normalization="per_sample")
    s = src[2]
    fields = np.concatenate([s["inputs"], s["targets"]])  # [T, H, W, C]
    np.testing.assert_allclose(fields.mean(axis=(1, 2)), 0.0, atol=1e-4)  # float32: fields ~280 K, std ~1 K
    np.testing.assert_allclose(fields.std(axis=(1, 2)), 1.0, atol=1e-4)
    np.testing.assert_allclose(s["forcings"].std(axis=(1, 2)), 1.0, atol=1e-4)
    m = manual_window(store, int(s["time_index"]), HISTORY + LEAD)
    physical = s["inputs"] * s["inputs_std"][:, None, None] + s["inputs_mean"][:, None, None]
    np.testing.assert_allclose(physical, m["states"][:HISTORY], rtol=1e-5)
    np.testing.assert_allclose(s["targets_mean"], m["states"][HISTORY:].mean(axis=(1, 2)), rtol=1e-5)
    constant = np.full((1, 4, 5, 2), 7.0, np.float32)
    xn, mean, std = norm.spatial_standardize(constant)
    assert np.all(xn == 0) and np.all(std == norm.EPS)


def test_denormalize_inverts_normalize(train):
    x = np.random.default_rng(0).normal(280.0, 30.0, (2, 5, 6, 3)).astype(np.float32)
    stats = train.state_stats
    np.testing.assert_allclose(norm.denormalize(norm.normalize(x, stats), stats), x, rtol=1e-6)
    xj = jnp.asarray(x)
    back = norm.denormalize(norm.normalize(xj, stats, xp=jnp), stats, xp=jnp)
    assert isinstance(back, type(xj)) and back.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(back), x, rtol=1e-6)


def test_constraints_clip_to_catalogue_bounds():
    cat = load_catalogue("hrrr_expanded")
    channels = ["q500", "cape", "cin", "refc", "u10", "t2m"]
    x = np.array([[-1e-4, -5.0, 12.0, -30.0, -7.0, -1.0], [2e-3, 800.0, -40.0, 35.0, 9.0, 290.0]], np.float32)
    y = norm.apply_constraints(x, channels, cat)
    np.testing.assert_array_equal(y[0], [0.0, 0.0, 0.0, -10.0, -7.0, 0.0])
    np.testing.assert_array_equal(y[1], x[1])
    assert y.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(norm.apply_constraints(jnp.asarray(x), channels, cat, xp=jnp)), y)
    with pytest.raises(UserError, match="not in catalogue"):
        norm.apply_constraints(x, ["q500", "bogus", "cin", "refc", "u10", "t2m"], cat)


def test_time_encodings_at_known_times():
    times = np.array(["2024-06-01T06", "2024-01-01T00", "2023-12-31T18", "2024-06-01T12:30"], "datetime64[ns]")
    f = norm.time_features(times)
    assert f.shape == (4, 4) and f.dtype == np.float32
    np.testing.assert_allclose(f[0, :2], [1.0, 0.0], atol=1e-6)  # 06 UTC: a quarter day
    doy = 31 + 29 + 31 + 30 + 31 + 0.25  # 2024 is a leap year; 1 June 06 UTC
    np.testing.assert_allclose(f[0, 2:], [np.sin(2 * np.pi * doy / 365.25), np.cos(2 * np.pi * doy / 365.25)],
                               atol=1e-6)
    np.testing.assert_allclose(f[1], [0.0, 1.0, 0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(f[2, :2], [-1.0, 0.0], atol=1e-6)  # 18 UTC
    np.testing.assert_allclose(f[2, 2:], [np.sin(2 * np.pi * 364.75 / 365.25), np.cos(2 * np.pi * 364.75 / 365.25)],
                               atol=1e-6)
    np.testing.assert_allclose(f[3, :2], [np.sin(2 * np.pi * 12.5 / 24), np.cos(2 * np.pi * 12.5 / 24)], atol=1e-6)


def test_statics_selection(store):
    src = WindowSource(store, history=1, period=TRAIN, statics=("orography", "land_mask", "latitude"))
    assert src.static_channels == ("orog", "latitude")  # land_mask: not in this catalogue, taken where available
    with pytest.raises(UserError, match="data.statics: 'slope' is neither a static variable"):
        WindowSource(store, history=1, period=TRAIN, statics=("slope",))


def test_missing_statistics_is_a_user_error(tmp_path):
    path = write_store(tmp_path / "nostats.zarr", stats=False)
    with pytest.raises(UserError, match=r"nostats.zarr: no normalization statistics \(t_mean, t_std, cape_mean and "
                                        r"3 more missing\); run `def-jax stats` first"):
        WindowSource(path, history=1, period=TRAIN, split="train")
    assert WindowSource(path, history=1, period=TRAIN, normalization="per_sample")[0]["inputs"].shape[0] == 1
    with pytest.raises(UserError, match="data.normalization: expected one of global, per_sample; got 'minmax'"):
        WindowSource(path, history=1, period=TRAIN, normalization="minmax")


# --- loader ----------------------------------------------------------------------------------------------------------


def _loader(source, **kw):
    kw = {"batch_size": 4, "seed": 7, "shard_index": 0, "shard_count": 1, **kw}
    return make_loader(source, **kw)


def _windows_of(loader):
    return [int(i) for b in loader for i in b["time_index"]]


def test_crops_share_offsets_across_fields_and_are_seeded(train):
    loader = _loader(train, crop_shape=(6, 8), num_epochs=1, drop_remainder=False)
    batches = list(loader)
    offsets = np.concatenate([b["crop_offset"] for b in batches])  # [N, 2]
    assert len(offsets) == len(train) and len({tuple(o) for o in offsets}) > len(train) // 2
    assert offsets[:, 0].max() <= 12 - 6 and offsets[:, 1].max() <= 16 - 8
    b = batches[1]
    for n in range(len(b["time_index"])):
        full = train[int(np.flatnonzero(train.starts == b["time_index"][n])[0])]
        y0, x0 = b["crop_offset"][n]
        for key in ("inputs", "targets", "forcings"):
            np.testing.assert_array_equal(b[key][n], full[key][..., y0:y0 + 6, x0:x0 + 8, :])
        np.testing.assert_array_equal(b["statics"][n], full["statics"][y0:y0 + 6, x0:x0 + 8])
        assert b["inputs"].shape[1:] == (2, 6, 8, 3)
    again = np.concatenate([b["crop_offset"] for b in _loader(train, crop_shape=(6, 8), num_epochs=1,
                                                              drop_remainder=False)])
    np.testing.assert_array_equal(again, offsets)
    other = np.concatenate([b["crop_offset"] for b in _loader(train, crop_shape=(6, 8), num_epochs=1, seed=8,
                                                              drop_remainder=False)])
    assert not np.array_equal(other, offsets)
    with pytest.raises(UserError, match=r"data.crop_shape \(13, 8\) does not fit in the grid \(12, 16\)"):
        _loader(train, crop_shape=(13, 8))


def test_shuffling_is_deterministic_and_epochs_cover_all_windows(train):
    order = _windows_of(_loader(train, num_epochs=2, drop_remainder=False))
    assert order == _windows_of(_loader(train, num_epochs=2, drop_remainder=False))
    assert order != _windows_of(_loader(train, num_epochs=2, seed=8, drop_remainder=False))
    n = len(train)
    assert sorted(order[:n]) == sorted(order[n:]) == train.starts.tolist() and order[:n] != order[n:]
    assert _windows_of(_loader(train, shuffle=False, num_epochs=1, drop_remainder=False)) == train.starts.tolist()
    batches = list(_loader(train, num_epochs=1, drop_remainder=True))
    assert len(batches) == n // 4 and all(b["inputs"].shape[0] == 4 for b in batches)


def test_two_shards_are_disjoint_and_cover(store):
    val = WindowSource(store, history=HISTORY, lead_steps=LEAD, period=VAL, split="val")
    shards = [_windows_of(_loader(val, batch_size=1, num_epochs=1, shard_index=k, shard_count=2)) for k in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(val) // 2
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == val.starts.tolist()
    assert sorted(shards[0] + shards[1]) == sorted(_windows_of(_loader(val, batch_size=1, num_epochs=1)))


def test_iterator_state_resumes_exactly(train):
    loader = _loader(train, crop_shape=(6, 8), batch_size=3)
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(4)]  # crosses the epoch boundary (19 windows, batches of 3)
    resumed = _loader(train, crop_shape=(6, 8), batch_size=3).iterator(state)
    for want in expected:
        assert _arrays_equal(next(resumed), want)
    fresh = iter(_loader(train, crop_shape=(6, 8), batch_size=3))
    fresh.set_state(state)
    assert _arrays_equal(next(fresh), expected[0])
    with pytest.raises(ValueError, match="DataSource in checkpoint does not match"):
        _loader(train, crop_shape=(4, 4), batch_size=3).iterator(state)  # another crop: refuse, don't drift


def test_worker_processes_give_the_same_batches(train):
    kw = dict(crop_shape=(6, 8), batch_size=3, num_epochs=1)
    in_process = list(_loader(train, **kw))
    with iter(_loader(train, worker_count=2, **kw)) as it:
        in_workers = list(it)
    assert len(in_workers) == len(in_process) == len(train) // 3
    assert all(_arrays_equal(a, b) for a, b in zip(in_workers, in_process))
    with iter(_loader(train, worker_count=2, **kw)) as it:
        next(it), next(it)
        state = it.get_state()
    with _loader(train, worker_count=2, **kw).iterator(state) as resumed:
        assert _arrays_equal(next(resumed), in_process[2])
    # Grain refuses a position saved with another worker count; the user is told which setting resumes it.
    with pytest.raises(UserError, match=r"data\.workers=2, this run has data\.workers=0: resume with "
                                        r"--config\.data\.workers=2"):
        _loader(train, **kw).iterator(state)


def test_in_memory_periods_give_the_store_reads(store, train, monkeypatch):
    """data.in_memory: the period is read once per process, and every sample (crops, per-sample normalization, a
    worker process's copy, the stride of a longer step) equals the one read from the store; too large a period is
    refused, naming the field."""
    import pickle

    from def_jax.data import source as source_module

    cached = WindowSource(store, history=HISTORY, lead_steps=LEAD, period=TRAIN, split="train", in_memory=True)
    assert cached.memory_bytes() == (cached.span().stop - cached.span().start) * 12 * 16 * 4 * (
        len(cached.state_channels) + len(cached.forcing_channels))
    region = (2, 3, 6, 8)
    for j in range(len(train)):
        assert _arrays_equal(cached.read(j), train.read(j)) and _arrays_equal(cached.read(j, region),
                                                                                train.read(j, region))
    memory = cached._memory
    assert _arrays_equal(cached.read(0), train.read(0))  # read() normalized its own copy: the memory is unchanged
    assert cached._memory is memory  # read once in this process
    assert pickle.loads(pickle.dumps(cached))._memory is None  # a Grain worker reads the period itself
    kw = dict(crop_shape=(6, 8), batch_size=3, num_epochs=1)
    with iter(_loader(cached, worker_count=1, **kw)) as it:
        in_worker = list(it)
    in_process = list(_loader(train, **kw))
    assert len(in_worker) == len(in_process) == len(train) // 3
    assert all(_arrays_equal(a, b) for a, b in zip(in_worker, in_process))
    for extra in (dict(normalization="per_sample"), dict(dt_hours=2)):
        plain = WindowSource(store, history=HISTORY, lead_steps=LEAD, period=TRAIN, split="train", **extra)
        memory = WindowSource(store, history=HISTORY, lead_steps=LEAD, period=TRAIN, split="train", in_memory=True,
                              **extra)
        assert len(memory) == len(plain) > 0
        assert all(_arrays_equal(memory.read(j), plain.read(j)) for j in range(len(plain)))
    monkeypatch.setattr(source_module.os, "sysconf", lambda name: 1 if name == "SC_PAGE_SIZE" else 1000)
    with pytest.raises(UserError, match=r"data\.in_memory: the train period of .* takes .* GiB, more than half of "
                                        r"this machine's .*; set --config\.data\.in_memory=false"):
        WindowSource(store, history=HISTORY, lead_steps=LEAD, period=TRAIN, split="train", in_memory=True)


def test_config_builds_sources_and_counts_windows(store):
    cfg = presets.get_config("demo")
    cfg.data.store = str(store)
    cfg.data.history = HISTORY
    cfg.data.train_period, cfg.data.val_period, cfg.data.test_period = TRAIN, VAL, TEST
    src = source_from_config(cfg.data, "val")
    assert len(src) == 10 and src.static_channels == ("orog", "latitude", "longitude") and src.split == "val"
    batches = list(loader_from_config(cfg, "val", batch_size=4))  # evaluation: time order, one pass, remainder kept
    assert [b["inputs"].shape[0] for b in batches] == [4, 4, 2]
    assert np.concatenate([b["time_index"] for b in batches]).tolist() == src.starts.tolist()
    assert split_window_counts(cfg.data) == {"train": 19, "val": 10, "test": 19}
    assert split_window_counts(cfg.data, history=4, lead_steps=1) == {"train": 15, "val": 8, "test": 15}
    cfg.data.test_period = "2024-06-03T20:2024-06-04T23"  # after the store's last time
    with pytest.raises(UserError, match=r"split 'test' \(period 2024-06-03T20:2024-06-04T23\) has no valid window"):
        split_window_counts(cfg.data)
    assert split_window_counts(cfg.data, allow_empty=True)["test"] == 0


def test_loader_bench_reports_pipeline_and_raw_throughput(store):
    result = run_loader_bench(store, history=HISTORY, lead_steps=LEAD, batch_size=2, crop=(6, 8), workers=0,
                              num_batches=3, period=TRAIN)
    assert result["samples"] == 6 and result["sample_shapes"]["inputs"] == [2, 6, 8, 3]
    assert result["pipeline_samples_per_s"] > 0 and result["raw_mb_per_s"] > 0
    assert np.isclose(result["read_mb_per_sample"], 3 * 6 * 8 * 4 * (2 + 1 + 1) / 1e6)
    table = format_table(result)
    assert "raw zarr read" in table and "pipeline / raw" in table
