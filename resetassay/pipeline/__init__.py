"""The assay, end to end (SPEC S1-S5): one model to its UnitTable and SummaryTable in stages (`assay.py`:
`assay_model`, `assay_checkpoint`; prepare, calibrate, lesion chunks, finish), many checkpoints with resume,
failures, provenance and seeds (`run.py`: `run_assay`), and a run shared by torchrun ranks (`shard.py`: work
items, their cost-balanced assignment, the three phases). It is the one stage that imports every stage below it
(io/, data/, discovery/, scoring/, lesion/, stats/); the report reads what it writes, never the reverse.
"""

from resetassay.pipeline.assay import AssayConfig, AssayResult, assay_checkpoint, assay_model
from resetassay.pipeline.run import run_assay

__all__ = ["AssayConfig", "AssayResult", "assay_checkpoint", "assay_model", "run_assay"]
