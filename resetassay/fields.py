"""A config field declared once: its name, type, default and help (docs/design.md "Fields, not flags").

The library's configs (`AssayConfig`) declare each field with `option`; the command line generates its flags from
them (cli/flags.py), so the CLI, the config and the docs cannot drift. Help and errors name fields in backticks
(`` `calib_size` ``); the command line prints them as flags (`--calib-size`). A field that takes a list or a size
also takes the command line's text for it (`"gxd,activation"`, `"2GB"`), parsed in the config's one validation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import MISSING, field
from typing import Any

from resetassay.errors import BadInputError


def option(default: Any = MISSING, *, help: str, default_factory: Callable[[], Any] | Any = MISSING) -> Any:
    """A dataclass field with its help text (`metadata["help"]`)."""
    return field(default=default, default_factory=default_factory, metadata={"help": help})


def names(value: list[str] | tuple[str, ...] | str | None, name: str) -> list[str] | None:
    """A list of names, from a list or comma-separated text ("gxd, activation"); None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise BadInputError(f"`{name}` {value!r}: give names as a list of strings or comma-separated text",
                            field=name)
    return list(value)


def parse_bytes(text: str | None, field: str) -> int | None:
    """'512MB', '2GB', '1.5GiB' or a plain number of bytes."""
    if text is None:
        return None
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
    number = text.strip().lower().rstrip("bikmg")
    unit = text.strip().lower()[len(number):]
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        raise BadInputError(f"`{field}` {text!r}: expected a size such as 512MB or 2GB", field=field) from None
    if not math.isfinite(value) or value < 1:
        raise BadInputError(f"`{field}` {text!r}: must be a finite size of at least 1 byte, e.g. 512MB", field=field)
    return int(value)
