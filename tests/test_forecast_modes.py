"""Forecasts beyond the default DEF ensemble, on the tiny trained models: a 240 h rollout in bounded memory, the direct
generative mode, tuning of the guidance scale, the baseline ensembles, and check-denoiser."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from tiny_config import forecast_config as config

from def_jax.forecast.run import forecast

INIT = "2024-06-02T16"


def _rss_after_each_chunk(store, workdir, out, lead_hours, members):
    """A forecast in a fresh process; the process's resident memory (MB) after each chunk of members was written and
    the C heap's free pages were returned to the system (glibc's malloc_trim: what is left is memory still held)."""
    code = (
        "import ctypes, sys, numpy as np, psutil\n"
        "sys.path.insert(0, %r)\n"
        "from tiny_config import forecast_config as config\n"
        "from def_jax.forecast import files\n"
        "from def_jax.forecast.run import forecast\n"
        "rss, write, libc = [], files.NetCDFFile.write_members, ctypes.CDLL('libc.so.6')\n"
        "def measured(self, *a, **k):\n"
        "    write(self, *a, **k)\n"
        "    libc.malloc_trim(0)\n"
        "    rss.append(psutil.Process().memory_info().rss / 2**20)\n"
        "files.NetCDFFile.write_members = measured\n"
        "cfg = config(%r, members=%d, member_chunk=%d, walks=1, lead_hours=%d, lead_chunk=12,\n"
        "             include_deterministic=False)\n"
        "cfg.sampler.steps = 1; cfg.sampler.order = 1\n"
        "forecast(cfg, %r, %r, [np.datetime64('2024-06-01T00')], log=lambda m: None)\n"
        "print(*rss)\n"
    ) % (str(Path(__file__).parent), str(store), members, members, lead_hours, str(workdir), str(out))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env=dict(__import__("os").environ, DEF_JAX_CACHE_DIR=""))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [float(v) for v in proc.stdout.split()]


def test_240_hour_rollout_runs_in_bounded_memory(mini_store, trained_workdir, tmp_path):
    """240 steps stream to disk in chunks of 12: memory does not grow with the horizon. Over the second half of the
    forecast (chunks 11–20, once the allocators have warmed up: measured to level off within ~15 chunks) the
    process's memory grows by less than half of those chunks' members (68 MB), which a writer that held them, or
    netCDF's default chunk cache of 64 MiB per variable, would keep (measured: 3 MB alone, 21 MB beside another test
    process, without malloc_trim). The store has 60 h, so the forcings for 240 h come from a
    longer store: the tiny catalogue's store is extended by repeating its times."""
    workdir, _ = trained_workdir
    long_store = extend_store(mini_store, tmp_path / "long.zarr", hours=260)
    rss = _rss_after_each_chunk(long_store, workdir, tmp_path / "full", 240, members=8)
    ds = xr.open_dataset(next((tmp_path / "full").glob("*.nc")))
    assert ds.sizes["lead_time"] == 240 and np.isfinite(ds.t2m.values).all()
    assert len(rss) == 20
    second_half_bytes = 120 * 8 * 32 * 32 * 18 * 4 / 2**20
    assert rss[-1] - rss[9] < 0.5 * second_half_bytes, (rss, second_half_bytes)


def extend_store(store, out, hours):
    """A copy of the store whose time axis is extended to ``hours`` by repeating its written hours cyclically
    (forcings and states for a long horizon; the values are only inputs here)."""
    ds = xr.open_zarr(store, consolidated=False).load()
    t0 = ds.time.values[0]
    idx = np.arange(hours) % ds.sizes["time"]
    long = ds.isel(time=idx).assign_coords(time=t0 + np.arange(hours) * np.timedelta64(1, "h"))
    for v in long.variables.values():
        v.encoding = {}
    long.to_zarr(out, mode="w", consolidated=False)
    return out


def test_direct_mode_forecast(mini_store, trained_workdir, tmp_path):
    """The direct generative mode (DEF_METHOD §6) end to end: a few updates of a direct residual denoiser on the past
    2 hours, then a forecast whose members are its samples, with the G_φ rollout beside them."""
    import shutil

    from def_jax.training.loop import train

    workdir, _ = trained_workdir
    shutil.copytree(workdir / "forecaster", tmp_path / "forecaster")
    cfg = config(mini_store, members=2, lead_hours=2)
    cfg.diffusion.mode, cfg.diffusion.direct_history, cfg.diffusion.direct_residual = "direct", 2, True
    cfg.denoiser.skip_coefficients, cfg.denoiser.null_prior = "learned", "white"  # the exact path is DEF's
    cfg.diffusion.conditional, cfg.diffusion.p_uncond = "network", 0.1
    t = cfg.training.diffusion
    t.max_steps, t.eval_batches, t.checkpoint_every, t.log_every = 3, 0, 3, 3
    cfg.training.tensorboard = False
    train("diffusion", cfg, tmp_path, log=lambda m: None)
    cfg.ensemble.checkpoint = "latest"
    path = forecast(cfg, tmp_path, tmp_path / "out", [np.datetime64(INIT)], log=lambda m: None)[0]
    ds = xr.open_dataset(path)
    assert ds.attrs["mode"] == "direct_residual" and ds.attrs["walks"] == 0
    assert ds.sizes["member"] == 2 and np.isfinite(ds.t2m.values).all()
    assert not np.array_equal(ds.t2m.values[0, 0], ds.t2m.values[0, 1])


