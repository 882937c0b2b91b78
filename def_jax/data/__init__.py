"""Reading the Zarr store: schema helpers, normalization and the Grain input pipeline. See docs/DATA.md."""
