"""Benchmarks behind ``def-jax bench`` (scripts that print numbers; results go to docs/BENCHMARKS.md)."""
