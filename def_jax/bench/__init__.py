"""Benchmarks behind ``def-jax bench`` (scripts that print numbers; results go to docs/BENCHMARKS.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional


def write_json(result: dict[str, Any], path: Path) -> None:
    """Write a benchmark result atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    tmp.replace(path)


def peak_device_memory_gb() -> Optional[float]:
    """The largest peak of bytes in use over this process's devices since it started, in GiB, from the backend's
    memory statistics (GPUs keep them); None where the backend keeps none (XLA:CPU)."""
    import jax

    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
    peaks = [p for p in peaks if p is not None]
    return max(peaks) / 2**30 if peaks else None


def attention_used(cfg_model: Any, grid: tuple[int, int]) -> str:
    """The attention implementation a network of the config's ``forecaster``/``denoiser`` section runs on this
    backend (``auto`` resolved)."""
    from def_jax.training.info import largest_attention_bytes

    return largest_attention_bytes(cfg_model, grid, 1)[0]
