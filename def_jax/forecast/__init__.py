"""DEF ensemble forecasts: the rollout program, its inputs from the store, NetCDF output (docs/FORECASTS.md)."""
