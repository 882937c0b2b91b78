"""``def-jax download``: fetch only the catalogue's GRIB messages of NOAA HRRR files, with Herbie.

Herbie (PyPI ``herbie-data``, an optional extra: ``pip install 'def-jax[download]'``) reads the ``.idx`` inventory next
to each HRRR file on AWS / Google / Azure / NOMADS and downloads the matching messages by HTTP byte ranges. Each
catalogue variable gives one regular expression per level (:meth:`Variable.idx_search`, e.g. ``:TMP:500 mb:``); the
expressions of one file kind are joined with ``|`` into Herbie's search string.

Every subset lands atomically in NOAA's layout (:func:`data_prep.layout.noaa_path`), exactly where ``def-jax prepare``
looks: Herbie writes into a hidden staging folder beside the target, the subset is checked message by message with
ecCodes (:func:`verify_subset`), and only then renamed into place. A file already in place is skipped (unless
``overwrite``), so an interrupted download can simply be run again.
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import shutil
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from data_prep.layout import KINDS, noaa_path
from def_jax.catalogue import Catalogue, Variable, level_str
from def_jax.errors import UserError

PRODUCTS = {"wrfprsf": "prs", "wrfsfcf": "sfc"}  # file kind -> Herbie ``product`` of model "hrrr"
SOURCES = ("aws", "google", "azure", "nomads", "pando", "pando2")  # Herbie's HRRR sources
HERBIE_MISSING = "def-jax download needs Herbie: pip install 'def-jax[download]' (herbie-data)"
MAX_FXX = 48  # HRRR runs to 48 h at 00/06/12/18 UTC, to 18 h otherwise


class Wanted(NamedTuple):
    """One expected GRIB message: a catalogue variable at one level, with its ``.idx`` regex."""

    variable: Variable
    level: float | None  # the level of a multi-level variable (or the variable's single ``level``)
    regex: str

    @property
    def label(self) -> str:
        """``t500 (TMP 500 mb)``: the channel and its inventory line, for error messages."""
        v = self.variable
        channel = f"{v.name}{level_str(self.level)}" if v.levels is not None else v.name
        text = v.idx_level.replace("{level}", level_str(self.level)) if self.level is not None else v.idx_level
        return f"{channel} ({v.idx_name} {text})"

    def matches(self, short_name: str, type_of_level: str, level: float, step_range: str) -> bool:
        """Whether a message with these ecCodes keys is this one (the keys ``prepare`` selects by)."""
        v = self.variable
        return (short_name == v.short_name and type_of_level == v.type_of_level
                and (self.level is None or float(level) == float(self.level))
                and (v.step_range is None or step_range == v.step_range))


def wanted_messages(catalogue: Catalogue, kind: str) -> list[Wanted]:
    """The messages of file kind ``kind`` (``wrfprsf``/``wrfsfcf``) that ``download`` fetches for ``catalogue``.

    Variables without ``idx_name`` and ``idx_level`` are left out (see :func:`search_strings`).
    """
    if kind not in KINDS:
        raise UserError(f"file kind must be one of {', '.join(KINDS)}; got {kind!r}")
    return [w for w in _all_wanted(catalogue, notes=False) if w.variable.source == kind]


def search_strings(catalogue: Catalogue) -> dict[str, str]:
    """Herbie's ``search`` regex per file kind: every catalogue message's ``.idx`` regex of that kind, joined by ``|``.

    Only kinds with at least one variable appear. Variables without ``idx_name``/``idx_level`` are skipped with a
    warning; a variable with ``idx_name`` but ``source`` None (or not an HRRR kind) is an error.
    """
    wanted = _all_wanted(catalogue, notes=True)
    out: dict[str, str] = {}
    for kind in KINDS:
        regexes = list(dict.fromkeys(w.regex for w in wanted if w.variable.source == kind))  # unique, in order
        if regexes:
            out[kind] = "|".join(regexes)
    return out


def _all_wanted(catalogue: Catalogue, notes: bool) -> list[Wanted]:
    wanted: list[Wanted] = []
    skipped: list[str] = []
    for v in catalogue:
        if v.idx_name is None and v.idx_level is None:
            skipped.append(v.name)
            continue
        if v.idx_name is None or v.idx_level is None:
            missing = "idx_level" if v.idx_level is None else "idx_name"
            raise UserError(f"catalogue variable {v.name!r} has no {missing!r}: give both 'idx_name' and 'idx_level' "
                            "as in the .idx inventory (e.g. TMP and '{level} mb')")
        if v.source not in KINDS:
            got = "no 'source'" if v.source is None else f"source {v.source!r}"
            raise UserError(f"catalogue variable {v.name!r} has {got}: set 'source' to wrfprsf or wrfsfcf to "
                            "download it")
        if "{level}" in v.idx_level and v.levels is None and v.level is None:
            raise UserError(f"catalogue variable {v.name!r}: idx_level {v.idx_level!r} has '{{level}}' but the "
                            "variable has no 'levels' or 'level'")
        for lev in (v.levels if v.levels is not None else (v.level,)):
            wanted.append(Wanted(v, lev, v.idx_search(lev)))
    if not wanted:
        raise UserError(f"catalogue {catalogue.name!r}: no variable has 'idx_name' and 'idx_level' (the .idx "
                        "inventory names HRRR downloads need): nothing to download")
    if notes and skipped:
        warnings.warn(f"catalogue {catalogue.name!r}: not downloading {', '.join(skipped)} (no 'idx_name'/"
                      "'idx_level' to find them in the .idx inventories)", UserWarning, stacklevel=3)
    return wanted


def verify_subset(path: str | Path, catalogue: Catalogue, kind: str, *, name: str | None = None) -> int:
    """Check that the GRIB2 file ``path`` holds exactly the catalogue's messages of file kind ``kind``.

    Messages are identified with ecCodes by shortName, typeOfLevel, level (and stepRange, if the variable sets one),
    the keys ``prepare`` selects by. Returns the number of messages; raises a :class:`UserError` naming the file
    (``name`` if given, for a staging file) and each missing or unexpected variable/level.
    """
    import eccodes

    shown = name if name is not None else str(path)
    wanted = wanted_messages(catalogue, kind)
    found: list[tuple[str, str, float, str]] = []
    try:
        with open(path, "rb") as f:
            while (h := eccodes.codes_grib_new_from_file(f)) is not None:
                try:
                    found.append((eccodes.codes_get(h, "shortName"), eccodes.codes_get(h, "typeOfLevel"),
                                  float(eccodes.codes_get(h, "level")), eccodes.codes_get(h, "stepRange")))
                finally:
                    eccodes.codes_release(h)
    except OSError as err:
        raise UserError(f"{shown}: cannot read: {err.strerror or err}") from None
    except eccodes.CodesInternalError as err:
        raise UserError(f"{shown}: truncated or corrupt GRIB data after {len(found)} complete messages: {err}") \
            from None
    # Most specific entries first, so a catch-all (no level, no stepRange) cannot take another entry's message.
    order = sorted(range(len(wanted)), key=lambda i: -(wanted[i].level is not None)
                   - (wanted[i].variable.step_range is not None))
    unused = list(range(len(found)))
    missing: set[int] = set()
    for i in order:
        hit = next((j for j in unused if wanted[i].matches(*found[j])), None)
        if hit is None:
            missing.add(i)
        else:
            unused.remove(hit)
    if missing or unused:
        parts = [(f"{shown}: expected {len(wanted)} GRIB messages ({kind}, catalogue {catalogue.name!r}), "
                  f"found {len(found)}")]
        if missing:
            parts.append("missing " + ", ".join(_missing_labels(wanted, missing)))
        if unused:
            extra = Counter(f"{s}/{t}/{level_str(lev)}/step {r}" for s, t, lev, r in (found[j] for j in unused))
            shown_extra = [k if n == 1 else f"{k} ×{n}" for k, n in extra.items()]
            more = f" and {len(shown_extra) - 10} more" if len(shown_extra) > 10 else ""
            parts.append("unexpected " + ", ".join(shown_extra[:10]) + more)
        raise UserError("; ".join(parts))
    return len(found)


def _missing_labels(wanted: list[Wanted], missing: set[int]) -> list[str]:
    """Labels of the missing messages in catalogue order; a multi-level variable missing at every level is one."""
    labels: list[str] = []
    for i, w in enumerate(wanted):
        if i not in missing:
            continue
        v = w.variable
        levels = [j for j, x in enumerate(wanted) if x.variable is v]
        if v.levels is not None and len(levels) > 1 and all(j in missing for j in levels):
            if i == levels[0]:
                labels.append(f"{v.name} ({v.idx_name} {v.idx_level}, all {len(levels)} levels)")
        else:
            labels.append(w.label)
    return labels


def parse_times(start: str, end: str, every_hours: int = 1) -> np.ndarray:
    """Initialization times from ``start`` to ``end`` (inclusive) every ``every_hours`` hours, as datetime64[h].

    ``start``/``end`` are ISO times on whole hours (``2020-12-14T00``, ``2020-12-14 06:00``, ``2020-12-14``).
    """
    t0, t1 = _hour(start, "start"), _hour(end, "end")
    if isinstance(every_hours, bool) or not isinstance(every_hours, (int, np.integer)) or every_hours < 1:
        raise UserError(f"every_hours must be a positive whole number of hours; got {every_hours!r}")
    if t1 < t0:
        raise UserError(f"end {t1} is before start {t0}")
    return np.arange(t0, t1 + np.timedelta64(1, "h"), np.timedelta64(int(every_hours), "h"))


def _hour(value: object, what: str) -> np.datetime64:
    try:
        t = np.datetime64(value.strip().replace(" ", "T") if isinstance(value, str) else value)
    except (ValueError, TypeError):
        raise UserError(f"{what} time {value!r}: expected an ISO time such as 2020-12-14T06 or 2020-12-14 06:00") \
            from None
    if np.isnat(t):
        raise UserError(f"{what} time {value!r}: expected an ISO time such as 2020-12-14T06")
    hour = t.astype("datetime64[h]")
    if hour != t:
        raise UserError(f"{what} time {value!r}: HRRR runs start on whole hours")
    return hour


def download_plan(catalogue: Catalogue, times: Iterable, out_dir: str | Path,
                  fxx: int = 0) -> list[tuple[np.datetime64, str, Path]]:
    """``(init time, file kind, target path)`` of every file ``download`` writes, in NOAA's layout."""
    sources = {w.variable.source for w in _all_wanted(catalogue, notes=False)}
    kinds = [k for k in KINDS if k in sources]
    return [(t, kind, noaa_path(out_dir, t, fxx, kind)) for t in _init_times(times) for kind in kinds]


