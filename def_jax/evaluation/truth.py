"""The store as the evaluation's truth (docs/DATA.md): fields by valid time, area weights, climatology, event base
rates; read through :class:`def_jax.data.store.StoreReader`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

from def_jax.data.schema import parse_period
from def_jax.data.store import StoreReader
from def_jax.evaluation.tables import SPREAD_ERROR_EDGES

class Truth:
    """The store as truth: fields by valid time, area weights, climatology, event base rates.

    ``state`` lists the catalogue's state variables present in the store (``order``: their positions), ``index`` maps
    each written valid time to its store slot, ``weights`` [Y, X] are the ``evaluation.area_weighting`` weights (mean
    1), ``dx_km`` the grid spacing and ``base_rates`` the training-period frequency of each (variable, threshold)
    event.
    """

    def __init__(self, path: Path, weighting: str, thresholds: dict, log: Callable[[str], None]):
        self.path = Path(path)
        self.reader = StoreReader(self.path)
        self.ds = ds = self.reader.ds
        self.state = [v.name for v in self.reader.catalogue.by_role("state") if v.name in ds]
        self.order = {name: i for i, name in enumerate(self.state)}
        times, written = self.reader.times, self.reader.written  # [T], [T]
        self.index = {t: i for i, t in enumerate(times) if written[i]}
        self.shape = self.reader.grid_shape
        self.y, self.x = self.reader.y, self.reader.x
        self.weights = self.reader.area_weights(weighting)  # [Y, X] mean 1
        self.dx_km = self.reader.grid_spacing_km()
        self._clim: dict[str, Optional[np.ndarray]] = {}
        self._std: dict[str, Optional[np.ndarray]] = {}
        missing_stats = [v for v in self.state if f"{v}_mean" not in ds]
        if missing_stats:
            log(f"evaluate: the store has no statistics for {', '.join(missing_stats)} (run def-jax stats): "
                "no climatology for them")
        self.base_rates = self._base_rates(thresholds, times, written, log)

    def _base_rates(self, thresholds: dict, times: np.ndarray, written: np.ndarray, log) -> dict:
        """Area-weighted frequency of var ≥ threshold over the written slots of ``stats_train_period``."""
        wanted = [v for v in thresholds if v in self.order and self.ds[v].ndim == 3]
        period = self.ds.attrs.get("stats_train_period")
        if not wanted:
            return {}
        if not period:
            log(f"evaluate: store {self.path} has no stats_train_period (run def-jax stats): no climatological "
                "event probabilities, no Brier skill score")
            return {}
        start, end = parse_period(period, "stats_train_period")
        slots = np.nonzero(written & (times >= start) & (times <= end))[0]
        if len(slots) == 0:
            log(f"evaluate: no written slot in stats_train_period {period}: no climatological event probabilities")
            return {}
        w = self.weights.astype(np.float64)
        rates = {}
        for var in wanted:
            thr = np.asarray(thresholds[var])[:, None, None, None]  # [T, 1, 1, 1]
            hits = np.zeros(len(thresholds[var]))
            for i in range(0, len(slots), 24):  # a day of slots at a time
                x = np.asarray(self.ds[var].isel(time=slots[i:i + 24]).values, np.float64)  # [b, Y, X]
                hits += np.sum((x[None] >= thr) * w, axis=(1, 2, 3))
            for t, h in zip(thresholds[var], hits):
                rates[(var, t)] = float(h / (len(slots) * w.sum()))
        log(f"evaluate: climatological base rates from {len(slots)} slots of {period}")
        return rates

    def levels(self, var: str) -> Optional[np.ndarray]:
        """The store levels [L] (hPa) of a multi-level variable, None for a single-level one."""
        return self.reader.levels(var)

    def field(self, var: str, slot: int) -> np.ndarray:
        """[(L,) Y, X] float32 at store index ``slot``."""
        return self.reader.field(var, slot)

    def climatology(self, var: str, level_index: Optional[int]) -> Optional[float]:
        """The training-period mean ``<var>_mean`` (of one level), None without statistics."""
        if var not in self._clim:
            name = f"{var}_mean"
            self._clim[var] = np.asarray(self.ds[name].values, np.float64) if name in self.ds else None
        values = self._clim[var]
        return None if values is None else float(values if level_index is None else values[level_index])

    def spread_edges(self, var: str, level_index: Optional[int]) -> Optional[np.ndarray]:
        """Spread–error bin edges [E] of a channel: tables.SPREAD_ERROR_EDGES × its training-period ``<var>_std``
        (None without statistics, or a zero std)."""
        if var not in self._std:
            name = f"{var}_std"
            self._std[var] = np.asarray(self.ds[name].values, np.float64) if name in self.ds else None
        values = self._std[var]
        if values is None:
            return None
        std = float(values if level_index is None else values[level_index])
        return SPREAD_ERROR_EDGES * std if np.isfinite(std) and std > 0 else None
