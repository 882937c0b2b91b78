"""The diffusion core: schedules, losses and samplers in pure JAX (no models, no I/O). See docs/DIFFUSION.md."""
