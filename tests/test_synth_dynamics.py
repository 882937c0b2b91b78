"""The mini-HRRR physical model: interface, determinism, physical consistency, diurnal cycle, convection, chaos."""

import copy

import numpy as np
import pytest
from scipy import ndimage

from data_prep.synth_dynamics import RD, G, MiniHRRR, simulate
from def_jax.catalogue import HRRR_LEVELS, REFC_NO_ECHO, load_catalogue

NY = NX = 64
LAT, LON = np.meshgrid(np.linspace(34.0, 36.0, NY), np.linspace(262.0, 264.0, NX), indexing="ij")
DX = 3000.0
START = np.datetime64("2024-06-17T12", "h")  # seed 0: two convective afternoons follow
SEED = 0
HOURS = 72
LEVELS = np.array(HRRR_LEVELS, dtype=float)


def _run(hours=HOURS, seed=SEED, start=START, **kw):
    return list(simulate(LAT, LON, DX, start, hours, seed, **kw))


@pytest.fixture(scope="module")
def run():
    return _run()


@pytest.fixture(scope="module")
def perturbed():
    return _run(perturbation=1e-6)


def _local_hour(t: np.datetime64) -> float:
    """Local solar hour at the domain centre."""
    return ((t - t.astype("datetime64[D]")) / np.timedelta64(1, "h") + LON.mean() / 15.0) % 24


def _level(p: float) -> int:
    return HRRR_LEVELS.index(p)


def test_keys_shapes_dtypes_and_times(run):
    names = {v.name for v in load_catalogue("hrrr_expanded")}
    model = MiniHRRR(LAT, LON, DX, START, SEED)
    assert set(model.statics()) == {"orog", "lsm"}
    for h, (t, f) in enumerate(run):
        assert t == START + np.timedelta64(h, "h")
        assert set(f) == names
        for name, a in f.items():
            assert a.dtype == np.float32, name
            assert a.shape == ((len(LEVELS), NY, NX) if name in ("z", "t", "q", "u", "v") else (NY, NX)), name
            assert np.isfinite(a).all(), name
    for name, a in model.statics().items():
        assert a.shape == (NY, NX) and a.dtype == np.float32
        assert np.array_equal(a, run[0][1][name]) and np.array_equal(a, run[-1][1][name])
    assert model.time == START


def test_levels_in_any_order(run):
    levels = (500.0, 1000.0, 250.0)
    (_, f), = _run(hours=1, levels=levels)
    idx = [_level(p) for p in levels]
    for name in ("z", "t", "q", "u", "v"):
        assert f[name].shape == (3, NY, NX)
        np.testing.assert_allclose(f[name], run[0][1][name][idx], rtol=1e-6)  # vectorization may round differently
    np.testing.assert_array_equal(f["cape"], run[0][1]["cape"])


def test_determinism(run):
    again = _run(hours=4)
    for (_, a), (_, b) in zip(again, run):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    other = _run(hours=4, seed=SEED + 1)
    assert not np.array_equal(other[0][1]["t2m"], run[0][1]["t2m"])
    assert not np.array_equal(other[3][1]["u"], run[3][1]["u"])


def test_bounds_and_signs(run):
    for _, f in run:
        assert (f["q"] >= 0).all() and (f["cape"] >= 0).all() and (f["cin"] <= 0).all()
        assert f["refc"].min() >= REFC_NO_ECHO and f["refc"].max() <= 75.0
        assert (f["pwat"] > 0).all() and (f["dswrf"] >= 0).all() and (f["dlwrf"] > 0).all()
        assert (f["d2m"] <= f["t2m"]).all()
        assert 250.0 < f["t2m"].min() and f["t2m"].max() < 320.0
        assert 150.0 < f["t"].min() and f["t"].max() < 330.0
        assert np.abs(f["u"]).max() < 80.0 and np.abs(f["u10"]).max() < 30.0
        assert set(np.unique(f["lsm"])) <= {0.0, 1.0} and f["lsm"].mean() > 0.5


def test_vertical_structure_and_hypsometric_consistency(run):
    order = np.argsort(-LEVELS)  # from 1000 hPa upward
    p = LEVELS[order]
    for _, f in run[::6]:
        z, t, q = f["z"][order].astype(float), f["t"][order].astype(float), f["q"][order].astype(float)
        assert (np.diff(z, axis=0) > 0).all()  # height increases as pressure decreases
        assert -300 < z[0].mean() < 400 and 19_000 < z[-1].mean() < 22_500  # 1000 hPa, 50 hPa
        tropo = p >= 250
        assert (np.diff(t[tropo].mean(axis=(1, 2))) < 0).all()  # cooling upward below 250 hPa
        assert (np.diff(q.mean(axis=(1, 2))) <= 0).all() and q[-1].max() < 1e-4 < q[0].mean()
        assert (f["v"][_level(250)] ** 2 + f["u"][_level(250)] ** 2).mean() > (f["u10"] ** 2 + f["v10"] ** 2).mean()
        # thickness 1000-500 hPa = (R_d/g) ∫ T_v d ln p
        tv = t * (1 + 0.608 * q)
        layer = p >= 500
        lnp = np.log(p[layer])
        thick = RD / G * np.sum(0.5 * (tv[layer][1:] + tv[layer][:-1]) * -np.diff(lnp)[:, None, None], axis=0)
        np.testing.assert_allclose(z[layer][-1] - z[0], thick, rtol=0.01)
        # surface pressure: ~1013 hPa at sea level, lower over high terrain
        sp_sea_level = f["sp"] * np.exp(f["orog"] / 8400.0)
        assert np.abs(sp_sea_level / 101325.0 - 1).max() < 0.04


