"""``def-jax forecast`` on the tiny trained models: CF NetCDF files, constraints, statistics, member invariance,
resumable cycles, and a 240 h rollout in bounded memory."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from tiny_config import learning_config

from def_jax.errors import UserError
from def_jax.forecast.files import NetCDFFile, forecast_filename
from def_jax.forecast.run import forecast

EXE = str(Path(sys.executable).parent / "def-jax")
TINY = str(Path(__file__).resolve().parent / "tiny_config.py")
INIT = "2024-06-02T16"


def config(store, **ensemble):
    cfg = learning_config(store)
    cfg.ensemble.update(dict(members=3, walks=1, guidance_scale=0.5, lead_hours=3, lead_chunk=2), **ensemble)
    cfg.sampler.steps = 3
    return cfg


@pytest.fixture(scope="module")
def cli_forecasts(mini_store, trained_workdir, tmp_path_factory):
    """Two cycles through the command line (4 virtual devices, 3 members: chunks padded to 4)."""
    workdir, _ = trained_workdir
    out = tmp_path_factory.mktemp("forecasts")
    cmd = [EXE, "forecast", f"--config={TINY}:{mini_store}", f"--workdir={workdir}", f"--init={INIT}", "--cycles=2",
           "--every=3", "--lead-hours=3", "--members=3", "--walks=1", "--guidance-scale=0.5", "--sampler-steps=3",
           f"--out={out}", "--config.ensemble.lead_chunk=2"]
    env = dict(__import__("os").environ, DEF_JAX_CACHE_DIR="", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, cmd, env, proc


def test_cli_writes_cf_netcdf_that_xarray_opens(cli_forecasts, mini_store):
    out, _, _, proc = cli_forecasts
    files = sorted(out.glob("*.nc"))
    assert [f.name for f in files] == ["forecast_20240602T16.nc", "forecast_20240602T19.nc"]
    assert "4 device(s)" in proc.stdout and not list(out.glob("*.partial"))
    ds = xr.open_dataset(files[0])
    assert ds.attrs["Conventions"] == "CF-1.8" and ds.attrs["def_jax_forecast"] == 1
    assert (ds.attrs["members"], ds.attrs["walks"], ds.attrs["guidance_scale"]) == (3, 1, 0.5)
    assert (ds.attrs["sampler"], ds.attrs["sampler_steps"], ds.attrs["schedule"]) == ("dpm_solver_pp", 3, "cosine")
    assert "forecaster" in ds.attrs["forecaster_checkpoint"] and "diffusion" in ds.attrs["denoiser_checkpoint"]
    assert json.loads(ds.attrs["config"])["ensemble"]["members"] == 3
    assert dict(ds.sizes) == {"init_time": 1, "member": 3, "lead_time": 3, "level": 2, "y": 32, "x": 32,
                              "refc_threshold": 3, "cape_threshold": 3}
    assert ds.t.dims == ("init_time", "member", "lead_time", "level", "y", "x")
    assert ds.t2m_mean.dims == ("init_time", "lead_time", "y", "x")
    np.testing.assert_array_equal(ds.lead_time.values, [1, 2, 3])
    assert ds.init_time.values[0] == np.datetime64(INIT, "ns")
    assert ds.valid_time.values[0, -1] == np.datetime64("2024-06-02T19", "ns")
    assert ds.t2m.attrs["units"] == "K" and ds.t2m.attrs["grid_mapping"] == "crs"
    assert ds.crs.attrs["grid_mapping_name"] == "lambert_conformal_conic"
    truth = xr.open_zarr(mini_store, consolidated=False)
    np.testing.assert_array_equal(ds.latitude.values, truth.latitude.values)
    assert np.isfinite(ds.t2m.values).all()


def data_variables(path):
    """Every data variable of a forecast file, NetCDF or Zarr (NumPy), for comparing two runs."""
    from def_jax.forecast.files import open_forecast

    with open_forecast(path) as ds:
        return {name: ds[name].values for name in ds.data_vars if name != "crs"}


def test_a_spatial_mesh_gives_the_member_sharded_forecast(cli_forecasts, mini_store, trained_workdir, tmp_path):
    """(data 1 × space 4): each member's fields split by rows over the 4 devices, XLA exchanging the halos of the
    convolutions and the partial sums of GroupNorm and attention, equal the (4 × 1) run of the command line, where
    each member is whole on one device (to float32 summation order). Written as a Zarr store, each device's rows
    separately."""
    workdir, _ = trained_workdir
    cfg = config(mini_store)
    cfg.parallel.data_axis, cfg.parallel.spatial_axis = 1, 4
    cfg.ensemble.format = "zarr"
    path = forecast(cfg, workdir, tmp_path, [np.datetime64(INIT)], log=lambda m: None)[0]
    assert path.name == "forecast_20240602T16.zarr" and path.is_dir()
    reference = data_variables(cli_forecasts[0] / "forecast_20240602T16.nc")
    got = data_variables(path)
    assert set(got) == set(reference)
    for name, values in reference.items():
        base, _, suffix = name.rpartition("_")
        if suffix == "probability":  # counts of members over a threshold: a float difference may flip one
            continue
        if values.dtype.kind != "f":
            np.testing.assert_array_equal(got[name], values, err_msg=name)
            continue
        # within 1e-3 of the variable's own variability (surface pressure ~1e5 Pa varies by ~1e2): float32 summation
        # order, through 3 hours of walks and G_φ steps (measured: up to 2.6e-4)
        scale = np.nanstd(reference[base if suffix in ("mean", "std", "deterministic") else name])
        np.testing.assert_allclose(got[name], values, rtol=0, atol=1e-3 * scale + 1e-6, err_msg=name)
    import pandas as pd

    from def_jax import parallel
    from def_jax.evaluation.evaluate import evaluate

    result = evaluate([path], mini_store, tmp_path / "evaluation", config=cfg, log=lambda m: None)  # reads Zarr
    scores = pd.read_csv(result["tables"]["scores"])
    assert set(scores.system) >= {"def", "deterministic"} and np.isfinite(scores[scores.score == "crps"].value).all()
    with pytest.raises(UserError, match="spatial_axis=4 must divide the grid's 30 rows"):  # e.g. a 30-row region
        parallel.check_spatial(parallel.make_mesh(1, 4), 30)


def test_a_two_node_slurm_forecast_writes_the_one_process_files(cli_forecasts, mini_store, trained_workdir,
                                                                tmp_path):
    """experiments/slurm/forecast.sbatch on two pretend nodes (local processes of 2 devices, Gloo collectives): the
    members of each chunk split over the 4 devices of both processes, process 0 writing; the files are those of the
    single process on 4 devices, value for value. Submitted again, it skips the finished cycles."""
    from local_launch import slurm_job

    out, cmd, _, _ = cli_forecasts
    workdir, _ = trained_workdir
    flags = [a for a in cmd[2:] if not a.startswith(("--workdir", "--out", "--config="))]
    job, env = slurm_job("forecast.sbatch", 2, 2, "", f"{TINY}:{mini_store}", workdir, *flags,
                         f"--out={tmp_path}")
    run = subprocess.run(job, env=env, capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert "SLURM launch, process 0 of 2" in log and "process 1 of 2" in log
    assert log.count("wrote ") == 2  # process 0 alone reports and writes
    for path in sorted(out.glob("*.nc")):
        reference, got = data_variables(path), data_variables(tmp_path / path.name)
        for name, values in reference.items():
            np.testing.assert_array_equal(got[name], values, err_msg=f"{path.name}: {name}")
    job, env = slurm_job("forecast.sbatch", 2, 2, "", f"{TINY}:{mini_store}", workdir, *flags, f"--out={tmp_path}")
    again = subprocess.run(job, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("exists: skipped") == 2, again.stderr[-2000:]


def test_a_killed_zarr_forecast_resumes(mini_store, trained_workdir, tmp_path, monkeypatch):
    """A Zarr forecast on a (2 × 2) mesh (members and rows split) that fails after its first of two member chunks
    keeps its partial store; run again, it computes only the second chunk, and the store equals an uninterrupted
    run's, value for value."""
    from def_jax.forecast import files

    workdir, _ = trained_workdir
    cfg = config(mini_store, members=4, member_chunk=2, lead_hours=2)
    cfg.ensemble.format = "zarr"
    cfg.parallel.data_axis, cfg.parallel.spatial_axis = 2, 2
    full = forecast(cfg, workdir, tmp_path / "full", [np.datetime64(INIT)], log=lambda m: None)[0]
    record = files.ZarrFile.record

    def killed_after_the_first(self, **what):
        record(self, **what)
        raise RuntimeError("killed")

    monkeypatch.setattr(files.ZarrFile, "record", killed_after_the_first)
    with pytest.raises(RuntimeError, match="killed"):
        forecast(cfg, workdir, tmp_path / "killed", [np.datetime64(INIT)], log=lambda m: None)
    assert (tmp_path / "killed" / f"{full.name}.partial").is_dir() and not (tmp_path / "killed" / full.name).exists()
    monkeypatch.setattr(files.ZarrFile, "record", record)
    logs = []
    resumed = forecast(cfg, workdir, tmp_path / "killed", [np.datetime64(INIT)], log=logs.append)[0]
    assert any("resuming, 1 of 2 member chunk(s) written" in m for m in logs), logs
    reference, got = data_variables(full), data_variables(resumed)
    assert set(got) == set(reference)
    for name, values in reference.items():
        np.testing.assert_array_equal(got[name], values, err_msg=name)


