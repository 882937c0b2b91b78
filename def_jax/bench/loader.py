"""``def-jax bench loader``: throughput of the Grain input pipeline against a raw Zarr read of the same bytes.

The pipeline (:func:`def_jax.data.pipeline.make_loader`: shuffled windows, random crops, normalization, time
encodings, statics, batching; ``workers`` Grain processes) is timed over ``num_batches`` batches after a first batch
that absorbs the start-up (opening the store, spawning workers). The raw read then reads, in this process and in the
same order, the same time slots, variables and ``y``/``x`` regions with ``zarr`` straight into NumPy — the floor of
what reading costs without anything the pipeline adds. Both run with the store in the OS page cache (the raw read
comes second), so the comparison is decompression + Python overhead, not disk.

Reported: samples/s and MB/s of each (MB = the state and forcing bytes read from the store, identical for both; the
batch bytes the pipeline outputs are listed too), the pipeline/raw ratio, and the first-batch latency.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional, Sequence

import zarr

from def_jax.data.pipeline import make_loader
from def_jax.data.source import WindowSource

MB = 1e6


def _raw_read(source: WindowSource, starts: Sequence[int], offsets: Sequence[Sequence[int]],
              crop: tuple[int, int]) -> tuple[float, int]:
    """Seconds and bytes to read the windows' variables on their regions with zarr (group opened beforehand)."""
    group = zarr.open_group(source.store, mode="r")
    arrays = [group[f.name] for f in source.state_fields + source.forcing_fields]
    span = (source.window_length - 1) * source.stride + 1
    h = crop[0] or source.grid_shape[0]
    w = crop[1] or source.grid_shape[1]
    nbytes = 0
    t0 = time.perf_counter()
    for i, (y0, x0) in zip(starts, offsets):
        t_sl, y_sl, x_sl = slice(i, i + span, source.stride), slice(y0, y0 + h), slice(x0, x0 + w)
        for arr in arrays:
            block = arr[(t_sl,) + (slice(None),) * (arr.ndim - 3) + (y_sl, x_sl)]  # [T, (L,) h, w]
            nbytes += block.nbytes
    return time.perf_counter() - t0, nbytes


def run_loader_bench(store: str | Path, *, history: int = 1, lead_steps: int = 1, batch_size: int = 4,
                     crop: Sequence[int] = (0, 0), workers: int = 0, num_batches: int = 20,
                     period: Optional[str] = None, normalization: str = "global", seed: int = 0,
                     in_memory: bool = False) -> dict[str, Any]:
    """Time ``num_batches`` pipeline batches and the raw Zarr read of the same windows; a JSON-able dict. With
    ``in_memory`` the period is read into memory on the first batch (``first_batch_s``) and the timed batches are
    sliced from it."""
    source = WindowSource(store, history=history, lead_steps=lead_steps, period=period, split="bench",
                          normalization=normalization, in_memory=in_memory)
    crop = (int(crop[0]), int(crop[1]))
    loader = make_loader(source, batch_size=batch_size, seed=seed, shuffle=True, num_epochs=None, crop_shape=crop,
                         worker_count=workers, shard_index=0, shard_count=1)
    t0 = time.perf_counter()
    it = iter(loader)
    first = next(it)
    first_s = time.perf_counter() - t0
    starts, offsets, batch_bytes = [], [], 0
    t0 = time.perf_counter()
    for _ in range(num_batches):
        batch = next(it)
        starts.extend(int(i) for i in batch["time_index"])
        offsets.extend(tuple(int(v) for v in o) for o in batch["crop_offset"])
        batch_bytes += sum(v.nbytes for v in batch.values())
    pipeline_s = time.perf_counter() - t0
    it.close()
    raw_s, raw_bytes = _raw_read(source, starts, offsets, crop)
    samples = len(starts)
    return {
        "store": str(store),
        "grid": list(source.grid_shape),
        "crop": list(crop),
        "sample_shapes": {k: list(v.shape[1:]) for k, v in first.items()},
        "channels": {"state": len(source.state_channels), "forcing": len(source.forcing_channels),
                     "static": len(source.static_channels)},
        "windows": len(source),
        "history": history,
        "lead_steps": lead_steps,
        "batch_size": batch_size,
        "workers": workers,
        "in_memory": bool(in_memory),
        "normalization": normalization,
        "num_batches": num_batches,
        "samples": samples,
        "first_batch_s": first_s,
        "pipeline_s": pipeline_s,
        "pipeline_samples_per_s": samples / pipeline_s,
        "pipeline_mb_per_s": raw_bytes / MB / pipeline_s,
        "batch_mb_per_s": batch_bytes / MB / pipeline_s,
        "raw_s": raw_s,
        "raw_samples_per_s": samples / raw_s,
        "raw_mb_per_s": raw_bytes / MB / raw_s,
        "read_mb_per_sample": raw_bytes / MB / max(samples, 1),
        "pipeline_over_raw": (samples / pipeline_s) / (samples / raw_s),
    }


def format_table(result: dict[str, Any]) -> str:
    """Two-column text table of the headline numbers."""
    crop = "full grid" if not any(result["crop"]) else "×".join(map(str, result["crop"]))
    rows = [
        ("store", f"{result['store']} ({'×'.join(map(str, result['grid']))}, {result['windows']} windows)"),
        ("sample", f"history {result['history']}, lead {result['lead_steps']}, crop {crop}, channels "
                   + ", ".join(f"{k} {v}" for k, v in result["channels"].items())),
        ("loader", f"batch {result['batch_size']}, {result['workers']} worker(s), {result['normalization']} "
                   f"normalization, {result['samples']} samples timed"),
        ("first batch", f"{result['first_batch_s']:.2f} s (start-up"
                        + (", the period read into memory)" if result.get("in_memory") else ")")),
        ("pipeline", f"{result['pipeline_samples_per_s']:.1f} samples/s, {result['pipeline_mb_per_s']:.1f} MB/s read"
                     f" ({result['batch_mb_per_s']:.1f} MB/s of batches)"),
        ("raw zarr read", f"{result['raw_samples_per_s']:.1f} samples/s, {result['raw_mb_per_s']:.1f} MB/s"),
        ("read per sample", f"{result['read_mb_per_sample']:.3f} MB"),
        ("pipeline / raw", f"{result['pipeline_over_raw']:.2f}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
