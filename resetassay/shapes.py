"""Names for the shapes that recur across resetassay (as captum's `_utils/typing.py` does).

Tensors are per unit layer, keyed by its name; `(n,)` is one value per unit of that layer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

LayerName = str
Refs = dict[LayerName, torch.Tensor]                # reference r per layer, (n,)          (SPEC S2)
Scores = dict[str, dict[LayerName, torch.Tensor]]   # [utility][layer] -> (n,)              (SPEC S3)
Shocks = dict[str, dict[LayerName, torch.Tensor]]   # [metric][layer] -> (n,) float64       (SPEC S4)
SetShocks = dict[str, torch.Tensor]                 # [metric] -> (n_lesions,) float64      (SPEC S4)
Lesion = dict[LayerName, torch.Tensor]              # units clamped together: layer -> indices (k,)
UnitChoice = dict[LayerName, torch.Tensor]          # the units to lesion one by one: layer -> indices (k,)
Advance = Callable[[int], None]                     # called with how many more lesions are done
