"""Lesions and their shocks (SPEC S4), by any engine with one request.

    shocks = unit_shocks(model, layers, refs, probe_x, ["l1", "kl"], engine="fast")   # [metric][layer] (n,)
    joint = joint_shocks(model, layers, refs, [{"layers.0.act": torch.tensor([3, 7])}], probe_x, ["l1"])

Every engine takes a `LesionRequest` and is a `LesionEngine` (engine.py), chosen by name in `ENGINES`:
`"plain"` is the reference (plain.py: one forward per lesion); `"fast"` gives the same numbers with less work
(fast.py: graph split at the layer, batched lesions, consumer shortcut; graph_split.py cuts the graph);
`intervention="cbp-reset"` measures CBP's reset in place of the clamp (reset.py: one plain forward per lesion, the
engine unused). `unit_shocks_of(request)` and `joint_shocks_of(request, lesions)` run a request; `unit_shocks` and
`joint_shocks` build one from keywords. The unlesioned probe logits `base` are computed once when the caller has
not got them.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from resetassay.discovery.units import UnitLayer
from resetassay.errors import BadInputError
from resetassay.lesion import fast, plain, reset
from resetassay.lesion.engine import LesionEngine, LesionRequest
from resetassay.lesion.shocks import check_metrics, check_targets, list_metrics, probe_logits, register_metric
from resetassay.names import CBP_RESET, Engine, Intervention
from resetassay.shapes import Advance, Lesion, Refs, SetShocks, Shocks, UnitChoice

__all__ = ["ENGINES", "LesionEngine", "LesionRequest", "joint_shocks", "joint_shocks_of", "list_metrics",
           "register_metric", "unit_shocks", "unit_shocks_of"]

ENGINES: dict[str, LesionEngine] = {"fast": fast, "plain": plain, CBP_RESET: reset}  # each module is an engine


def engine_of(request: LesionRequest) -> LesionEngine:
    """The engine that measures `request`: CBP's reset for the cbp-reset intervention, else the one it names."""
    return ENGINES[CBP_RESET if request.intervention == CBP_RESET else request.engine]


def _ready(request: LesionRequest) -> LesionRequest:
    """`request` with its metrics checked (registered, with the targets they read), its layers checked to be the
    model's, and its unlesioned probe logits computed."""
    check_metrics(request.metrics)
    check_targets(request.metrics, request.targets)
    _check_layers(request.model, request.layers)
    if request.base is not None:
        return request
    return replace(request, base=probe_logits(request.model, request.probe_x, request.batch_size))


def unit_shocks_of(request: LesionRequest) -> Shocks:
    """`Shocks[metric][layer]` `(n_units,)`: each unit of each layer lesioned alone (SPEC S4); with `request.units`,
    only the units `units[layer]` (indices, in that order) of the layers it names."""
    request = _ready(request)
    return engine_of(request).unit_shocks(request)


def joint_shocks_of(request: LesionRequest, lesions: list[Lesion]) -> SetShocks:
    """Shock `(n_lesions,)` per metric of each lesion, a set of units (possibly across layers) clamped (or with
    "cbp-reset" reset) at once (SPEC S4, joint Shock@q of S5)."""
    request = _ready(request)
    return engine_of(request).joint_shocks(request, lesions)


