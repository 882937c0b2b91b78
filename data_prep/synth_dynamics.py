"""The physical model of the embedded mini-HRRR: a small, fast NumPy simulation of warm-season convection.

Every variable of the ``hrrr_expanded`` catalogue is produced hourly, in catalogue units, from four prognostic 2-D
fields and a list of convective cells. Grid rows run south to north and columns west to east (cfgrib's scanningMode
64); winds are along the grid axes, so grid-relative and earth-relative winds coincide here.

**Environment** (analytic in position and valid time): sums of plane waves of 1200–4000 km wavelength drifting east at
6–12 m/s, amplitudes modulated over 3–7 days (:class:`_Waves`), set the sea-level temperature ``T_sl`` (≈ 302 K in July)
and pressure ``p_sl``, the tropopause temperature ``T_tr``, an elevated warm layer near 750 hPa (the "cap"), the surface
relative humidity, the dryness aloft and a non-divergent wind perturbation. The relative humidity (0.3–0.9, ≈ 0.7 in
summer: Gulf moisture, afternoon dew points of 14–22 °C) also carries mesoscale waves of 150–500 km, so CAPE varies
across a 200 km domain, and falls by 3 %/K where the air mass is warmer than usual (hot days are not also the most humid
ones). Temperature follows the constant-lapse-rate profile ``T = T_sl (p/p_sl)^(R_d Γ/g)`` down to ``T_tr`` at the
200 hPa tropopause (so a warm surface means a steep lapse rate), then warms slowly upward; surface pressure is the
matching barometric ``sp = p_sl (1 − Γ h/T_sl)^(g/(R_d Γ))`` over the orography ``h``; geopotential height integrates
the hypsometric equation ``dz = −(R_d T_v/g) d ln p`` from ``z(p_sl) = 0``; specific humidity is ``q = q_s (p/sp)^n``
(n ≈ 3, much drier above the tropopause), capped at 95 % of saturation (Bolton's e_s). Winds: a westerly jet peaking at
250 hPa, the wave flow, a southerly low-level jet ~80 hPa above the ground strongest at night.

**Prognostic state**: the boundary-layer temperature anomaly ``D`` (K; ``dD/dt = (12 K·DSWRF/1000 W m⁻² − 5 K − D)/5 h``
over land, 15 % of it over water), the low-level moisture factor ``m`` (consumed by cells, restored in 6 h), the
cold-pool deficit ``cp`` (K; fed by cells, spreading, decaying in 3 h), both advected semi-Lagrangianly by the
low-level wind, and the sub-grid thermals ``b`` ∈ (0, 1): a coupled logistic map lattice (Kaneko)
``b ← 0.75 f(b) + 0.25 ⟨f(b)⟩_neighbours``, ``f(b) = r b (1−b)``, r = 3.93–3.99 rising with ``D``, iterated three
times an hour. ``b`` is the model's deterministic chaos: it turns a 1e-6 K change of ``D`` into a different thermal
pattern within a day, and the thermals feed the convective trigger. ``D`` and the cooling (cold pool plus the
downdraft under current cells) decay upward with e-folding depths of 60 and 30 hPa above the ground.

**Diagnostics**: surface-based CAPE and CIN of the parcel (T₂ₘ, q_s) on 20 terrain-following levels: dry adiabat to
Bolton's LCL, then conserving Bolton's θ_e (his eq. 43, solved for the saturated temperature by Newton's method); the
buoyancy ``R_d (T_v,parcel − T_v,env)`` is integrated in ln p, CAPE over its positive part above the LCL, CIN over its
negative part below the level of maximum buoyancy (in the lowest 200 hPa where there is no CAPE). DSWRF uses each
point's solar zenith angle, a clear-sky transmissivity and the cells' cloud cover; DLWRF = ε σ T₂ₘ⁴ with Brunt's
clear-sky emissivity raised by clouds; PWAT = (1/g) ∫ q dp over the output levels above the ground.

**Convection**: each hour a trigger field — Gaussian noise from ``default_rng([seed, 2, hour])`` smoothed over 5 km
(what the state does not contain, so an ensemble is needed), the smoothed thermals (by day), lift at outflow boundaries
∝ ``|∇cp|``, a CAPE bonus and a CIN penalty — starts cells at its local maxima above a threshold where CAPE > 300 J/kg
and there is no echo yet, at most one new cell per 2000 km² and hour. A cell's strength ``s`` grows for 1–2 h, then
decays with an e-folding time of 1–4 h rising with the CAPE within 10 km of it; it moves with the mean 500/700 hPa wind,
consumes low-level moisture, cools the air under it, feeds the cold pool (whose edges start new cells: clusters and
lines) and shades the ground. Where that CAPE exceeds 1000 J/kg the cell organizes upscale: its organization ``o`` ∈
[0, 1) gains 25 % of what it lacks each hour at 3000 J/kg (proportionally less down to 1000 J/kg), its radius grows by
the factor 1 + o and it becomes an ellipse of the same area, aspect ratio 1 + 1.5 o, long across its motion, like a
squall line. Its reflectivity is a paraboloid of 8–15 km radius (growing 15 %/h with age up to 1.6×, times 1 + o), core
``−10 + s (dBZ_max + 10)`` with ``dBZ_max`` = 47–65 dBZ rising with CAPE, so a mature cell is ≥ 35 dBZ out to ~60 % of
its radius; overlapping cells combine by maximum, −10 dBZ (no echo) elsewhere. The moisture and cold-pool footprints
(biweights) and the anvil's cloud cover (out to 2.2× the radius) have the same elliptic shape.

**Regime** (the demo's six weeks from 2024-06-01, 32×32 points at 6 km; docs/DATA.md has the table per period):
CAPE ≥ 1000 J/kg on ~40 % of the points, storms on most afternoons, REFC ≥ 35 dBZ on ~3.5 % of all points, from ~1 % of
them at 11 local time to ~15 % at 15 and back under 1 % by 21, rarely at night; REFC ≥ 45 dBZ on ~1.5 %.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from scipy import ndimage

from def_jax.catalogue import HRRR_LEVELS, REFC_NO_ECHO

# The version of the simulated world, recorded in synth.json: runs made from another version's files are stale.
WORLD_VERSION = 2
RD, RV, CP, G, LV = 287.04, 461.5, 1004.6, 9.80665, 2.501e6  # J/(kg K), J/(kg K), J/(kg K), m/s^2, J/kg
KAPPA, EPS = RD / CP, RD / RV
P0, P_TROP, P_CAP = 1.0e5, 2.0e4, 7.5e4  # Pa: reference, tropopause, elevated warm layer
SIGMA_SB, SOLAR_CONSTANT, EARTH_RADIUS = 5.670e-8, 1361.0, 6.371e6
NEWTON = 2  # Newton iterations for the moist-adiabatic parcel temperature (2 are within ~0.5 % of converged)
SPINUP_HOURS = 24  # hours simulated before `start` so that cells, cold pools and D are in their regime
STATIC_SEED = 20240601  # terrain does not depend on the run's seed
EPOCH = np.datetime64("2000-01-01T00", "h")  # waves drift from here: the environment is a function of valid time
_S_PARCEL = np.exp(np.linspace(0.0, np.log(0.15), 20))  # parcel levels p/sp, Δln p = 0.1
_S_COLUMN = np.exp(np.linspace(0.0, np.log(0.004), 28))  # hypsometric column levels p/p_sl, Δln p = 0.2


def saturation_q(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Saturation specific humidity (kg/kg) at temperature ``t`` (K) and pressure ``p`` (Pa); Bolton's e_s."""
    es = np.minimum(611.2 * np.exp(17.67 * (t - 273.15) / (t - 29.65)), 0.5 * p)
    return EPS * es / (p - (1.0 - EPS) * es)


