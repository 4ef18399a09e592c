"""The logits of a model whose forward returns more than a tensor: `--output` (SPEC S4 measures logits).

Many models return a tuple `(logits, aux)`, a dict `{"logits": ..., ...}` or an object with a
`.logits` field (Hugging Face). `select_output(model, output, example)` gives the model with an
`output_transform` that picks the chosen tensor out of what its forward returns: a `TransformedModel`,
a small wrapper that holds the model's own modules, parameters and buffers under the model's names, so
unit-layer names, state-dict keys, forward hooks and torch.fx / torch.export tracing all see the
model, its forward followed by the transform. The model itself is not changed. (`sequences.padded_tokens`
gives a model an `input_transform` the same way.)

`output` is a dotted path of dict keys, attribute names and tuple/list indices: `logits`, `0`,
`out.1`. Without one, a model that returns a tensor is left as it is; otherwise its `logits` key
or attribute is used, else the first tensor found depth-first, with a warning naming the choice.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping

import torch
from torch import nn

from resetassay.errors import BadInputError, warn_user

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
        warn_user(f"the model returns {describe(result)}: reading its logits from {output!r} "
                  f"(choose another with `{FIELD}`)")
    chosen = pick(result, output)
    if not isinstance(chosen, torch.Tensor) or chosen.dim() not in (2, 3) or chosen.shape[0] != len(example):
        raise BadInputError(f"`{FIELD}` {output!r} selects {describe(chosen)}, not logits shaped (batch, classes) "
                            f"for a batch of {len(example)}; the model returns {describe(result)}", field=FIELD)
    return _selecting(model, output)


def _selecting(model: nn.Module, path: str) -> nn.Module:
    """`model` returning `pick(what its forward returns, path)`."""
    return transformed(model, output_transform=functools.partial(pick, path=path))


InputTransform = Callable[[torch.Tensor], tuple[tuple, dict]]  # the input -> the forward's (args, kwargs)


class TransformedModel(nn.Module):
    """`model` whose forward is `output_transform(model.forward(*args, **kwargs))`, `(args, kwargs)` =
    `input_transform(x)` (default: `(x,), {}`), for the one input `x` resetassay gives a model.

    It holds `model`'s own modules, parameters and buffers (the same dicts), so its names, state-dict keys and
    forward hooks are the model's, and torch.fx and torch.export trace the model's forward under the model's module
    paths, followed by the transform; its other attributes (a Hugging Face `config`, a declared
    `unit_layer_specs`) are read from `model`. Its own attributes start with `_` (a model may have a child called
    `model`, as Hugging Face's do). The transforms are plain callables, never modules (their parameters would be the
    wrapper's). Build one with `transformed`, which keeps one wrapper around the user's model.
    """

    def __init__(self, model: nn.Module, output_transform: Callable[[object], object] | None = None,
                 input_transform: InputTransform | None = None):
        super().__init__()
        self._parameters, self._buffers, self._modules = model._parameters, model._buffers, model._modules
        self._non_persistent_buffers_set = model._non_persistent_buffers_set
        object.__setattr__(self, "_wrapped_model", model)  # not a child: the names stay the model's
        object.__setattr__(self, "_output_transform", output_transform)
        object.__setattr__(self, "_input_transform", input_transform)
        self.training = model.training

    def forward(self, x: torch.Tensor) -> object:
        """The wrapped model on the transformed input, its result through the output transform."""
        args, kwargs = self._input_transform(x) if self._input_transform is not None else ((x,), {})
        result = self._wrapped_model.forward(*args, **kwargs)
        return self._output_transform(result) if self._output_transform is not None else result

    def train(self, mode: bool = True) -> TransformedModel:
        """Set train/eval mode here and on the wrapped model's own flag."""
        super().train(mode)
        self._wrapped_model.training = mode  # its own flag (its children are ours)
        return self

    def __getattr__(self, name: str) -> object:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if "_wrapped_model" not in self.__dict__:
                raise
            return getattr(self.__dict__["_wrapped_model"], name)


def transformed(model: nn.Module, output_transform: Callable[[object], object] | None = None,
                input_transform: InputTransform | None = None) -> TransformedModel:
    """`model` with the transforms (`TransformedModel`); transforming a TransformedModel again adds to its own:
    the new output transform after its, the new input transform where it has none (one only)."""
    if not isinstance(model, TransformedModel):
        return TransformedModel(model, output_transform, input_transform)
    if input_transform is not None and model._input_transform is not None:
        raise ValueError("the model has an input transform already")
    outputs = [t for t in (model._output_transform, output_transform) if t is not None]
    return TransformedModel(model._wrapped_model, functools.reduce(_then, outputs) if outputs else None,
                            input_transform or model._input_transform)


def _then(first: Callable[[object], object], second: Callable[[object], object]) -> Callable[[object], object]:
    return lambda result: second(first(result))


def unwrapped(model: nn.Module) -> nn.Module:
    """The user's model inside a `TransformedModel` (`model` itself for any other)."""
    return model._wrapped_model if isinstance(model, TransformedModel) else model


def model_name(model: nn.Module) -> str:
    """The class name of the user's model, for messages."""
    return type(unwrapped(model)).__name__