def unit_shocks(model: nn.Module, layers: list[UnitLayer], refs: Refs, probe_x: torch.Tensor, metrics: list[str],  # noqa: PLR0913 — the public lesion call: the fields of `LesionRequest` as keywords
                *, engine: Engine = "fast", base: torch.Tensor | None = None, batch_size: int = 512,
                max_memory: int | None = None, max_k: int | None = None, shortcut: bool | None = None,
                advance: Advance | None = None, units: UnitChoice | None = None,
                intervention: Intervention = "clamp", seed: int = 0, targets: torch.Tensor | None = None) -> Shocks:
    """`Shocks[metric][layer]` `(n_units,)`: each unit of each layer clamped alone to its reference (SPEC S4);
    with `units`, only the units `units[layer]` (indices, in that order) of the layers it names. The arguments are
    those of `LesionRequest`.

    Args:
        model: in eval mode, on its device; `layers` resolved on it (`units.unit_layers`).
        refs: the reference `(n_units,)` of every layer (SPEC S2), on the model's device.
        probe_x: probe inputs `(P, ...)`; metrics: registered names (`shocks.SHOCK_METRICS`).
        engine: "fast" or "plain" (same numbers to float rounding; tests hold them to 1e-6 relative).
        base: the unlesioned probe logits `(P, C)`, computed here when None (in `batch_size` batches).
        max_memory: bytes of activations per lesion chunk (fast); max_k caps lesions per forward (fast);
            shortcut forces the consumer shortcut on/off (fast, default: where it pays).
        advance: called with the number of lesions finished, for a progress bar.
        intervention: "clamp", or "cbp-reset": CBP's reset of the unit (SPEC S7) with r_i from `refs`, its fresh
            incoming weights seeded by `seed`, the layer and the unit; every layer must be resettable
            (`reset.reset_sites`).
        targets: the probe targets `(P,)` (a language model's `(P, T)`), for metrics that read them.

    Returns:
        `shocks[metric][layer]`, a float64 tensor `(n_units,)` per layer (`(len(units[layer]),)` with `units`), on
        the CPU: the mean over the probe set of each lesion's shock.

    Raises:
        BadInputError: an unknown metric, a metric that reads targets without `targets`, or a layer whose module is
            not one of `model`'s (its hook would never run).

    Example::

        >>> import torch, resetassay as ra
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
        >>> layers = ra.find_unit_layers(net, input_shape=(4,))
        >>> refs = {layer.name: torch.zeros(layer.n_units) for layer in layers}   # a reset to 0
        >>> probe_x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
        >>> shocks = ra.unit_shocks(net, layers, refs, probe_x, ["l1", "kl"])
        >>> shocks["l1"]["1"].shape, shocks["l1"]["1"].dtype
        (torch.Size([8]), torch.float64)
        >>> plain = ra.unit_shocks(net, layers, refs, probe_x, ["l1"], engine="plain")
        >>> torch.allclose(shocks["l1"]["1"], plain["l1"]["1"])
        True
    """
    return unit_shocks_of(LesionRequest(
        model, layers, refs, probe_x, metrics, base=base, targets=targets, units=units, engine=engine,
        intervention=intervention, seed=seed, batch_size=batch_size, max_memory=max_memory, max_k=max_k,
        shortcut=shortcut, advance=advance))


def joint_shocks(model: nn.Module, layers: list[UnitLayer], refs: Refs, lesions: list[Lesion],  # noqa: PLR0913 — the public lesion call: the fields of `LesionRequest` as keywords
                 probe_x: torch.Tensor, metrics: list[str], *, engine: Engine = "fast",
                 base: torch.Tensor | None = None, batch_size: int = 512, max_memory: int | None = None,
                 advance: Advance | None = None, intervention: Intervention = "clamp", seed: int = 0,
                 targets: torch.Tensor | None = None) -> SetShocks:
    """Shock `(n_lesions,)` per metric of each lesion, a set of units (possibly across layers) clamped (or with
    "cbp-reset" reset) at once (SPEC S4, joint Shock@q of S5). Arguments as in `unit_shocks`.

    Args:
        lesions: each a dict `{layer name: unit indices}`, the units lesioned together.

    Returns:
        SetShocks[metric]: a float64 tensor `(len(lesions),)` on the CPU, in the order of `lesions`.

    Raises:
        BadInputError: an unknown metric, a metric that reads targets without `targets`, or a layer whose module is
            not one of `model`'s.

    Example::

        >>> import torch, resetassay as ra
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
        >>> layers = ra.find_unit_layers(net, input_shape=(4,))
        >>> refs = {layer.name: torch.zeros(layer.n_units) for layer in layers}
        >>> probe_x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
        >>> joint = ra.joint_shocks(net, layers, refs, [{"1": torch.tensor([0, 1])}, {"1": torch.arange(8)}],
        ...                         probe_x, ["l1"])
        >>> joint["l1"].shape
        torch.Size([2])
    """
    return joint_shocks_of(LesionRequest(
        model, layers, refs, probe_x, metrics, base=base, targets=targets, engine=engine, intervention=intervention,
        seed=seed, batch_size=batch_size, max_memory=max_memory, advance=advance), lesions)


def _check_layers(model: nn.Module, layers: list[UnitLayer]) -> None:
    """Each layer's module must be one of `model`'s: a hook on another model's module (a tap of the traced copy that
    `find_unit_layers` resolved, lesioned through the original model) never runs, and every shock would read 0."""
    own = {id(module) for module in model.modules()}
    stray = [layer.name for layer in layers if id(layer.module) not in own]
    if stray:
        raise BadInputError(f"unit layer {', '.join(stray)}: not a module of this {type(model).__name__} (found on a "
                            "traced copy of it?); lesion the model the layers were found on: tapped = "
                            "resetassay.discovery.tap_unit_layers(model, x), then find_unit_layers(tapped, x)")
