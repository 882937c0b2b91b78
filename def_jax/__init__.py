"""def-jax: Diffusion-augmented Ensemble Forecasting (Millard et al. 2025) in JAX for NOAA HRRR."""

__version__ = "0.1.0"