def _init_times(times: Iterable) -> list[np.datetime64]:
    if isinstance(times, (str, np.datetime64, _dt.datetime)):
        times = [times]
    return [_hour(t, "init") for t in times]


def download(catalogue: Catalogue, times: Iterable, out_dir: str | Path, *, fxx: int = 0,
             source_priority: Sequence[str] = ("aws", "google", "azure", "nomads"), overwrite: bool = False,
             progress: bool = True) -> list[Path]:
    """Download the catalogue's messages of the HRRR files of each init time in ``times`` (forecast hour ``fxx``).

    One subset per init time and file kind goes to ``noaa_path(out_dir, init, fxx, kind)``; existing files are
    skipped unless ``overwrite``. Sources are tried in ``source_priority`` order (Herbie drops NOMADS for runs older
    than 14 days). Returns the paths written (skipped files are not listed). Each subset is verified with
    :func:`verify_subset` before it is renamed into place; any failure raises a :class:`UserError` naming the file.
    """
    searches = search_strings(catalogue)
    if isinstance(fxx, bool) or not isinstance(fxx, (int, np.integer)) or not 0 <= fxx <= MAX_FXX:
        raise UserError(f"fxx (forecast hour) must be a whole number from 0 to {MAX_FXX}; got {fxx!r}")
    priority = [str(s).lower() for s in ([source_priority] if isinstance(source_priority, str) else source_priority)]
    unknown = [s for s in priority if s not in SOURCES]
    if unknown or not priority:
        raise UserError(f"source_priority: unknown source(s) {unknown}; choose from {', '.join(SOURCES)}")
    plan = download_plan(catalogue, times, out_dir, fxx)
    now = np.datetime64(_dt.datetime.now(_dt.UTC).replace(tzinfo=None), "h")
    future = [str(t) for t, _, _ in plan if t > now]
    if future:
        raise UserError(f"init time {future[0]} is in the future (now {now} UTC)")
    Herbie = import_herbie()

    written: list[Path] = []
    for init, kind, target in plan:
        if target.exists() and not overwrite:
            _say(progress, f"exists, skipped: {target}")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".herbie-", dir=target.parent))
        try:
            fetched, source = _fetch(Herbie, init, kind, fxx, priority, searches[kind], staging, target)
            n = verify_subset(fetched, catalogue, kind, name=f"{target} (from {source})")
            fetched.replace(target)  # same file system: atomic
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        written.append(target)
        _say(progress, f"downloaded {target} ({n} messages, {target.stat().st_size / 1e6:.1f} MB from {source})")
    return written


