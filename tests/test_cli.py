"""The def-jax command line: config printing, overrides, one-line errors, bench sampler and train."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from def_jax import cli

ROOT = Path(__file__).resolve().parent.parent


def run_cli(capsys, *args):
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_config_prints_the_hrrr_4090_preset(capsys):
    code, out, err = run_cli(capsys, "config", "--config=configs/presets.py:hrrr_4090")
    assert code == 0 and err == ""
    sections = out.split("\n")
    denoiser = sections[sections.index("denoiser:") + 1:]
    assert "  base_channels: 64" in denoiser[: denoiser.index("diffusion:")]
    sampler = sections[sections.index("sampler:") + 1:]
    assert "  steps: 200" in sampler


def test_overrides_apply(capsys):
    code, out, _ = run_cli(capsys, "config", "--config=demo", "--config.sampler.steps=25", "--flat",
                           "--config.evaluation.refc_thresholds=30,40", "--config.sampler.t_end=0.002")
    assert code == 0
    assert "--config.sampler.steps=25" in out.splitlines()
    assert "--config.evaluation.refc_thresholds=(30, 40)" in out.splitlines()
    assert "--config.sampler.t_end=0.002" in out.splitlines()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config.denoiser.base_chanels=32"], "config.denoiser.base_chanels: no such field (did you mean "
                                                "denoiser.base_channels?)"),
        (["--config.sampler.steps=abc"], "--config.sampler.steps=abc"),
        (["--config.sampler.order=7"], "config.sampler: order must be one of 1, 2, 3; got 7"),
        (["--config.ensemble.guidance_scale=-1"], "config.ensemble.guidance_scale"),
        (["--config=configs/presets.py:hrrr_4091"], "unknown config variant 'hrrr_4091'"),
        (["--config=configs/nope.py:demo"], "no such config file"),
        (["--bogus=1"], "Unknown command line flag 'bogus'"),
        (["positional"], "takes no positional arguments"),
    ],
)
def test_user_errors_are_one_line(capsys, args, message):
    code, out, err = run_cli(capsys, "config", *args)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("def-jax: error: ") and message in lines[0], lines[0]


def test_unknown_commands_and_help(capsys):
    code, _, err = run_cli(capsys, "confg")
    assert code == 2 and "did you mean config?" in err
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and all(name in out for name in cli.COMMANDS) and "not built" not in out
    code, out, _ = run_cli(capsys, "forecast", "--help")
    assert code == 0 and "--lead_hours" in out and "--guidance_scale" in out


def test_gnu_style_flags_and_their_errors(capsys):
    """--lead-hours means --lead_hours; a bad value is a one-line error naming the flag."""
    code, _, err = run_cli(capsys, "forecast", "--config=demo", "--lead-hours=0")
    assert code == 2 and "lead_hours" in err and len(err.strip().splitlines()) == 1, err


def test_bench_sampler_writes_json(capsys, tmp_path):
    out_file = tmp_path / "bench.json"
    code, out, err = run_cli(capsys, "bench", "sampler", "--config=demo", "--grid=16x16", "--channels=4",
                             "--eps=conv", "--batch=4", "--repeats=1", "--config.sampler.steps=5", f"--out={out_file}")
    assert code == 0, err
    result = json.loads(out_file.read_text())
    assert result["nfe"] == 5 and result["shape"] == [4, 16, 16, 4] and result["output_finite"]
    assert result["devices"] == 4 and result["batch_sharded"]
    assert result["nfe_per_s"] > 0 and result["compile_s"] > 0 and result["flops_per_forward"] > 0
    assert "NFE/s" in out


def test_bench_sampler_with_the_unet_rollout(capsys, tmp_path):
    """The full benchmark: the config's U-Nets, guided batch, matmul reference, rollout overhead, memory.

    The tiny config is the demo's DEF setting, whose conditional branch is exact: one network call per member, so
    the guided batch is the batch (4), not twice it."""
    out_file = tmp_path / "bench.json"
    tiny = str(Path(__file__).parent / "tiny_config.py") + ":/nonexistent.zarr"
    code, out, err = run_cli(capsys, "bench", "sampler", f"--config={tiny}", "--grid=16x16", "--batch=4",
                             "--repeats=1", "--lead_steps=1", "--config.sampler.steps=2", "--config.ensemble.walks=1",
                             f"--out={out_file}")
    assert code == 0, err
    r = json.loads(out_file.read_text())
    assert r["eps"] == "unet" and r["shape"] == [4, 16, 16, 18] and r["guided_batch"] == 4 and r["nfe"] == 2
    assert r["member_steps_per_s"] > 0 and r["denoiser_gflop_per_sample"] > 0 and r["matmul_gflops_per_s"] > 0
    assert 0 < r["achieved_fraction_of_matmul"] < 2 and r["rollout_s"] > 0 and r["xla_rollout_bytes"] > 0
    assert r["devices"] == 4 and r["batch_sharded"] and "members × steps/s" in out and "overhead" in out
    assert r["mode"] == "def"


@pytest.mark.parametrize("preset", ["demo", "hrrr_expanded", "hrrr_4090", "hrrr_production", "era5_paper",
                                    "heldsuarez"])
def test_every_preset_forecasts_as_far_as_its_store(capsys, tmp_path, preset):
    """Each preset's settings pass every check of forecast: what stops it here is only that its store is absent."""
    code, _, err = run_cli(capsys, "forecast", f"--config={preset}", f"--workdir={tmp_path}",
                           f"--config.data.store={tmp_path / 'absent.zarr'}")
    assert code == 2 and err.strip() == f"def-jax: error: store {tmp_path / 'absent.zarr'}: does not exist (run " \
        "def-jax prepare first)", err


