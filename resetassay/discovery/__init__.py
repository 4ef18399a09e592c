"""Finding the units of any `nn.Module` and reading its outputs (SPEC S1, S3, S9): all of it in one call
(`find.py`: `find_unit_layers`, the unit layers an assay finds), the unit layers
(`units.py`: `UnitLayer`, `unit_layers`, `unit_view`, the units on axis 1), models we did not write tapped by
torch.fx, torch.export or forward hooks (`taps.py`) or, for Hugging Face `transformers` models, by module names
(`transformers.py`), both attaching the taps of `unit_tap.py`; torch.nn attention unfused so its heads are units
(`attention.py`); the logits of a model whose forward returns a tuple, dict or object (`outputs.py`);
language-model targets, logits and losses (`sequences.py`); and `hooks.capture`, which every stage above uses to
read (or replace) a unit layer's output, and `hooks.forward_hooks`, with which the lesion engines clamp one.
"""

from resetassay.discovery.find import find_unit_layers
from resetassay.discovery.hooks import forward_hooks
from resetassay.discovery.outputs import select_output
from resetassay.discovery.taps import TappedModel, discovery_route, tap_unit_layers
from resetassay.discovery.units import UnitLayer, UnitLayerSpec, layer_table, unit_layers, unit_view

__all__ = ["TappedModel", "UnitLayer", "UnitLayerSpec", "discovery_route", "find_unit_layers", "forward_hooks",
           "layer_table", "select_output", "tap_unit_layers", "unit_layers", "unit_view"]
