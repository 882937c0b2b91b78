"""``def-jax download`` offline: the catalogue's .idx regexes against real HRRR inventories, the layout, the time
range, the Herbie-missing error, and the post-download check on real GRIB2 bytes written with ecCodes."""

from __future__ import annotations

import csv
import functools
import gzip
import importlib.util
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from data_prep.download import (
    HERBIE_MISSING,
    _grib_loaded_before_pyproj,
    download,
    download_plan,
    parse_times,
    search_strings,
    verify_subset,
    wanted_messages,
)
from data_prep.layout import KINDS, noaa_path, parse_noaa_path
from def_jax.catalogue import Catalogue, load_catalogue
from def_jax.errors import UserError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
INVENTORY = SHARED / "hrrr_inventory"
HRRR_APCP = SHARED / "grib" / "subset_20201214_hrrr.t00z.wrfsfcf12.grib2"  # real HRRR: APCP 0-12 h and 11-12 h
CSV_KIND = {"wrfprsf": "prs", "wrfsfcf": "sfc"}


@functools.cache
def _inventory(kind: str) -> dict[int, list[dict[str, str]]]:
    """Rows of the real HRRR CONUS inventory of one file kind, by forecast hour."""
    path = INVENTORY / f"inventory__conus__{CSV_KIND[kind]}.csv.gz"
    if not path.exists():
        pytest.skip(f"shared data missing: {path}")
    by_hour: dict[int, list[dict[str, str]]] = defaultdict(list)
    with gzip.open(path, "rt", newline="") as f:
        for row in csv.DictReader(f):
            by_hour[int(row["forecast_hour"])].append(row)
    return dict(by_hour)


def _idx_lines(rows: list[dict[str, str]]) -> list[str]:
    """NOAA .idx lines (placeholder byte offsets and date): ``msg:offset:d=YYYYMMDDHH:VAR:LEVEL:FORECAST:``."""
    return [f"{r['grib_message']}:{1000 * i}:d=2020121400:{r['variable']}:{r['level']}:{r['forecast_valid']}:"
            for i, r in enumerate(rows)]


def _herbie_lines(rows: list[dict[str, str]]) -> list[str]:
    """What Herbie's ``inventory(search)`` actually searches: ``:VAR:LEVEL:FORECAST:`` (its ``search_this``)."""
    return [f":{r['variable']}:{r['level']}:{r['forecast_valid']}:" for r in rows]


@pytest.fixture(scope="module")
def hrrr() -> Catalogue:
    return load_catalogue("hrrr_expanded")


# --- search strings against the real inventories --------------------------------------------------------------------


def test_expected_message_counts(hrrr):
    """13 single-level sfc variables; 5 pressure-level variables × 13 levels in prs."""
    sfc = [v for v in hrrr if v.source == "wrfsfcf"]
    prs = [v for v in hrrr if v.source == "wrfprsf"]
    assert len(sfc) == 13 and all(v.levels is None for v in sfc)
    assert len(prs) == 5 and all(len(v.levels) == 13 for v in prs)
    assert len(wanted_messages(hrrr, "wrfsfcf")) == 13
    assert len(wanted_messages(hrrr, "wrfprsf")) == 65
    assert set(search_strings(hrrr)) == set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_each_entry_matches_exactly_one_message_at_every_hour(hrrr, kind):
    """Every variable/level regex finds exactly one message at f00 and every later hour (f01-f48)."""
    inventory = _inventory(kind)
    assert {0, 1, 2, 18, 48} <= set(inventory)
    problems = []
    for hour, rows in sorted(inventory.items()):
        lines = _idx_lines(rows)
        for w in wanted_messages(hrrr, kind):
            assert w.regex == w.variable.idx_search(w.level)
            hits = [line.split(":")[0] for line in lines if re.search(w.regex, line)]
            if len(hits) != 1:
                problems.append(f"f{hour:02d} {w.label}: messages {hits or 'none'}")
    assert not problems, "ambiguous or absent in the real inventory:\n" + "\n".join(problems)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hour", [0, 1, 2, 18, 48])
