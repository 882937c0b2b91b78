"""MetricLogger: JSON lines (append, resume, NaN, truncation), TensorBoard event files, console lines, W&B switch."""

from __future__ import annotations

import importlib.machinery
import io
import json
import math
import struct
import sys
import time
import types
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from def_jax.errors import UserError
from def_jax.training import logging as tlog
from def_jax.training.logging import MetricLogger, read_metrics


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_logger(tmp_path: Path, **kw) -> tuple[MetricLogger, io.StringIO]:
    stream = io.StringIO()
    kw.setdefault("total_steps", 5000)
    kw.setdefault("name", "forecaster")
    kw.setdefault("tensorboard", False)
    return MetricLogger(tmp_path, stream=stream, **kw), stream


def read_tfrecords(path: Path) -> list[bytes]:
    """Payloads of a TFRecord file: [u64 length][u32 masked crc][data][u32 masked crc] per record."""
    data, out, i = path.read_bytes(), [], 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        (len_crc,) = struct.unpack("<I", data[i + 8:i + 12])
        assert len_crc == tlog_masked_crc(data[i:i + 8])
        payload = data[i + 12:i + 12 + n]
        (data_crc,) = struct.unpack("<I", data[i + 12 + n:i + 16 + n])
        assert data_crc == tlog_masked_crc(payload)
        out.append(payload)
        i += 16 + n
    return out


def tlog_masked_crc(b: bytes) -> int:
    from tensorboardX.record_writer import masked_crc32c

    return masked_crc32c(b)


def read_scalars(logdir: Path) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every scalar in the event files under ``logdir``, parsed with tensorboardX's protobufs."""
    from tensorboardX.proto import event_pb2

    scalars = []
    files = sorted(logdir.rglob("*tfevents*"))
    assert files, f"no event file under {logdir}"
    for f in files:
        for payload in read_tfrecords(f):
            event = event_pb2.Event.FromString(payload)
            if event.HasField("summary"):
                for v in event.summary.value:
                    if v.HasField("simple_value"):
                        scalars.append((v.tag, event.step, v.simple_value))
    return scalars


# --- JSON lines -------------------------------------------------------------------------------------------------------


def test_json_lines_content_and_value_types(tmp_path):
    logger, _ = make_logger(tmp_path)
    with logger:
        logger.log(1, {"loss": 0.5, "lr": np.float32(1e-4), "grad_norm": jnp.asarray(2.0)})
        logger.log(2, {"loss": 0.25}, prefix="val")
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["step"] == 1 and first["split"] == "train" and first["loss"] == 0.5
    assert first["lr"] == pytest.approx(1e-4) and first["grad_norm"] == 2.0
    assert abs(first["time"] - time.time()) < 60
    assert json.loads(lines[1])["split"] == "val"


def test_resumed_run_appends(tmp_path):
    with make_logger(tmp_path, total_steps=4)[0] as first:
        first.log(1, {"loss": 1.0})
        first.log(2, {"loss": 0.9})
    with make_logger(tmp_path, total_steps=4, start_step=1)[0] as resumed:
        resumed.log(2, {"loss": 0.8})
        resumed.log(3, {"loss": 0.7})
    records = read_metrics(tmp_path)  # a directory means its metrics.jsonl
    assert [(r["step"], r["loss"]) for r in records] == [(1, 1.0), (2, 0.9), (2, 0.8), (3, 0.7)]
    latest = tlog.latest_per_step(records)
    assert {s: r["loss"] for s, r in latest.items()} == {1: 1.0, 2: 0.8, 3: 0.7}


def test_nonfinite_values_round_trip(tmp_path):
    with make_logger(tmp_path)[0] as logger:
        logger.log(1, {"loss": float("nan"), "up": np.inf, "down": jnp.asarray(-jnp.inf), "ok": 1.5})
    line = (tmp_path / "metrics.jsonl").read_text()
    raw = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert (raw["loss"], raw["up"], raw["down"]) == ("nan", "inf", "-inf")
    (rec,) = read_metrics(tmp_path / "metrics.jsonl")
    assert math.isnan(rec["loss"]) and rec["up"] == math.inf and rec["down"] == -math.inf and rec["ok"] == 1.5
    assert rec["split"] == "train"


