"""The torch-free vocabulary of resetassay: utility, metric and scope names, tables and file names.

`report/` (its gate too), `stats/` and `io/rundir.py` read a run from its tables alone; they take every name
from here, so reading a run never imports torch or captum (DESIGN "Reading a run needs no torch").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

ORACLE = "oracle"  # the measured shock itself used as a utility (SPEC S3)
RANDOM = "random"  # seeded noise, the floor every utility should beat (SPEC S3)
# The built-in utilities in registry order (SPEC S3): the order of report rows and of the colours.
UTILITY_ORDER = ("activation", "contribution", "mc_contribution", "mc_adaptable", "loss_gradient", "gxi", "gxd",
                 "gxd_all", "gxd_ig", "gxd2", "dormancy", "deviation", "firing_rate", "tracked", RANDOM, ORACLE)

# Set selectors (SPEC S5): they pick each layer's Shock@q set without ranking units, so they have no UnitTable column
# and no Spearman ρ; their rows come from the set (scoring/greedy.py). Opt-in: not in the default `--utilities`.
GXD_GREEDY = "gxd_greedy"
SET_SELECTORS = (GXD_GREEDY,)

# Utilities CBP can track online during training (SPEC S7): computable from one batch's forward and backward.
ONLINE_UTILITIES = ("contribution", "mc_contribution", "mc_adaptable", "gxi", "gxd", "loss_gradient", "activation")
CBP_UTILITIES = (*ONLINE_UTILITIES, RANDOM)  # what CBP may rank by: random is the control (SPEC S7)

Metric = Literal["l1", "kl"]
METRICS: tuple[str, ...] = get_args(Metric)  # shock metrics (SPEC S4)
Engine = Literal["fast", "plain"]
ENGINES: tuple[str, ...] = get_args(Engine)  # lesion engines (DESIGN "The lesion engine")
Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)  # --dtype: the probe forwards' precision (fp32, or autocast)
ReferenceKind = Literal["calibration-mean", "stored", "zero"]
REFERENCES: tuple[str, ...] = get_args(ReferenceKind)  # reset references (SPEC S2)
Intervention = Literal["clamp", "cbp-reset"]
INTERVENTIONS: tuple[str, ...] = get_args(Intervention)  # what a lesion does to a unit (SPEC S4, S7)
CBP_RESET = "cbp-reset"
FigureFormat = Literal["png", "svg", "none"]
FIGURE_FORMATS: tuple[str, ...] = get_args(FigureFormat)  # --figures: how a report's figures are written (SPEC S5)

ALL = "ALL"  # the pooled scope of a SummaryTable row: every layer where the utility applies (SPEC S5)
COMMON = "common"  # pooled over the layers where every requested utility applies: the scope of comparisons
POOLED_SCOPES = (ALL, COMMON)  # the other scopes of a SummaryTable are layer names
SUMMARY_COLUMNS = [
    "checkpoint", "utility", "metric", "scope", "n_layers", "n_units", "spearman", "shock_at_q",
    "oracle_shock_at_q", "gap", "gap_ratio", "overlap", "joint_shock", "q", "note",
]
NOTE_COLUMNS = ["checkpoint", "utility", "layer", "reason"]
FAILURE_COLUMNS = ["checkpoint", "path", "kind", "error"]

# A run directory (DESIGN "Tables are the interface"; rundir.py reads and writes them).
TABLES = ("units", "summary", "notes", "checkpoints")
RUN_JSON = "run.json"
TIMINGS = "timings.json"
FAILURES = "failures.csv"
PARTS = "parts"

# A checkpoint directory (DESIGN "Checkpoint format").
MANIFEST, WEIGHTS, STATE = "manifest.json", "model.safetensors", "state.safetensors"


def shock_column(metric: str) -> str:
    """The UnitTable column of a shock metric: `shock_l1`, `shock_kl` (SPEC S4)."""
    return f"shock_{metric}"


def se_column(metric: str) -> str:
    """The UnitTable column of a sequential run holding the standard error of `shock_<metric>` (SPEC S4b)."""
    return f"se_{metric}"


def redraws_key(metric: str) -> str:
    """A sequential run's lesion work item key `(units, DRAWS)` for how far each `shock_<metric>` moves when its
    probe examples are redrawn (SPEC S4b; read by the rank rule, not a UnitTable column)."""
    return f"redraws_{metric}"


def clamp_column(metric: str) -> str:
    """The UnitTable column keeping the clamp's shock beside a `cbp-reset` run's `shock_<metric>` (SPEC S4, S7)."""
    return f"clamp_{metric}"


def utility_column(utility: str, metric: str) -> str:
    """The UnitTable column holding a utility's scores; the oracle's is the measured shock (SPEC S3)."""
    return shock_column(metric) if utility == ORACLE else utility


def utility_order(utilities: Iterable[str]) -> list[str]:
    """The utilities present, built-in ones in registry order, others after them as they come."""
    present = list(dict.fromkeys(utilities))
    known = [u for u in UTILITY_ORDER if u in present]
    return known + [u for u in present if u not in known]
