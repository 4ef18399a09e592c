"""resetassay: which neuron utility predicts the real damage of a reset (docs/method.md).

    import resetassay as ra
    result = ra.run_assay(["fixtures/silu_mlp"], utilities=["gxd", "activation", "oracle"])
    result = ra.assay_model(model, (calib_x, calib_y), (probe_x, probe_y), utilities=["gxd", "oracle"])
    ra.find_unit_layers(model, input_shape=(3, 32, 32))   # the unit layers an assay would find
    ra.list_utilities(), ra.list_metrics()                 # what `utilities=` and `metrics=` accept

Assaying: `run_assay` (checkpoints on disk), `assay_model` (a model in memory), `assay_checkpoint`, their settings
`AssayConfig` and result `AssayResult`. Checkpoints and data: `load_checkpoint`, `save_checkpoint`, `data_spec`.
Units and lesions: `find_unit_layers`, `UnitLayer`, `unit_shocks`, `joint_shocks`. Your own utilities and
metrics: `register_utility`, `NotApplicable`, `list_utilities`, `register_metric`, `list_metrics`. Errors about the
input: `BadInputError`. Each has a runnable example in its docstring.

The public names load on first use, so `import resetassay` is quick and `resetassay.report`,
`resetassay.report.gate` and `resetassay.io.rundir` read runs without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_PUBLIC = {  # name -> the module defining it, imported on first use
    # assaying
    "run_assay": "resetassay.pipeline.run", "assay_model": "resetassay.pipeline.assay",
    "assay_checkpoint": "resetassay.pipeline.assay", "AssayConfig": "resetassay.pipeline.assay",
    "AssayResult": "resetassay.pipeline.assay",
    # checkpoints and data
    "load_checkpoint": "resetassay.io.checkpoint", "save_checkpoint": "resetassay.io.checkpoint",
    "data_spec": "resetassay.data.sources",
    # units and lesions
    "find_unit_layers": "resetassay.discovery.find", "UnitLayer": "resetassay.discovery.units",
    "unit_shocks": "resetassay.lesion", "joint_shocks": "resetassay.lesion",
    # utilities and metrics
    "list_utilities": "resetassay.scoring.registry", "register_utility": "resetassay.scoring.registry",
    "NotApplicable": "resetassay.scoring.registry", "list_metrics": "resetassay.lesion.shocks",
    "register_metric": "resetassay.lesion.shocks",
    # errors
    "BadInputError": "resetassay.errors",
}
__all__ = [  # _PUBLIC's names (a literal list, which linters and IDEs read)
    "run_assay", "assay_model", "assay_checkpoint", "AssayConfig", "AssayResult", "load_checkpoint", "save_checkpoint",
    "data_spec", "find_unit_layers", "UnitLayer", "unit_shocks", "joint_shocks", "list_utilities", "register_utility",
    "NotApplicable", "list_metrics", "register_metric", "BadInputError", "__version__",
]

if TYPE_CHECKING:
    from resetassay.data.sources import data_spec
    from resetassay.discovery.find import find_unit_layers
    from resetassay.discovery.units import UnitLayer
    from resetassay.errors import BadInputError
    from resetassay.io.checkpoint import load_checkpoint, save_checkpoint
    from resetassay.lesion import joint_shocks, unit_shocks
    from resetassay.lesion.shocks import list_metrics, register_metric
    from resetassay.pipeline.assay import AssayConfig, AssayResult, assay_checkpoint, assay_model
    from resetassay.pipeline.run import run_assay
    from resetassay.scoring.registry import NotApplicable, list_utilities, register_utility


def __getattr__(name: str) -> object:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'resetassay' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
