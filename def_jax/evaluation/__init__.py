"""Verification of forecasts against the store: metric math (``metrics``) and the CSV tables (``evaluate``)."""
