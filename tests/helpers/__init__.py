"""Shared test helpers: tiny models (models.py), models written as other people write them
(foreign_models.py, also for `--model helpers.foreign_models:<factory>`), the fast-equals-plain
assertion every engine test uses (engines.py), where the repository, fixtures and shared data are (paths.py),
the user's own data for the data tests (data.py), and gloo ranks spawned inside a test (ranks.py).

tests/ is on sys.path (pyproject's pytest `pythonpath`), so every test imports these as `helpers.<module>`."""
