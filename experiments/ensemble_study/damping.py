"""Is DEF's better ensemble mean more than a damped deterministic run? (docs/RESULTS.md, "Which ensemble wins")

For one folder of DEF forecasts (``FOLDER/forecasts``: the test cycles; ``FOLDER/val_forecasts``: validation
cycles), per lead time, in normalized units (each state channel's anomaly from its training mean divided by its
training standard deviation, the store's statistics: x' = (x − μ_c)/σ_c), pooled over the channels and the grid
(channels constant over the training period, such as q at 50 hPa, are left out), and

* b = Σ m'd' / Σ d'², the regression slope of DEF's ensemble mean m on the deterministic run d (test cycles): b < 1
  is the members' mean drawn toward the training climate (x' = 0);
* a = Σ d'y' / Σ d'², the least-squares damping of the deterministic run toward the training climate, fitted on the
  validation cycles (y the analyses);
* on the test cycles, the RMSE of the deterministic run, of the damped run a·d', and of DEF's ensemble mean.

If the damped run is as good as DEF's mean, DEF's gain in ensemble-mean RMSE is that damping; if DEF's mean is
better, its members carry more than a pull toward the climate.

    .venv/bin/python experiments/ensemble_study/damping.py runs/ensemble_study/s0/def
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import xarray as xr

from def_jax.data.schema import open_store
from def_jax.forecast.files import forecast_paths, open_forecast

SHOWN_LEADS = (1, 3, 6, 12, 18, 24)


def _state_variables(ds: xr.Dataset) -> list[str]:
    return [v for v in ds.data_vars if f"{v}_deterministic" in ds and f"{v}_mean" in ds]


def sums(folder: Path) -> dict[int, dict[str, float]]:
    """Per lead hour the sums over channels, grid and cycles of d'², d'y', y'², m'd', m'², m'y' and the count."""
    out: dict[int, dict[str, float]] = {}
    files = forecast_paths(folder)
    if not files:
        raise SystemExit(f"{folder}: no forecast files")
    store = None
    for path in files:
        with open_forecast(path) as ds:
            if store is None:
                store = open_store(ds.attrs["store"])
            valid = ds.valid_time.values[0]  # [L]
            leads = ds.lead_time.values
            for v in _state_variables(ds):
                truth = store[v].sel(time=valid)  # [L, (level), y, x]
                mu, sd = store[f"{v}_mean"], store[f"{v}_std"]
                if "level" in ds[v].dims:
                    truth = truth.sel(level=ds.level.values)
                    mu, sd = mu.sel(level=ds.level.values), sd.sel(level=ds.level.values)
                mu = np.asarray(mu.values, np.float64)[..., None, None]  # [(level,) 1, 1]
                sd = np.asarray(sd.values, np.float64)[..., None, None]
                varies = sd > 1e-6 * np.abs(mu)  # channels constant in training (q at 50 hPa) have no anomaly
                sd = np.where(varies, sd, 1.0)
                d = np.where(varies, (ds[f"{v}_deterministic"].values[0].astype(np.float64) - mu) / sd, 0.0)
                m = np.where(varies, (ds[f"{v}_mean"].values[0].astype(np.float64) - mu) / sd, 0.0)
                y = np.where(varies, (truth.values.astype(np.float64) - mu) / sd, 0.0)  # [L, (level), y, x]
                for i, lead in enumerate(leads):
                    s = out.setdefault(int(lead), dict.fromkeys(("dd", "dy", "yy", "md", "mm", "my", "n"), 0.0))
                    di, mi, yi = d[i], m[i], y[i]
                    s["dd"] += float(np.sum(di * di))
                    s["dy"] += float(np.sum(di * yi))
                    s["yy"] += float(np.sum(yi * yi))
                    s["md"] += float(np.sum(mi * di))
                    s["mm"] += float(np.sum(mi * mi))
                    s["my"] += float(np.sum(mi * yi))
                    s["n"] += float(np.broadcast_to(varies, di.shape).sum())
    return out


def main() -> int:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/ensemble_study/s0/def")
    test, val = sums(folder / "forecasts"), sums(folder / "val_forecasts")
    print(f"# DEF's ensemble mean against a damped deterministic run ({folder})\n")
    print("Normalized units pooled over channels and grid; a fitted on the validation cycles, the rest on the test "
          "cycles.\n")
    print("| lead (h) | b (slope of DEF's mean on the run) | a (damping fitted on validation) | RMSE run | "
          "RMSE damped run | RMSE DEF mean | damped ÷ run | DEF mean ÷ run |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for lead in sorted(test):
        if lead not in SHOWN_LEADS and lead != max(test):
            continue
        t, v = test[lead], val[lead]
        a = v["dy"] / v["dd"]
        b = t["md"] / t["dd"]
        n = t["n"]
        run = np.sqrt((t["dd"] - 2 * t["dy"] + t["yy"]) / n)
        damped = np.sqrt((a * a * t["dd"] - 2 * a * t["dy"] + t["yy"]) / n)
        mean = np.sqrt((t["mm"] - 2 * t["my"] + t["yy"]) / n)
        print(f"| {lead} | {b:.3f} | {a:.3f} | {run:.3f} | {damped:.3f} | {mean:.3f} | {damped / run:.3f} | "
              f"{mean / run:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
