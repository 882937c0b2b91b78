"""``def-jax synth --world=held-suarez``: a dry global atmosphere from Google's ``dinosaur`` spectral dynamical core
(the core under NeuralGCM) with the forcing of Held & Suarez (1994), written as an ERA5/WeatherBench-style netCDF.

Held, I. M. and M. J. Suarez, 1994: A proposal for the intercomparison of the dynamical cores of atmospheric general
circulation models. Bull. Amer. Meteor. Soc., 75, 1825–1830. The forcing relaxes temperature towards a zonally symmetric
radiative-equilibrium profile (40 days aloft, down to 4 days at the equatorial surface) and damps the winds below
σ = 0.7 with a 1-day Rayleigh drag; on a flat, dry planet this gives midlatitude jets near 30 m/s and baroclinic eddies.

The run, step by step (dinosaur 1.5.1 API):

1. ``CoordinateSystem(Grid.T42(), SigmaCoordinates.equidistant(L))``: spherical harmonics on a Gaussian grid, ``L``
   equally spaced σ levels; ``PrimitiveEquationsSpecs.from_si()`` for the nondimensional units.
2. ``primitive_equations_states.isothermal_rest_atmosphere(p0=1000 hPa, p1=50 hPa)``: at rest, isothermal 288 K, with
   a 50 hPa surface-pressure bump whose position the seed chooses (``jax.random.PRNGKey(seed)``).
3. ``compose_equations([PrimitiveEquations, HeldSuarezForcingSigma])`` stepped by ``imex_rk_sil3`` (semi-implicit
   Runge–Kutta) with the scale-selective ``exponential_step_filter`` of dinosaur's Held–Suarez notebook.
4. A spin-up that is thrown away, then a sample every ``dt_hours``.
5. Each sample is evaluated from its spectral coefficients directly at the points of the 32 × 64 equiangular grid
   (5.625°: latitudes −87.1875 … 87.1875, longitudes 0 … 354.375) — a second dinosaur ``Grid`` with the model's
   wavenumbers and those nodes, so the horizontal "regridding" is exact evaluation of the truncated spectral field, not
   an interpolation between Gaussian-grid points. u, v come from vorticity and divergence
   (``vor_div_to_uv_nodal``), geopotential from hydrostatic integration of temperature (``get_geopotential_on_sigma``,
   flat surface).
6. Column by column, σ levels → pressure levels with ``interp_sigma_to_pressure``, linear in ln σ (= ln p at a point),
   extrapolated linearly where a pressure level lies above the top or below the bottom σ-level centre (with 10 levels
   the centres are σ = 0.05 … 0.95: 1000 hPa is extrapolated almost everywhere, 50 hPa wherever p_s > 1000 hPa).

Deterministic given the seed: the same seed gives identical values. The file is written atomically (temporary name,
then rename), beside it ``<stem>.catalogue.json``: the channel catalogue with which ``def-jax prepare --from-xarray``
ingests it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import dinosaur
import numpy as np
import xarray as xr
from dinosaur import (coordinate_systems, held_suarez, primitive_equations, primitive_equations_states, scales,
                      sigma_coordinates, spherical_harmonic, time_integration, vertical_interpolation, xarray_utils)

from def_jax.catalogue import WEATHERBENCH_LEVELS, Catalogue, load_catalogue
from def_jax.errors import UserError
from def_jax.progress import progress as progress_bar

UNITS = scales.units
# Model time step (minutes) per truncation: dinosaur's notebook runs T42 at 10 min; coarser grids allow longer steps.
TIME_STEP_MINUTES = {"T21": 20, "T31": 15, "T42": 10, "T85": 5}
LATITUDES = -87.1875 + 5.625 * np.arange(32)  # the paper's 5.625° grid, south to north
LONGITUDES = 5.625 * np.arange(64)
P0_HPA, P1_HPA = 1000.0, 50.0  # initial surface pressure and the amplitude of its seeded bump
# the twin run's temperature perturbation: white noise of this standard deviation on the model grid, then truncated
# to the model's wavenumbers (which leaves about half of its RMS)
TWIN_KELVIN = 1e-3
FILTER = {"tau": 0.0087504, "order": 1.5, "cutoff": 0.8}  # dinosaur's Held–Suarez notebook's exponential filter
NAMES = {"u": "u_component_of_wind", "v": "v_component_of_wind", "t": "temperature", "z": "geopotential"}
SI_UNITS = {"u": "m s-1", "v": "m s-1", "t": "K", "z": "m2 s-2", "sp": "Pa"}


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """One configuration of the dynamical core, with its compiled functions (built once per configuration)."""

    truncation: str
    sigma_levels: int
    pressure_levels: tuple[float, ...]
    dt_hours: int
    coords: coordinate_systems.CoordinateSystem
    specs: primitive_equations.PrimitiveEquationsSpecs
    initial: Callable  # PRNG key -> initial state
    advance: Callable  # state -> state dt_hours later
    observe: Callable  # state -> {u, v, t, z: (level, lat, lon); sp: (lat, lon)} in SI units on the 5.625° grid
    temperature: Callable  # state -> temperature on the model's grid and σ levels (K)
    perturb: Callable  # (state, PRNG key) -> state plus TWIN_KELVIN temperature noise (truncated to the model)


def _interp_log_sigma(x, xp, fp):
    """Linear in ln σ, with linear extrapolation beyond the end levels (dinosaur's interpolator on log coordinates)."""
    return vertical_interpolation.linear_interp_with_linear_extrap(jnp.log(x), jnp.log(xp), fp)


_LOG_SIGMA_INTERP = vertical_interpolation.vectorize_vertical_interpolation(_interp_log_sigma)


def output_grid(truncation_grid: spherical_harmonic.Grid) -> spherical_harmonic.Grid:
    """The 32 × 64 equiangular grid with the model's wavenumbers: its ``to_nodal`` evaluates model spectra there."""
    return spherical_harmonic.Grid(
        longitude_wavenumbers=truncation_grid.longitude_wavenumbers,
        total_wavenumbers=truncation_grid.total_wavenumbers, longitude_nodes=len(LONGITUDES),
        latitude_nodes=len(LATITUDES), latitude_spacing="equiangular", radius=truncation_grid.radius)


@functools.lru_cache(maxsize=4)
def build_model(truncation: str, sigma_levels: int, pressure_levels: tuple[float, ...], dt_hours: int) -> Model:
    """The coordinates, the Held–Suarez equations and their jit-compiled step, observation and twin functions."""
    grid = getattr(spherical_harmonic.Grid, truncation)()
    coords = coordinate_systems.CoordinateSystem(
        horizontal=grid, vertical=sigma_coordinates.SigmaCoordinates.equidistant(sigma_levels))
    specs = primitive_equations.PrimitiveEquationsSpecs.from_si()
    initial, aux = primitive_equations_states.isothermal_rest_atmosphere(
        coords, specs, p0=P0_HPA * 100 * UNITS.pascal, p1=P1_HPA * 100 * UNITS.pascal)
    ref = np.asarray(aux[xarray_utils.REF_TEMP_KEY])
    orography = primitive_equations.truncated_modal_orography(aux[xarray_utils.OROGRAPHY], coords)  # zero: flat
    equation = time_integration.compose_equations([
        primitive_equations.PrimitiveEquations(ref, orography, coords, specs),
        held_suarez.HeldSuarezForcingSigma(coords, specs, ref)])
    dt_min = TIME_STEP_MINUTES[truncation]
    dt = specs.nondimensionalize(dt_min * UNITS.minute)
    step = time_integration.step_with_filters(
        time_integration.imex_rk_sil3(equation, dt),
        [time_integration.exponential_step_filter(grid, dt, **FILTER)])
    advance = jax.jit(time_integration.repeated(step, dt_hours * 60 // dt_min))

    out = output_grid(grid)
    on_pressure = vertical_interpolation.PressureCoordinates(
        np.asarray([specs.nondimensionalize(p * 100 * UNITS.pascal) for p in pressure_levels]))
    # nondimensional -> SI factors, computed outside jit (pint quantities do not wrap tracers)
    scale = {"u": UNITS.m / UNITS.s, "v": UNITS.m / UNITS.s, "t": UNITS.degK, "z": UNITS.m ** 2 / UNITS.s ** 2,
             "sp": UNITS.pascal}
    scale = {k: float(specs.dimensionalize(1.0, unit).magnitude) for k, unit in scale.items()}

    @jax.jit
    def observe(state):
        u, v = spherical_harmonic.vor_div_to_uv_nodal(out, state.vorticity, state.divergence)
        t = out.to_nodal(state.temperature_variation) + ref[:, None, None]
        sp = jnp.exp(out.to_nodal(state.log_surface_pressure))  # (1, lon, lat)
        z = primitive_equations.get_geopotential_on_sigma(
            t, nodal_orography=0.0, sigma=coords.vertical, gravity_acceleration=specs.g,
            ideal_gas_constant=specs.R)
        fields = vertical_interpolation.interp_sigma_to_pressure(
            {"u": u, "v": v, "t": t, "z": z}, on_pressure, coords.vertical, sp, interpolate_fn=_LOG_SIGMA_INTERP)
        fields["sp"] = sp[0]
        # dinosaur's nodal arrays are (…, longitude, latitude); the file's are (…, latitude, longitude)
        return {k: jnp.swapaxes(x * scale[k], -1, -2) for k, x in fields.items()}

    @jax.jit
    def temperature(state):
        return (grid.to_nodal(state.temperature_variation) + ref[:, None, None]) * scale["t"]

    @jax.jit
    def perturb(state, key):
        noise = jax.random.normal(key, coords.nodal_shape) * (TWIN_KELVIN / scale["t"])
        return dataclasses.replace(state, temperature_variation=state.temperature_variation + grid.to_modal(noise))

    return Model(truncation, sigma_levels, tuple(pressure_levels), dt_hours, coords, specs, initial, advance,
                 observe, temperature, perturb)


# --- pure diagnostics ----------------------------------------------------------------------------------------------


def jet_diagnostics(u: np.ndarray, levels: Sequence[float], latitudes: np.ndarray = LATITUDES) -> dict:
    """Maximum of the time- and zonal-mean zonal wind ``u`` (time, level, lat, lon), overall and per hemisphere, with
    its latitude and pressure."""
    ubar = u.mean(axis=(0, 3))  # (level, lat)
    out = {}
    for name, mask in (("", np.ones_like(latitudes, bool)), ("north_", latitudes > 0), ("south_", latitudes < 0)):
        masked = np.where(mask[None, :], ubar, -np.inf)
        k, j = np.unravel_index(int(np.argmax(masked)), masked.shape)
        out.update({f"jet_{name}u_ms": float(ubar[k, j]), f"jet_{name}latitude": float(latitudes[j]),
                    f"jet_{name}pressure_hpa": float(levels[k])})
    return out


def field_ranges(fields: dict[str, np.ndarray], latitudes: np.ndarray = LATITUDES) -> dict:
    """Temperature and surface-pressure ranges (the mean of ``sp`` weighted by cos latitude, i.e. by area), and
    whether every value is finite."""
    t, sp = fields["t"], fields["sp"]
    weights = np.broadcast_to(np.cos(np.radians(latitudes))[:, None], sp.shape[-2:])
    return {"t_min_k": float(t.min()), "t_max_k": float(t.max()), "sp_min_pa": float(sp.min()),
            "sp_mean_pa": float((sp * weights).sum() / (weights.sum() * sp.shape[0])), "sp_max_pa": float(sp.max()),
            "all_finite": bool(all(np.isfinite(x).all() for x in fields.values()))}


def _doubling_days(ratio: float, days: float) -> float:
    return float(days * np.log(2) / np.log(ratio)) if ratio > 1 and days > 0 else float("inf")


def growth(rms: Sequence[float], hours_between: float) -> dict:
    """Twin-run error growth from the RMS differences ``rms`` sampled every ``hours_between``: the factor from the first
    to the last sample, and, since the smallest scales of the perturbation are damped first, also the doubling time
    from the smallest RMS onwards (the growth once the perturbation has organised itself)."""
    rms = np.asarray(rms, np.float64)
    step_days = hours_between / 24
    days = (len(rms) - 1) * step_days
    k = int(np.argmin(rms))
    return {"twin_rms_start_k": float(rms[0]), "twin_rms_end_k": float(rms[-1]), "twin_days": days,
            "twin_growth_factor": float(rms[-1] / rms[0]), "twin_doubling_days": _doubling_days(rms[-1] / rms[0], days),
            "twin_rms_min_k": float(rms[k]), "twin_min_day": k * step_days,
            "twin_doubling_days_after_min": _doubling_days(rms[-1] / rms[k], days - k * step_days)}


def summary_lines(sanity: dict) -> list[str]:
    """The sanity numbers as printed lines."""
    s = sanity
    lines = [f"zonal-mean u max {s['jet_u_ms']:.1f} m/s at {s['jet_latitude']:+.2f}° {s['jet_pressure_hpa']:.0f} hPa "
             f"(north {s['jet_north_u_ms']:.1f} m/s at {s['jet_north_latitude']:+.2f}° "
             f"{s['jet_north_pressure_hpa']:.0f} hPa; south {s['jet_south_u_ms']:.1f} m/s at "
             f"{s['jet_south_latitude']:+.2f}° {s['jet_south_pressure_hpa']:.0f} hPa)",
             f"temperature {s['t_min_k']:.1f} … {s['t_max_k']:.1f} K; surface pressure {s['sp_min_pa'] / 100:.1f} … "
             f"{s['sp_max_pa'] / 100:.1f} hPa (area mean {s['sp_mean_pa'] / 100:.2f})"]
    if "twin_growth_factor" in s:
        lines.append(f"twin run ({TWIN_KELVIN:g} K noise): σ-level temperature RMS difference "
                     f"{s['twin_rms_start_k']:.2e} → {s['twin_rms_end_k']:.2e} K in {s['twin_days']:g} days "
                     f"(×{s['twin_growth_factor']:.3g}, doubling time {s['twin_doubling_days']:.2f} days); smallest "
                     f"{s['twin_rms_min_k']:.2e} K at day {s['twin_min_day']:g}, doubling time from there "
                     f"{s['twin_doubling_days_after_min']:.2f} days")
    return lines


# --- the file ------------------------------------------------------------------------------------------------------


def catalogue(pressure_levels: Sequence[float]) -> Catalogue:
    """The channel catalogue of the written file: the built-in ``held_suarez`` on these levels, for ``prepare``."""
    return load_catalogue("held_suarez", pressure_levels)


def to_dataset(fields: dict[str, np.ndarray], times: np.ndarray, levels: Sequence[float], attrs: dict) -> xr.Dataset:
    """CF dataset with WeatherBench names: (time, level, latitude, longitude) and surface_pressure (time, lat, lon)."""
    dims3, dims2 = ("time", "level", "latitude", "longitude"), ("time", "latitude", "longitude")
    data = {NAMES[k]: (dims3, fields[k].astype(np.float32), {"units": SI_UNITS[k], "long_name": NAMES[k]})
            for k in ("u", "v", "t", "z")}
    data["surface_pressure"] = (dims2, fields["sp"].astype(np.float32),
                                {"units": "Pa", "long_name": "surface_pressure"})
    coords = {"time": ("time", times),
              "level": ("level", np.asarray(levels, np.float64), {"units": "hPa", "long_name": "pressure_level",
                                                                  "positive": "down"}),
              "latitude": ("latitude", LATITUDES, {"units": "degrees_north", "standard_name": "latitude"}),
              "longitude": ("longitude", LONGITUDES, {"units": "degrees_east", "standard_name": "longitude"})}
    standard = {"u_component_of_wind": "eastward_wind", "v_component_of_wind": "northward_wind",
                "temperature": "air_temperature", "geopotential": "geopotential",
                "surface_pressure": "surface_air_pressure"}
    ds = xr.Dataset(data, coords=coords, attrs=attrs)
    for name, std in standard.items():
        ds[name].attrs["standard_name"] = std
    return ds


def write_atomic(ds: xr.Dataset, path: Path) -> None:
    """Write the netCDF under a temporary name in the same folder, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        encoding = {name: {"zlib": True, "complevel": 4} for name in ds.data_vars}  # lossless: the same values
        encoding["time"] = {"units": "hours since 2000-01-01 00:00:00"}
        ds.to_netcdf(tmp, engine="netcdf4", encoding=encoding)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def catalogue_path(path: Path) -> Path:
    """Where the catalogue goes: ``<dir>/<stem>.catalogue.json`` beside the netCDF."""
    return path.with_name(path.stem + ".catalogue.json")


# --- the run -------------------------------------------------------------------------------------------------------


def _check(days: int, spinup_days: int, truncation: str, sigma_levels: int, pressure_levels: Sequence[float],
           dt_hours: int, start: str) -> np.datetime64:
    if days < 1:
        raise UserError(f"--days must be >= 1; got {days}")
    if spinup_days < 0:
        raise UserError(f"--spinup-days must be >= 0; got {spinup_days}")
    if truncation not in TIME_STEP_MINUTES:
        raise UserError(f"--truncation {truncation!r}: one of {', '.join(TIME_STEP_MINUTES)}")
    if sigma_levels < 2:
        raise UserError(f"--levels (σ levels of the model) must be >= 2; got {sigma_levels}")
    if dt_hours < 1 or 24 % dt_hours or (dt_hours * 60) % TIME_STEP_MINUTES[truncation]:
        raise UserError(f"dt_hours must divide 24 and be a multiple of the {truncation} time step; got {dt_hours}")
    levels = np.asarray(pressure_levels, float)
    if len(levels) == 0 or np.any(levels <= 0) or np.any(levels >= 1100) or np.any(np.diff(levels) <= 0):
        raise UserError(f"pressure levels must be increasing values in (0, 1100) hPa; got {list(pressure_levels)}")
    try:
        return np.datetime64(start, "h")
    except ValueError:
        raise UserError(f"--start {start!r}: expected an ISO time such as 2000-01-01T00") from None


def synth_held_suarez(out_path: Path, *, seed: int = 0, days: int = 30, spinup_days: int = 200,
                      truncation: str = "T42", sigma_levels: int = 10,
                      pressure_levels: Sequence[float] = WEATHERBENCH_LEVELS, dt_hours: int = 6,
                      start: str = "2000-01-01T00", twin: bool = False, progress: bool = True,
                      log: Callable[[str], None] = print) -> dict:
    """Run the Held & Suarez (1994) world and write ``out_path`` (netCDF) and its catalogue; returns the sanity numbers.

    ``spinup_days`` of model time are discarded; then ``days`` × 24 / ``dt_hours`` samples are saved, the first at the
    end of the spin-up, labelled from ``start``. ``twin`` also runs a copy perturbed by ``TWIN_KELVIN`` over the saved
    period and reports how fast the two diverge (it doubles the cost of that period).
    """
    t0 = _check(days, spinup_days, truncation, sigma_levels, pressure_levels, dt_hours, start)
    out_path = Path(out_path)
    levels = tuple(float(p) for p in pressure_levels)
    model = build_model(truncation, sigma_levels, levels, dt_hours)
    per_day = 24 // dt_hours
    samples = days * per_day
    log(f"held-suarez: {truncation}, {sigma_levels} σ levels, {TIME_STEP_MINUTES[truncation]} min steps, seed {seed}; "
        f"{spinup_days} days spin-up, then {samples} samples every {dt_hours} h")
    state = model.initial(jax.random.PRNGKey(seed))
    with progress_bar(spinup_days, "spin-up", "day", progress) as bar:
        for _ in range(spinup_days):
            for _ in range(per_day):
                state = model.advance(state)
            bar.update(1)
    twin_state = model.perturb(state, jax.random.fold_in(jax.random.PRNGKey(seed), 1)) if twin else None
    collected: dict[str, list[np.ndarray]] = {k: [] for k in ("u", "v", "t", "z", "sp")}
    rms = []
    with progress_bar(samples, "simulate", "sample", progress) as bar:
        for i in range(samples):
            for k, x in model.observe(state).items():
                collected[k].append(np.asarray(x))
            if twin:
                diff = np.asarray(model.temperature(twin_state)) - np.asarray(model.temperature(state))
                rms.append(float(np.sqrt(np.mean(diff.astype(np.float64) ** 2))))
            if i + 1 < samples:
                state = model.advance(state)
                twin_state = model.advance(twin_state) if twin else None
            bar.update(1)
    fields = {k: np.stack(v) for k, v in collected.items()}
    sanity = {**jet_diagnostics(fields["u"], levels), **field_ranges(fields)}
    if twin:
        sanity.update(growth(rms, dt_hours))
    if not sanity["all_finite"]:
        raise UserError(f"held-suarez: the run produced non-finite values (seed {seed}, {truncation}); nothing written")
    times = t0 + np.arange(samples) * np.timedelta64(dt_hours, "h")
    attrs = {
        "Conventions": "CF-1.8", "title": "Held-Suarez (1994) dry dynamical-core world",
        "source": f"dinosaur {dinosaur.__version__} spectral primitive equations, sigma coordinates",
        "generator": "def-jax synth --world=held-suarez (data_prep/heldsuarez.py)",
        "references": "Held, I. M. and M. J. Suarez, 1994: Bull. Amer. Meteor. Soc., 75, 1825-1830",
        "seed": seed, "truncation": truncation, "sigma_levels": sigma_levels,
        "model_time_step_minutes": TIME_STEP_MINUTES[truncation], "spinup_days": spinup_days,
        "output_interval_hours": dt_hours,
        "horizontal_regridding": "spectral coefficients evaluated at the 5.625 deg equiangular grid points",
        "vertical_interpolation": "sigma to pressure, linear in ln(p), linear extrapolation beyond the end levels",
        "initial_state": f"isothermal 288 K at rest, {P1_HPA:g} hPa surface-pressure bump placed by the seed",
        **{f"sanity_{k}": (int(v) if isinstance(v, bool) else v) for k, v in sanity.items()},
    }
    write_atomic(to_dataset(fields, times, levels, attrs), out_path)
    cat = catalogue_path(out_path)
    tmp = cat.with_name(f".{cat.name}.tmp-{os.getpid()}")
    tmp.write_text(catalogue(levels).to_json() + "\n")
    os.replace(tmp, cat)
    log(f"wrote {out_path} ({samples} times × {len(levels)} levels × 32 × 64) and {cat}")
    for line in summary_lines(sanity):
        log(line)
    return sanity
