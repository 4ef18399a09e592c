"""What crosses into a run from disk and goes back to it (SPEC S1, S5; DESIGN "Checkpoint format",
"Runs are resumable"): checkpoint directories and state dicts, saved, found and loaded without running code
from a file, and the model sources a user names (`checkpoint.py`); importing the code a user names with
`--model` or `--data pkg.mod:factory` (`imports.py`); the run directory, the one reader and writer of its tables,
parts, failures and timings, with atomic writes and hashing (`rundir.py`). `rundir.py` never imports torch, so
this package imports none of its modules itself: import the module you need (`resetassay.io.rundir`).
"""

__all__ = ["checkpoint", "imports", "rundir"]
