"""Scoring the units before any lesion (SPEC S2, S3, S5): the reset references r (`reference.py`), the utility
registry and its built-in utilities (`registry.py`: `register_utility`, `list_utilities`, `NotApplicable`,
`unit_scores`), the one
calibration pass that gathers what they read (`calibration.py`: `calibration_stats`), the beyond-first-order
ingredients gxd_ig and gxd2 (`higher_order.py`) and the set-aware selector gxd_greedy, which recomputes GXD with
the units it picked clamped (`greedy.py`).
"""

from resetassay.scoring.calibration import calibration_stats
from resetassay.scoring.greedy import greedy_selection
from resetassay.scoring.reference import unit_references
from resetassay.scoring.registry import (
    UTILITIES,
    LayerStats,
    NotApplicable,
    check_utilities,
    list_utilities,
    register_utility,
    unit_scores,
    utility_names,
)

__all__ = ["UTILITIES", "LayerStats", "NotApplicable", "calibration_stats", "check_utilities", "greedy_selection",
           "list_utilities", "register_utility", "unit_references", "unit_scores", "utility_names"]
