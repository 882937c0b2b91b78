"""Training metrics: a JSON-lines file, TensorBoard scalars, optional Weights & Biases, and console progress lines.

One :class:`MetricLogger` per training run (G_φ "forecaster" or ε_θ "diffusion"). Each ``log(step, metrics)`` call

* appends one complete JSON line ``{"step", "time", "split", **metrics}`` to ``<workdir>/metrics.jsonl`` and flushes
  it, so a killed run leaves a readable file and a resumed run appends to it (:func:`read_metrics` reads it back);
* writes TensorBoard scalars ``<split>/<key>`` to ``<workdir>/tensorboard/`` through ``tensorboardX`` (no TensorFlow
  or PyTorch needed);
* logs to Weights & Biases when the caller enabled it (``wandb`` is imported only then);
* prints a progress line for training metrics at most every ``console_every`` steps, and one line per call for other
  splits (validation).

Only the main process (``is_main_process=True``, i.e. ``jax.process_index() == 0``) prints or writes anything; the
other hosts of a multi-host run get a logger that does nothing.

The formatting and JSON encoding are pure functions (``format_*``, ``encode_record``); the class holds the side
effects (files, writers, clock, stream).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, TextIO, Union

from def_jax.errors import UserError

METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_DIRNAME = "tensorboard"
WANDB_ID_FILENAME = "wandb_run_id"
RESERVED_KEYS = ("step", "time", "split")

_NONFINITE_TO_STR = {math.inf: "inf", -math.inf: "-inf"}
_STR_TO_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


# ---------------------------------------------------------------------------------------------------------------------
# Pure helpers: value conversion, JSON encoding, console formatting.


def to_float(key: str, value: Any) -> float:
    """``float(value)`` for a Python number, NumPy scalar or 0-d/size-1 JAX or NumPy array; TypeError naming ``key``."""
    try:
        return float(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"metric {key!r}: expected a scalar number, got {type(value).__name__} ({e})") from e


def encode_value(value: float) -> Union[float, str]:
    """A float as JSON allows it: NaN and ±inf (which JSON cannot represent) become the strings "nan"/"inf"/"-inf"."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return _NONFINITE_TO_STR[value]
    return value


def decode_value(value: Any) -> Any:
    """Inverse of :func:`encode_value`: "nan"/"inf"/"-inf" back to floats, anything else unchanged."""
    if isinstance(value, str) and value in _STR_TO_NONFINITE:
        return _STR_TO_NONFINITE[value]
    return value


def encode_record(step: int, wall_time: float, split: str, metrics: Mapping[str, float]) -> str:
    """One line of ``metrics.jsonl`` (with its newline): ``{"step", "time", "split", **metrics}``, strict JSON."""
    record: dict[str, Any] = {"step": int(step), "time": wall_time, "split": split}
    record.update((k, encode_value(v)) for k, v in metrics.items())
    return json.dumps(record, allow_nan=False) + "\n"


def decode_record(line: str) -> dict[str, Any]:
    """Parse one line of ``metrics.jsonl``; raises ValueError if it is not a complete JSON object."""
    record = json.loads(line)
    if not isinstance(record, dict) or "step" not in record:
        raise ValueError("not a metrics record")
    return {k: (v if k in RESERVED_KEYS else decode_value(v)) for k, v in record.items()}


def format_value(value: float) -> str:
    """4 significant digits: 0.01234567 → "0.01235", 1234567.0 → "1.235e+06", NaN → "nan"."""
    return f"{value:.4g}"


def format_duration(seconds: float) -> str:
    """A short duration: "45s", "18m40s", "2h05m", "3d04h"."""
    if not math.isfinite(seconds):
        return "?"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def _format_metrics(metrics: Mapping[str, float]) -> list[str]:
    return [f"{k} {format_value(v)}" for k, v in metrics.items()]


def format_progress_line(name: str, step: int, total_steps: int, metrics: Mapping[str, float],
                         steps_per_second: Optional[float] = None) -> str:
    """``[name] step 1200/5000 (24%) | loss 0.0123 | 3.4 step/s | ETA 18m40s``.

    Rate and ETA are left out when ``steps_per_second`` is None (the first line, whose step includes compilation).
    """
    percent = int(100 * step / total_steps)  # floor: 100% only at the end
    parts = [f"[{name}] step {step}/{total_steps} ({percent}%)", *_format_metrics(metrics)]
    if steps_per_second is not None and steps_per_second > 0:
        parts.append(f"{steps_per_second:.3g} step/s")
        parts.append(f"ETA {format_duration(max(0, total_steps - step) / steps_per_second)}")
    return " | ".join(parts)


def format_split_line(name: str, step: int, split: str, metrics: Mapping[str, float]) -> str:
    """``[name] step 1200 val | loss 0.0101 | persistence_loss 0.031`` (a non-training split, e.g. validation)."""
    return " | ".join([f"[{name}] step {step} {split}", *_format_metrics(metrics)])


# ---------------------------------------------------------------------------------------------------------------------
# Reading the JSON-lines file back.