def test_truncated_last_line_is_skipped_and_repaired_on_resume(tmp_path):
    with make_logger(tmp_path)[0] as logger:
        logger.log(1, {"loss": 1.0})
        logger.log(2, {"loss": 0.5})
    path = tmp_path / "metrics.jsonl"
    with open(path, "a") as f:
        f.write('{"step": 3, "time": 1.0, "split": "train", "lo')  # killed mid-write
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    # A resumed run cuts the fragment off instead of gluing its first record onto it.
    with make_logger(tmp_path, start_step=2)[0] as resumed:
        resumed.log(3, {"loss": 0.25})
    assert [(r["step"], r["loss"]) for r in read_metrics(path)] == [(1, 1.0), (2, 0.5), (3, 0.25)]
    # A complete record that only lost its newline is kept.
    path.write_text(path.read_text().rstrip("\n"))
    with make_logger(tmp_path, start_step=3)[0] as resumed:
        resumed.log(4, {"loss": 0.125})
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4]


def test_read_metrics_errors(tmp_path):
    with pytest.raises(UserError, match="no metrics file"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "time": 0, "split": "train"}\ngarbage\n{"step": 2}\n')
    with pytest.raises(UserError, match=r"metrics.jsonl:2"):
        read_metrics(tmp_path)


def test_read_metrics_split_filter(tmp_path):
    with make_logger(tmp_path)[0] as logger:
        logger.log(1, {"loss": 1.0})
        logger.log(1, {"loss": 2.0}, prefix="val")
    assert [r["loss"] for r in read_metrics(tmp_path, split="val")] == [2.0]


def test_bad_metrics_are_rejected(tmp_path):
    with make_logger(tmp_path)[0] as logger:
        with pytest.raises(ValueError, match="clash"):
            logger.log(1, {"step": 1.0})
        with pytest.raises(TypeError, match="'loss'"):
            logger.log(1, {"loss": "low"})
        with pytest.raises(TypeError, match="'vec'"):
            logger.log(1, {"vec": np.zeros(3)})


# --- TensorBoard ------------------------------------------------------------------------------------------------------


def test_tensorboard_scalars(tmp_path):
    with make_logger(tmp_path, tensorboard=True, config={"lr": 1e-3, "model": {"width": 32}})[0] as logger:
        logger.log(1, {"loss": 0.5, "lr": 1e-3})
        logger.log(2, {"loss": np.float32(0.25)})
        logger.log(2, {"loss": 0.125}, prefix="val")
    logdir = tmp_path / "tensorboard"
    scalars = read_scalars(logdir)
    assert ("train/loss", 1, 0.5) in scalars
    assert ("train/loss", 2, 0.25) in scalars
    assert ("val/loss", 2, 0.125) in scalars
    assert [(t, s) for t, s, _ in scalars if t == "train/lr"] == [("train/lr", 1)]
    assert next(v for t, s, v in scalars if t == "train/lr") == pytest.approx(1e-3)


def test_tensorboard_resume_keeps_both_event_files(tmp_path):
    """Two writers in the same second and directory must not overwrite each other's event file."""
    with make_logger(tmp_path, tensorboard=True)[0] as logger:
        logger.log(1, {"loss": 1.0})
    with make_logger(tmp_path, tensorboard=True, start_step=1)[0] as resumed:
        resumed.log(2, {"loss": float("nan")})
    files = list((tmp_path / "tensorboard").glob("*tfevents*"))
    assert len(files) == 2
    scalars = {(t, s): v for t, s, v in read_scalars(tmp_path / "tensorboard")}
    assert scalars[("train/loss", 1)] == 1.0 and math.isnan(scalars[("train/loss", 2)])


# --- console ----------------------------------------------------------------------------------------------------------


def test_progress_lines_rate_limit_rate_and_eta(tmp_path):
    clock = FakeClock()
    logger, out = make_logger(tmp_path, total_steps=200, console_every=50, clock=clock)
    with logger:
        for step in range(1, 201):
            clock.now += 30.0 if step == 1 else 0.5  # the first step compiles; then 2 steps/s
            logger.log(step, {"loss": 1.0 / step})
    lines = out.getvalue().splitlines()
    assert [ln.split()[2] for ln in lines] == ["1/200", "50/200", "100/200", "150/200", "200/200"]
    assert lines[0] == "[forecaster] step 1/200 (0%) | loss 1"  # no rate on the compiling step
    # 49 steps in 24.5 s = 2 step/s; 150 steps left → 75 s.
    assert lines[1] == "[forecaster] step 50/200 (25%) | loss 0.02 | 2 step/s | ETA 1m15s"
    assert lines[2] == "[forecaster] step 100/200 (50%) | loss 0.01 | 2 step/s | ETA 50s"
    assert lines[4] == "[forecaster] step 200/200 (100%) | loss 0.005 | 2 step/s | ETA 0s"


