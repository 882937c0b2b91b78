"""Is DEF's ensemble mean better than what a run without skill could do? (docs/RESULTS.md, the Held–Suarez section)

The deterministic run loses its skill within days on this world (error doubling ≈ 2 days), after which any ensemble
mean beats it by smoothing alone: a perfect ensemble's mean tends to the climatology, whose RMSE is 1/√2 of a
saturated run's. So beside the ensemble mean's RMSE this script gives, per lead time and variable, on the same test
cycles (latitude-weighted, physical units):

* the **climatology**: the training period's time and zonal mean at each latitude (the Held–Suarez climate is zonally
  symmetric and has no seasons; ``def-jax evaluate``'s climatology is one constant per channel);
* the **damped run**: the run's anomaly from that climatology times the least-squares factor a = Σ w d'y' / Σ w d'²
  fitted on the same test cycles per lead and channel: an upper bound on what damping alone achieves (hindsight);
* ratios to the run's RMSE, with 90 % percentile bootstrap intervals over the cycles (1000 resamples, paired: the same
  resamples for every system; :mod:`def_jax.evaluation.bootstrap`).

    .venv/bin/python experiments/heldsuarez/references.py runs/heldsuarez_study/s0/def [z500,t850,u250]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from def_jax.data.schema import open_store, parse_period
from def_jax.evaluation.bootstrap import percentile_interval, resample_counts
from def_jax.evaluation.metrics import coslat_weights
from def_jax.forecast.files import forecast_paths, open_forecast

SHOWN_LEADS = (24, 48, 72, 120, 168, 240)
SYSTEMS = ("run", "mean", "climatology", "damped")


def parse_channel(text: str) -> tuple[str, float]:
    """``z500`` → ("z", 500.0)."""
    name = text.rstrip("0123456789")
    if not name or name == text:
        raise SystemExit(f"channel {text!r}: expected a variable and a pressure level, e.g. z500")
    return name, float(text[len(name):])


def cycle_sums(folder: Path, channels: list[tuple[str, float]]) -> tuple[np.ndarray, list[int]]:
    """Weighted sums per cycle [n, channel, lead, 5]: d'², d'y', y'², m'², m'y' (anomalies from the climatology; d the
    run, m the ensemble mean, y the truth; weights cos φ with mean 1), and the lead hours."""
    files = forecast_paths(folder)
    if not files:
        raise SystemExit(f"{folder}: no forecast files")
    with open_forecast(files[0]) as ds:
        store = open_store(ds.attrs["store"])
        leads = [int(h) for h in ds.lead_time.values]
    start, end = parse_period(store.attrs["stats_train_period"], "stats_train_period")
    w = coslat_weights(np.asarray(store["latitude"].values, np.float64))  # [H, W]
    clim = {}
    for v, level in channels:
        train = store[v].sel(level=level).sel(time=slice(start, end))  # [T, H, W]
        clim[v, level] = np.asarray(train.mean(("time", "x")).values, np.float64)[:, None]  # [H, 1]
    out = np.zeros((len(files), len(channels), len(leads), 5))
    for n, path in enumerate(files):
        with open_forecast(path) as ds:
            valid = ds.valid_time.values[0]  # [L]
            for c, (v, level) in enumerate(channels):
                y = store[v].sel(level=level).sel(time=valid).values.astype(np.float64) - clim[v, level]  # [L, H, W]
                d = ds[f"{v}_deterministic"].sel(level=level).values[0].astype(np.float64) - clim[v, level]
                m = ds[f"{v}_mean"].sel(level=level).values[0].astype(np.float64) - clim[v, level]
                for k, (a, b) in enumerate(((d, d), (d, y), (y, y), (m, m), (m, y))):
                    out[n, c, :, k] = np.mean(w * a * b, axis=(1, 2))
    return out, leads


def rmse(sums: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    """RMSE of each system from the per-cycle sums [n, C, L, 5] pooled with the cycle counts [n, R]: [C, L, R]."""
    s = np.einsum("nclk,nr->clkr", sums, counts) / counts.sum(axis=0)  # [C, L, 5, R]
    dd, dy, yy, mm, my = (s[:, :, k] for k in range(5))
    a = dy / dd  # the damping fitted on these cycles
    return {"run": np.sqrt(dd - 2 * dy + yy), "mean": np.sqrt(mm - 2 * my + yy), "climatology": np.sqrt(yy),
            "damped": np.sqrt(np.maximum(a * a * dd - 2 * a * dy + yy, 0.0)), "a": a}


def main() -> int:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/heldsuarez_study/s0/def")
    names = (sys.argv[2] if len(sys.argv) > 2 else "z500,t850,u250").split(",")
    channels = [parse_channel(t) for t in names]
    sums, leads = cycle_sums(folder / "forecasts" if (folder / "forecasts").is_dir() else folder, channels)
    n = sums.shape[0]
    point = rmse(sums, np.ones((n, 1)))
    boot = rmse(sums, resample_counts(n, 1000, seed=0).T)  # counts [n, R]
    print(f"# The ensemble mean against the climatology and a damped run ({folder}, {n} cycles)\n")
    print("Latitude-weighted RMSE in physical units; climatology: the training period's time and zonal mean; damped: "
          "the run's anomaly times a, fitted on these cycles (hindsight). Ratios to the run's RMSE with 90 % "
          "bootstrap intervals over the cycles.\n")
    print("| channel | lead (h) | run | ensemble mean | climatology | damped run (a) | mean ÷ run | "
          "climatology ÷ run | damped ÷ run | mean ÷ climatology |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c, name in enumerate(names):
        for i, lead in enumerate(leads):
            if lead not in SHOWN_LEADS and lead != leads[-1]:
                continue

            def ratio(top: str, bottom: str) -> str:
                lo, hi = percentile_interval(boot[top][c, i] / boot[bottom][c, i], 0.9)
                return f"{point[top][c, i, 0] / point[bottom][c, i, 0]:.2f} [{float(lo):.2f}, {float(hi):.2f}]"

            p = {k: float(point[k][c, i, 0]) for k in (*SYSTEMS, "a")}
            print(f"| {name} | {lead} | {p['run']:.4g} | {p['mean']:.4g} | {p['climatology']:.4g} | "
                  f"{p['damped']:.4g} ({p['a']:.2f}) | {ratio('mean', 'run')} | {ratio('climatology', 'run')} | "
                  f"{ratio('damped', 'run')} | {ratio('mean', 'climatology')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
