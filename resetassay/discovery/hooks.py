"""Forward hooks registered together and always removed: how resetassay reads and clamps unit layers."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from torch import nn

ForwardHook = Callable[[nn.Module, tuple, object], object]


@contextmanager
def forward_hooks(hooks: Mapping[nn.Module, ForwardHook]) -> Iterator[None]:
    """Register `{module: hook}` as forward hooks while inside; remove them on exit, also on error.

    A hook that returns a tensor replaces the module's output (`nn.Module.register_forward_hook`).
    """
    handles = [module.register_forward_hook(hook) for module, hook in hooks.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