def test_pwat_is_the_column_integral_of_q(run):
    order = np.argsort(LEVELS)
    p_lev = LEVELS[order] * 100.0
    fine = np.linspace(p_lev[0], 110_000.0, 4001)  # Pa
    j = np.clip(np.searchsorted(p_lev, fine) - 1, 0, len(p_lev) - 2)
    w = np.clip((fine - p_lev[j]) / (p_lev[j + 1] - p_lev[j]), 0.0, 1.0)[:, None, None]
    for _, f in run[::8]:
        q = f["q"][order].astype(float)
        q_fine = q[j] * (1 - w) + q[j + 1] * w  # linear between levels, constant below the lowest one
        above_ground = fine[:, None, None] <= f["sp"]
        pwat = np.trapezoid(q_fine * above_ground, fine, axis=0) / G
        np.testing.assert_allclose(f["pwat"], pwat, rtol=0.01)


def test_diurnal_cycle(run):
    hours = np.array([_local_hour(t) for t, _ in run])
    night = (hours >= 23) | (hours < 4)
    assert all(f["dswrf"].max() == 0 for (_, f), s in zip(run, night) if s)
    noon = [f["dswrf"].mean() for (t, f) in run if 11 <= _local_hour(t) < 13]
    assert min(noon) > 400 and max(f["dswrf"].max() for _, f in run) < 1150
    # composite of the clear-air means minus their 24-hour running mean (removes the synoptic trend). Clear air: the
    # points without echo; the afternoon storms cover up to half of this domain and cool and stabilize the air under
    # them, which would hide the boundary layer's own cycle in a mean over all points
    h = hours[12:-11]
    morning, afternoon = (h >= 3) & (h < 9), (h >= 13) & (h < 18)
    for name in ("t2m", "cape", "cin"):  # warmer, more unstable, less inhibited in the afternoon
        series = np.array([f[name][f["refc"] <= REFC_NO_ECHO].mean() for _, f in run], dtype=float)
        anomaly = series[12:-11] - np.convolve(series, np.ones(24) / 24, mode="valid")
        assert anomaly[afternoon].mean() > max(anomaly[morning].mean(), 0), name
    echo = np.array([(f["refc"] >= 20).mean() for _, f in run])
    evening = (hours >= 14) & (hours < 22)
    assert echo[evening].mean() > 3 * echo[(hours >= 6) & (hours < 12)].mean()


def test_convection_exists_and_is_cellular(run):
    refc = np.stack([f["refc"] for _, f in run])  # [T, ny, nx]
    assert (refc.max(axis=(1, 2)) >= 35).sum() >= 6  # several hours with convective cores
    assert refc.max() >= 50
    # organized clusters and lines on the stormiest afternoons cover up to ~60 % of this 192 km domain, a typical
    # stormy hour far less; there is always clear air
    coverage = (refc >= 20).mean(axis=(1, 2))
    assert coverage.max() < 0.75 and np.median(coverage[coverage > 0]) < 0.3
    assert np.median(refc) == REFC_NO_ECHO
    sizes = []
    for frame in refc:
        labels, n = ndimage.label(frame >= 35)
        sizes += list(np.sqrt(4 / np.pi * np.bincount(labels.ravel())[1:]) * DX / 1e3)  # equivalent diameter, km
    # convective scale: single cells ~10-15 km, cells grown upscale into clusters and lines (up to twice their
    # radius) 20-40 km; not stratiform sheets
    assert 8 <= np.median(sizes) <= 30


def test_cells_feed_back_on_the_environment(run):
    cool, inhibit, cape = [], [], []
    for _, f in run:
        core = f["refc"] >= 35
        if core.mean() > 0.002:
            cool.append(f["t2m"][core].mean() - f["t2m"].mean())
            inhibit.append(f["cin"][core].mean() - f["cin"].mean())
            cape.append(f["cape"][core].mean() / max(f["cape"].mean(), 1.0))
    assert len(cool) >= 6
    assert np.mean(cool) < -0.5 and np.mean(inhibit) < 0 and np.mean(cape) < 1