def test_launch_multihost_starts_jax_distributed_for_a_forecast(mini_store, trained_workdir, tmp_path):
    """launch_multihost.sh passes the coordinator to the command: one process (its own coordinator) starts
    jax.distributed, then the forecast stops on its first check, naming the missing initial time."""
    from local_launch import ROOT, free_port, jax_env

    workdir, _ = trained_workdir
    run = subprocess.run(["bash", str(ROOT / "experiments/slurm/launch_multihost.sh"), f"127.0.0.1:{free_port()}",
                          "1", "0", "forecast", f"--config={TINY}:{mini_store}", f"--workdir={workdir}",
                          "--init=2030-01-01T00", f"--out={tmp_path}"], env=jax_env(2), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "jax.distributed: explicit launch, process 0 of 1" in run.stdout + run.stderr
    assert "2030-01-01T00:00, which is outside the store" in run.stderr


def test_constraints_and_statistics(cli_forecasts):
    out, *_ = cli_forecasts
    ds = xr.open_dataset(sorted(out.glob("*.nc"))[0])
    assert float(ds.refc.min()) >= -10.0 and float(ds.cape.min()) >= 0 and float(ds.cin.max()) <= 0
    assert float(ds.q.min()) >= 0 and float(ds.refc_deterministic.min()) >= -10.0
    np.testing.assert_allclose(ds.t2m_mean.values[0], ds.t2m.values[0].mean(0), rtol=1e-6)
    np.testing.assert_allclose(ds.t_std.values[0], ds.t.values[0].std(0), rtol=1e-4, atol=1e-4)
    p35 = (ds.refc.values[0] >= 35.0).mean(0)  # [lead, y, x]
    np.testing.assert_allclose(ds.refc_probability.sel(refc_threshold=35.0).values[0], p35, rtol=1e-6)
    assert float(ds.t2m_std.mean()) > 0  # the walks perturb the members
    assert not np.allclose(ds.t2m_deterministic.values, ds.t2m.values[:, 0])


def test_rerun_skips_finished_cycles(cli_forecasts):
    out, cmd, env, _ = cli_forecasts
    before = {f: f.stat().st_mtime_ns for f in out.glob("*.nc")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and proc.stdout.count("skipped") == 2, proc.stdout + proc.stderr
    assert before == {f: f.stat().st_mtime_ns for f in out.glob("*.nc")}


def test_members_do_not_depend_on_ensemble_size_or_chunks(mini_store, trained_workdir, tmp_path):
    """In-process: 2 members vs 3 members in chunks of 1 (and the 4-device CLI run): member 0 and 1 equal."""
    workdir, _ = trained_workdir
    two = forecast(config(mini_store, members=2, lead_hours=2), workdir, tmp_path / "two", [np.datetime64(INIT)],
                   log=print)[0]
    three = forecast(config(mini_store, members=3, member_chunk=1, lead_hours=2), workdir, tmp_path / "three",
                     [np.datetime64(INIT)], log=print)[0]
    a, b = xr.open_dataset(two), xr.open_dataset(three)
    for name in ("t2m", "refc", "q"):
        np.testing.assert_array_equal(a[name].values, b[name].values[:, :2])
    np.testing.assert_array_equal(a.t2m_deterministic.values, b.t2m_deterministic.values)


def test_zero_walks_members_equal_the_deterministic_rollout(mini_store, trained_workdir, tmp_path):
    workdir, _ = trained_workdir
    path = forecast(config(mini_store, walks=0, members=2), workdir, tmp_path, [np.datetime64(INIT)])[0]
    ds = xr.open_dataset(path)
    for name in ("t2m", "t", "refc"):
        for b in range(2):
            np.testing.assert_array_equal(ds[name].values[0, b], ds[f"{name}_deterministic"].values[0])


def test_user_errors_name_the_problem(mini_store, trained_workdir, tmp_path):
    workdir, _ = trained_workdir
    with pytest.raises(UserError, match=r"initial state needed at 2030-01-01T00:00, which is outside the store"):
        forecast(config(mini_store), workdir, tmp_path, [np.datetime64("2030-01-01T00")])
    with pytest.raises(UserError, match=r"forcing needed at 2024-06-03T12:00, which is outside the store"):
        forecast(config(mini_store, lead_hours=24), workdir, tmp_path, [np.datetime64("2024-06-03T00")])
    with pytest.raises(UserError, match=r"no forecaster checkpoint in .*empty.*train-forecaster"):
        forecast(config(mini_store), tmp_path / "empty", tmp_path, [np.datetime64(INIT)])
    assert not list(tmp_path.glob("*.nc*"))


@pytest.mark.parametrize("fmt", ["netcdf", "zarr"])
def test_forecast_file_round_trip(tmp_path, mini_store, fmt):
    """Either format's slabs (the Zarr one also by halves of the rows, as two processes of a (1 × 2) mesh write them),
    statistics and CF metadata read back through xarray unchanged; NetCDF and Zarr hold the same dataset."""
    from def_jax.catalogue import load_catalogue
    from def_jax.forecast.files import ZarrFile, open_forecast

    cat = load_catalogue("hrrr_expanded", (500.0, 850.0))
    grid_ds = xr.open_zarr(mini_store, consolidated=False)
    grid = {k: grid_ds[k].values for k in ("latitude", "longitude", "y", "x")} | {"crs": dict(grid_ds.crs.attrs)}
    init = np.datetime64("2024-06-01T06", "ns")
    rng = np.random.default_rng(0)
    c = cat.num_channels("state")
    data = rng.normal(size=(4, 3, 32, 32, c)).astype(np.float32)  # [L, B, H, W, C]
    kw = dict(init=init, lead_hours=[1, 2, 3, 4], members=3, catalogue=cat, grid=grid, thresholds={"refc": (0.5,)},
              attrs={"walks": 2, "x": {"a": 1}}, deterministic=True)
    path = tmp_path / forecast_filename(init, fmt)
    w = NetCDFFile(path, **kw) if fmt == "netcdf" else ZarrFile(path, create=True, rows=16, **kw)
    halves = [slice(0, 32)] if fmt == "netcdf" else [slice(0, 16), slice(16, 32)]
    for rows in halves:
        w.write_members(slice(0, 2), slice(0, 4), data[:, :2, rows], rows=rows)
        w.write_members(slice(2, 3), slice(0, 2), data[:2, 2:, rows], rows=rows)
        w.write_members(slice(2, 3), slice(2, 4), data[2:, 2:, rows], rows=rows)
        w.write_deterministic(slice(0, 4), data[:, 0, rows], rows=rows)
    w.write_statistics()
    assert not path.exists()  # only the .partial until closed
    assert w.close() == path
    ds = open_forecast(path)
    names = cat.channels("state")
    t850 = names.index("t850")
    np.testing.assert_array_equal(ds.t.sel(level=850.0).values[0], np.moveaxis(data[..., t850], 0, 1))
    np.testing.assert_array_equal(ds.sp.values[0], np.moveaxis(data[..., names.index("sp")], 0, 1))
    np.testing.assert_array_equal(ds.sp_deterministic.values[0], data[..., 0, :, :, names.index("sp")])
    np.testing.assert_allclose(ds.refc_probability.values[0, 0], (data[..., names.index("refc")] >= 0.5).mean(1))
    assert ds.attrs["walks"] == 2 and json.loads(ds.attrs["x"]) == {"a": 1}
    assert ds.lead_time.attrs["units"] == "hours" and ds.level.attrs["units"] == "hPa"
    assert ds.init_time.values[0] == init and ds.valid_time.values[0, -1] == init + np.timedelta64(4, "h")
    assert ds.t2m.dims == ("init_time", "member", "lead_time", "y", "x")
    assert ds.crs.attrs["grid_mapping_name"] == "lambert_conformal_conic"


def _rss_after_each_chunk(store, workdir, out, lead_hours, members):
    """A forecast in a fresh process; the process's resident memory (MB) after each chunk of members was written."""
    code = (
        "import sys, numpy as np, psutil\n"
        "sys.path.insert(0, %r)\n"
        "from test_forecast import config\n"
        "from def_jax.forecast import files\n"
        "from def_jax.forecast.run import forecast\n"
        "rss, write = [], files.NetCDFFile.write_members\n"
        "def measured(self, *a, **k):\n"
        "    write(self, *a, **k)\n"
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
    process's memory grows by far less than those chunks' members (68 MB), which a writer that held them, or netCDF's
    default chunk cache of 64 MiB per variable, would keep. The store has 60 h, so the forcings for 240 h come from a
    longer store: the tiny catalogue's store is extended by repeating its times."""
    workdir, _ = trained_workdir
    long_store = extend_store(mini_store, tmp_path / "long.zarr", hours=260)
    rss = _rss_after_each_chunk(long_store, workdir, tmp_path / "full", 240, members=8)
    ds = xr.open_dataset(next((tmp_path / "full").glob("*.nc")))
    assert ds.sizes["lead_time"] == 240 and np.isfinite(ds.t2m.values).all()
    assert len(rss) == 20
    second_half_bytes = 120 * 8 * 32 * 32 * 18 * 4 / 2**20
    assert rss[-1] - rss[9] < 0.3 * second_half_bytes, (rss, second_half_bytes)


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
    forecasts come from the validation period only, and every λ of a K runs the same compiled rollout (λ traced)."""
    import pandas as pd

    from def_jax.forecast import run as forecast_run
    from def_jax.tuning import tune

    built = []
    original = forecast_run.build_program
    monkeypatch.setattr(forecast_run, "build_program", lambda spec, *a: built.append(spec) or original(spec, *a))
    workdir, _ = trained_workdir
    cfg = config(mini_store, members=3, lead_hours=2)
    cfg.sampler.steps = 2
    result = tune(cfg, workdir, tmp_path, scales=[0.2, 0.6, 1.0], walks=[1], every_hours=4, max_cycles=2,
                  log=lambda m: None)
    table = pd.read_csv(result["table"])
    assert list(table.scale) == [0.2, 0.6, 1.0] and (table.cycles == 2).all() and (table.perturbation == "def").all()
    assert result["best"]["mean_abs_log_ssr"] == table.mean_abs_log_ssr.min()
    assert (table.mean_ssr > 0).all() and np.isfinite(table.crps_over_deterministic_mae).all()
    inits = sorted(p.name for p in (tmp_path / "K1_lambda0.2" / "forecasts").glob("*.nc"))
    assert inits == ["forecast_20240602T16.nc", "forecast_20240602T20.nc"]  # data.val_period 2024-06-02T16–T23
    ensemble_programs = [s for s in built if s.perturbs]
    assert len(ensemble_programs) == 1 and ensemble_programs[0].guidance == "guided", built
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
