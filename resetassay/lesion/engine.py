"""What every lesion engine is asked and answers (DESIGN "The lesion engine"; SPEC S4).

A `LesionRequest` holds one model's lesions to measure: the model and its unit layers, the references, the probe
set and its unlesioned logits, the metrics, which units, and the engine's budgets. A `LesionEngine` answers it with
the shock of every unit alone (`unit_shocks`) or of sets of units at once (`joint_shocks`). plain.py, fast.py and
reset.py each provide the two as module functions; `lesion/__init__.py` picks one by name (`ENGINES`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from resetassay.discovery.units import UnitLayer
from resetassay.lesion.shocks import check_groups
from resetassay.names import Engine, Intervention
from resetassay.shapes import Advance, Lesion, Refs, SetShocks, Shocks, UnitChoice


@dataclass(frozen=True, eq=False)
class LesionRequest:
    """The lesions of one model to measure (SPEC S4); `dataclasses.replace` gives a variant."""

    model: nn.Module  # in eval mode, on its device
    layers: list[UnitLayer]  # resolved on the model (`units.unit_layers`)
    refs: Refs  # the reference `(n_units,)` of every layer (SPEC S2), on the model's device
    probe_x: torch.Tensor  # probe inputs `(P, ...)`
    metrics: list[str]  # registered names (`shocks.SHOCK_METRICS`)
    base: torch.Tensor | None = None  # the unlesioned probe logits `(P, C)` or `(P, T, V)`; None: computed first
    targets: torch.Tensor | None = None  # the probe targets `(P,)` or `(P, T)`, for metrics that read them
    units: UnitChoice | None = None  # unit lesions: only the units `units[layer]` of the layers it names
    engine: Engine = "fast"  # "fast" or "plain" (same numbers to float rounding)
    intervention: Intervention = "clamp"  # or "cbp-reset": CBP's reset of the unit (SPEC S7), engine unused
    seed: int = 0  # cbp-reset: seeds each unit's fresh incoming weights with the layer and the unit
    batch_size: int = 512  # probe rows per forward (plain, cbp-reset; the base logits)
    max_memory: int | None = None  # bytes of activations per lesion chunk (fast)
    max_k: int | None = None  # lesions per forward at most (fast)
    shortcut: bool | None = None  # the consumer shortcut forced on/off (fast; None: where it pays)
    advance: Advance | None = None  # called with the number of lesions finished, for a progress bar
    # `(P,)` int64, each probe example's group 0..G-1: every shock is then `(..., G)`, its mean over each group's
    # examples, all groups in one pass (sequential probes, SPEC S4b); None: the mean over the probe set
    groups: torch.Tensor | None = None

    def __post_init__(self) -> None:
        check_groups(self.groups, len(self.probe_x))


class LesionEngine(Protocol):
    """How one engine measures lesions; `request.base` is always given."""

    def unit_shocks(self, request: LesionRequest) -> Shocks:
        """`Shocks[metric][layer]` `(n_units,)`: each unit of each layer alone (or one per index of
        `request.units[layer]`); `(n_units, G)` where the request groups its probe examples."""
        ...

    def joint_shocks(self, request: LesionRequest, lesions: list[Lesion]) -> SetShocks:
        """Shock `(len(lesions),)` per metric of each lesion, a set of units (possibly across layers) at once;
        `(len(lesions), G)` where the request groups its probe examples."""
        ...
