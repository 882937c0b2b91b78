"""``def-jax prepare``: GRIB2 files → the Zarr store, in parallel, resumable.

1. Find the input files (globs and directories) and group them by valid time: NOAA's layout gives cycle, forecast hour
   and file kind from the path (the lowest forecast hour wins when cycles overlap); other files are dated from their
   first message.
2. Lay out a regular time axis (``dt_hours``) from the first to the last valid time; hours without files stay missing.
3. If the store does not exist: read the first time slot, create the store skeleton from it (grid, statics,
   provenance), write that slot. If it exists: check that it was made with the same catalogue and region.
4. Write every slot not yet written, in worker processes (or on a ``dask.distributed`` cluster), each worker writing its
   own slots. Errors follow ``on_error``: ``fail`` stops at the first one (the store stays resumable), ``skip`` marks
   the slot failed, logs it in ``<store>.log.jsonl`` and goes on.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import glob
import multiprocessing
import time as _time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from data_prep import store_writer
from data_prep.grib_read import GribReadError, Region, read_slot, scan_valid_time
from data_prep.layout import parse_noaa_path
from def_jax.catalogue import Catalogue, catalogue_from_json
from def_jax.data import schema
from def_jax.errors import UserError
from def_jax.geo import LambertConformal
from def_jax.progress import progress as progress_bar

ON_ERROR = ("fail", "skip")
FilesByKind = dict[Optional[str], list[Path]]


@dataclasses.dataclass
class PrepareOptions:
    sources: list[str]
    out: Path
    catalogue: Catalogue
    region: Region = dataclasses.field(default_factory=Region)
    workers: int = 1
    on_error: str = "fail"
    scheduler: Optional[str] = None  # dask.distributed scheduler address
    dt_hours: int = 1
    chunks: Optional[tuple[int, int]] = None
    compression: str = "zstd"
    progress: bool = True


# --- 1. inputs -----------------------------------------------------------------------------------------------------


def find_files(patterns: Iterable[str]) -> list[Path]:
    """Expand globs; a directory (given or matched) means every ``*.grib2``/``*.grb2``/``*.grib`` file below it."""
    files: list[Path] = []
    for pattern in patterns:
        found = []
        for match in map(Path, sorted(glob.glob(pattern, recursive=True))):
            if match.is_dir():
                found += sorted(p for ext in ("*.grib2", "*.grb2", "*.grib") for p in match.rglob(ext))
            elif match.is_file():
                found.append(match)
        if not found:
            raise UserError(f"--src {pattern!r}: matches no GRIB file")
        files.extend(found)
    return sorted(set(files))


def group_by_valid_time(files: list[Path], log: Callable[[str], None]) -> tuple[dict[np.datetime64, FilesByKind],
                                                                                   list[tuple[Path, str]]]:
    """Valid time → files by kind. Returns also the files that could not be dated (path, reason)."""
    noaa: dict[tuple, list] = defaultdict(list)  # (valid time, kind) -> [(fxx, path)]
    slots: dict[np.datetime64, FilesByKind] = defaultdict(lambda: defaultdict(list))
    undated = []
    for path in files:
        info = parse_noaa_path(path)
        if info is not None:
            noaa[(np.datetime64(info.valid_time, "ns"), info.kind)].append((info.fxx, path))
            continue
        try:
            slots[scan_valid_time(path)][None].append(path)
        except GribReadError as err:
            undated.append((path, str(err)))
    shadowed = 0
    for (valid, kind), candidates in noaa.items():
        candidates.sort()
        slots[valid][kind].append(candidates[0][1])
        shadowed += len(candidates) - 1
    if shadowed:
        log(f"{shadowed} file(s) from later forecast hours of overlapping cycles ignored (the shortest lead wins)")
    return {t: dict(k) for t, k in sorted(slots.items())}, undated


def time_axis(valid_times: list[np.datetime64], dt_hours: int) -> np.ndarray:
    """Regular axis from the first to the last valid time; every input time must fall on it."""
    start, end = min(valid_times), max(valid_times)
    step = np.timedelta64(dt_hours, "h")
    axis = np.arange(start, end + step, step).astype("datetime64[ns]")
    off = [t for t in valid_times if (t - start) % step]
    if off:
        raise UserError(f"valid time {off[0]} is not on the {dt_hours}-hourly axis starting {start}; "
                        f"set --dt-hours (config.data.dt_hours)")
    return axis


# --- 3. store creation / compatibility -------------------------------------------------------------------------------


def _grib_projection(grid_attrs: dict) -> Optional[LambertConformal]:
    """The Lambert conformal projection of cfgrib's grid attributes, None for another grid."""
    return LambertConformal.from_grib(grid_attrs) if LambertConformal.is_grib_lambert(grid_attrs) else None


def _crs_attrs(proj: Optional[LambertConformal], grid_attrs: dict) -> dict:
    """The store's CF grid-mapping attributes, with the GRIB grid keys kept beside them."""
    cf = proj.cf_attrs() if proj is not None else {"grid_mapping_name": "latitude_longitude"}
    return {**cf, **{k: v for k, v in grid_attrs.items() if isinstance(v, (int, float, str))}}


