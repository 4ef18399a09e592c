"""What you can add to resetassay, and the one `Registry` that holds it: utilities (SPEC S3), shock metrics
(SPEC S4) and zoo models, each registered by name, from Python or by a package's entry point.

The registry lives here, beside the entry-point loading, because this is the file a newcomer opens to extend
resetassay, and because it is torch-free and at the bottom of the stages (DESIGN "Dependencies point down"): the
zoo (`models/zoo.py`, `MODELS`), the metrics (`lesion/shocks.py`, `SHOCK_METRICS`) and the utilities
(`scoring/registry.py`, `UTILITIES`) all use it without importing each other. What a plugin must provide is a
typing.Protocol next to the data it reads: `scoring.registry.Utility` and `lesion.shocks.ShockMetric`.

A package names its function in the entry-point group `resetassay.utilities` or `resetassay.metrics`; it is
imported only when a run names it, and run.json records where it came from (package, version, entry point):
`Registry.sources`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from resetassay.errors import BadInputError, did_you_mean

__all__ = ["Registry", "entry_point", "installed", "source_of", "summary"]

T = TypeVar("T")
_REQUIRED = object()  # `Registry.get` without a default


class Registry(Generic[T]):
    """Named entries of one kind (`kind`: "utility", "metric", "model"), in registration order.

    `register(name, entry)` adds one; `get(name)` returns it, loading a package's entry point of `group` the first
    time it is named (`plugin(name, fn, source)` registers what the entry point gives), else a BadInputError
    naming `field` (the config field that names it) that suggests close names (`errors.did_you_mean`); `names()`
    lists them. `sources` says where each entry registered from outside comes from (run.json's versions); built-ins
    have none. Otherwise it reads like a dict of its entries (`name in registry`, `registry[name]`, iteration over
    the names).
    """

    def __init__(self, kind: str, field: str | None = None, group: str | None = None,
                 plugin: Callable[[str, Callable, str], None] | None = None):
        self.kind, self.field, self.group, self.plugin = kind, field, group, plugin
        self._entries: dict[str, T] = {}
        self.sources: dict[str, str] = {}

    def register(self, name: str, entry: T, source: str | None = None) -> T:
        """Add (or replace) `entry` under `name`; `source`: where a plugin comes from (None: built in)."""
        self._entries[name] = entry
        if source is not None:
            self.sources[name] = source
        return entry

    def names(self) -> list[str]:
        """The names registered so far, in registration order."""
        return list(self._entries)

    def find(self, name: str) -> bool:
        """Whether `name` is registered, after loading it from its entry point when a package provides one."""
        return name in self._entries or self._load(name)

    def unknown(self, names: Iterable[str]) -> list[str]:
        """The names of `names` that nothing registers, not even an installed package."""
        return [n for n in names if not self.find(n)]

    def get(self, name: str, default: object = _REQUIRED) -> T:
        """The entry `name`, or `default` where given, else a one-line BadInputError that lists the names and
        suggests close ones."""
        if self.find(name):
            return self._entries[name]
        if default is not _REQUIRED:
            return default  # type: ignore[return-value]  # the caller's default, of the type it asks for
        raise BadInputError(f"unknown {self.kind} {name!r}{did_you_mean([name], self.names())}; choose from "
                            f"{', '.join(self.names())}", field=self.field)

    def copy(self) -> Registry[T]:
        """An independent registry with the same entries and sources (tests register into one)."""
        other: Registry[T] = Registry(self.kind, self.field, self.group, self.plugin)
        other._entries, other.sources = dict(self._entries), dict(self.sources)
        return other

    def _load(self, name: str) -> bool:
        if self.group is None or self.plugin is None:
            return False
        found = entry_point(self.group, name, self.field or self.kind)
        if found is None:
            return False
        self.plugin(name, *found)
        return name in self._entries

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __setitem__(self, name: str, entry: T) -> None:  # as a dict (a test's monkeypatch.setitem)
        self.register(name, entry)

    def __delitem__(self, name: str) -> None:
        del self._entries[name]
        self.sources.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


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