def test_search_string_selects_the_expected_messages(hrrr, kind, hour):
    """The joined search string selects exactly the catalogue's messages, in .idx lines and in Herbie's form."""
    rows = _inventory(kind)[hour]
    search = search_strings(hrrr)[kind]
    wanted = wanted_messages(hrrr, kind)
    expected = {r["grib_message"] for r in rows
                for w in wanted if re.search(w.regex, _idx_lines([r])[0])}
    selected = {line.split(":")[0] for line in _idx_lines(rows) if re.search(search, line)}
    assert len(selected) == len(wanted) == {"wrfsfcf": 13, "wrfprsf": 65}[kind]
    assert selected == expected
    herbie = [i for i, line in enumerate(_herbie_lines(rows)) if re.search(search, line)]
    assert {rows[i]["grib_message"] for i in herbie} == selected


def test_f00_message_numbers(hrrr):
    """Spot checks against the real f00 inventories (message numbers of wrfsfcf00 / wrfprsf00)."""
    def number(kind, regex):
        return [r["grib_message"] for r, line in zip(_inventory(kind)[0], _idx_lines(_inventory(kind)[0]))
                if re.search(regex, line)]
    assert number("wrfsfcf", hrrr["t2m"].idx_search()) == ["71"]
    assert number("wrfsfcf", hrrr["pwat"].idx_search()) == ["107"]  # the parentheses are escaped
    assert number("wrfsfcf", hrrr["orog"].idx_search()) == ["63"]  # HGT:surface, not HGT:cloud base etc.
    assert number("wrfprsf", hrrr["t"].idx_search(50)) == number("wrfprsf", ":TMP:50 mb:")  # not 500 mb
    assert number("wrfprsf", hrrr["t"].idx_search(50)) != number("wrfprsf", ":TMP:500 mb:")


# --- catalogue checks -------------------------------------------------------------------------------------------------


def _user(*variables: dict) -> Catalogue:
    return Catalogue.from_dict({"name": "mine", "variables": list(variables)})


def test_variables_without_idx_name_are_skipped_with_a_note():
    cat = _user({"name": "t", "shortName": "t", "typeOfLevel": "isobaricInhPa", "levels": [500, 850],
                 "source": "wrfprsf", "idx_name": "TMP", "idx_level": "{level} mb"},
                {"name": "apcp", "shortName": "tp", "typeOfLevel": "surface", "stepRange": "0-1"})
    with pytest.warns(UserWarning, match=r"not downloading apcp \(no 'idx_name'"):
        assert search_strings(cat) == {"wrfprsf": ":TMP:500 mb:|:TMP:850 mb:"}


def test_source_none_is_an_error_naming_the_variable():
    cat = _user({"name": "t2m", "shortName": "2t", "typeOfLevel": "heightAboveGround", "level": 2,
                 "idx_name": "TMP", "idx_level": "2 m above ground"})
    with pytest.raises(UserError, match=r"'t2m' has no 'source': set 'source' to wrfprsf or wrfsfcf to download it"):
        search_strings(cat)
    with pytest.raises(UserError, match="nothing to download"):
        search_strings(load_catalogue("era5_paper"))


# --- times and layout ------------------------------------------------------------------------------------------------


def test_parse_times():
    times = parse_times("2020-12-14T00", "2020-12-14 12:00", 6)
    assert times.dtype == np.dtype("datetime64[h]")
    assert [str(t) for t in times] == ["2020-12-14T00", "2020-12-14T06", "2020-12-14T12"]
    assert list(parse_times("2020-12-14", "2020-12-14T02", 1)) == list(np.arange("2020-12-14T00", "2020-12-14T03",
                                                                                 dtype="datetime64[h]"))
    with pytest.raises(UserError, match="end 2020-12-13T00 is before start 2020-12-14T00"):
        parse_times("2020-12-14T00", "2020-12-13T00", 1)
    with pytest.raises(UserError, match="whole hours"):
        parse_times("2020-12-14T00:30", "2020-12-14T06", 1)
    with pytest.raises(UserError, match="start time 'tomorrow'"):
        parse_times("tomorrow", "2020-12-14T06", 1)
    for bad in (0, -3, 1.5):
        with pytest.raises(UserError, match="every_hours must be a positive whole number"):
            parse_times("2020-12-14T00", "2020-12-14T06", bad)


