"""Unit layers: where the units live, who produces them, who reads them (SPEC S1, S3).

A unit layer is a module whose output holds one unit per feature (Linear: `(B, n)`), per
channel (Conv: `(B, n, H, W)`), per feature at every position (tokens: `(B, T, n)`, SPEC S9) or
per attention head (`(B, T, n * d_head)`, a head's d_head features one unit, SPEC S9). Every
computation reads a unit layer through `unit_view`, the units on axis 1. Zoo models declare
theirs; other models are tapped first by `resetassay.discovery.taps.tap_unit_layers`, which declares one
unit layer per activation call site (traced by fx, or, where fx cannot trace the model, found by
forward hooks counting the calls of its activation modules). An untapped model gets the outputs
of its activation modules, with producer and consumer unknown; a module called more than once
per forward is then refused by name here: its calls would be silently mixed.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from resetassay.discovery.hooks import capture
from resetassay.errors import BadInputError, did_you_mean

ACTIVATION_TYPES = (
    nn.ReLU, nn.SiLU, nn.LeakyReLU, nn.Tanh, nn.GELU, nn.ELU, nn.Sigmoid, nn.Softplus,
    nn.Mish, nn.Hardswish, nn.ReLU6, nn.PReLU, nn.SELU, nn.CELU,
)
WEIGHTED = (nn.Linear, nn.Conv2d)

UnitKind = Literal["linear", "conv", "token", "head"]
KIND_OF_RANK = {2: "linear", 4: "conv", 3: "token"}  # the kind of a unit layer's output, by its rank


@dataclass(frozen=True)
class UnitLayerSpec:
    """A model's declaration of one unit layer, by module names.

    `producer`/`consumer`: the Linear/Conv2d writing/reading the units directly (None, with a note, when
    not well defined). Where a CBP reset writes when the producer sits behind a per-unit norm (SPEC S7):
    `reset_producer` (the Linear/Conv2d before the norm), `reset_norm` (the norm, reset per unit), and
    `consumer_norm`, the BatchNorm after a bias-free consumer that takes the reset's compensation.
    `heads`: the module outputs `(B, T, heads * d_head)`, one unit per attention head (SPEC S9).
    """

    module: str
    producer: str | None
    consumer: str | None
    producer_note: str = ""
    consumer_note: str = ""
    reset_producer: str | None = None
    reset_norm: str | None = None
    consumer_norm: str | None = None
    heads: int | None = None



@dataclass
class UnitLayer:
    """One unit layer of a live model, with its per-unit state (SPEC S1); `find_unit_layers` lists them.

    Attributes:
        name: the layer's name (what `AssayConfig.layers` globs over), e.g. `layers.0.act`.
        module: the module whose output holds the units (hooked to read or clamp them).
        kind: "linear" `(B, n)`, "conv" `(B, n, H, W)`, "token" `(B, T, n)` or "head" `(B, T, n * d_head)`.
        n_units: the number of units. group: a head's features (d_head), else 1.
        producer, consumer: the Linear/Conv2d writing / reading the units directly, or None, with the reason in
            `producer_note` / `consumer_note` (SPEC S3).
        spec: the declaration it was resolved from (`UnitLayerSpec`).
        ages, stored_reference, stored_utility: per-unit state of a CBP checkpoint `(n_units,)`, or None.

    Example::

        >>> import torch, resetassay as ra
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> layer = ra.find_unit_layers(net, input_shape=(4,))[0]
        >>> layer.name, layer.kind, layer.n_units, layer.producer is net[0], layer.consumer is net[2]
        ('1', 'linear', 8, True, True)
        >>> layer.mature(100).all()   # no stored ages: every unit counts as mature
        tensor(True)
    """

    name: str
    module: nn.Module
    kind: UnitKind
    n_units: int
    group: int = 1
    producer: nn.Module | None = None
    consumer: nn.Module | None = None
    producer_note: str = ""
    consumer_note: str = ""
    spec: UnitLayerSpec | None = None
    ages: torch.Tensor | None = field(default=None, repr=False)
    stored_reference: torch.Tensor | None = field(default=None, repr=False)
    stored_utility: torch.Tensor | None = field(default=None, repr=False)

    def view(self, h: torch.Tensor) -> torch.Tensor:
        """The layer's output `h` with its units on axis 1 (`unit_view`)."""
        return unit_view(h, self.kind, self.n_units)

    def mature(self, maturity: int) -> torch.Tensor:
        """Boolean `(n_units,)`: age > maturity, or all True when no ages are stored."""
        if self.ages is None:
            return torch.ones(self.n_units, dtype=torch.bool)
        return self.ages > maturity


