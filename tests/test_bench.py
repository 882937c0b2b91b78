"""The benchmarks against the authors' stack: def-jax's side of one training update, the torch side's matched
arguments, and ``def-jax bench authors``' one-line errors. (The comparison itself needs the separate torch environment
and is a benchmark: docs/BENCHMARKS.md.)"""

import sys
from pathlib import Path

import numpy as np
import pytest

from def_jax.bench import authors
from def_jax.bench.update import run_update_bench
from def_jax.errors import UserError
from def_jax.models.build import config_channels

ROOT = Path(__file__).resolve().parents[1]


def tiny(store="unused.zarr"):
    from tiny_config import get_config

    return get_config(store)


def test_update_bench_trains_the_network():
    """Four AdamW updates of ε_θ on one batch lower the loss (the updates do real work); the input channels are those
    the torch side is given for the same network, and G_φ's stand-in gets G_φ's inputs."""
    cfg = tiny()
    r = run_update_bench(cfg, "denoiser", batch=2, height=16, width=16, steps=4, matmul_reference=False,
                         log=lambda m: None)
    assert np.isfinite(r["loss"]) and r["loss"] < r["first_loss"]
    assert r["flops_per_update"] > 0 and r["update_s"] > 0 and len(r["update_times_s"]) == 4
    channels = config_channels(cfg)
    for network, in_channels in (("denoiser", r["in_channels"]),
                                 ("forecaster", channels.forecaster_inputs(int(cfg.data.history)))):
        args = authors.torch_arguments(cfg, "demo", network)
        value = {name: int(args[args.index(name) + 1]) for name in ("--state-channels", "--condition-channels")}
        assert value["--state-channels"] == r["out_channels"] == channels.state
        assert value["--state-channels"] + value["--condition-channels"] == in_channels, network


def test_matched_config_and_torch_arguments():
    cfg = authors.matched_config(tiny(), "large", steps=7, guidance_scale=0.3)
    assert cfg.denoiser.base_channels == cfg.forecaster.base_channels == 64
    assert cfg.denoiser.time_embedding_dim == 256 and not cfg.denoiser.linear_skip
    assert (cfg.sampler.name, cfg.sampler.order, cfg.sampler.steps, cfg.ensemble.guidance_scale) == \
        ("dpm_solver_pp", 2, 7, 0.3)
    args = authors.torch_arguments(cfg, "large", "denoiser")
    assert args[args.index("--ny") + 1] == "128" and args[args.index("--members") + 1] == "2"
    assert args[args.index("--channel-mults") + 1] == "1,2" and args[args.index("--attention-levels") + 1] == "1"
    bf16 = tiny()
    bf16.forecaster.dtype = "bfloat16"
    with pytest.raises(UserError, match="config.forecaster.dtype is bfloat16; the torch side runs float32"):
        authors.matched_config(bf16, "demo", steps=10, guidance_scale=0.5)


def test_bench_authors_errors(tmp_path):
    with pytest.raises(UserError, match=r"no torch interpreter at .*missing/python.*requirements.txt"):
        authors.run_authors_bench(tiny(), sizes=["demo"], cores=[0], torch_python=str(tmp_path / "missing/python"))
    python = Path(sys.executable)
    with pytest.raises(UserError, match=r"--sizes \['huge'\]: expected some of demo, large"):
        authors.run_authors_bench(tiny(), sizes=["huge"], cores=[0], torch_python=str(python))
    with pytest.raises(UserError, match=r"--cores \[4096\]: expected cores of this process"):
        authors.run_authors_bench(tiny(), sizes=["demo"], cores=[4096], torch_python=str(python))
