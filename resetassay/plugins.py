"""What other packages add to resetassay: utilities (SPEC S3) and shock metrics (SPEC S4) by entry point.

A package names its function in the entry-point group `resetassay.utilities` or `resetassay.metrics`; it is
imported only when a run names it, and run.json records where it came from (package, version, entry point).
"""

from __future__ import annotations

from collections.abc import Callable

from resetassay.errors import BadInputError


def entry_point(group: str, name: str, field: str) -> tuple[Callable, str] | None:
    """The function registered as `name` in the entry-point group `group`, loaded, and where it comes from
    (`package version (module:function)`); None when no installed package provides it. A plugin whose import
    fails is an error naming `field`."""
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=group) if ep.name == name]
    if not found:
        return None
    point = found[0]
    try:
        fn = point.load()
    except Exception as err:  # the plugin's own import failed
        raise BadInputError(f"`{field}` {name}: its entry point {point.value} does not load "
                            f"({type(err).__name__}: {err})", field=field) from err
    dist = getattr(point, "dist", None)
    return fn, f"{dist.name} {dist.version} ({point.value})" if dist is not None else point.value


def source_of(fn: Callable) -> str:
    """Where a function registered from Python comes from: `module:qualified name`."""
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def installed(group: str) -> dict[str, str]:
    """The names the installed packages provide in the entry-point group `group`, each with where it comes from;
    nothing is imported (`entry_point` loads one when a run names it)."""
    from importlib.metadata import entry_points

    return {point.name: f"from an installed package ({point.value}); loaded when named"
            for point in entry_points(group=group)}


def summary(fn: Callable) -> str:
    """The first paragraph of `fn`'s docstring on one line ("" without one): a registered function's description."""
    import inspect

    return " ".join((inspect.getdoc(fn) or "").split("\n\n")[0].split())
