"""Forward hooks registered together and always removed: how resetassay reads and clamps unit layers.

`capture(model, layers)` records what chosen modules output during the forwards run inside it (TransformerLens'
`run_with_cache` idea), optionally replacing it; every stage that reads a layer's output uses it. `forward_hooks`
registers hand-written hooks: the clamps of the lesion engines, which rewrite part of an output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol

import torch
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


class Named(Protocol):
    """A module with its name, as a `units.UnitLayer` holds them."""

    name: str
    module: nn.Module


def copy_of(output: torch.Tensor) -> torch.Tensor:
    """A detached copy: what `capture` keeps by default, which no in-place op downstream (`relu(inplace=True)`,
    `+=`) can change (DESIGN "Known traps")."""
    return output.detach().clone()


def as_is(output: object) -> object:
    """The output itself (its identity, or the tensor autograd differentiates at)."""
    return output


def differentiable(_name: str, output: torch.Tensor) -> torch.Tensor:
    """A `replace` for `capture`: the output as a tensor gradients can be taken at, itself where it requires them,
    else a detached leaf that does; the model reads on from it."""
    return output if output.requires_grad else output.detach().requires_grad_()


class Captured(dict):
    """What `capture` recorded: `captured[name]`, the value kept of the module's last call; with `every_call`,
    `calls` lists `(name, value)` of every call in forward order. `clear()` forgets both."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, object]] = []

    def clear(self) -> None:
        """Forget the recorded values and the call counts."""
        super().clear()
        self.calls.clear()


@contextmanager
def capture(model: nn.Module, layers: Mapping[str, nn.Module] | Iterable[str | Named], *,
            keep: Callable[[object], object] | None = copy_of,
            replace: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
            every_call: bool = False) -> Iterator[Captured]:
    """Record the outputs of chosen modules of `model` during the forwards run inside; the hooks are removed on
    exit, also on error.

    `layers`: module names of `model`, unit layers (anything with `.name` and `.module`), or `{name: module}`.
    `keep(output)` is what is recorded under the name (default `copy_of`; `as_is` keeps the tensor itself, a
    function of it a summary such as its shape; None records nothing). `replace(name, output)`, when given, returns
    what the model reads on instead of the output, and `keep` sees that. `every_call`: also list every call in
    `calls` (a module called more than once per forward, counting calls), else only each module's last call is
    kept."""
    modules = _named_modules(model, layers)
    captured = Captured()

    def hook_for(name: str) -> ForwardHook:
        def hook(_module: nn.Module, _inputs: tuple, output: object) -> object:
            if replace is not None:
                output = replace(name, output)
            if keep is not None:
                captured[name] = value = keep(output)
                if every_call:
                    captured.calls.append((name, value))
            return output if replace is not None else None
        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in modules.items()]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _named_modules(model: nn.Module, layers: Mapping[str, nn.Module] | Iterable[str | Named]) -> dict[str, nn.Module]:
    """`{name: module}` of what `capture` is given."""
    if isinstance(layers, Mapping):
        return dict(layers)
    named = {}
    for layer in layers:
        if isinstance(layer, str):
            named[layer] = model.get_submodule(layer)
        else:
            named[layer.name] = layer.module
    return named