def test_progress_lines_when_logging_every_few_steps(tmp_path):
    clock = FakeClock()
    logger, out = make_logger(tmp_path, total_steps=100, console_every=20, clock=clock, start_step=30)
    with logger:
        for step in range(37, 100, 7):  # 37, 44, ..., 93
            clock.now += 7.0
            logger.log(step, {"loss": 0.012345678, "grad_norm": 12345.678})
        logger.log(100, {"loss": 0.01})  # the final step always prints
    lines = out.getvalue().splitlines()
    assert [int(ln.split()[2].split("/")[0]) for ln in lines] == [37, 44, 65, 86, 100]
    assert lines[0] == "[forecaster] step 37/100 (37%) | loss 0.01235 | grad_norm 1.235e+04"
    assert lines[1].endswith("| 1 step/s | ETA 56s")
    # All metrics go to the file whether printed or not.
    assert len(read_metrics(tmp_path)) == 10


def test_val_lines_print_immediately(tmp_path):
    logger, out = make_logger(tmp_path, name="diffusion", console_every=1000)
    with logger:
        logger.log(1, {"loss": 1.0})
        logger.log(2, {"loss": 0.5})  # rate-limited away
        logger.log(1200, {"loss": 0.0101, "persistence_loss": np.float64(0.031)}, prefix="val")
        logger.text("saved checkpoint 1200")
    assert out.getvalue().splitlines() == [
        "[diffusion] step 1/5000 (0%) | loss 1",
        "[diffusion] step 1200 val | loss 0.0101 | persistence_loss 0.031",
        "[diffusion] saved checkpoint 1200",
    ]


def test_format_duration():
    assert [tlog.format_duration(s) for s in (0, 45, 1120, 7500, 273600, math.inf)] == [
        "0s", "45s", "18m40s", "2h05m", "3d04h", "?"]


def test_format_progress_line_example():
    line = tlog.format_progress_line("forecaster", 1200, 5000, {"loss": 0.0123}, 3.4)
    assert line == "[forecaster] step 1200/5000 (24%) | loss 0.0123 | 3.4 step/s | ETA 18m38s"


# --- processes, lifecycle, W&B --------------------------------------------------------------------------------------


def test_non_main_process_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    logger, out = make_logger(workdir, tensorboard=True, is_main_process=False)
    with logger:
        logger.log(1, {"loss": 1.0})
        logger.log(1, {"loss": 1.0}, prefix="val")
        logger.text("hello")
    assert out.getvalue() == ""
    assert not workdir.exists()


def test_close_is_idempotent_and_log_after_close_fails(tmp_path):
    logger, _ = make_logger(tmp_path, tensorboard=True)
    logger.log(1, {"loss": 1.0})
    logger.close()
    logger.close()
    with pytest.raises(RuntimeError, match="closed"):
        logger.log(2, {"loss": 1.0})


def test_wandb_enabled_but_not_installed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # not importable, whatever the environment holds
    with pytest.raises(UserError, match="pip install wandb"):
        make_logger(tmp_path, wandb=True)
    with pytest.raises(UserError, match="pip install wandb"):  # on every host, so none waits for the others
        make_logger(tmp_path / "other", wandb=True, is_main_process=False)
    # Off by default: no import is attempted.
    make_logger(tmp_path)[0].close()


def test_wandb_calls_with_a_stub_module(tmp_path, monkeypatch):
    calls = []

    class Run:
        def log(self, data, step):
            calls.append(("log", data, step))

        def finish(self):
            calls.append(("finish",))

    stub = types.ModuleType("wandb")
    stub.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    stub.init = lambda **kw: calls.append(("init", kw)) or Run()
    monkeypatch.setitem(sys.modules, "wandb", stub)

    for _ in range(2):  # the second run (a resume) continues the same W&B run id
        with make_logger(tmp_path, wandb=True, wandb_project="def", config={"lr": 0.1})[0] as logger:
            logger.log(3, {"loss": 0.5}, prefix="val")
    inits = [c[1] for c in calls if c[0] == "init"]
    assert inits[0]["project"] == "def" and inits[0]["config"] == {"lr": 0.1} and inits[0]["resume"] == "allow"
    assert inits[0]["id"] == inits[1]["id"]
    assert ("log", {"val/loss": 0.5}, 3) in calls and calls.count(("finish",)) == 2
