"""Training: sharded updates equal single-device ones; exact resume after SIGKILL, of one process and of a two-node
SLURM job (train.sbatch, each process resuming its own shard of the data) equal to one uninterrupted process;
checkpoints and their checks, divergence handling, and that short runs learn on the mini-HRRR."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from local_launch import jax_env, slurm_job
from tiny_config import get_config, learning_config

from def_jax import parallel
from def_jax.data.pipeline import make_loader
from def_jax.errors import UserError
from def_jax.training.logging import latest_per_step, read_metrics
from def_jax.training.loop import TrainingDiverged, train
from def_jax.training.run import build_run, stack_micro_batches
from def_jax.training.state import init_train_state, make_optimizer, make_train_step

EXE = str(Path(sys.executable).parent / "def-jax")
TINY = str(Path(__file__).resolve().parent / "tiny_config.py")


def cli(store, workdir, command="train-forecaster", *overrides, env=None):
    return [EXE, command, f"--config={TINY}:{store}", f"--workdir={workdir}", *overrides]


def sgd_config(store):
    cfg = get_config(store)
    t = cfg.training.forecaster
    t.optimizer, t.learning_rate, t.warmup_steps, t.lr_schedule = "sgd", 0.05, 0, "constant"
    return cfg


# --- sharding ---------------------------------------------------------------------------------------------------------


def run_steps(run, cfg, mesh_shape, batches):
    """Three plain-SGD updates of G_φ on a mesh (data, space) of the first devices; returns parameters and loss."""
    devices = jax.devices()[: mesh_shape[0] * mesh_shape[1]]
    mesh = parallel.make_mesh(*mesh_shape, devices=devices)
    optimizer, schedule = make_optimizer(cfg.training.forecaster, 100)
    rep = parallel.replicated(mesh)
    params = jax.device_put(run.params, rep)
    state = jax.jit(lambda p: init_train_state(p, optimizer, seed=0, ema_decay=0.0), out_shardings=rep)(params)
    step = jax.jit(make_train_step(run.loss_fn, optimizer, schedule, ema_decay=0.0), out_shardings=(rep, rep))
    for b in batches:
        state, metrics = step(state, parallel.global_batch(b, mesh, batch_axis=1), None)
    return jax.device_get(state.params), float(metrics["loss"])


@pytest.fixture(scope="module")
def sgd_run(mini_store):
    """The tiny G_φ run, three fixed training batches, and the single-device reference result."""
    cfg = sgd_config(mini_store)
    run = build_run("forecaster", cfg, Path("/nonexistent"), log=lambda m: None)
    loader = make_loader(run.train_source, batch_size=4, seed=0, shard_index=0, shard_count=1)
    with iter(loader) as it:
        batches = [stack_micro_batches([next(it)], None) for _ in range(3)]
    return run, cfg, batches, run_steps(run, cfg, (1, 1), batches)


@pytest.mark.parametrize("mesh_shape", [(4, 1), (1, 4), (2, 2)], ids=["data", "space", "data+space"])
def test_sharded_sgd_equals_one_device(sgd_run, mesh_shape):
    run, cfg, batches, (one, loss1) = sgd_run
    many, loss4 = run_steps(run, cfg, mesh_shape, batches)
    assert abs(loss1 - loss4) < 1e-5 * max(1.0, abs(loss1))
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(many), strict=True):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-4)
    moved = max(float(np.abs(a).max()) for a in jax.tree.leaves(one))
    assert moved > 0  # the updates did something


# --- whole runs --------------------------------------------------------------------------------------------------------


def test_short_training_learns(trained_workdir):
    """G_φ beats persistence on validation and ε_θ's validation loss falls, in 30 steps each."""
    tmp_path, summaries = trained_workdir
    summary = summaries["forecaster"]
    val = [r for r in read_metrics(tmp_path / "forecaster") if r["split"] == "val"]
    assert summary["step"] == 30 and len(val) == 2
    assert val[-1]["loss"] < 0.9 * val[-1]["persistence_mse"], val[-1]
    run_dir = tmp_path / "forecaster"
    assert (run_dir / "checkpoints" / "30").exists() and list((run_dir / "best").iterdir())
    assert json.loads((run_dir / "config.json").read_text())["forecaster"]["base_channels"] == 8
    assert list((run_dir / "tensorboard").glob("events.*"))
    assert summaries["diffusion"]["step"] == 30
    records = read_metrics(tmp_path / "diffusion")
    first = np.mean([r["loss"] for r in records if r["split"] == "train"][:3])
    val = [r["loss"] for r in records if r["split"] == "val"]
    # A plain ε-network starts at E‖ε‖² = 1 (zero-initialized output); with the exact skip the conditional samples
    # start at the DEF answer, so only the unconditional ones (p_uncond) carry loss; validation falls in 30 steps.
    assert first < 0.5 and val[-1] < val[0] < 0.5, (first, val)