def test_cells_move_with_the_mid_level_wind(run):
    found, expected = [], []
    for (_, a), (_, b) in zip(run[:-1], run[1:]):
        if min((a["refc"] >= 20).mean(), (b["refc"] >= 20).mean()) < 0.01:
            continue
        x, y = a["refc"] - REFC_NO_ECHO, b["refc"] - REFC_NO_ECHO
        corr = np.fft.irfft2(np.conj(np.fft.rfft2(x, (2 * NY, 2 * NX))) * np.fft.rfft2(y, (2 * NY, 2 * NX)))
        corr = np.roll(corr, (NY, NX), axis=(0, 1))[NY - 20:NY + 21, NX - 20:NX + 21]
        dy, dx = np.array(np.unravel_index(np.argmax(corr), corr.shape)) - 20
        found.append((dx, dy))
        steer = [(a[c][_level(500)] + a[c][_level(700)]).mean() / 2 * 3600 / DX for c in ("u", "v")]
        expected.append(steer)
    found, expected = np.array(found, float), np.array(expected)
    assert len(found) >= 8
    assert np.linalg.norm(expected.mean(0)) > 3  # the cells should visibly move
    assert np.linalg.norm(np.median(found - expected, axis=0)) < 2.5


def test_cells_have_finite_lifetimes():
    model = MiniHRRR(LAT, LON, DX, START + np.timedelta64(24, "h"), SEED)
    ages, born = [], 0
    for _ in range(24):
        model.step()
        ages += list(model.cells["age"])
        born += int((model.cells["age"] == 0).sum())
    assert born > 10
    assert max(ages) <= 9 and np.mean(ages) < 4


def test_initiation_is_stochastic_given_the_state():
    model = MiniHRRR(LAT, LON, DX, np.datetime64("2024-06-18T19", "h"), SEED)
    twin = copy.deepcopy(model)
    twin.seed = SEED + 1  # same state, another random trigger field
    model.step(), twin.step()
    new = [m.cells["age"] == 0 for m in (model, twin)]
    assert new[0].sum() > 0 and new[1].sum() > 0
    pos = [np.stack([m.cells["x"][n], m.cells["y"][n]], 1) for m, n in zip((model, twin), new)]
    assert pos[0].shape != pos[1].shape or not np.array_equal(pos[0], pos[1])


def test_sensitivity_to_small_perturbations(run, perturbed):
    for (_, a), (_, b) in zip(run[:6], perturbed[:6]):
        np.testing.assert_array_equal(a["refc"], b["refc"])
        assert np.abs(a["t2m"] - b["t2m"]).max() < 1e-3
    mismatch = echo = 0
    for (_, a), (_, b) in zip(run[24:], perturbed[24:]):
        mismatch += ((a["refc"] >= 20) ^ (b["refc"] >= 20)).sum()
        echo += (a["refc"] >= 20).sum()
    assert echo > 0 and mismatch > 0.3 * echo


@pytest.fixture(scope="module")
def demo():
    """The world of ``make demo`` exactly (configs/presets.py ``demo``): six weeks of 32×32 points at 6 km, seed 0;
    ~10 s. Returns the config, the valid times, REFC [T, ny, nx] and the local solar hour of each time."""
    from configs.presets import get_config
    from data_prep.synth import synth_grid

    cfg = get_config("demo")
    s, (ny, nx) = cfg.data.synth, cfg.data.grid_shape
    grid = synth_grid(ny, nx, s.stride)
    lat, lon = grid.latlon()
    out = [(t, f["refc"]) for t, f in simulate(lat, lon, grid.dx, np.datetime64(s.start, "h"), s.hours, s.seed)]
    times = np.array([t for t, _ in out])
    utc = (times - times.astype("datetime64[D]")) / np.timedelta64(1, "h")
    return cfg, times, np.stack([r for _, r in out]), (utc + (lon.mean() - 360.0) / 15.0) % 24


def test_the_demo_periods_have_enough_storms_to_verify(demo):
    """REFC ≥ 35 dBZ, the demo's storm event, on at least 2 % of the points of each period (test period included),
    with ≥ 20 and ≥ 45 dBZ events as well, and storms that cover several 6 km points."""
    from def_jax.data.schema import parse_period

    cfg, times, refc, _ = demo
    for split in ("train", "val", "test"):
        start, end = parse_period(cfg.data[f"{split}_period"])
        r = refc[(times >= start) & (times <= end)]
        assert len(r) >= 96, split
        assert (r >= 35).mean() >= 0.02, (split, (r >= 35).mean())
        assert (r >= 20).mean() > 1.5 * (r >= 35).mean() and (r >= 45).mean() >= 0.005, split
    sizes = []
    for frame in refc[::3]:
        labels, n = ndimage.label(frame >= 35)
        sizes += list(np.bincount(labels.ravel())[1:])
    assert np.median(sizes) >= 4  # points of a ≥ 35 dBZ object


def test_the_demo_storms_peak_in_the_afternoon_and_evening(demo):
    _, _, refc, hours = demo
    coverage = (refc >= 35).mean(axis=(1, 2))
    by_hour = np.array([coverage[np.floor(hours) == h].mean() for h in range(24)])  # composite by local hour
    assert 13 <= np.argmax(by_hour) < 20
    afternoon_evening, night_morning = by_hour[13:21].mean(), by_hour[:11].mean()
    assert afternoon_evening > 0.05 and night_morning < afternoon_evening / 8