def dewpoint(q: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Dew point (K) of specific humidity ``q`` at pressure ``p`` (Pa), inverting Bolton's e_s."""
    a = np.log(np.maximum(q * p / (EPS + (1.0 - EPS) * q), 1e-3) / 611.2)
    return 273.15 + 243.5 * a / (17.67 - a)


def _log_theta_e(t: np.ndarray, log_p0_p: np.ndarray, r: np.ndarray, t_lcl: np.ndarray) -> np.ndarray:
    """ln of the equivalent potential temperature (Bolton 1980, eq. 43): T (K), ln(p₀/p), mixing ratio r (g/kg),
    LCL temperature t_lcl (K; equal to T for saturated air)."""
    return (np.log(t) + 0.2854 * (1.0 - 0.28e-3 * r) * log_p0_p
            + (3.376 / t_lcl - 0.00254) * r * (1.0 + 0.81e-3 * r))


def cos_zenith(lat: np.ndarray, lon: np.ndarray, time: np.datetime64) -> np.ndarray:
    """Cosine of the solar zenith angle (declination from the day of year, no equation of time). # [ny, nx]"""
    day = (time - time.astype("datetime64[Y]")) / np.timedelta64(1, "D")
    utc_hours = (time - time.astype("datetime64[D]")) / np.timedelta64(1, "h")
    decl = np.radians(23.44) * np.sin(2 * np.pi * (284.0 + day) / 365.0)
    hour_angle = np.radians(15.0 * (utc_hours - 12.0) + lon)
    phi = np.radians(lat)
    return np.sin(phi) * np.sin(decl) + np.cos(phi) * np.cos(decl) * np.cos(hour_angle)


class _Waves:
    """A few plane waves drifting east, amplitudes modulated over 3–7 days; unit rms (a smooth synoptic pattern)."""

    def __init__(self, rng: np.random.Generator, n: int = 3, wavelength_km=(1200.0, 4000.0)):
        k = 2 * np.pi / (rng.uniform(*wavelength_km, n) * 1e3)  # rad/m
        angle = rng.uniform(-1.0, 1.0, n)  # direction of the wave vector, radians from east
        self.kx, self.ky = k * np.cos(angle), k * np.sin(angle)
        self.speed = rng.uniform(6.0, 12.0, n)  # eastward drift, m/s
        self.phase = rng.uniform(0, 2 * np.pi, n)
        self.mod_period = rng.uniform(72.0, 168.0, n) * 3600.0
        self.mod_phase = rng.uniform(0, 2 * np.pi, n)
        amp = rng.uniform(0.5, 1.0, n)
        self.amp = amp / np.sqrt(np.sum(amp**2) / 2)

    def _terms(self, x: np.ndarray, y: np.ndarray, t: float):
        for j in range(len(self.amp)):
            a = self.amp[j] * (1 + 0.4 * np.sin(2 * np.pi * t / self.mod_period[j] + self.mod_phase[j]))
            theta = self.kx[j] * (x - self.speed[j] * t) + self.ky[j] * y + self.phase[j]
            yield j, a, theta

    def value(self, x: np.ndarray, y: np.ndarray, t: float) -> np.ndarray:
        """Σ a cos θ at positions x, y (m) and time t (s). # [ny, nx]"""
        return sum(a * np.cos(theta) for _, a, theta in self._terms(x, y, t))

    def flow(self, x: np.ndarray, y: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
        """The non-divergent flow (−∂ψ/∂y, ∂ψ/∂x) of ψ = Σ a cos θ / |k|, unit rms per component. # 2 × [ny, nx]"""
        u, v = np.zeros_like(x), np.zeros_like(x)
        for j, a, theta in self._terms(x, y, t):
            k = np.hypot(self.kx[j], self.ky[j])
            u += a * self.ky[j] / k * np.sin(theta)
            v -= a * self.kx[j] / k * np.sin(theta)
        return u, v


def terrain(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic orography (m) rising westward like the Great Plains, with low hills, and a land mask with a lake
    in the south-east of the domain (flat water surface). # 2 × [ny, nx]"""
    rng = np.random.default_rng(STATIC_SEED)
    x = EARTH_RADIUS * np.cos(np.radians(np.mean(lat))) * np.radians(lon)
    y = EARTH_RADIUS * np.radians(lat)
    hills = _Waves(rng, n=4, wavelength_km=(60.0, 250.0)).value(x, y, 0.0)
    orog = np.clip(60.0 + 110.0 * (268.0 - lon) + 40.0 * hills, 0.0, 3000.0)
    ny, nx = lat.shape
    jj, ii = np.meshgrid(np.arange(nx), np.arange(ny))
    lake = np.hypot((jj - 0.72 * (nx - 1)) / 1.3, ii - 0.28 * (ny - 1)) <= max(0.09 * min(ny, nx), 1.5)
    orog = np.where(lake, orog[lake].min() if lake.any() else 0.0, orog)
    return orog, (~lake).astype(np.float64)


class MiniHRRR:
    """The mini-HRRR simulation: ``fields()`` at ``time``, ``step()`` to advance one hour (see the module docstring).

    ``lat``/``lon`` [ny, nx] in degrees (lon 0–360 °E), ``dx_m`` the grid spacing, ``start`` the first valid time,
    ``levels`` in hPa (any order; 3-D outputs follow it), ``perturbation`` (K) a tiny smooth bump added to the
    initial boundary-layer temperature. Same arguments ⇒ bit-identical output.
    """

    def __init__(self, lat: np.ndarray, lon: np.ndarray, dx_m: float, start: np.datetime64, seed: int,
                 levels: Sequence[float] = HRRR_LEVELS, perturbation: float = 0.0):
        self.lat, self.lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64) % 360.0  # [ny, nx]
        self.shape = self.lat.shape
        self.dx_m, self.seed = float(dx_m), int(seed)
        self.levels = np.asarray(levels, np.float64)  # hPa
        self._x = EARTH_RADIUS * np.cos(np.radians(np.mean(self.lat))) * np.radians(self.lon)  # [ny, nx] m
        self._y = EARTH_RADIUS * np.radians(self.lat)
        self.orog, self.lsm = terrain(self.lat, self.lon)
        rng = np.random.default_rng([self.seed, 0])
        self._waves = {name: _Waves(rng) for name in ("temp", "pres", "trop", "cap", "moist", "dry", "flow")}
        self._waves["meso"] = _Waves(rng, wavelength_km=(150.0, 500.0))  # mesoscale moisture, drawn last
        init = np.random.default_rng([self.seed, 1])
        ny, nx = self.shape
        self.D = np.zeros(self.shape)  # boundary-layer temperature anomaly, K
        self.m = np.ones(self.shape)  # low-level moisture factor
        self.cp = np.zeros(self.shape)  # cold-pool deficit, K
        self.b = init.uniform(0.05, 0.95, self.shape)  # sub-grid thermals (coupled logistic maps)
        # convective cells: position (grid units), age (h), strength, core potential (dBZ), radius (km), growth (h),
        # organization (0-1) and the direction of motion (cos, sin)
        self.cells = {k: np.zeros(0) for k in ("x", "y", "age", "s", "dbz_max", "r0", "t_grow", "org", "cos", "sin")}
        self._time = np.datetime64(start, "h") - np.timedelta64(SPINUP_HOURS, "h")
        self._hour = 0  # index of the hourly random stream
        self._cache = None
        for _ in range(SPINUP_HOURS):
            self.step()
        bump = np.outer(np.sin(np.pi * (np.arange(ny) + 0.5) / ny), np.sin(np.pi * (np.arange(nx) + 0.5) / nx))
        self.D = self.D + perturbation * bump
        self._cache = None

    @property
    def time(self) -> np.datetime64:
        """Valid time of :meth:`fields`."""
        return self._time

    def statics(self) -> dict[str, np.ndarray]:
        """Orography (m) and land mask (1 = land), float32, fixed in time. # each [ny, nx]"""
        return {"orog": self.orog.astype(np.float32), "lsm": self.lsm.astype(np.float32)}

    def fields(self) -> dict[str, np.ndarray]:
        """All catalogue variables at :attr:`time`, float32, catalogue units (3-D ones [level, ny, nx])."""
        return {k: v.astype(np.float32) for k, v in self._diagnose().items() if not k.startswith("_")}

    # --- the column ------------------------------------------------------------------------------------------------

    def _environment(self, downdraft: np.ndarray) -> dict[str, np.ndarray]:
        """The large-scale fields at :attr:`time`, with the cold pools and the cooling ``downdraft`` (K) under the
        current cells. # each [ny, nx]"""
        t = (self._time - EPOCH) / np.timedelta64(1, "s")
        day = (self._time - self._time.astype("datetime64[Y]")) / np.timedelta64(1, "D")
        season = np.sin(2 * np.pi * (day - 105.0) / 365.25)
        w = {k: wave.value(self._x, self._y, t) for k, wave in self._waves.items() if k != "flow"}
        t_sl = 293.0 + 10.0 * season - 0.8 * (self.lat - 37.0) + 2.5 * w["temp"]
        env = {
            "T_sl": t_sl,
            "T_tr": 219.0 + 0.3 * (t_sl - 298.0) + 1.5 * w["trop"],
            "p_sl": 101325.0 + 700.0 * w["pres"],
            "cap": 1.5 * np.maximum(w["cap"] + 0.2, 0.0),  # K
            # Gulf moisture: synoptic and mesoscale waves; 3 %/K drier where the air mass is warmer than usual
            "rh": np.clip(0.65 + 0.08 * w["moist"] + 0.08 * w["meso"] - 0.03 * 2.5 * w["temp"] + 0.05 * season,
                          0.3, 0.9),
            "q_exp": 3.0 + 0.5 * w["dry"],
        }
        env["u_wave"], env["v_wave"] = (6.0 * c for c in self._waves["flow"].flow(self._x, self._y, t))
        local_hour = ((self._time - self._time.astype("datetime64[D]")) / np.timedelta64(1, "h") + self.lon / 15.0) % 24
        env["v_llj"] = 6.0 + 4.0 * np.cos(2 * np.pi * (local_hour - 3.0) / 24.0)
        env["expo"] = np.log(env["T_sl"] / env["T_tr"]) / np.log(env["p_sl"] / P_TROP)  # R_d Γ / g
        env["sp"] = env["p_sl"] * (1.0 - G * env["expo"] / RD * self.orog / env["T_sl"]) ** (1.0 / env["expo"])
        t_env = self._temperature(env, env["sp"][None], anomalies=False)[0]
        env["cool"] = np.minimum(self.cp + downdraft, 10.0)
        env["t2m"] = t_env + self.D - env["cool"]
        env["q_s"] = np.minimum(self.m * env["rh"] * saturation_q(t_env, env["sp"]),
                                0.95 * saturation_q(env["t2m"], env["sp"]))
        return env

    def _temperature(self, env: dict, p: np.ndarray, anomalies: bool = True, log_p=None) -> np.ndarray:
        """Temperature (K) at pressures ``p`` (Pa; ``log_p`` its logarithm if known). # [k, ny, nx]"""
        log_p = np.log(p) if log_p is None else log_p
        t = np.where(p >= P_TROP, env["T_sl"] * np.exp(env["expo"] * (log_p - np.log(env["p_sl"]))),
                     env["T_tr"] + 7.0 / np.log(4.0) * (np.log(P_TROP) - log_p))
        t += env["cap"] * np.exp(-0.5 * ((log_p - np.log(P_CAP)) / 0.12) ** 2)
        if anomalies:
            decay = np.exp(-np.maximum(env["sp"] - p, 0.0) / 6000.0)  # 60 hPa for D, 30 hPa for the cold pool
            t += (self.D - env["cool"] * decay) * decay
        return t

    def _humidity(self, env: dict, p: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Specific humidity (kg/kg) at pressures ``p`` with temperatures ``t``. # [k, ny, nx]"""
        q = env["q_s"] * np.exp(env["q_exp"] * np.log(np.minimum(p / env["sp"], 1.0)))
        q = np.where(p < P_TROP, q * (p / P_TROP) ** 4, q)
        return np.maximum(np.minimum(q, 0.95 * saturation_q(t, p)), 2e-6)

    def _wind(self, env: dict, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Wind (m/s): westerly jet peaking at 250 hPa, wave flow, southerly low-level jet. # 2 × [k, ny, nx]"""
        jet = np.exp(-0.5 * (np.log(p / 2.5e4) / 0.45) ** 2)
        u = 3.0 + 25.0 * jet + (0.4 + jet) * env["u_wave"]
        v = (0.4 + jet) * env["v_wave"] + env["v_llj"] * np.exp(-0.5 * ((env["sp"] - p - 8000.0) / 6000.0) ** 2)
        return u, v

    def _height(self, env: dict, p: np.ndarray, tv: np.ndarray) -> np.ndarray:
        """Geopotential height (gpm) at ``p`` (Pa) with virtual temperatures ``tv`` there: the hypsometric integral
        of T_v in ln p from z(p_sl) = 0, on a column grid, then from the nearest column level to ``p``. # [k, ny, nx]"""
        pc = env["p_sl"] * _S_COLUMN[:, None, None]  # [K, ny, nx]
        tc = self._temperature(env, pc, log_p=np.log(env["p_sl"]) + np.log(_S_COLUMN)[:, None, None])
        tvc = tc * (1.0 + 0.608 * self._humidity(env, pc, tc))
        step = -np.log(_S_COLUMN[1])
        zc = np.concatenate([np.zeros((1,) + self.shape), np.cumsum(0.5 * (tvc[1:] + tvc[:-1]), 0) * RD / G * step])
        pos = np.log(env["p_sl"] / p) / step
        i = np.clip(np.rint(pos), 0, len(_S_COLUMN) - 1).astype(int)
        z_i, tv_i = np.take_along_axis(zc, i, 0), np.take_along_axis(tvc, i, 0)
        return z_i + RD / G * 0.5 * (tv_i + tv) * (pos - i) * step

    def _cape_cin(self, env: dict) -> tuple[np.ndarray, np.ndarray]:
        """Surface-based CAPE and CIN (J/kg) of a parcel (t2m, q_s) lifted from sp. # 2 × [ny, nx]"""
        sp, t_s, q_s = env["sp"], env["t2m"], env["q_s"]
        p = sp * _S_PARCEL[:, None, None]  # [K, ny, nx]
        log_p0_p = np.log(P0 / sp) - np.log(_S_PARCEL)[:, None, None]  # ln(p0/p)
        te = self._temperature(env, p, log_p=np.log(P0) - log_p0_p)
        tv_env = te * (1.0 + 0.608 * self._humidity(env, p, te))
        td = dewpoint(q_s, sp)
        t_lcl = 56.0 + 1.0 / (1.0 / (td - 56.0) + np.log(t_s / td) / 800.0)  # Bolton (1980) eq. 15
        p_lcl = sp * (t_lcl / t_s) ** (1.0 / KAPPA)
        log_theta_e = _log_theta_e(t_s, np.log(P0 / sp), 1e3 * q_s / (1.0 - q_s), t_lcl)
        tp = te.copy()
        for _ in range(NEWTON):  # Newton: θe of the saturated parcel at p = θe of the surface parcel
            r = 1e3 * saturation_q(tp, p)  # ≈ mixing ratio, g/kg
            dr = r * LV / (RV * tp**2)
            f = _log_theta_e(tp, log_p0_p, r, tp) - log_theta_e
            df = (1.0 / tp - 0.2854 * 0.28e-3 * log_p0_p * dr - 3.376 / tp**2 * r * (1.0 + 0.81e-3 * r)
                  + (3.376 / tp - 0.00254) * (1.0 + 1.62e-3 * r) * dr)
            tp = np.clip(tp - f / df, 150.0, 350.0)
        moist = p < p_lcl
        tv_parcel = np.where(moist, tp * (1.0 + 0.608 * saturation_q(tp, p)),
                             t_s * (p / sp) ** KAPPA * (1.0 + 0.608 * q_s))
        buoy = RD * (tv_parcel - tv_env)  # J/kg per unit ln p
        step = -np.log(_S_PARCEL[1])
        cape = step * np.sum(np.maximum(buoy, 0.0) * moist, 0)
        k = np.arange(len(_S_PARCEL))[:, None, None]
        below = np.where(cape > 0, k < np.argmax(np.where(moist, buoy, -np.inf), 0), p > sp - 2.0e4)
        cin = step * np.sum(np.minimum(buoy, 0.0) * below, 0)
        return cape, cin

    def _pwat(self, q: np.ndarray, sp: np.ndarray) -> np.ndarray:
        """(1/g) ∫ q dp from the top level to the surface, q linear in p between levels, constant below the lowest
        one; levels below the ground do not count. # [ny, nx]"""
        order = np.argsort(self.levels)
        p = self.levels[order][:, None, None] * 100.0 + 0 * sp  # [L, ny, nx], increasing pressure
        qs = q[order]
        p_next = np.concatenate([p[1:], np.maximum(sp, p[-1])[None]])
        q_next = np.concatenate([qs[1:], qs[-1:]])
        bottom = np.clip(sp, p, p_next)  # the above-ground part of each layer is [p, bottom]
        q_bottom = qs + (q_next - qs) * (bottom - p) / np.maximum(p_next - p, 1e-9)
        return np.sum(0.5 * (qs + q_bottom) * (bottom - p), 0) / G

    # --- diagnostics -----------------------------------------------------------------------------------------------

    def _render(self) -> dict[str, np.ndarray]:
        """Reflectivity, cloud cover and the moisture/cold-pool footprints of the cells. # each [ny, nx]"""
        ny, nx = self.shape
        refc, cloud = np.full(self.shape, REFC_NO_ECHO), np.zeros(self.shape)
        consume, cold = np.zeros(self.shape), np.zeros(self.shape)
        c = self.cells
        aspect = 1.0 + 1.5 * c["org"]  # organized cells are lines across their motion (same area)
        for x, y, s, dbz_max, r, e, cos, sin in zip(c["x"], c["y"], c["s"], c["dbz_max"], self._radius_px(), aspect,
                                                     c["cos"], c["sin"]):
            ra = 2.2 * r  # anvil radius
            reach = ra * np.sqrt(e)  # the long semi-axis of the anvil
            i0, i1 = max(int(y - reach), 0), min(int(y + reach) + 2, ny)
            j0, j1 = max(int(x - reach), 0), min(int(x + reach) + 2, nx)
            if i0 >= i1 or j0 >= j1:
                continue
            dy, dx = np.arange(i0, i1)[:, None] - y, np.arange(j0, j1)[None, :] - x
            r2 = (dx * cos + dy * sin) ** 2 * e + (dy * cos - dx * sin) ** 2 / e  # elliptic distance², [h, w]
            shape = np.maximum(1.0 - r2 / r**2, 0.0)
            core = shape**2  # biweight
            win = (slice(i0, i1), slice(j0, j1))
            refc[win] = np.maximum(refc[win], REFC_NO_ECHO + s * (dbz_max - REFC_NO_ECHO) * shape)
            cloud[win] = np.maximum(cloud[win], s * np.maximum(1.0 - r2 / ra**2, 0.0))
            consume[win] += s * core
            cold[win] += s * np.maximum(1.0 - r2 / (1.5 * r) ** 2, 0.0) ** 2
        return {"refc": np.clip(refc, REFC_NO_ECHO, 75.0), "_cloud": cloud, "_consume": consume, "_cold": cold}

    def _radius_px(self) -> np.ndarray:
        """Echo radius of each cell in grid points: grows by 15 %/h with age, up to 1.6×, and by the factor
        1 + organization (up to 2×). # [n_cells]"""
        c = self.cells
        growth = np.minimum(1.0 + 0.15 * c["age"], 1.6) * (1.0 + c["org"])
        return np.maximum(c["r0"] * growth * 1e3 / self.dx_m, 1.0)

    def _diagnose(self) -> dict[str, np.ndarray]:
        """Every output field at :attr:`time` (cached), plus internal fields named ``_*``."""
        if self._cache is not None:
            return self._cache
        out = self._render()
        env = self._environment(3.0 * np.minimum(out["_cold"], 1.0))
        sp, t2m, q_s = env["sp"], env["t2m"], env["q_s"]
        p = self.levels[:, None, None] * 100.0 + 0.0 * sp  # [L, ny, nx] Pa
        t = self._temperature(env, p)
        q = self._humidity(env, p, t)
        u, v = self._wind(env, p)
        cape, cin = self._cape_cin(env)
        cloud = out["_cloud"]
        mu = np.maximum(cos_zenith(self.lat, self.lon, self._time), 0.0)
        water = q_s * sp / (G * (1.0 + env["q_exp"]))  # ∫ q_s (p/sp)^n dp / g: water path, independent of the levels
        air_mass = 1.0 / np.maximum(mu, 0.05)
        clear = SOLAR_CONSTANT * mu * (0.8 - 0.1 * np.minimum(water / 60.0, 1.0)) * np.exp(-0.12 * (air_mass - 1.0))
        e_hpa = q_s * sp / (EPS + (1 - EPS) * q_s) / 100.0
        emissivity = np.minimum(0.52 + 0.065 * np.sqrt(e_hpa), 0.95)
        emissivity = emissivity + (1.0 - emissivity) * 0.9 * np.minimum(cloud, 1.0)
        u_low, v_low = (w[0] for w in self._wind(env, (sp - 3000.0)[None]))
        gy, gx = np.gradient(env["cool"], self.dx_m / 1e3)  # K/km
        mixing = 0.45 + 0.25 * np.clip(self.D / 4.0, 0.0, 1.0)
        steer = [0.5 * (a[0] + a[1]) for a in self._wind(env, np.array([5e4, 7e4])[:, None, None] + 0.0 * sp)]
        out.update({
            "sp": sp, "t2m": t2m, "d2m": np.minimum(dewpoint(q_s, sp), t2m),
            "u10": mixing * u_low - 12.0 * gx, "v10": mixing * v_low - 12.0 * gy,
            "cape": cape, "cin": cin,
            "dswrf": clear * (1.0 - 0.75 * np.minimum(cloud, 1.0)),
            "dlwrf": emissivity * SIGMA_SB * t2m**4, "pwat": self._pwat(q, sp), "orog": self.orog, "lsm": self.lsm,
            "z": self._height(env, p, t * (1.0 + 0.608 * q)), "t": t, "q": q, "u": u, "v": v,
            "_steer": steer, "_low": (u_low, v_low),
        })
        self._cache = out
        return out

    # --- dynamics --------------------------------------------------------------------------------------------------

    def _advect(self, field: np.ndarray, u: np.ndarray, v: np.ndarray, outside: float) -> np.ndarray:
        """Semi-Lagrangian advection over one hour by the wind (u, v) [ny, nx]; ``outside`` flows in."""
        ii, jj = np.indices(self.shape, dtype=np.float64)
        shift = 3600.0 / self.dx_m
        return ndimage.map_coordinates(field, [ii - v * shift, jj - u * shift], order=1, mode="constant", cval=outside)

    def _move_cells(self, d: dict) -> None:
        """Cells move with the 500/700 hPa mean wind, grow for t_grow hours, then decay by the CAPE they meet, which
        also organizes them."""
        c, (ny, nx) = self.cells, self.shape
        if not len(c["x"]):
            return
        iy, ix = np.clip(np.rint(c["y"]), 0, ny - 1).astype(int), np.clip(np.rint(c["x"]), 0, nx - 1).astype(int)
        us, vs = d["_steer"][0][iy, ix], d["_steer"][1][iy, ix]
        c["x"] = c["x"] + us * 3600.0 / self.dx_m
        c["y"] = c["y"] + vs * 3600.0 / self.dx_m
        speed = np.maximum(np.hypot(us, vs), 1e-6)
        c["cos"], c["sin"] = us / speed, vs / speed
        c["age"] = c["age"] + 1.0
        iy, ix = np.clip(np.rint(c["y"]), 0, ny - 1).astype(int), np.clip(np.rint(c["x"]), 0, nx - 1).astype(int)
        inflow = ndimage.maximum_filter(d["cape"], size=2 * int(10e3 / self.dx_m) + 1)  # CAPE around the cell
        tau = 1.0 + 3.0 * np.clip(inflow[iy, ix] / 3000.0, 0.0, 1.0)  # h
        favour = np.clip((inflow[iy, ix] - 1000.0) / 2000.0, 0.0, 1.0)  # upscale growth above 1000 J/kg
        c["org"] = c["org"] + 0.25 * favour * (1.0 - c["org"])
        c["s"] = np.where(c["age"] <= c["t_grow"], c["s"] + 0.75 * (1.0 - c["s"]), c["s"] * np.exp(-1.0 / tau))
        margin = self._radius_px()
        keep = (c["s"] >= 0.12) & (c["x"] > -margin) & (c["x"] < nx - 1 + margin)
        keep &= (c["y"] > -margin) & (c["y"] < ny - 1 + margin)
        self.cells = {k: a[keep] for k, a in c.items()}

    def _initiate(self, d: dict, rng: np.random.Generator) -> None:
        """Start cells at local maxima of the trigger field above its threshold where CAPE allows."""
        ny, nx = self.shape
        km = 1e3 / self.dx_m  # grid points per km
        noise = ndimage.gaussian_filter(rng.standard_normal(self.shape), max(5.0 * km, 0.5))
        thermals = ndimage.gaussian_filter(self.b - 0.5, max(5.0 * km, 0.5))
        lift = np.clip(np.hypot(*np.gradient(self.cp, 1.0 / km)) / 0.15, 0.0, 2.0)  # outflow boundaries
        day = np.clip(self.D / 3.0, 0.0, 1.0)
        trigger = (0.6 * noise / noise.std() + 0.6 * day * thermals / (thermals.std() + 1e-12) + lift
                   + 1.2 * np.tanh(d["cape"] / 1500.0) + np.maximum(d["cin"], -400.0) / 40.0)
        peaks = trigger == ndimage.maximum_filter(trigger, size=2 * max(int(8.0 * km), 1) + 1)
        peaks &= (trigger > 2.6) & (d["cape"] > 300.0) & (d["refc"] < 15.0)
        max_new = max(2, int(round(ny * nx / km**2 / 2000.0)))  # one per 2000 km²
        extra = rng.random((max_new, 3))  # always drawn: the stream does not depend on the number of cells
        iy, ix = np.nonzero(peaks)
        best = np.argsort(-trigger[iy, ix], kind="stable")[:max_new]
        iy, ix = iy[best], ix[best]
        e, n = extra[: len(best)], len(best)
        strength = np.sqrt(np.clip(d["cape"][iy, ix] / 2500.0, 0.0, 1.0))
        us, vs = d["_steer"][0][iy, ix], d["_steer"][1][iy, ix]
        speed = np.maximum(np.hypot(us, vs), 1e-6)
        new = {"x": ix.astype(float), "y": iy.astype(float), "age": np.zeros(n), "s": np.full(n, 0.3),
               "dbz_max": 50.0 + 12.0 * strength + 6.0 * (e[:, 0] - 0.5),
               "r0": 9.0 + 5.0 * strength + 3.0 * (e[:, 1] - 0.5), "t_grow": 1.0 + (e[:, 2] > 0.5), "org": np.zeros(n),
               "cos": us / speed, "sin": vs / speed}
        self.cells = {k: np.concatenate([self.cells[k], new[k]]) for k in self.cells}

    def step(self) -> None:
        """Advance one hour: cells move and evolve, feed back on moisture and cold pools, the boundary layer heats or
        cools, thermals evolve, new cells start."""
        d = self._diagnose()
        rng = np.random.default_rng([self.seed, 2, self._hour])
        self._move_cells(d)
        u_low, v_low = d["_low"]
        self.m = np.maximum(self.m * (1.0 - 0.35 * np.minimum(d["_consume"], 1.0)), 0.3)
        self.m = self._advect(self.m, u_low, v_low, 1.0)
        self.m += (1.0 - self.m) / 6.0
        cold = self._advect(np.minimum(self.cp + 5.0 * d["_cold"], 10.0), 0.8 * u_low, 0.8 * v_low, 0.0)
        self.cp = ndimage.gaussian_filter(cold, max(4.0e3 / self.dx_m, 0.5), mode="constant") * np.exp(-1.0 / 3.0)
        land = self.lsm + 0.15 * (1.0 - self.lsm)
        self.D = self.D + (land * (12.0 * d["dswrf"] / 1000.0 - 5.0) - self.D) / 5.0
        r = 3.93 + 0.06 / (1.0 + np.exp(-self.D / 2.0))
        neighbours = np.array([[0.0, 0.25, 0.0], [0.25, 0.0, 0.25], [0.0, 0.25, 0.0]])
        for _ in range(3):
            f = r * self.b * (1.0 - self.b)
            self.b = 0.75 * f + 0.25 * ndimage.convolve(f, neighbours, mode="reflect")
        self._initiate(d, rng)
        self._time = self._time + np.timedelta64(1, "h")
        self._hour += 1
        self._cache = None


def simulate(lat: np.ndarray, lon: np.ndarray, dx_m: float, start: np.datetime64, hours: int, seed: int,
             levels: Sequence[float] = HRRR_LEVELS, perturbation: float = 0.0
             ) -> Iterator[tuple[np.datetime64, dict[str, np.ndarray]]]:
    """Generator of (valid_time, fields) for `hours` consecutive hours (fields as MiniHRRR.fields())."""
    model = MiniHRRR(lat, lon, dx_m, start, seed, levels=levels, perturbation=perturbation)
    for hour in range(hours):
        if hour:
            model.step()
        yield model.time, model.fields()
