"""``def-jax synth``: the embedded mini-HRRR, written as real GRIB2 files in NOAA's layout.

A sub-grid of the real HRRR Lambert grid (by default 64×64 native 3 km points centred on the southern Great Plains,
or the whole domain at a stride) is simulated hour by hour by :class:`data_prep.synth_dynamics.MiniHRRR` and every
catalogue variable is encoded like NOAA's f00 files (:mod:`data_prep.grib_write`): pressure-level fields into
``hrrr.tHHz.wrfprsf00.grib2``, surface fields into ``hrrr.tHHz.wrfsfcf00.grib2``, under ``hrrr.YYYYMMDD/conus/``.
Deterministic given the seed. Files are written atomically (temporary name, then rename).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from data_prep.grib_write import GribEncoder
from data_prep.layout import KINDS, noaa_path
from data_prep.store_writer import common_levels
from data_prep.synth_dynamics import WORLD_VERSION, MiniHRRR
from def_jax.catalogue import Catalogue
from def_jax.errors import UserError
from def_jax.geo import HRRR_CONUS, LambertGrid
from def_jax.progress import progress as progress_bar

DEFAULT_CENTER = (36.0, 262.5)  # degrees N, E: the Oklahoma–Kansas border, a convective heartland


def synth_grid(ny: Optional[int], nx: Optional[int], stride: int = 1,
               center: tuple[float, float] = DEFAULT_CENTER) -> LambertGrid:
    """The simulated grid: a ny×nx window of the HRRR grid at ``stride`` centred on ``center``, or, without ny/nx,
    the whole HRRR domain at ``stride``."""
    full = HRRR_CONUS
    if stride < 1:
        raise UserError(f"--stride must be >= 1; got {stride}")
    if ny is None and nx is None:
        return full.subgrid(0, 0, math.ceil(full.ny / stride), math.ceil(full.nx / stride), stride)
    if ny is None or nx is None or min(ny, nx) < 2:
        raise UserError(f"--ny and --nx go together and must be >= 2; got ny={ny}, nx={nx}")
    if (ny - 1) * stride >= full.ny or (nx - 1) * stride >= full.nx:
        raise UserError(f"a {ny}×{nx} window at stride {stride} does not fit the {full.ny}×{full.nx} HRRR grid")
    x, y = full.xy()
    cx, cy = full.projection.forward(*center)
    iy, ix = int(np.argmin(np.abs(y - cy))), int(np.argmin(np.abs(x - cx)))
    y0 = int(np.clip(iy - (ny - 1) * stride // 2, 0, full.ny - 1 - (ny - 1) * stride))
    x0 = int(np.clip(ix - (nx - 1) * stride // 2, 0, full.nx - 1 - (nx - 1) * stride))
    return full.subgrid(y0, x0, ny, nx, stride)


def _write_atomic(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def synth(out_dir: Path, start: str, hours: int, catalogue: Catalogue, *, ny: Optional[int] = 64,
          nx: Optional[int] = 64, stride: int = 1, seed: int = 0, progress: bool = True,
          log: Callable[[str], None] = print) -> list[Path]:
    """Simulate ``hours`` hourly analyses from ``start`` and write them; returns the files written."""
    if hours < 1:
        raise UserError(f"--hours must be >= 1; got {hours}")
    try:
        t0 = np.datetime64(start, "h")
    except ValueError:
        raise UserError(f"--start {start!r}: expected an ISO time such as 2024-06-01T00") from None
    missing_code = [v.name for v in catalogue.variables if v.grib is None or v.source not in KINDS]
    if missing_code:
        raise UserError(f"catalogue {catalogue.name!r}: {', '.join(missing_code)} lack GRIB codes or an HRRR file "
                        f"kind, so synth cannot encode them (use the built-in hrrr_expanded catalogue)")
    grid = synth_grid(ny, nx, stride)
    lat, lon = grid.latlon()
    levels = common_levels(catalogue)
    odd = [v.name for v in catalogue.variables if v.levels is not None and v.levels != levels]
    if odd:
        raise UserError(f"synth simulates one set of pressure levels; {', '.join(odd)} use(s) other levels")
    model = MiniHRRR(lat, lon, grid.dx, t0, seed, levels=levels)
    unknown = sorted({v.name for v in catalogue.variables} - set(model.fields()) - set(model.statics()))
    if unknown:
        raise UserError(f"the mini-HRRR does not simulate {', '.join(unknown)} (catalogue {catalogue.name!r})")
    log(f"mini-HRRR: {grid.ny}×{grid.nx} points at {grid.dx / 1000:g} km, {hours} h from {t0}, seed {seed} "
        f"-> {out_dir}")
    written = []
    statics = model.statics()
    with GribEncoder(grid) as enc, progress_bar(hours, "synth", "h", progress) as bar:
        for _ in range(hours):
            fields = {**model.fields(), **statics}
            messages: dict[str, list[bytes]] = {k: [] for k in KINDS}
            for var in catalogue.variables:
                values = fields[var.name]
                if var.levels is None:
                    messages[var.source].append(enc.encode(var.grib, var.level, values, model.time))
                else:
                    for i, lev in enumerate(var.levels):
                        messages[var.source].append(enc.encode(var.grib, lev, values[i], model.time))
            for kind, msgs in messages.items():
                if msgs:
                    path = noaa_path(out_dir, model.time, 0, kind)
                    _write_atomic(path, b"".join(msgs))
                    written.append(path)
            model.step()
            bar.update(1)
    meta = {"generator": "def-jax synth (mini-HRRR)", "world_version": WORLD_VERSION, "start": str(t0), "hours": hours, "seed": seed,
            "ny": grid.ny, "nx": grid.nx, "stride": stride, "dx_m": grid.dx, "lat_first": grid.lat_first,
            "lon_first": grid.lon_first, "catalogue": catalogue.name}
    _write_atomic(Path(out_dir) / "synth.json", (json.dumps(meta, indent=2) + "\n").encode())
    return written
