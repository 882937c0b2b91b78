"""``def-jax forecast`` on the tiny trained models: CF NetCDF and Zarr files, constraints, statistics, member
invariance, resumable cycles, and the same files from several processes and from a spatial mesh."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from local_launch import xla_flags
from tiny_config import forecast_config as config

from def_jax.errors import UserError
from def_jax.forecast.files import NetCDFFile, forecast_filename
from def_jax.forecast.run import forecast

EXE = str(Path(sys.executable).parent / "def-jax")
TINY = str(Path(__file__).resolve().parent / "tiny_config.py")
INIT = "2024-06-02T16"


@pytest.fixture(scope="module")
def cli_forecasts(mini_store, trained_workdir, tmp_path_factory):
    """Two cycles through the command line (4 virtual devices, 3 members: chunks padded to 4)."""
    workdir, _ = trained_workdir
    out = tmp_path_factory.mktemp("forecasts")
    cmd = [EXE, "forecast", f"--config={TINY}:{mini_store}", f"--workdir={workdir}", f"--init={INIT}", "--cycles=2",
           "--every=3", "--lead-hours=3", "--members=3", "--walks=1", "--guidance-scale=0.5", "--sampler-steps=3",
           f"--out={out}"]
    env = dict(__import__("os").environ, DEF_JAX_CACHE_DIR="", XLA_FLAGS=xla_flags(4))
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
    flags = [a for a in cmd[2:] if not a.startswith(("--workdir", "--out", "--config=", "--cycles"))]
    flags.append("--cycles=1")  # the first of the command line's two cycles
    job, env = slurm_job("forecast.sbatch", 2, 2, "", f"{TINY}:{mini_store}", workdir, *flags,
                         f"--out={tmp_path}")
    run = subprocess.run(job, env=env, capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert "SLURM launch, process 0 of 2" in log and "process 1 of 2" in log
    assert log.count("wrote ") == 1  # process 0 alone reports and writes
    for path in sorted(out.glob("*.nc"))[:1]:
        reference, got = data_variables(path), data_variables(tmp_path / path.name)
        for name, values in reference.items():
            np.testing.assert_array_equal(got[name], values, err_msg=f"{path.name}: {name}")
    job, env = slurm_job("forecast.sbatch", 2, 2, "", f"{TINY}:{mini_store}", workdir, *flags, f"--out={tmp_path}")
    again = subprocess.run(job, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("exists: skipped") == 1, again.stderr[-2000:]


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
    with pytest.raises(UserError, match=r"initial state needed at 2024-06-02T16:30, which is not one of the store's "
                                        r"times \(every 1 h from 2024-06-01T00:00\)"):
        forecast(config(mini_store), workdir, tmp_path, [np.datetime64("2024-06-02T16:30")])
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