def _projection_xy(proj: Optional[LambertConformal], lat: np.ndarray, lon: np.ndarray,
                   region: Region) -> tuple[np.ndarray, np.ndarray]:
    """1-D projection coordinates of the (cropped) grid: metres on a Lambert grid, else grid indices."""
    if proj is not None:
        x, y = proj.forward(lat, lon)  # [ny, nx] each
        return x[0, :], y[:, 0]
    ny, nx = lat.shape
    return (region.x0 + region.stride * np.arange(nx)).astype(np.float64), \
        (region.y0 + region.stride * np.arange(ny)).astype(np.float64)


def _create_from_first_slot(opts: PrepareOptions, axis: np.ndarray, first_time, files: FilesByKind,
                            log: Callable) -> None:
    slot = read_slot(files, opts.catalogue, opts.region)
    proj = _grib_projection(slot.grid_attrs)
    x, y = _projection_xy(proj, slot.latitude, slot.longitude, opts.region)
    statics = {v.name: slot.fields[v.name] for v in opts.catalogue.by_role("static")}
    store_writer.create_store(
        opts.out, catalogue=opts.catalogue, times=axis, latitude=slot.latitude, longitude=slot.longitude, x=x, y=y,
        crs_attrs=_crs_attrs(proj, slot.grid_attrs), statics=statics, provenance=slot.provenance,
        dt_hours=opts.dt_hours,
        attrs={"source": "grib", "region": opts.region.describe(), "stride": opts.region.stride,
               "history": f"def-jax prepare from {len(opts.sources)} source pattern(s)"},
        chunks=opts.chunks, compression=opts.compression,
    )
    index = int(np.searchsorted(axis, first_time))
    store_writer.write_slot(opts.out, index, {k: v for k, v in slot.fields.items() if k not in statics})
    store_writer.append_log(opts.out, {"time": first_time, "status": "written", "files": _flat(files)})
    log(f"created {opts.out}: {len(axis)} hourly slots × {opts.catalogue.num_channels()} channels on a "
        f"{slot.latitude.shape[0]}×{slot.latitude.shape[1]} grid")


def _check_compatible(opts: PrepareOptions, axis: np.ndarray, first_files: Optional[FilesByKind] = None) -> None:
    """An existing store may only be completed by inputs of its own kind: catalogue, region, time axis and grid."""
    ds = schema.open_store(opts.out)
    stored = catalogue_from_json(ds.attrs["catalogue"])
    if not stored.same_variables(opts.catalogue):
        raise UserError(f"store {opts.out} was written with catalogue {stored.name!r}, which differs from the "
                        f"requested {opts.catalogue.name!r}; use a new --out")
    for key, want in (("region", opts.region.describe()), ("stride", opts.region.stride),
                      ("dt_hours", opts.dt_hours)):
        if ds.attrs.get(key) != want:
            raise UserError(f"store {opts.out} has {key}={ds.attrs.get(key)!r}, the request has {want!r}; "
                            f"use a new --out")
    outside = np.setdiff1d(axis, ds["time"].values)
    if outside.size:
        raise UserError(f"store {opts.out} covers {ds['time'].values[0]} to {ds['time'].values[-1]}; the inputs "
                        f"add {outside.size} time(s) outside it (first {outside[0]}); use a new --out")
    if first_files is not None:  # the inputs' grid (one slot read) must be the store's
        slot = read_slot(first_files, opts.catalogue, opts.region)
        lat = ds["latitude"].values
        if slot.latitude.shape != lat.shape or not (
                np.allclose(slot.latitude, lat, atol=1e-6) and np.allclose(slot.longitude, ds["longitude"].values,
                                                                           atol=1e-6)):
            raise UserError(f"store {opts.out} has a {lat.shape[0]}×{lat.shape[1]} grid starting at "
                            f"({lat[0, 0]:.4f}, {float(ds['longitude'].values[0, 0]):.4f}); the inputs give "
                            f"{slot.latitude.shape[0]}×{slot.latitude.shape[1]} starting at "
                            f"({slot.latitude[0, 0]:.4f}, {slot.longitude[0, 0]:.4f}); use a new --out")


# --- 4. slots --------------------------------------------------------------------------------------------------------


def _flat(files: FilesByKind) -> list[str]:
    return [str(p) for group in files.values() for p in group]


def process_slot(store: str, index: int, time: str, files: dict, catalogue_json: str, region: tuple) -> dict:
    """Read one valid time and write it into its slot (runs in a worker process or on a dask worker)."""
    t0 = _time.perf_counter()
    catalogue = catalogue_from_json(catalogue_json)
    by_kind = {k: [Path(p) for p in v] for k, v in files.items()}
    variables = [v for v in catalogue.variables if v.role != "static"]
    try:
        slot = read_slot(by_kind, catalogue, Region(*region), variables=variables, metadata=False)
        store_writer.write_slot(Path(store), index, slot.fields)
    except UserError as err:  # GribReadError included: the coordinator applies the error policy
        return {"index": index, "time": time, "ok": False, "error": str(err), "files": files}
    return {"index": index, "time": time, "ok": True, "seconds": _time.perf_counter() - t0, "files": files}


