"""The `resetassay` command (installed as `resetassay = "resetassay.cli:app"`, also `python -m resetassay` and
`python -m resetassay.cli`): typer commands that parse, call one library function, print (`commands.py`). Each
command imports the library it calls when it runs, so `resetassay --help` loads no torch, pandas or matplotlib.
"""

from resetassay.cli.commands import app, main

__all__ = ["app", "main"]
