"""What a tapped copy of a model carries (SPEC S1), shared by the routes that tap models we did not write:
tracing (`taps.py`: fx, export, hooks) and module names (`transformers.py`).

`UnitTap` is an `nn.Identity` where forward hooks see one activation call site; `Declared` is the
`unit_layer_specs` a tapped copy declares, as the zoo models declare theirs.
"""

from __future__ import annotations

from torch import nn

from resetassay.discovery.units import UnitLayerSpec


class UnitTap(nn.Identity):
    """Where forward hooks see one activation call site: returns its input unchanged (SPEC S1)."""


class Declared:
    """`unit_layer_specs` of a tapped copy (hooks in taps.py, module names in
    transformers.py): the specs found for it, kept by a
    deep copy."""

    def __init__(self, specs: list[UnitLayerSpec]):
        self.specs = specs

    def __call__(self) -> list[UnitLayerSpec]:
        """The declared specs, a fresh list each call."""
        return list(self.specs)
