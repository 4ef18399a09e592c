"""Statistics over the tables, as plain functions on pandas frames and numpy arrays, with no torch (SPEC S5,
S5b): the SummaryTable of one checkpoint and mean ± SE across checkpoints and seeds (`summary.py`), and the
verdict per unit kind (normalised regret, layer-balanced ρ, the paired bootstrap, the indistinguishable set,
fails and reliability flags, `verdict.py`). The pipeline computes these once per checkpoint; the report and the
gate recompute them from the tables on disk.
"""

__all__ = ["summary", "verdict"]