def test_checkpoint_config_mismatch_is_named(mini_store, trained_workdir):
    tmp_path, _ = trained_workdir
    cfg = learning_config(mini_store)
    cfg.forecaster.base_channels = 16
    cfg.training.forecaster.max_steps = 40
    with pytest.raises(UserError, match=r"does not match the config: forecaster\.base_channels: 8 → 16"):
        train("forecaster", cfg, tmp_path, log=lambda m: None)
    cfg = learning_config(mini_store)
    cfg.diffusion.mode = "def"
    # with conditional samples ε_θ's training runs the frozen G_φ (random advancement): it must be the one the config
    # describes
    cfg.diffusion.p_uncond, cfg.diffusion.conditional = 0.5, "network"
    cfg.forecaster.predict_increment = False
    with pytest.raises(UserError, match=r"forecaster\.predict_increment: True → False"):
        train("diffusion", cfg, tmp_path, log=lambda m: None)


def test_divergence_stops_and_keeps_the_last_good_checkpoint(mini_store, tmp_path):
    cfg = sgd_config(mini_store)
    t = cfg.training.forecaster
    t.max_steps, t.checkpoint_every, t.eval_every, t.grad_clip = 8, 2, 100, 0.0
    t.learning_rate, t.warmup_steps = 1e30, 4  # step 1 at lr 0 (checkpointed at 2), then an explosion
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf).* at step \d+.*Last good checkpoint: step"):
        train("forecaster", cfg, tmp_path, log=lambda m: None)
    steps = sorted(int(p.name) for p in (tmp_path / "forecaster" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps, "no checkpoint before divergence"
    from def_jax.training.checkpoint import Checkpoints, abstract

    run = build_run("forecaster", cfg, tmp_path, log=lambda m: None)
    optimizer, _ = make_optimizer(t, 8)
    template = abstract(init_train_state(run.params, optimizer, seed=0, ema_decay=0.0))
    state, _, _ = Checkpoints(tmp_path / "forecaster", keep=3).restore(steps[-1], template)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


# --- processes ---------------------------------------------------------------------------------------------------------


def train_losses(run_dir):
    return {s: r["loss"] for s, r in latest_per_step(read_metrics(run_dir)).items()}


# Eight updates of the tiny G_φ (AdamW) with a checkpoint every 2 and validation at steps 4 and 8: the reference run
# and the runs that are killed and resumed.
RESUMABLE = ["--config.training.forecaster.max_steps=8", "--config.training.forecaster.checkpoint_every=2",
             "--config.training.forecaster.eval_every=4", "--config.training.forecaster.eval_batches=1"]


def val_losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir) if r["split"] == "val"]


@pytest.fixture(scope="module")
def uninterrupted(mini_store, tmp_path_factory):
    """One process on 4 devices, eight updates without interruption: (run dir, compilation cache, its output)."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    full = subprocess.run(cli(mini_store, tmp / "run", "train-forecaster", *RESUMABLE),
                          env=jax_env(4, cache=tmp / "xla_cache"), capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-2000:]
    return tmp / "run" / "forecaster", tmp / "xla_cache", full.stdout + full.stderr


def kill_after_first_checkpoint(proc: subprocess.Popen, run_dir: Path) -> int:
    """SIGKILL ``proc``'s whole process group as soon as the run's first checkpoint is complete; the step it had."""
    ckpts = run_dir / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir()):
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = max(int(p.name) for p in ckpts.glob("*") if p.name.isdigit())
    assert 2 <= killed_at < 8, killed_at
    return killed_at


def no_process_left(group: int, seconds: float = 15.0) -> bool:
    """Whether every live (non-zombie) process of the process group is gone within ``seconds``."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        ps = subprocess.run(["ps", "-g", str(group), "-o", "stat="], capture_output=True, text=True).stdout.split()
        if all(stat.startswith("Z") for stat in ps):
            return True
        time.sleep(0.2)
    return False


def assert_same_losses(reference: Path, run_dir: Path, rel: float) -> None:
    a, b = train_losses(reference), train_losses(run_dir)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for s in range(1, 9):
        assert a[s] == pytest.approx(b[s], rel=rel, abs=1e-9), (s, a[s], b[s])
    assert len(val_losses(reference)) == 2 and val_losses(reference) == pytest.approx(val_losses(run_dir), rel=rel)


def test_sigkill_and_resume_equals_an_uninterrupted_run(mini_store, tmp_path, uninterrupted):
    reference, cache, _ = uninterrupted
    env = jax_env(4, cache=cache)  # the reference run's compilation cache: nothing is compiled again
    command = cli(mini_store, tmp_path / "killed", "train-forecaster", *RESUMABLE)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    kill_after_first_checkpoint(proc, tmp_path / "killed" / "forecaster")
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout + resumed.stderr
    assert_same_losses(reference, tmp_path / "killed" / "forecaster", rel=1e-6)


