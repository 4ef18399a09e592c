"""The logits of a model whose forward returns more than a tensor: `--output` (SPEC S4 measures logits).

Many models return a tuple `(logits, aux)`, a dict `{"logits": ..., ...}` or an object with a
`.logits` field (Hugging Face). `select_output(model, output, example)` gives a model whose
forward returns the chosen tensor, and changes nothing else: it is the same object's modules,
parameters and buffers under a subclass whose forward picks the output, so unit-layer names,
state-dict keys, forward hooks and torch.fx tracing all see the original model.

`output` is a dotted path of dict keys, attribute names and tuple/list indices: `logits`, `0`,
`out.1`. Without one, a model that returns a tensor is left as it is; otherwise its `logits` key
or attribute is used, else the first tensor found depth-first, with a warning naming the choice.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import warnings
from collections.abc import Callable, Mapping

import torch
from torch import nn

from resetassay.errors import BadInputError

FIELD = "output"


def pick(result: object, path: str) -> object:
    """The part of a forward's `result` at a dotted `path` (keys, attributes, indices; never inside a tensor)."""
    value = result
    parts = path.split(".")
    for depth, part in enumerate(parts):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, tuple | list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        elif not isinstance(value, Mapping | tuple | list | torch.Tensor) and hasattr(value, part):
            value = getattr(value, part)
        else:  # below the top, name the part reached: "no '0' in 'logits', a tensor of shape (2, 10); ..."
            where = f"{'.'.join(parts[:depth])!r}, {describe(value)}; the model returns" if depth else \
                "what the model returns,"
            raise BadInputError(f"`{FIELD}` {path!r}: no {part!r} in {where} {describe(result)}", field=FIELD)
    return value


def describe(result: object) -> str:
    """A one-line description of a forward's result: "a dict with keys logits, aux", "a tuple of 2 items"."""
    if isinstance(result, torch.Tensor):
        return f"a tensor of shape {tuple(result.shape)}"
    if isinstance(result, Mapping):
        return f"a {type(result).__name__} with keys {', '.join(map(str, result))}"
    if isinstance(result, tuple | list):
        kinds = ", ".join(f"{i}: {_kind(v)}" for i, v in enumerate(result))
        return f"a {type(result).__name__} of {len(result)} items ({kinds})"
    fields = _fields(result)
    return f"a {type(result).__name__} with fields {', '.join(fields)}" if fields else f"a {type(result).__name__}"


def _kind(value: object) -> str:
    return f"tensor {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__


def _fields(value: object) -> list[str]:
    if dataclasses.is_dataclass(value):
        return [f.name for f in dataclasses.fields(value)]
    return [k for k in getattr(value, "__dict__", {}) if not k.startswith("_")]


def default_path(result: object) -> str | None:
    """`logits` when the result has such a key or attribute, else the path of its first tensor (depth-first)."""
    if isinstance(result, Mapping) and isinstance(result.get("logits"), torch.Tensor):
        return "logits"
    if not isinstance(result, Mapping | tuple | list) and isinstance(getattr(result, "logits", None), torch.Tensor):
        return "logits"
    if isinstance(result, torch.Tensor):
        return ""
    if isinstance(result, Mapping):
        children = [(str(k), v) for k, v in result.items()]
    elif isinstance(result, tuple | list):
        children = [(str(i), v) for i, v in enumerate(result)]
    else:
        children = [(k, getattr(result, k)) for k in _fields(result)]
    for key, child in children:
        below = default_path(child)
        if below is not None:
            return f"{key}.{below}" if below else key
    return None


def select_output(model: nn.Module, output: str | None, example: torch.Tensor | None) -> nn.Module:
    """`model` itself when its forward returns a tensor and no `output` is asked for, else the same model
    returning the tensor at `output` (or the default's choice, with a warning). Checked on `example (B, ...)`
    when given: the selection must be a `(B, C)` or `(B, T, V)` tensor of logits. Raises BadInputError."""
    if output is not None and not output.strip(". "):
        raise BadInputError(f"`{FIELD}` {output!r}: give a key, attribute or index path such as logits or 0",
                            field=FIELD)
    if example is None:
        return model if output is None else _selecting(model, output)
    with torch.no_grad():
        result = model(example)
    if output is None:
        if isinstance(result, torch.Tensor):
            return model
        output = default_path(result)
        if output is None:
            raise BadInputError(f"the model returns {describe(result)}, with no tensor in it; its forward must return "
                                "the logits, or an object holding them (pick them with `output`)", field=FIELD)
        warnings.warn(f"the model returns {describe(result)}: reading its logits from {output!r} "
                      f"(choose another with `{FIELD}`)", stacklevel=2)
    chosen = pick(result, output)
    if not isinstance(chosen, torch.Tensor) or chosen.dim() not in (2, 3) or chosen.shape[0] != len(example):
        raise BadInputError(f"`{FIELD}` {output!r} selects {describe(chosen)}, not logits shaped (batch, classes) "
                            f"for a batch of {len(example)}; the model returns {describe(result)}", field=FIELD)
    return _selecting(model, output)


def _selecting(model: nn.Module, path: str) -> nn.Module:
    """`model` returning `pick(original forward, path)` (`with_forward`)."""
    return with_forward(model, lambda self, inner, *args, **kwargs: pick(inner(*args, **kwargs), self.output_path),
                        output_path=path)


def with_forward(model: nn.Module, forward: Callable[..., object], **attrs: object) -> nn.Module:
    """A shallow copy of `model` (sharing its modules, parameters and buffers, so names, state-dict keys, hooks and
    torch.fx see the model) whose class is a subclass of the model's with forward `forward(self, inner, *args,
    **kwargs)`, `inner` the model's own forward; `attrs` are set on the copy."""
    base = type(model)

    @functools.wraps(base.forward)  # the original signature, which torch.fx reads to name its placeholders
    def wrapped(self: nn.Module, *args: object, **kwargs: object) -> object:
        return forward(self, super(subclass, self).forward, *args, **kwargs)

    subclass = type(base.__name__, (base,), {"forward": wrapped, "__module__": base.__module__,
                                             "__qualname__": base.__qualname__})
    view = copy.copy(model)
    view.__class__ = subclass
    for key, value in attrs.items():
        setattr(view, key, value)
    return view
