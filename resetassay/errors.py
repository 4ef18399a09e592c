"""The error a user can act on: one line naming the file or config field and the fix (docs/design.md "Fields, not
flags"); and warnings that point at the user's line."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

_PACKAGE = str(Path(__file__).resolve().parent)


class BadInputError(ValueError):
    """Bad input (missing file, unknown name, impossible size); the CLI exits with code 2.

    The message names configuration fields in backticks, as the Python API spells them (`` `calib_size` 0: must be
    ... ``); the command line prints each as its field (`--calib-size`), and `` `joint`=False `` as `--no-joint`.
    `field` names the field at fault, when there is one: such an error is about the request, would fail every
    checkpoint, and stops a run; an error without a field is about one file.

    Args:
        message: one line naming the file or field at fault and what to do.
        field: the field at fault, or None.

    Example::

        >>> import resetassay as ra
        >>> try:
        ...     ra.AssayConfig(utilities=[])
        ... except ra.BadInputError as err:
        ...     isinstance(err, ValueError), err.field
        (True, 'utilities')
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def one_line(err: BaseException) -> str:
    """An exception as `Type: first line` (torch's messages can run to a C++ stack trace)."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:300]}" if lines else type(err).__name__


def did_you_mean(unknown: list[str], known: list[str]) -> str:
    """" (did you mean gxd?)" for the names of `known` close to those in `unknown`; "" when none is."""
    import difflib

    close = [m for name in unknown for m in difflib.get_close_matches(name, known, n=2, cutoff=0.6)]
    return f" (did you mean {' or '.join(dict.fromkeys(close))}?)" if close else ""


def warn_user(message: str | Warning, category: type[Warning] = UserWarning) -> None:
    """`warnings.warn` at the first line outside resetassay up the call stack: the user's, however deep in the
    package the warning is raised (a fixed `stacklevel` points into the package as soon as a call path changes)."""
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
