"""Configuration files (ml-collections ``get_config(variant)``); see ``presets.py``."""
