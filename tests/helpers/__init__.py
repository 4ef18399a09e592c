"""Shared test helpers: tiny models (models.py), models written as other people write them
(foreign_models.py, also for `--model helpers.foreign_models:<factory>`), and the fast-equals-plain
assertion every engine test uses (engines.py)."""
