"""Multi-process runs on this machine for the tests: environments of local processes with virtual CPU devices, and
a SLURM job's environment under which experiments/slurm/*.sbatch run unchanged (tests/launchers/srun starts the
tasks on localhost)."""

import os
import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The command-line runs that tests start compile with XLA's LLVM optimization level 0 (measured: a test compiling a
# tiny U-Net's value and gradient 41 -> 25.5 s; the SLURM training test 116 -> 102 s of CPU). What they check are
# files, logs and equality between runs that all compile alike. In-process tests compile at the default level, as
# def-jax runs for users: -O0 changed a float64 convergence-order result of test_samplers.py.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags(devices: int) -> str:
    """XLA_FLAGS of a test's command-line run with ``devices`` virtual CPU devices."""
    return f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}"


def jax_env(devices: int, cache="") -> dict:
    """This environment with ``devices`` virtual CPU devices per process and the given compilation cache ("": none)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices), DEF_JAX_CACHE_DIR=str(cache))
    env["XLA_FLAGS"] = xla_flags(devices)
    return env


def slurm_job(script: str, nodes: int, devices: int, cache, *args) -> tuple[list[str], dict]:
    """``bash experiments/slurm/SCRIPT ARGS`` as an allocation of ``nodes`` one-task nodes would run it, each task a
    local process with ``devices`` virtual CPU devices; a fresh coordinator port per call."""
    env = jax_env(devices, cache) | {
        "PATH": f"{Path(__file__).parent / 'launchers'}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_NNODES": str(nodes), "SLURM_NTASKS": str(nodes),
        "SLURM_TASKS_PER_NODE": f"1(x{nodes})", "SLURM_JOB_NODELIST": "localhost", "SLURM_SUBMIT_DIR": str(ROOT),
        "JAX_COORDINATOR_PORT": str(free_port())}
    return ["bash", str(ROOT / "experiments" / "slurm" / script), *map(str, args)], env
