"""resetassay: which neuron utility predicts the real damage of a reset (docs/method.md).

    import resetassay as ra
    result = ra.run_assay(["fixtures/silu_mlp"], utilities=["gxd", "activation", "oracle"])

The public names load on first use, so `import resetassay` is quick and `resetassay.report`,
`resetassay.report.gate` and `resetassay.io.rundir` read runs without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_PUBLIC = {
    "AssayConfig": "resetassay.pipeline.assay", "AssayResult": "resetassay.pipeline.assay",
    "assay_checkpoint": "resetassay.pipeline.assay", "assay_model": "resetassay.pipeline.assay",
    "run_assay": "resetassay.pipeline.run", "load_checkpoint": "resetassay.io.checkpoint",
    "save_checkpoint": "resetassay.io.checkpoint", "BadInputError": "resetassay.errors", "data_spec": "resetassay.data",
    "register_utility": "resetassay.scoring.registry", "NotApplicable": "resetassay.scoring.registry",
    "register_metric": "resetassay.lesion.shocks",
}
__all__ = [
    "AssayConfig", "AssayResult", "BadInputError", "NotApplicable", "assay_checkpoint", "assay_model",
    "load_checkpoint", "data_spec", "register_metric", "register_utility", "run_assay", "save_checkpoint",
    "__version__",
]

if TYPE_CHECKING:
    from resetassay.data import data_spec
    from resetassay.errors import BadInputError
    from resetassay.io.checkpoint import load_checkpoint, save_checkpoint
    from resetassay.lesion.shocks import register_metric
    from resetassay.pipeline.assay import AssayConfig, AssayResult, assay_checkpoint, assay_model
    from resetassay.pipeline.run import run_assay
    from resetassay.scoring.registry import NotApplicable, register_utility


def __getattr__(name: str) -> object:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'resetassay' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