def sbatch(mini_store, workdir, nodes, cache, *overrides) -> tuple[list[str], dict]:
    """experiments/slurm/train.sbatch on ``nodes`` pretend nodes of one task with 2 virtual CPU devices each."""
    return slurm_job("train.sbatch", nodes, 2, cache, "forecaster", f"{TINY}:{mini_store}", workdir, *overrides)


def test_slurm_job_killed_and_resubmitted_equals_one_process(mini_store, tmp_path, uninterrupted):
    """train.sbatch on two pretend nodes (tests/launchers/srun: one task each, 2 devices per task), SIGKILLed after
    its first checkpoint and submitted again: every training and validation loss equals the uninterrupted
    single-process run on 4 devices, which needs each process to resume its own shard of the data where it was."""
    reference, _, _ = uninterrupted
    cache = tmp_path / "xla_cache"
    command, env = sbatch(mini_store, tmp_path / "job", 2, cache, *RESUMABLE)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    kill_after_first_checkpoint(proc, tmp_path / "job" / "forecaster")
    assert no_process_left(proc.pid)
    command, env = sbatch(mini_store, tmp_path / "job", 2, cache, *RESUMABLE)  # resubmitted: a new coordinator port
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-3000:]
    assert "jax.distributed: SLURM launch, process 0 of 2 (one process per node, driving all of its devices); " \
           "2 local / 4 global devices" in out and "process 1 of 2" in out and "resuming" in out
    assert_same_losses(reference, tmp_path / "job" / "forecaster", rel=1e-5)
    # the checkpoint records each process's position in its own shard
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(tmp_path / "job" / "forecaster" / "checkpoints")
    data = manager.restore(8, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"]
    assert len(data["grain_per_process"]) == 2 and data["grain_per_process"][0] != data["grain_per_process"][1]


def test_resuming_with_another_process_count_is_named(tmp_path):
    from def_jax.training.loop import process_data_state

    saved = {"grain_per_process": ['{"a": 0}', '{"a": 1}']}
    assert process_data_state(saved, 1, 2, tmp_path) == b'{"a": 1}'
    assert process_data_state({"grain": '{"a": 0}'}, 0, 1, tmp_path) == b'{"a": 0}'  # a single-process checkpoint
    with pytest.raises(UserError, match="holds the data positions of 2 process.es.; resuming with 4"):
        process_data_state(saved, 0, 4, tmp_path)


def test_info_reports_parameters_flops_and_memory(capsys, tmp_path):
    from def_jax import cli

    out = tmp_path / "info.json"
    code = cli.main(["info", f"--config={TINY}:{tmp_path}/unused.zarr", "--memory", "--model=forecaster",
                     f"--out={out}"])
    text = capsys.readouterr().out
    assert code == 0 and "M parameters" in text and "GFLOP per forward on a 32×32 grid" in text and "GiB" in text
    report = json.loads(out.read_text())["reports"][0]
    assert report["parameters"] > 1000 and report["gflops_per_forward"] > 0
    assert report["memory_estimate_gb"] > report["memory_static_gb"] > 0 and report["memory_activations_gb"] > 0
    assert report["memory_xla_cpu_gb"] > 0
    # --nocompiled: the same estimate, without compiling the step for XLA's analysis
    assert cli.main(["info", f"--config={TINY}:{tmp_path}/unused.zarr", "--memory", "--nocompiled",
                     "--model=forecaster", f"--out={out}"]) == 0
    estimate = json.loads(out.read_text())["reports"][0]
    assert "XLA:CPU compiled" not in capsys.readouterr().out and "memory_xla_cpu_gb" not in estimate
    assert estimate["memory_estimate_gb"] == report["memory_estimate_gb"]
    assert cli.main(["info", f"--config={TINY}:{tmp_path}/unused.zarr", "--nocompiled"]) == 2
    assert "--nocompiled: it selects what --memory reports" in capsys.readouterr().err


def test_checkpoints_older_than_a_field_match_its_legacy_value():
    """A denoiser checkpoint written before ``denoiser.skip_coefficients`` existed was a learned skip: it loads with
    "learned" and is refused, naming the field, with "exact"."""
    from def_jax.training.checkpoint import config_differences

    fields = ("denoiser.",)
    saved = {"denoiser": {"linear_skip": True, "base_channels": 16}}
    learned = {"denoiser": {"linear_skip": True, "base_channels": 16, "skip_coefficients": "learned"}}
    exact = {"denoiser": {"linear_skip": True, "base_channels": 16, "skip_coefficients": "exact"}}
    assert config_differences(saved, learned, fields) == []
    assert config_differences(saved, exact, fields) == ["denoiser.skip_coefficients: 'learned' → 'exact'"]
    assert config_differences(exact, learned, fields) == ["denoiser.skip_coefficients: 'exact' → 'learned'"]
    with_prior = {"denoiser": {**exact["denoiser"], "null_prior": "spectral"}}
    assert config_differences(exact, with_prior, fields) == ["denoiser.null_prior: 'white' → 'spectral'"]