def read_metrics(path: Union[str, Path], *, split: Optional[str] = None) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (or of ``<path>/metrics.jsonl`` when ``path`` is a directory).

    A truncated last line (a run killed in the middle of a write) is skipped; "nan"/"inf"/"-inf" become floats again.
    A resumed run appends to the file, so a step may appear more than once (the interrupted run's record first):
    :func:`latest_per_step` keeps the last one.

    Args:
      path: the file, or the workdir that holds it.
      split: keep only records of this split ("train", "val", ...); all when None.
    Raises:
      UserError: the file does not exist, or a line other than the last is not a metrics record.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILENAME
    if not path.is_file():
        raise UserError(f"{path}: no metrics file (expected the {METRICS_FILENAME} a training run writes in its workdir)")
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    # After split, a file ending in "\n" has "" last; otherwise the last element is an unterminated line.
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = decode_record(line)
        except ValueError as e:
            if number == len(lines):  # unterminated last line: a write cut short by a kill
                continue
            raise UserError(f"{path}:{number}: not a metrics record ({e})") from e
        if split is None or record.get("split") == split:
            records.append(record)
    return records


def latest_per_step(records: list[dict[str, Any]], split: str = "train") -> dict[int, dict[str, Any]]:
    """``{step: record}`` for one split, the last record of each step winning (a resumed run's over the earlier)."""
    return {int(r["step"]): r for r in records if r.get("split") == split}


def _repair_unterminated_tail(path: Path) -> None:
    """Make a ``metrics.jsonl`` end in a newline before appending to it.

    A run killed in the middle of a write leaves an unterminated last line; appending to it would glue the next record
    onto it. A complete record that only misses its newline gets one; a partial record is cut off.
    """
    if not path.is_file():
        return
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # Scan backwards for the last newline.
        pos, block = size, 1 << 16
        start = 0
        while pos > 0:
            lo = max(0, pos - block)
            f.seek(lo)
            chunk = f.read(pos - lo)
            i = chunk.rfind(b"\n")
            if i >= 0:
                start = lo + i + 1
                break
            pos = lo
        f.seek(start)
        tail = f.read()
        try:
            decode_record(tail.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            f.truncate(start)
        else:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")


# ---------------------------------------------------------------------------------------------------------------------
# The logger.


class MetricLogger:
    """Writes training and validation metrics to a JSON-lines file, TensorBoard, optionally W&B, and the console.

    Args:
      workdir: run directory; ``metrics.jsonl`` and ``tensorboard/`` go there (created if missing).
      total_steps: the step the run ends at (for the percentage and the ETA).
      name: the model being trained, "forecaster" or "diffusion"; prefixes console lines.
      tensorboard: write TensorBoard event files (tensorboardX).
      wandb: log to Weights & Biases too; needs ``pip install wandb`` (UserError otherwise).
      wandb_project: W&B project; None uses W&B's default (or ``WANDB_PROJECT``).
      config: the run's configuration as a plain dict, recorded in TensorBoard (as text) and W&B.
      console_every: print a training progress line at most once per this many steps (at the first multiple of it
        that a logged step reaches), besides the first step logged and the final step.
      is_main_process: False on the other hosts of a multi-host run: the logger then does nothing at all.
      start_step: the step a resumed run starts from (0 for a fresh run). The rate counts only steps this process ran,
        from its first logged step on (that step includes compilation); TensorBoard hides the earlier run's events at
        steps > ``start_step`` (its ``purge_step``), since the resumed run logs them again.
      stream: where console lines go (default ``sys.stdout``).
      clock: monotonic clock in seconds for the rate (tests replace it).

    Use as a context manager, or call :meth:`close` at the end.
    """

    def __init__(self, workdir: Union[str, Path], *, total_steps: int, name: str, tensorboard: bool = True,
                 wandb: bool = False, wandb_project: Optional[str] = None, config: Optional[dict] = None,
                 console_every: int = 50, is_main_process: bool = True, start_step: int = 0,
                 stream: Optional[TextIO] = None, clock: Callable[[], float] = time.monotonic):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if console_every < 1:
            raise ValueError(f"console_every must be >= 1, got {console_every}")
        if wandb and importlib.util.find_spec("wandb") is None:
            # Checked on every host, so that a multi-host run fails everywhere rather than hangs.
            raise UserError("Weights & Biases logging is on but wandb is not installed: pip install wandb "
                            "(or turn W&B logging off)")
        self.workdir = Path(workdir)
        self.total_steps = int(total_steps)
        self.name = name
        self.console_every = int(console_every)
        self.is_main_process = bool(is_main_process)
        self.start_step = int(start_step)
        self._stream = stream if stream is not None else sys.stdout
        self._clock = clock
        self._closed = False
        self._jsonl: Optional[TextIO] = None
        self._tb = None
        self._wandb_run = None
        # Console rate state: the last progress line's (step, clock time); None before the first train log.
        self._last_line_step: Optional[int] = None
        self._last_line_time: Optional[float] = None
        if not self.is_main_process:
            return

        self.workdir.mkdir(parents=True, exist_ok=True)
        jsonl_path = self.workdir / METRICS_FILENAME
        _repair_unterminated_tail(jsonl_path)
        self._jsonl = open(jsonl_path, "a", encoding="utf-8")
        try:
            if tensorboard:
                self._tb = self._open_tensorboard(config)
            if wandb:
                self._wandb_run = self._open_wandb(wandb_project, config)
        except BaseException:
            self.close()
            raise

    # -- writers at the edges ------------------------------------------------------------------------------------------

    def _open_tensorboard(self, config: Optional[dict]):
        try:
            from tensorboardX import SummaryWriter
        except ImportError as e:
            raise UserError("TensorBoard logging is on but tensorboardX is not installed: "
                            "pip install tensorboardX==2.6.5 (or turn TensorBoard logging off)") from e
        # tensorboardX names event files by the second and host and opens them with "wb": a unique suffix keeps two
        # writers started in the same second (a quick resume) from overwriting each other's file.
        writer = SummaryWriter(
            logdir=str(self.workdir / TENSORBOARD_DIRNAME), flush_secs=30,
            purge_step=self.start_step + 1 if self.start_step > 0 else None,
            filename_suffix=f".{self.name}.{uuid.uuid4().hex[:8]}")
        if config:
            text = json.dumps(config, indent=2, sort_keys=True, default=str)
            writer.add_text(f"{self.name}/config", "```\n" + text + "\n```", self.start_step)
        return writer

    def _open_wandb(self, project: Optional[str], config: Optional[dict]):
        import wandb  # noqa: PLC0415 (optional dependency, imported only when enabled)

        # One W&B run per workdir and model: its id is kept in the workdir so that a resumed run continues it.
        id_path = self.workdir / f"{WANDB_ID_FILENAME}_{self.name}"
        if id_path.is_file():
            run_id = id_path.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:12]
            id_path.write_text(run_id + "\n")
        return wandb.init(project=project, config=config, dir=str(self.workdir), id=run_id, resume="allow",
                          job_type=self.name, name=f"{self.workdir.name}-{self.name}")

    def _print(self, line: str) -> None:
        print(line, file=self._stream, flush=True)

    # -- public API ------------------------------------------------------------------------------------------------------

    def log(self, step: int, metrics: Mapping[str, Any], *, prefix: str = "train") -> None:
        """Record ``metrics`` at ``step`` for split ``prefix`` ("train", "val", ...): file, TensorBoard, W&B, console.

        Values may be Python numbers, NumPy scalars or 0-d JAX arrays (converted with ``float``, which waits for the
        device). NaN and ±inf are written too (as "nan"/"inf"/"-inf" in the JSON line), so a divergence is visible.
        """
        if self._closed:
            raise RuntimeError(f"MetricLogger[{self.name}] is closed")
        if not self.is_main_process:
            return
        step = int(step)
        clash = [k for k in metrics if k in RESERVED_KEYS]
        if clash:
            raise ValueError(f"metric names {clash} clash with the record fields {list(RESERVED_KEYS)}")
        values = {str(k): to_float(k, v) for k, v in metrics.items()}

        assert self._jsonl is not None
        self._jsonl.write(encode_record(step, time.time(), prefix, values))  # one write per complete line
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"{prefix}/{k}", v, step)
        if self._wandb_run is not None:
            self._wandb_run.log({f"{prefix}/{k}": v for k, v in values.items()}, step=step)

        if prefix == "train":
            self._maybe_print_progress(step, values)
        else:
            self._print(format_split_line(self.name, step, prefix, values))

    def _maybe_print_progress(self, step: int, values: Mapping[str, float]) -> None:
        now = self._clock()
        last = self._last_line_step
        due = (last is None or step == self.total_steps
               or step // self.console_every > last // self.console_every)
        if not due:
            return
        rate = None
        if last is not None and self._last_line_time is not None:
            elapsed = now - self._last_line_time
            if elapsed > 0 and step > last:
                rate = (step - last) / elapsed
        self._print(format_progress_line(self.name, step, self.total_steps, values, rate))
        self._last_line_step, self._last_line_time = step, now

    def text(self, message: str) -> None:
        """Print ``[name] message`` (main process only)."""
        if self.is_main_process:
            self._print(f"[{self.name}] {message}")

    def flush(self) -> None:
        """Flush the TensorBoard event file (events reach it through tensorboardX's writer thread; the JSON lines are
        flushed on every call already)."""
        if self._jsonl is not None:
            self._jsonl.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flush and close the file and the TensorBoard and W&B writers; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        tb, run, jsonl = self._tb, self._wandb_run, self._jsonl
        self._tb = self._wandb_run = self._jsonl = None
        try:
            if tb is not None:
                tb.close()
            if run is not None:
                run.finish()
        finally:
            if jsonl is not None:
                jsonl.close()

    def __enter__(self) -> "MetricLogger":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