def test_bench_needs_a_known_target(capsys):
    code, _, err = run_cli(capsys, "bench", "trainer", "--config=demo")
    assert code == 2 and "bench needs one target: sampler" in err


def test_console_script_from_another_directory(tmp_path):
    """The installed `def-jax` finds configs/ from any working directory and exits 2 with one line on errors."""
    exe = Path(sys.executable).parent / "def-jax"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    ok = subprocess.run([exe, "config", "--config=configs/presets.py:hrrr_4090"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "base_channels: 64" in ok.stdout
    bad = subprocess.run([exe, "config", "--config.sampler.stepz=3"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "sampler.stepz" in bad.stderr


def test_data_commands_fail_in_one_line(capsys, tmp_path):
    code, _, err = run_cli(capsys, "download", "--start=2024-06-01T00", f"--out={tmp_path}")
    assert code == 2 and err.strip().count("\n") == 0 and "needs Herbie" in err
    code, _, err = run_cli(capsys, "stats", f"--store={tmp_path}/none.zarr")
    assert code == 2 and "does not exist (run def-jax prepare first)" in err
    code, _, err = run_cli(capsys, "synth", f"--out={tmp_path}", "--hours=0")
    assert code == 2 and "--hours must be >= 1" in err
    code, _, err = run_cli(capsys, "prepare", f"--src={tmp_path}", "--catalogue=nope")
    assert code == 2 and "catalogue 'nope': neither a built-in" in err


def test_bench_train_checks_the_batch_against_the_devices(capsys, tmp_path, mini_store):
    """The update programs themselves are timed by experiments/benchmarks/gpu_check.sh's test (test_experiments)."""
    tiny = str(Path(__file__).parent / "tiny_config.py") + f":{mini_store}"
    code, _, err = run_cli(capsys, "bench", "train", f"--config={tiny}", "--model=forecaster", "--batch=3",
                           f"--out={tmp_path / 'bench.json'}")
    assert code == 2 and "config.training.forecaster.batch_size=3 must be divisible by the 4 devices" in err
    code, _, err = run_cli(capsys, "train-diffusion", f"--config={tiny}", "--config.training.diffusion.batch_size=6",
                           f"--workdir={tmp_path / 'run'}")  # the same check in training, before anything is built
    assert code == 2 and "config.training.diffusion.batch_size=6 must be divisible by the 4 devices" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["bench", "sampler", "--grid=bad"], "--grid: expected HEIGHTxWIDTH such as 64x64; got 'bad'"),
        (["bench", "sampler", "--grid=0x4"], "--grid: expected HEIGHTxWIDTH such as 64x64; got '0x4'"),
        (["info", "--grid=16"], "--grid: expected HEIGHTxWIDTH such as 256x256; got '16'"),
    ],
)
def test_grid_flags_fail_in_one_line(capsys, args, message):
    code, out, err = run_cli(capsys, *args, "--config=demo")
    assert code == 2 and out == "" and err.strip() == f"def-jax: error: {message}", err


def test_cli_helpers():
    """The --grid parser and the --out default that the subcommands share (def_jax.cli_base)."""
    from absl import flags

    from def_jax.cli_base import Invocation, output_path, parse_grid

    assert parse_grid(None, (32, 48), example="64x64") == (32, 48)
    assert parse_grid(" 16 x 8 ", (0, 0), example="64x64") == (16, 8)
    assert parse_grid("16×8", (0, 0), example="64x64") == parse_grid("16,8", (0, 0), example="64x64") == (16, 8)
    fv = flags.FlagValues()
    flags.DEFINE_string("out", None, "", flag_values=fv)
    fv(["prog"])
    inv = Invocation(config=None, workdir=Path("run"), flags=fv, args=[])
    assert output_path(inv, "forecasts") == Path("run/forecasts")
    fv(["prog", "--out=elsewhere"])
    assert output_path(inv, "forecasts") == Path("elsewhere")


def test_subcommand_modules_do_not_import_the_entry_point():
    """cli.py lists the commands; the modules that define them import what they share from cli_base only."""
    import ast

    for name in ("cli_base", "cli_bench", "cli_data", "cli_forecast", "cli_train"):
        imported = set()  # every module named by an import anywhere in the file, `from a import b` as a and a.b
        for node in ast.walk(ast.parse((ROOT / "def_jax" / f"{name}.py").read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        assert "def_jax.cli" not in imported, name