def unit_view(h: torch.Tensor, kind: UnitKind, n_units: int) -> torch.Tensor:
    """A view of a unit layer's output with the units on axis 1: `(B, n)` and `(B, n, H, W)` as they are, tokens
    `(B, T, n)` as `(B, n, T)`, heads `(B, T, n * d)` as `(B, n, T, d)` (SPEC S9). Writing into the view writes
    into `h`. Axes 2.. are the unit's values in one example: its positions, and last a head's d features."""
    if kind == "token":
        return h.movedim(-1, 1)
    if kind == "head":
        return h.unflatten(-1, (n_units, -1)).movedim(-2, 1)
    return h


def per_unit(values: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per-unit values shaped to broadcast against a unit view `u` (`unit_view`, or its units `u[:, idx]`):
    `(n,)` over every position, `(n, d)` (a head's reference vector) over its positions, feature by feature."""
    return values.view(values.shape[0], *[1] * (u.dim() - 1 - values.dim()), *values.shape[1:])


def positions(u: torch.Tensor) -> int:
    """Values per unit of one example in a unit view: 1 (Linear), H·W (Conv), T (tokens), T·d (heads)."""
    return math.prod(u.shape[2:])


def sum_positions(u: torch.Tensor) -> torch.Tensor:
    """`(B, n)`: a unit view summed over each unit's values in an example (SPEC S3, S9)."""
    return u.sum(dim=tuple(range(2, u.dim()))) if u.dim() > 2 else u


def position_mask(layer: UnitLayer, u: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    """The real positions `mask (B, T)` of padded token data shaped to broadcast over the layer's unit view
    (`(B, 1, T)`, a head's `(B, 1, T, 1)`), as u's dtype; None when nothing is padded or the layer has no token
    positions (SPEC S9: padding is left out everywhere)."""
    if mask is None or layer.kind not in ("token", "head"):
        return None
    return mask.to(u.dtype).view(mask.shape[0], 1, mask.shape[1], *[1] * (layer.kind == "head"))


def reference_dims(layer: UnitLayer, u: torch.Tensor) -> list[int]:
    """The axes of a unit view a reference averages over: all but the units (and a head's features) (SPEC S2, S9)."""
    kept = {1, u.dim() - 1} if layer.kind == "head" else {1}
    return [d for d in range(u.dim()) if d not in kept]


def declared_specs(model: nn.Module) -> list[UnitLayerSpec]:
    """The model's own declaration, or every activation module with unknown producer/consumer."""
    if hasattr(model, "unit_layer_specs"):
        return list(model.unit_layer_specs())
    note = "not declared: the model is not from the resetassay zoo"
    return [
        UnitLayerSpec(name, None, None, producer_note=note, consumer_note=note)
        for name, module in model.named_modules()
        if isinstance(module, ACTIVATION_TYPES)
    ]


def select_specs(specs: list[UnitLayerSpec], patterns: list[str] | None) -> list[UnitLayerSpec]:
    """Keep the specs whose name matches any glob in `patterns` (all when None)."""
    if not patterns:
        return specs
    chosen = [s for s in specs if any(fnmatch.fnmatchcase(s.module, p) for p in patterns)]
    if not chosen:
        names = [s.module for s in specs]
        raise BadInputError(f"`layers` {','.join(patterns)} matched no unit layer{_close_layers(patterns, names)}; "
                            f"available: {', '.join(names) or 'none'}", field="layers")
    return chosen


def _close_layers(patterns: list[str], names: list[str]) -> str:
    """" (did you mean ...?)" for layer names close to `patterns`; a glob is compared with the names' globs
    (`layers.*.actt` -> `layers.*.act`: the names with their indices as `*`)."""
    if any(c in p for p in patterns for c in "*?["):
        names = list(dict.fromkeys(re.sub(r"\d+", "*", n) for n in names))
    return did_you_mean(patterns, names)


def is_conv1d(module: nn.Module) -> bool:
    """Whether `module` is Hugging Face's `Conv1D` (GPT-2): a Linear layer storing its weight as `(in, out)`."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


def dense_weight(module: nn.Module) -> torch.Tensor:
    """A producer's or consumer's weight with outputs first, `(out, in, ...)`: a Conv1D's transposed (SPEC S3)."""
    return module.weight.T if is_conv1d(module) else module.weight


def _weighted(model: nn.Module, name: str | None, what: str, note: str) -> tuple[nn.Module | None, str]:
    if name is None:
        return None, note
    module = model.get_submodule(name)
    if not (isinstance(module, WEIGHTED) or is_conv1d(module)):
        return None, f"{what} {name} is a {type(module).__name__}, not Linear/Conv2d"
    return module, note


def unit_layers(
    model: nn.Module, example: torch.Tensor, patterns: list[str] | None = None
) -> list[UnitLayer]:
    """Resolve the unit layers of `model` on an example batch `(B, ...)`, in forward order."""
    specs = select_specs(declared_specs(model), patterns)
    shapes: dict[str, list[torch.Size]] = {s.module: [] for s in specs}
    order: list[str] = []
    names = [s.module for s in specs]
    with capture(model, names, keep=lambda out: out.shape, every_call=True) as seen, torch.no_grad():
        model(example)
    for name, shape in seen.calls:
        shapes[name].append(shape)
        order.append(name)

    layers = []
    for spec in sorted(specs, key=lambda s: order.index(s.module) if s.module in order else 1 << 30):
        calls = shapes[spec.module]
        if len(calls) != 1:
            how = "never" if not calls else f"{len(calls)} times"
            raise BadInputError(
                f"module {spec.module} is called {how} per forward; its units are ambiguous — "
                "give each call its own module, or exclude it with `layers`"
            )
        shape = calls[0]
        if len(shape) not in KIND_OF_RANK:
            raise BadInputError(
                f"unit layer {spec.module} outputs shape {tuple(shape)}; expected (B, n), (B, C, H, W) or (B, T, n)"
            )
        kind = "head" if spec.heads else KIND_OF_RANK[len(shape)]
        n_units = spec.heads or int(shape[1 if kind in ("linear", "conv") else -1])
        if kind == "head" and (len(shape) != 3 or shape[-1] % spec.heads):
            raise BadInputError(f"unit layer {spec.module} declares {spec.heads} heads but outputs shape "
                                f"{tuple(shape)}; expected (B, T, heads * d_head)")
        producer, producer_note = _weighted(model, spec.producer, "producer", spec.producer_note)
        consumer, consumer_note = _weighted(model, spec.consumer, "consumer", spec.consumer_note)
        layers.append(UnitLayer(
            name=spec.module,
            module=model.get_submodule(spec.module),
            kind=kind,
            n_units=n_units,
            group=int(shape[-1]) // n_units if kind == "head" else 1,
            producer=producer,
            consumer=consumer,
            producer_note=producer_note,
            consumer_note=consumer_note,
            spec=spec,
        ))
    return layers


def layer_table(layers: list[UnitLayer]) -> list[dict[str, object]]:
    """One row per unit layer: name, kind, unit count, producer and consumer (or why not)."""
    return [
        {
            "layer": layer.name,
            "kind": layer.kind,
            "units": layer.n_units,
            "producer": (layer.spec.producer if layer.producer is not None else f"- ({layer.producer_note})"),
            "consumer": (layer.spec.consumer if layer.consumer is not None else f"- ({layer.consumer_note})"),
        }
        for layer in layers
    ]
