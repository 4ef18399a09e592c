"""Importing code the user names on the command line (`--model`, `--data pkg.mod:factory`), from the
working folder too. Only code the user named runs; a checkpoint's manifest never names any."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from resetassay.errors import BadInputError


def import_named_module(module_name: str, label: str, field: str) -> ModuleType:
    """`import module_name`, searching the working folder as `python -m` does (the installed script does not);
    a failure is one line starting with `label` (e.g. "`model` 'pkg.mod:f'") and carrying `field`."""
    cwd = str(Path.cwd())
    searched = cwd in sys.path or "" in sys.path
    if not searched:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ImportError as err:
        raise BadInputError(f"{label}: cannot import {module_name} ({err}); run from the folder that holds it "
                            "or add that folder to PYTHONPATH", field=field) from err
    finally:
        if not searched:
            sys.path.remove(cwd)