def test_tune_picks_the_best_calibrated_setting_compiling_one_rollout(mini_store, trained_workdir, tmp_path,
                                                                       monkeypatch):
    """The λ grid on validation cycles: one row per setting, the chosen one has the smallest mean |log SSR|, the
    forecasts come from the validation period only, and every λ of a K runs the same compiled rollout (λ traced):
    XLA compiles during the first forecast cycle only, never again for the second cycle or another λ (1.0
    included, which outside tuning would take the one-half shortcut)."""
    import jax
    import pandas as pd

    from def_jax.forecast import run as forecast_run
    from def_jax.tuning import tune

    built, programs = [], []
    original = forecast_run.build_program

    def build_program(spec, *a):
        built.append(spec)
        programs.append(original(spec, *a))
        return programs[-1]

    monkeypatch.setattr(forecast_run, "build_program", build_program)
    compiles: list[list[str]] = []  # the backend compilations (function names) during each forecast cycle
    in_cycle = []

    def on_duration(event, _seconds, **kw):
        if event == "/jax/core/compile/backend_compile_duration" and in_cycle:
            compiles[-1].append(kw.get("fun_name"))

    run_cycle = forecast_run.Forecaster.run_cycle

    def counted_cycle(self, *a, **k):
        compiles.append([])
        in_cycle.append(True)
        try:
            return run_cycle(self, *a, **k)
        finally:
            in_cycle.pop()

    monkeypatch.setattr(forecast_run.Forecaster, "run_cycle", counted_cycle)
    workdir, _ = trained_workdir
    cfg = config(mini_store, members=3, lead_hours=2)
    cfg.sampler.steps = 2
    jax.monitoring.register_event_duration_secs_listener(on_duration)
    try:
        result = tune(cfg, workdir, tmp_path, scales=[0.2, 0.6, 1.0], walks=[1], every_hours=4, max_cycles=2,
                      log=lambda m: None)
    finally:
        jax.monitoring.unregister_event_duration_listener(on_duration)
    # 3 λ × 2 cycles; the first cycle compiles the rollout programs (jit(program)) and small helpers
    assert len(compiles) == 6 and "jit(program)" in compiles[0], compiles
    assert not any(compiles[1:]), compiles  # nothing compiles again: not for a second cycle, not for another λ
    assert [p._cache_size() for p in programs] == [1] * len(programs)
    table = pd.read_csv(result["table"])
    assert list(table.scale) == [0.2, 0.6, 1.0] and (table.cycles == 2).all() and (table.perturbation == "def").all()
    assert result["best"]["mean_abs_log_ssr"] == table.mean_abs_log_ssr.min()
    assert (table.mean_ssr > 0).all() and np.isfinite(table.crps_over_deterministic_mae).all()
    inits = sorted(p.name for p in (tmp_path / "K1_lambda0.2" / "forecasts").glob("*.nc"))
    assert inits == ["forecast_20240602T16.nc", "forecast_20240602T20.nc"]  # data.val_period 2024-06-02T16–T23
    ensemble_programs = [s for s in built if s.perturbs]
    assert len(ensemble_programs) == 1 and ensemble_programs[0].static_guidance is None, built
    assert len(built) == 2  # and the deterministic rollout


def test_pick_best_orders_by_spread_skill_or_by_crps():
    """tune-guidance's choice (|log SSR| first) and the lowest-CRPS alternative; rows without a finite SSR never win."""
    from def_jax.tuning import pick_best

    nan = float("nan")
    rows = [{"guidance_scale": 0.3, "mean_abs_log_ssr": 0.2, "crps_over_deterministic_mae": 1.8},
            {"guidance_scale": 0.7, "mean_abs_log_ssr": 0.5, "crps_over_deterministic_mae": 0.8},
            {"guidance_scale": 1.0, "mean_abs_log_ssr": nan, "crps_over_deterministic_mae": 0.1},
            {"guidance_scale": 0.5, "mean_abs_log_ssr": 0.2, "crps_over_deterministic_mae": 1.2}]
    assert pick_best(rows)["guidance_scale"] == 0.5  # ties on |log SSR| go to the lower CRPS
    assert pick_best(rows, "crps")["guidance_scale"] == 0.7
    assert pick_best([rows[2]]) is None


