"""Launch scripts parse, and the multi-host start-up follows explicit settings or the launcher."""

import subprocess
from pathlib import Path

import numpy as np
import pytest
from local_launch import jax_env

from def_jax import parallel
from def_jax.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("experiments/**/*.sh"), *ROOT.glob("experiments/**/*.sbatch")])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


def test_scripts_print_usage():
    for script in ("experiments/slurm/launch_multihost.sh", "experiments/slurm/train.sbatch",
                   "experiments/slurm/forecast.sbatch"):
        out = subprocess.run(["bash", str(ROOT / script)], capture_output=True, text=True)
        assert out.returncode == 2 and "usage:" in out.stderr
    out = subprocess.run(["bash", str(ROOT / "experiments/slurm/launch_multihost.sh"), "127.0.0.1:1", "2", "0",
                          "evaluate"], capture_output=True, text=True)
    assert out.returncode == 2 and "evaluate does not run multi-host" in out.stderr


def slurm_env(nodes: int, tasks_per_node: int, gpus_per_node: int, proc: int, **extra) -> dict:
    """The variables a SLURM step (``srun``) sets for task ``proc`` of ``nodes`` × ``tasks_per_node`` tasks on nodes
    with ``gpus_per_node`` GPUs allocated (``--gpus-per-node``, gres: CUDA_VISIBLE_DEVICES lists the node's GPUs)."""
    env = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": f"gpu[01-{nodes:02d}]", "SLURM_JOB_NODELIST":
           f"gpu[01-{nodes:02d}]", "SLURM_NTASKS": str(nodes * tasks_per_node), "SLURM_PROCID": str(proc),
           "SLURM_LOCALID": str(proc % tasks_per_node), "SLURM_NODEID": str(proc // tasks_per_node),
           "SLURM_STEP_NUM_NODES": str(nodes), "SLURM_STEP_TASKS_PER_NODE": f"{tasks_per_node}(x{nodes})",
           "SLURM_TASKS_PER_NODE": f"{tasks_per_node}(x{nodes})", "SLURM_GPUS_ON_NODE": str(gpus_per_node),
           "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in range(gpus_per_node))}
    return env | extra


def test_slurm_two_nodes_of_four_gpus_one_task_per_node():
    """train.sbatch's layout: one task per node, each process drives all four GPUs of its node."""
    launches = [parallel.launch_from_environment(slurm_env(2, 1, 4, p)) for p in range(2)]
    assert [(x.launcher, x.num_processes, x.process_id, x.local_processes) for x in launches] == [
        ("SLURM", 2, 0, 1), ("SLURM", 2, 1, 1)]
    assert all(x.local_device_ids is None for x in launches)
    assert "all of its devices" in launches[0].layout


def test_slurm_two_nodes_of_four_gpus_one_task_per_gpu():
    launches = [parallel.launch_from_environment(slurm_env(2, 4, 4, p)) for p in range(8)]
    assert [x.process_id for x in launches] == list(range(8))
    assert [x.local_device_ids for x in launches] == [(0,), (1,), (2,), (3,)] * 2
    # tasks bound to one GPU each by the launcher (--gpus-per-task=1): each sees its GPU as device 0
    bound = parallel.launch_from_environment(slurm_env(2, 4, 4, 6, CUDA_VISIBLE_DEVICES="2"))
    assert bound.local_device_ids == (0,)
    # two tasks per node share the four GPUs: two each
    assert [parallel.launch_from_environment(slurm_env(2, 2, 4, p)).local_device_ids for p in range(4)] == [
        (0, 1), (2, 3), (0, 1), (2, 3)]
    with pytest.raises(UserError, match="3 processes on this node but 4 visible GPUs"):
        parallel.launch_from_environment(slurm_env(2, 3, 4, 1))
    uneven = slurm_env(2, 2, 4, 2, SLURM_STEP_TASKS_PER_NODE="2,1", SLURM_NODEID="1", SLURM_LOCALID="0",
                       SLURM_NTASKS="3")
    assert parallel.launch_from_environment(uneven).local_device_ids is None  # alone on the second node
    with pytest.raises(UserError, match="SLURM tasks per node 'four'"):
        parallel.launch_from_environment(slurm_env(2, 4, 4, 0, SLURM_STEP_TASKS_PER_NODE="four"))


def test_open_mpi_and_single_process_launches():
    ompi = {"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1:34911", "OMPI_COMM_WORLD_SIZE": "8",
            "OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_LOCAL_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}
    launch = parallel.launch_from_environment(ompi)
    assert (launch.launcher, launch.num_processes, launch.process_id, launch.local_device_ids) == (
        "Open MPI", 8, 5, (1,))
    assert parallel.launch_from_environment(ompi | {"OMPI_COMM_WORLD_LOCAL_SIZE": "1"}).local_device_ids is None
    assert parallel.launch_from_environment(slurm_env(1, 1, 4, 0)) is None  # a one-task SLURM job
    assert parallel.launch_from_environment({}) is None


def test_jax_keeps_every_device_when_given_an_empty_list(monkeypatch):
    """What initialize_distributed relies on in the pinned jax: under a SLURM launch JAX's detection restricts a
    process to device [SLURM_LOCALID] unless devices are given, and an empty list is kept (all devices visible)."""
    from jax._src import clusters

    for var, value in slurm_env(2, 1, 4, 1).items():
        monkeypatch.setenv(var, value)
    detect = clusters.ClusterEnv.auto_detect_unset_distributed_params
    address, n, pid, ids = detect(None, 2, 1, [], None, 300)
    assert (address.split(":")[0], n, pid, ids) == ("gpu01", 2, 1, [])
    assert detect(None, None, None, None, None, 300)[3] == [0]  # JAX alone: one GPU of the node


def test_single_process_without_launcher(monkeypatch):
    for var in ("SLURM_NTASKS", "OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "1")  # a one-task SLURM job is single-process
    assert parallel.initialize_distributed(log=lambda m: pytest.fail(f"initialized: {m}")) is None


def test_explicit_settings_are_checked():
    with pytest.raises(UserError, match="num_processes"):
        parallel.initialize_distributed("127.0.0.1:1234", 0, -1)


def test_gpu_check_runs_at_a_tiny_size(tmp_path, mini_store):
    """experiments/benchmarks/gpu_check.sh end to end on one CPU device (the check is for one GPU; the benchmarks on
    several devices are test_bench.py's and test_cli.py's) with the tiny config in the direct
    mode with rematerialized blocks (hrrr_4090's setting): bench sampler, bench train of both networks, info --memory
    and the summary, on the session's 32×32 store in place of the script's own (its synth → prepare → stats is the
    chain that test_synth.py runs). The real update programs run (one warm-up and one timed update each)."""
    import json

    (tmp_path / "store.zarr").symlink_to(mini_store)
    (tmp_path / "store.ready").touch()
    env = dict(jax_env(1),
               CONFIG=f"{ROOT / 'tests' / 'tiny_config.py'}:unused.zarr", SIZES="32",
               MEMBERS="4", SAMPLER_STEPS="2", TRAIN_STEPS="1", LEAD_STEPS="1",
               EXTRA=" ".join(["--config.diffusion.mode=direct", "--config.diffusion.direct_history=2",
                               "--config.diffusion.direct_residual=true", "--config.diffusion.conditional=network",
                               "--config.diffusion.p_uncond=0.1", "--config.denoiser.skip_coefficients=learned",
                               "--config.denoiser.null_prior=white", "--config.denoiser.remat=true",
                               "--config.forecaster.remat=true"]))
    run = subprocess.run(["bash", str(ROOT / "experiments/benchmarks/gpu_check.sh"), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert "backend: cpu" in summary["devices"]
    sampler, forecaster, diffusion = summary["rows"]
    assert sampler["what"].startswith("sampler (direct_residual, B=4, S=2)") and sampler["tflops"] > 0
    assert [r["attention"] for r in summary["rows"]] == ["blocked"] * 3  # auto on a CPU
    assert all(r["peak_gb"] is None for r in summary["rows"])  # XLA:CPU keeps no device memory statistics
    assert forecaster["estimate_gb"] > 0 and diffusion["estimate_gb"] > 0
    for model in ("forecaster", "diffusion"):
        (r,) = json.loads((tmp_path / f"train_{model}_32.json").read_text())["models"]
        assert r["updates_done"] == 2 and r["timed_updates"] == 1 and r["devices"] == 1 and r["global_batch"] == 4
        assert r["input_shape"][-3:-1] == [32, 32] and r["updates_per_s"] > 0 and r["gflop_per_update"] > 0
        assert np.isfinite(r["last_loss"]) and 0 < r["achieved_fraction_of_matmul"] < 2
    s = json.loads((tmp_path / "sampler_32.json").read_text())
    assert s["mode"] == "direct_residual" and s["walks"] == 0 and s["guided_batch"] == 8  # λ = 0.5: 2B per call
    assert s["shape"] == [4, 32, 32, 18] and s["devices"] == 1 and s["rollout_s"] > 0
    assert "members×steps/s" in run.stdout and "wrote" in run.stdout
