"""Test set-up: 4 virtual CPU devices, set before JAX initializes (ENVIRONMENT.md)."""

import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["JAX_NUM_CPU_DEVICES"] = "4"
_xla = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _xla:
    os.environ["XLA_FLAGS"] = (_xla + " --xla_force_host_platform_device_count=4").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

assert jax.device_count() == 4, f"tests expect 4 virtual CPU devices, got {jax.devices()}"


@pytest.fixture(autouse=True)
def _no_persistent_compilation_cache(monkeypatch):
    """Command-line runs started by tests neither read nor write the user's compilation cache."""
    monkeypatch.setenv("DEF_JAX_CACHE_DIR", "")
