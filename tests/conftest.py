"""Test set-up: 4 virtual CPU devices, set before JAX initializes (ENVIRONMENT.md)."""

import fcntl
import json
import os
import shutil
import tempfile

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["JAX_NUM_CPU_DEVICES"] = "4"
_xla = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _xla:
    os.environ["XLA_FLAGS"] = (_xla + " --xla_force_host_platform_device_count=4").strip()

import jax  # noqa: E402
import pytest  # noqa: E402
from tiny_config import TINY_PERIODS  # noqa: E402

assert jax.device_count() == 4, f"tests expect 4 virtual CPU devices, got {jax.devices()}"

# One compilation cache for this test session, in a fresh temporary folder: the many tests that build the same tiny
# training step or rollout again (a new jax.jit each run) load it instead of compiling it again. Every program is still
# compiled once per session, and nothing is read from or left in the user's cache (ENVIRONMENT.md: a second compile
# of the same program 11.5 s -> 1.2 s). The pytest-xdist workers share the folder of the process that started them
# (they inherit its environment), so a program one worker compiled is loaded by the other. JAX writes an entry without
# a lock; one read while the other worker is still writing it fails to decompress, and JAX's reader catches that,
# warns and compiles again (jax/_src/compiler.py, _cache_read: read in the source, not seen happen).
_CACHE_VARIABLE = "DEF_JAX_TEST_SESSION_XLA_CACHE"
if os.environ.get(_CACHE_VARIABLE) and os.environ.get("PYTEST_XDIST_WORKER"):
    _SESSION_CACHE_DIR = os.environ[_CACHE_VARIABLE]
else:
    _SESSION_CACHE = tempfile.TemporaryDirectory(prefix="def_jax_test_xla_")  # removed when this process ends
    _SESSION_CACHE_DIR = os.environ[_CACHE_VARIABLE] = _SESSION_CACHE.name
jax.config.update("jax_compilation_cache_dir", _SESSION_CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(autouse=True)
def _no_persistent_compilation_cache(monkeypatch):
    """Command-line runs started by tests neither read nor write the user's compilation cache."""
    monkeypatch.setenv("DEF_JAX_CACHE_DIR", "")


def built_once(tmp_path_factory, name: str, build):
    """A session fixture's folder, built once per test run: ``build(folder)`` → a JSON-able result.

    Under pytest-xdist every worker runs session fixtures itself; the workers share the run's base temporary folder,
    so the first to ask builds the folder there under a file lock while the others wait, then all reuse it (the
    pattern of xdist's documentation). The fixtures built this way are only read by the tests. A build that failed
    half-way is started again from an empty folder.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder, done = root / name, root / f"{name}.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            done.write_text(json.dumps(build(folder)))
        return folder, json.loads(done.read_text())


@pytest.fixture(scope="session")
def mini_store(tmp_path_factory):
    """A small prepared mini-HRRR store (synth → prepare → stats): 60 h of 32×32 points, hrrr_expanded on 2 levels.

    Periods: train 2024-06-01T00–T23 (+16 h), val 2024-06-02T16–T23, test 2024-06-03T00–11.
    """
    from data_prep.prepare import PrepareOptions, prepare
    from data_prep.stats import compute_stats
    from data_prep.synth import synth
    from def_jax.catalogue import load_catalogue

    def build(root):
        catalogue = load_catalogue("hrrr_expanded", (500.0, 850.0))
        quiet = lambda message: None  # noqa: E731
        synth(root / "grib", "2024-06-01T00", 60, catalogue, ny=32, nx=32, seed=3, progress=False, log=quiet)
        prepare(PrepareOptions([str(root / "grib")], root / "store.zarr", catalogue, workers=2, progress=False),
                log=quiet)
        compute_stats(root / "store.zarr", TINY_PERIODS["train"], progress=False, log=quiet)
        return None

    root, _ = built_once(tmp_path_factory, "mini_store", build)
    return root / "store.zarr"


@pytest.fixture(scope="session")
def trained_workdir(mini_store, tmp_path_factory):
    """A workdir with the tiny G_φ and then ε_θ trained for 30 steps each on the mini store (tiny_config's
    ``learning_config``); shared by the training and forecast tests. Returns (workdir, summaries by kind)."""
    from tiny_config import learning_config

    from def_jax.training.loop import train

    def build(workdir):
        cfg = learning_config(mini_store)
        quiet = lambda message: None  # noqa: E731
        return {kind: train(kind, cfg, workdir, log=quiet) for kind in ("forecaster", "diffusion")}

    return built_once(tmp_path_factory, "trained", build)


# The order in which `make test`'s two pytest-xdist workers (--dist loadfile --no-loadscope-reorder) take the test
# files: the longest first (measured with --durations=0), so that they finish together instead of one running the last
# long file alone; worker A starts with test_forecast.py, which builds the trained models, and worker B with files
# that do not need them, so that B does not wait on A's build of `trained_workdir` (`built_once`).
_LONGEST_FIRST = ("test_forecast.py", "test_samplers.py", "test_training.py", "test_forecast_modes.py",
                  "test_experiments.py", "test_models.py", "test_cli.py", "test_prepare.py", "test_rollout.py",
                  "test_perturbations.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
