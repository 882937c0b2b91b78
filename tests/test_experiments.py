"""Launch scripts parse, and the multi-host start-up follows explicit settings or the launcher."""

import subprocess
from pathlib import Path

import pytest

from def_jax import parallel
from def_jax.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("experiments/**/*.sh"), *ROOT.glob("experiments/**/*.sbatch")])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


def test_scripts_print_usage():
    for script in ("experiments/slurm/launch_multihost.sh", "experiments/slurm/train.sbatch"):
        out = subprocess.run(["bash", str(ROOT / script)], capture_output=True, text=True)
        assert out.returncode == 2 and "usage:" in out.stderr


def test_single_process_without_launcher(monkeypatch):
    for var in parallel.CLUSTER_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "1")  # a one-task SLURM job is single-process
    parallel.initialize_distributed(log=lambda m: pytest.fail(f"initialized: {m}"))


def test_explicit_settings_are_checked():
    with pytest.raises(UserError, match="num_processes"):
        parallel.initialize_distributed("127.0.0.1:1234", 0, -1)
