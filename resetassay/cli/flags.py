"""Config fields as flags: the library names a field in backticks (`` `calib_size` ``), the command line prints it as
the flag that sets it (`--calib-size`) — docs/design.md "Fields, not flags"."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import typing
from collections.abc import Callable
from typing import Annotated

import typer

FIELD = re.compile(r"`([a-z][a-z0-9_]*)`(?:=([^\s,;)]+))?")  # `q`, `q`=0.1, `joint`=False


def field_of(flag: str) -> str:
    """The field a flag sets: `--calib-size` -> `calib_size`."""
    return flag.lstrip("-").replace("-", "_")


def command_flags(command: object) -> dict[str, tuple[str, str | None]]:
    """Field -> (its flag, the flag that turns it off) for the options of a typer command, by parameter name and by
    the name each long flag spells (`out_dir` and `out` both -> `--out`)."""
    flags: dict[str, tuple[str, str | None]] = {}
    for param in getattr(command, "params", []):
        long = [opt for opt in param.opts if opt.startswith("--")]  # arguments have none
        if not long:
            continue
        off = next((opt for opt in param.secondary_opts if opt.startswith("--")), None)
        for name in (param.name or field_of(long[0]), *map(field_of, long)):
            flags.setdefault(name, (long[0], off))
    return flags


@functools.cache
def every_flag() -> dict[str, tuple[str, str | None]]:
    """Field -> flag over every command; a field means the same flag in every command that has it (a test checks),
    so a message needs no knowledge of the command that printed it."""
    import typer

    from resetassay.cli.commands import app

    flags: dict[str, tuple[str, str | None]] = {}
    for command in typer.main.get_command(app).commands.values():
        for name, value in command_flags(command).items():
            flags.setdefault(name, value)
    return flags


def _with_flags(text: str, flags: dict[str, tuple[str, str | None]]) -> str:
    """`text` with the backticked fields found in `flags` written as flags (`as_flags`, over a given table)."""

    def flag(match: re.Match) -> str:
        name, value = match.groups()
        if name not in flags:
            return match.group(0)
        on, off = flags[name]
        if value is None:
            return on
        if off is None:  # not a switch: `q`=0.1 -> --q 0.1
            return f"{on} {value}"
        return on if value == "True" else off

    return FIELD.sub(flag, text)


def as_flags(text: str) -> str:
    """`text` with each backticked field that a command has a flag for written as that flag: `` `q` `` -> `--q`,
    `` `joint`=False `` -> `--no-joint`, `` `q`=0.1 `` -> `--q 0.1`; other backticked words are left as they are."""
    return _with_flags(text, every_flag())


def _flag_type(annotation: object) -> tuple[type, bool]:
    """The type a flag parses for a field of this type, and whether the flag must default to None (then the
    config's own default applies): plain bool/int/float/str as they are; names (Literal) as str; lists, sizes
    and anything else as text that the config parses (resetassay/fields.py)."""
    if annotation in (bool, int, float, str):
        return annotation, False
    args = set(typing.get_args(annotation))
    if typing.get_origin(annotation) is typing.Literal:
        return str, False
    if type(None) in args and len(args) == 2:
        (inner,) = args - {type(None)}
        if inner in (int, float, str):
            return inner | None, True
    return str | None, True


def config_options(config: type) -> Callable[[Callable], Callable]:
    """Give a typer command one option per field of the dataclass `config`, from the field's type, default and
    help; the command receives them as one dict `config_fields` of the values given (None: not given), for
    `config(**fields)` inside its own error handling."""
    hints = typing.get_type_hints(config)
    own = {f.name: (f"--{f.name.replace('_', '-')}", f"--no-{f.name.replace('_', '-')}" if hints[f.name] is bool
                    else None) for f in dataclasses.fields(config)}
    generated = []
    for f in dataclasses.fields(config):
        flag_type, optional = _flag_type(hints[f.name])
        default = None if optional or f.default is dataclasses.MISSING else f.default
        option = typer.Option(help=_with_flags(f.metadata["help"], own))
        generated.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                           annotation=Annotated[flag_type, option]))

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        positional = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        keywords = [p for p in signature.parameters.values()
                    if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "config_fields"]

        @functools.wraps(command)
        def wrapper(*args: object, **kwargs: object) -> object:
            fields = {p.name: kwargs.pop(p.name) for p in generated}
            return command(*args, config_fields={k: v for k, v in fields.items() if v is not None}, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=[*positional, *generated, *keywords])  # type: ignore[attr-defined]
        return wrapper

    return decorate