def import_herbie():
    """Herbie's ``Herbie`` class; a :class:`UserError` if Herbie is missing or ecCodes was loaded first.

    Herbie needs pyproj, and pyproj's bundled PROJ/sqlite/curl clash with the copies that the ecCodes wheels
    (eckitlib) load globally: a process that loaded ecCodes (``import eccodes``/``cfgrib``, or xarray opening a file)
    before pyproj crashes (segfault or abort, at import or at exit). Call this before anything loads ecCodes.
    """
    if importlib.util.find_spec("herbie") is None:
        raise UserError(HERBIE_MISSING)
    if _grib_loaded_before_pyproj(list(sys.modules)):
        raise UserError("def-jax download: ecCodes was loaded before Herbie's pyproj in this process, and their "
                        "bundled PROJ libraries clash (crash); run the download in a fresh process, importing "
                        "Herbie before cfgrib/eccodes/xarray")
    from herbie import Herbie

    return Herbie


def _grib_loaded_before_pyproj(modules: Sequence[str]) -> bool:
    """Whether ``gribapi`` (ecCodes' library loader) comes before ``pyproj`` in ``modules`` (sys.modules order)."""
    if "gribapi" not in modules:
        return False
    return "pyproj" not in modules or modules.index("pyproj") > modules.index("gribapi")


