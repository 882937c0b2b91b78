"""Preprocessing: HRRR GRIB2 (or any xarray dataset) to the Zarr store, statistics, the synthetic mini-HRRR."""