@pytest.mark.parametrize("kind", ["gaussian", "correlated", "bred", "lagged"])
def test_baseline_ensembles_in_the_forecast_files(mini_store, trained_workdir, tmp_path, kind):
    """Each baseline runs through ``forecast`` (no denoiser needed), records its settings, and its members differ;
    a lagged member 0 is the analysis, so it is the deterministic run; member b is the same in a larger ensemble
    computed in two chunks (4 virtual devices: chunks of 4)."""
    workdir, _ = trained_workdir
    settings = dict(members=3, lead_hours=2, perturbation=kind, perturbation_scale=0.5, breeding_steps=2,
                    lag_steps=1, correlation_length_km=12.0)
    cfg = config(mini_store, **settings)
    path = forecast(cfg, workdir, tmp_path / "all", [np.datetime64(INIT)], log=lambda m: None)[0]
    ds = xr.open_dataset(path)
    assert ds.attrs["perturbation"] == kind and ds.attrs["walks"] == 0 and "denoiser_checkpoint" in ds.attrs
    assert ds.attrs["denoiser_checkpoint"] == ""  # ε_θ is not loaded for a baseline
    expected = {"gaussian": "perturbation_scale", "correlated": "correlation_length_km", "bred": "breeding_steps",
                "lagged": "lag_steps"}[kind]
    assert expected in ds.attrs and "guidance_scale" not in ds.attrs
    t2m = ds.t2m.values[0]  # [M, L, Y, X]
    assert np.isfinite(t2m).all() and not np.array_equal(t2m[1], t2m[2])
    if kind == "lagged":
        np.testing.assert_allclose(t2m[0], ds.t2m_deterministic.values[0], rtol=0, atol=1e-4)
    else:
        assert not np.allclose(t2m[0], ds.t2m_deterministic.values[0])
    cfg.ensemble.members, cfg.ensemble.member_chunk = 5, 4
    larger = forecast(cfg, workdir, tmp_path / "five", [np.datetime64(INIT)], log=lambda m: None)[0]
    np.testing.assert_allclose(xr.open_dataset(larger).t2m.values[0, :3], t2m, rtol=0, atol=1e-5)


def test_check_denoiser_reports_what_the_tiny_model_learned(mini_store, trained_workdir, tmp_path):
    """check-denoiser on the tiny trained ε_θ: the exact conditional branch has (almost) no ε-loss, the unconditional
    one is below 1 (the spectral prior alone beats predicting no noise), a walk at λ = 1 barely moves the state and a
    smaller λ moves it more; the report, the JSON and the figure are written."""
    import json

    from def_jax.evaluation.denoiser_check import check_denoiser

    workdir, _ = trained_workdir
    cfg = config(mini_store)
    cfg.sampler.steps = 4
    result = check_denoiser(cfg, workdir, tmp_path, scales=(1.0, 0.3), states=2, members=2, every_hours=4,
                            log=lambda m: None)
    assert {p.name for p in tmp_path.iterdir()} >= {"denoiser_check.md", "denoiser_check.json", "denoiser_spectra.png"}
    assert json.loads((tmp_path / "denoiser_check.json").read_text())["walks"] == result["walks"]
    losses = result["eps_loss"]
    assert [r["tau"] for r in losses][0] == 1 and all(r["eps_loss_c"] < 1e-6 for r in losses)
    assert all(0 < r["eps_loss_null"] < 1 for r in losses)
    one, small = result["walks"]
    assert one["guidance_scale"] == 1.0 and one["rms_member_minus_state"] < 0.05
    assert small["spread"] > one["spread"] and small["rms_member_minus_state"] > one["rms_member_minus_state"]
    s = result["samples"]
    assert len(s["power_ratio_to_data"]) == len(s["wavelength_km"]) == 16  # 32×32 grid: wavenumbers 1..16
    assert "| λ | RMS(member mean − x) (shift)" in (tmp_path / "denoiser_check.md").read_text()
    # item 4: G_φ run from the walked members over the lead time (3 h); its one-step error is the one of item 3
    g = result["growth"]
    assert g["steps"] == [0, 1, 2, 3] and g["g_phi_rms_error"][0] is None
    assert g["g_phi_rms_error"][1] == pytest.approx(s["summary"]["g_phi_one_step_rms_error"], rel=1e-4)
    by_lam = {row["guidance_scale"]: row["spread"] for row in g["spread"]}
    assert by_lam[0.3][0] == pytest.approx(small["spread"], rel=1e-5) and by_lam[1.0][0] == pytest.approx(
        one["spread"], rel=1e-5)
    assert all(b > a for a, b in zip(by_lam[1.0], by_lam[0.3], strict=True))
    assert "| spread, λ = 0.3 |" in (tmp_path / "denoiser_check.md").read_text()