def _fetch(Herbie, init: np.datetime64, kind: str, fxx: int, priority: list[str], search: str, staging: Path,
           target: Path) -> tuple[Path, str]:
    """Herbie's subset of one HRRR file, written under ``staging``; returns its path and the source used."""
    date = init.astype("datetime64[s]").astype(_dt.datetime)
    what = f"{target.name} (init {init}, f{fxx:02d})"
    try:
        h = Herbie(date, model="hrrr", product=PRODUCTS[kind], fxx=int(fxx), priority=list(priority),
                   save_dir=staging, verbose=False)
        if h.grib is None:
            raise UserError(f"HRRR file {what} not found at any of {', '.join(priority)}")
        if h.idx is None:
            raise UserError(f"HRRR file {what}: no .idx inventory at {h.grib_source}; cannot download a subset")
        fetched = h.download(search, verbose=False, errors="raise")
    except UserError:
        raise
    except (OSError, RuntimeError, ValueError) as err:  # requests' errors are OSErrors; Herbie raises the others
        raise UserError(f"HRRR file {what}: download failed: {str(err).strip().splitlines()[0]}") from err
    if fetched is None or not Path(fetched).is_file() or Path(fetched).stat().st_size == 0:
        raise UserError(f"HRRR file {what}: no message of the catalogue matched the .idx inventory at "
                        f"{h.grib_source}")
    return Path(fetched), str(h.grib_source)


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)