def test_plan_follows_noaa_layout(hrrr, tmp_path):
    times = parse_times("2020-12-31T18", "2021-01-01T06", 6)
    plan = download_plan(hrrr, times, tmp_path, fxx=3)
    assert len(plan) == 3 * 2
    for init, kind, path in plan:
        assert path == noaa_path(tmp_path, init, 3, kind)
        parsed = parse_noaa_path(path)
        assert parsed is not None and (parsed.init_time, parsed.fxx, parsed.kind) == (init, 3, kind)
    assert plan[0][2] == tmp_path / "hrrr.20201231" / "conus" / "hrrr.t18z.wrfprsf03.grib2"
    assert plan[-1][2] == tmp_path / "hrrr.20210101" / "conus" / "hrrr.t06z.wrfsfcf03.grib2"


@pytest.mark.skipif(importlib.util.find_spec("herbie") is not None, reason="Herbie is installed")
def test_download_without_herbie_is_a_user_error(hrrr, tmp_path):
    with pytest.raises(UserError) as err:
        download(hrrr, ["2020-12-14T00"], tmp_path, progress=False)
    assert str(err.value) == HERBIE_MISSING
    assert not any(tmp_path.iterdir())


def test_ecCodes_before_pyproj_is_detected():
    """ecCodes' wheels load PROJ/sqlite/curl globally; pyproj (Herbie) imported after them crashes the process."""
    assert _grib_loaded_before_pyproj(["sys", "gribapi", "gribapi.bindings", "eccodes"])
    assert _grib_loaded_before_pyproj(["gribapi", "pyproj"])
    assert not _grib_loaded_before_pyproj(["pyproj", "herbie", "gribapi"])
    assert not _grib_loaded_before_pyproj(["numpy", "xarray"])


def test_download_checks_arguments_first(hrrr, tmp_path):
    with pytest.raises(UserError, match="unknown source"):
        download(hrrr, ["2020-12-14T00"], tmp_path, source_priority=("aws", "s3"), progress=False)
    with pytest.raises(UserError, match="fxx"):
        download(hrrr, ["2020-12-14T00"], tmp_path, fxx=49, progress=False)
    with pytest.raises(UserError, match="in the future"):
        download(hrrr, ["2999-01-01T00"], tmp_path, progress=False)


# --- verify_subset on real GRIB2 bytes -------------------------------------------------------------------------------


def _write_grib(path: Path, catalogue: Catalogue, kind: str, skip: tuple[str, ...] = (), repeat: tuple[str, ...] = ()):
    """A GRIB2 file of the catalogue's messages of ``kind`` (ecCodes' GRIB2 sample grid), minus the channels in
    ``skip``, with those in ``repeat`` twice; encoded like NCEP's (centre 7, isobaric levels in Pa)."""
    import eccodes

    with open(path, "wb") as f:
        for w in wanted_messages(catalogue, kind):
            channel = w.label.split(" ")[0]
            if channel in skip:
                continue
            h = eccodes.codes_grib_new_from_samples("GRIB2")
            g = w.variable.grib
            for key, value in (("centre", 7), ("discipline", g.discipline), ("parameterCategory", g.category),
                               ("parameterNumber", g.number), ("typeOfFirstFixedSurface", g.first_surface)):
                eccodes.codes_set(h, key, value)
            if w.level is not None:
                eccodes.codes_set(h, "scaleFactorOfFirstFixedSurface", 0)
                eccodes.codes_set(h, "scaledValueOfFirstFixedSurface",
                                  round(w.level * (100 if g.first_surface == 100 else 1)))
            for _ in range(2 if channel in repeat else 1):
                eccodes.codes_write(h, f)
            eccodes.codes_release(h)