def _run_tasks(tasks: list[tuple], opts: PrepareOptions) -> Iterable[dict]:
    """Run ``process_slot`` over the tasks; yield results as they complete."""
    if opts.scheduler:
        try:
            from distributed import Client, as_completed
        except ImportError:  # pragma: no cover - distributed is a pinned dependency
            raise UserError("--scheduler needs dask.distributed") from None
        try:
            client = Client(opts.scheduler, timeout=30)
        except OSError as err:
            raise UserError(f"--scheduler {opts.scheduler}: cannot connect ({err})") from None
        with client:
            futures = [client.submit(process_slot, *t, pure=False) for t in tasks]
            for fut in as_completed(futures):
                yield fut.result()
        return
    if opts.workers <= 1:
        for t in tasks:
            yield process_slot(*t)
        return
    # spawn: the parent may have JAX initialized, and forking a multithreaded process is unsafe.
    with cf.ProcessPoolExecutor(opts.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(process_slot, *t) for t in tasks]
        try:
            for fut in cf.as_completed(futures):
                yield fut.result()
        except cf.process.BrokenProcessPool:
            raise UserError("a prepare worker process died (killed, out of memory, or -- when prepare() is called "
                            "from a script -- a missing `if __name__ == '__main__':` guard, which spawned worker "
                            "processes need); the store is resumable, rerun") from None
        finally:
            for fut in futures:
                fut.cancel()


def prepare(opts: PrepareOptions, log: Callable[[str], None] = print) -> dict:
    """Run the whole preparation; returns a summary (counts of slots by outcome)."""
    if opts.on_error not in ON_ERROR:
        raise UserError(f"--on-error must be one of {', '.join(ON_ERROR)}; got {opts.on_error!r}")
    files = find_files(opts.sources)
    slots, undated = group_by_valid_time(files, log)
    for _path, reason in undated:
        if opts.on_error == "fail":
            raise UserError(reason)
        log(f"skipped: {reason}")
    if not slots:
        raise UserError("no readable GRIB file among the inputs")
    axis = time_axis(list(slots), opts.dt_hours)
    store_writer.remove_stale_partials(opts.out)
    if opts.out.exists():
        first = next(iter(slots))
        try:
            _check_compatible(opts, axis, slots[first])
        except GribReadError as err:
            raise UserError(f"cannot read the first time {first} to check the store's grid: {err}") from None
    else:
        first = next(iter(slots))
        try:
            _create_from_first_slot(opts, axis, first, slots[first], log)
        except GribReadError as err:
            raise UserError(f"cannot create the store from the first time {first}: {err}") from None
    status = store_writer.read_status(opts.out)
    store_axis = schema.open_store(opts.out)["time"].values
    index_of = {t: i for i, t in enumerate(store_axis)}
    done = sum(1 for t in slots if status[index_of[t]] == schema.WRITTEN)
    todo = [(str(opts.out), index_of[t], str(t), {k: [str(p) for p in v] for k, v in f.items()},
             opts.catalogue.to_json(), dataclasses.astuple(opts.region))
            for t, f in slots.items() if status[index_of[t]] != schema.WRITTEN]
    missing = [t for t in axis if t not in slots]
    log(f"{len(slots)} valid times in the inputs: {done} already written, {len(todo)} to write"
        + (f"; {len(missing)} hour(s) have no input and stay missing" if missing else ""))
    summary = {"written": 0, "already": done, "failed": 0, "missing": len(missing) + len(undated),
               "slots": len(axis)}
    failures = []
    with progress_bar(len(todo), "prepare", "slot", opts.progress) as bar:
        for res in _run_tasks(todo, opts):
            bar.update(1)
            if res["ok"]:
                summary["written"] += 1
                store_writer.append_log(opts.out, {"time": res["time"], "status": "written", "files": res["files"],
                                                   "seconds": round(res["seconds"], 3)})
                continue
            store_writer.append_log(opts.out, {"time": res["time"], "status": "failed", "error": res["error"],
                                               "files": res["files"]})
            if opts.on_error == "fail":
                raise UserError(f"{res['error']} (slot {res['time']}; the store is resumable: fix or remove the "
                                f"file, or rerun with --on-error=skip)")
            store_writer.mark_slot(opts.out, res["index"], schema.FAILED)
            summary["failed"] += 1
            failures.append(res["error"])
    for msg in failures[:5]:
        log(f"failed: {msg}")
    log(f"{opts.out}: {summary['written']} slot(s) written now, {summary['already']} before, {summary['failed']} "
        f"failed, {summary['missing']} missing, of {summary['slots']}")
    return summary
