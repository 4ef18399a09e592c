"""resetassay: which neuron utility predicts the real damage of a reset (see SPEC)."""

__version__ = "0.1.0"

from resetassay.assay import AssayConfig, AssayResult, assay_checkpoint, assay_model, run_assay  # noqa: E402
from resetassay.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from resetassay.errors import BadInputError  # noqa: E402

__all__ = [
    "AssayConfig", "AssayResult", "BadInputError", "assay_checkpoint", "assay_model",
    "load_checkpoint", "run_assay", "save_checkpoint", "__version__",
]