@pytest.mark.parametrize("kind", KINDS)
def test_verify_subset_passes_a_complete_file(hrrr, kind, tmp_path):
    path = tmp_path / f"{kind}.grib2"
    _write_grib(path, hrrr, kind)
    assert verify_subset(path, hrrr, kind) == len(wanted_messages(hrrr, kind))


def test_verify_subset_names_missing_and_unexpected_messages(hrrr, tmp_path):
    path = tmp_path / "prs.grib2"
    _write_grib(path, hrrr, "wrfprsf", skip=("q850", "t50"), repeat=("u500",))
    with pytest.raises(UserError) as err:
        verify_subset(path, hrrr, "wrfprsf", name="hrrr.t00z.wrfprsf00.grib2")
    msg = str(err.value)
    assert msg.startswith("hrrr.t00z.wrfprsf00.grib2: expected 65 GRIB messages (wrfprsf, catalogue "
                          "'hrrr_expanded'), found 64")
    assert "missing t50 (TMP 50 mb), q850 (SPFH 850 mb)" in msg
    assert "unexpected u/isobaricInhPa/500/step 0" in msg
    assert "\n" not in msg

    sfc = tmp_path / "sfc.grib2"
    _write_grib(sfc, hrrr, "wrfsfcf", skip=("t2m",))
    with pytest.raises(UserError, match=r"sfc.grib2: .*found 12; missing t2m \(TMP 2 m above ground\)$"):
        verify_subset(sfc, hrrr, "wrfsfcf")
    # A subset of the other kind: everything missing, everything unexpected.
    _write_grib(sfc, hrrr, "wrfsfcf")
    with pytest.raises(UserError, match=r"found 13; missing z \(HGT \{level\} mb, all 13 levels\), t \(TMP .*, "
                                        r"v \(VGRD \{level\} mb, all 13 levels\); unexpected sp/surface/0/step 0, "
                                        r".* and 3 more$"):
        verify_subset(sfc, hrrr, "wrfprsf")


def test_verify_subset_rejects_truncated_and_non_grib_files(hrrr, tmp_path):
    path = tmp_path / "sfc.grib2"
    _write_grib(path, hrrr, "wrfsfcf")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(UserError, match=r"sfc.grib2: truncated or corrupt GRIB data after 12 complete messages"):
        verify_subset(path, hrrr, "wrfsfcf")
    path.write_text("<html>403 Forbidden</html>")
    with pytest.raises(UserError, match="found 0; missing sp .*, lsm \\(LAND surface\\)$"):
        verify_subset(path, hrrr, "wrfsfcf")
    with pytest.raises(UserError, match="cannot read"):
        verify_subset(tmp_path / "absent.grib2", hrrr, "wrfsfcf")


def test_verify_subset_on_real_hrrr_bytes(tmp_path):
    """NOAA's own APCP messages (0-12 h and 11-12 h in one wrfsfcf12 subset) are told apart by stepRange."""
    if not HRRR_APCP.exists():
        pytest.skip(f"shared data missing: {HRRR_APCP}")
    path = tmp_path / HRRR_APCP.name
    shutil.copyfile(HRRR_APCP, path)
    apcp = {"shortName": "tp", "typeOfLevel": "surface", "source": "wrfsfcf", "idx_name": "APCP",
            "idx_level": "surface"}
    both = _user({"name": "apcp12", "stepRange": "0-12", **apcp}, {"name": "apcp1", "stepRange": "11-12", **apcp})
    assert verify_subset(path, both, "wrfsfcf") == 2
    assert search_strings(both) == {"wrfsfcf": ":APCP:surface:"}  # one regex selects both (as at f02-f48)
    hourly = _user({"name": "apcp1", "stepRange": "11-12", **apcp})
    with pytest.raises(UserError, match=r"expected 1 .*found 2; unexpected tp/surface/0/step 0-12$"):
        verify_subset(path, hourly, "wrfsfcf")
