"""``def-jax bench prepare``: preprocessing throughput against raw ecCodes decoding of the same files.

Runs ``prepare`` on a set of GRIB files into a scratch store (with the requested workers) and, separately, decodes
every message of the same files with ecCodes in one process (``codes_get_values``): the floor that any GRIB reader pays.
Reports slots/s and input MB/s for both, and the ratio.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import eccodes

from data_prep.prepare import PrepareOptions, find_files, prepare
from def_jax.catalogue import Catalogue


def decode_all(files: list[Path]) -> tuple[int, float]:
    """Decode every message of ``files``; returns (messages, seconds)."""
    n = 0
    t0 = time.perf_counter()
    for path in files:
        with open(path, "rb") as f:
            while (h := eccodes.codes_grib_new_from_file(f)) is not None:
                try:
                    eccodes.codes_get_values(h)
                    n += 1
                finally:
                    eccodes.codes_release(h)
    return n, time.perf_counter() - t0


def run_prepare_bench(sources: list[str], catalogue: Catalogue, *, workers: int = 1) -> dict[str, Any]:
    files = find_files(sources)
    mbytes = sum(p.stat().st_size for p in files) / 1e6
    scratch = Path(tempfile.mkdtemp(prefix="def_jax_bench_prepare_"))
    try:
        t0 = time.perf_counter()
        summary = prepare(PrepareOptions(sources=sources, out=scratch / "store.zarr", catalogue=catalogue,
                                         workers=workers, progress=False), log=lambda m: None)
        prepare_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    slots = summary["written"] + summary["already"]
    messages, decode_s = decode_all(files)
    return {
        "files": len(files), "input_mb": mbytes, "slots": slots, "workers": workers,
        "prepare_s": prepare_s, "prepare_slots_per_s": slots / prepare_s, "prepare_mb_per_s": mbytes / prepare_s,
        "decode_messages": messages, "decode_s": decode_s, "decode_mb_per_s": mbytes / decode_s,
        "decode_slots_per_s": slots / decode_s, "prepare_over_decode": prepare_s / decode_s,
    }


def format_table(r: dict[str, Any]) -> str:
    rows = [
        ("input", f"{r['files']} files, {r['input_mb']:.1f} MB, {r['slots']} time slots"),
        ("prepare", f"{r['prepare_s']:.2f} s with {r['workers']} worker(s): {r['prepare_slots_per_s']:.2f} slots/s, "
                    f"{r['prepare_mb_per_s']:.1f} MB/s"),
        ("raw ecCodes decode", f"{r['decode_s']:.2f} s in 1 process ({r['decode_messages']} messages): "
                               f"{r['decode_slots_per_s']:.2f} slots/s, {r['decode_mb_per_s']:.1f} MB/s"),
        ("prepare / decode", f"{r['prepare_over_decode']:.2f}× the time of decoding alone"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
