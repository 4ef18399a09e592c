"""Set-aware selection in the report (SPEC S5): gxd_greedy's joint Shock@q against gxd's and the oracle's.

A set selector (names.SET_SELECTORS) picks each layer's Shock@q set without ranking units, so it
stays out of the ranking tables, the headline and the figures; this section shows it instead. Per
model family and metric, over the family's checkpoints (a `stat_cell` each): the joint Shock@q of
gxd's selection (independent ranking), of the greedy set and of the oracle's selection, the
greedy's change against gxd, both mean individual Shock@q, and the greedy's seconds
(timings.json's "greedy" stage, of the checkpoints the run's last launch assayed).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from resetassay.names import GXD_GREEDY, ORACLE, SET_SELECTORS
from resetassay.report.blocks import Block, q_label, stat_cell
from resetassay.stats.summary import checkpoint_stats

GXD = "gxd"


def set_table(stats: pd.DataFrame, timings: dict[str, dict[str, float]], q: float) -> pd.DataFrame:
    """Family x metric: joint Shock@q of gxd, gxd_greedy and the oracle, greedy / gxd, Shock@q of gxd and
    gxd_greedy, and the greedy's seconds per checkpoint, from per-checkpoint `stats` (scope ALL)."""
    joint, single = f"joint Shock@{q_label(q)}", f"Shock@{q_label(q)}"
    rows = []
    for (family, metric), g in stats.groupby(["family", "metric"], sort=True):
        if GXD_GREEDY not in set(g["utility"]):
            continue
        by = g.pivot_table(index="checkpoint", columns="utility", values=["joint_shock", "shock_at_q"],
                           dropna=False).reindex(columns=pd.MultiIndex.from_product(
                               [["joint_shock", "shock_at_q"], [GXD, GXD_GREEDY, ORACLE]]))
        n = len(by)
        seconds = np.array([timings.get(c, {}).get("greedy", np.nan) for c in by.index], dtype=float)
        column = by.xs("joint_shock", axis=1, level=0)
        rows.append({
            "family": family, "metric": metric, "checkpoints": n,
            f"{joint} {GXD}": stat_cell(column[GXD].to_numpy(float), n),
            f"{joint} {GXD_GREEDY}": stat_cell(column[GXD_GREEDY].to_numpy(float), n),
            f"{joint} {ORACLE}": stat_cell(column[ORACLE].to_numpy(float), n),
            f"greedy / {GXD}": stat_cell((column[GXD_GREEDY] / column[GXD]).to_numpy(float), n),
            f"{single} {GXD}": stat_cell(by[("shock_at_q", GXD)].to_numpy(float), n),
            f"{single} {GXD_GREEDY}": stat_cell(by[("shock_at_q", GXD_GREEDY)].to_numpy(float), n),
            "greedy s": stat_cell(seconds, n),
        })
    return pd.DataFrame(rows)


def set_blocks(summary: pd.DataFrame, checkpoints: pd.DataFrame, timings: dict[str, dict[str, float]],
               q: float) -> list[Block]:
    """The report's "Set-aware selection" section; nothing for a run without a set selector."""
    if not summary["utility"].isin(SET_SELECTORS).any():
        return []
    table = set_table(checkpoint_stats(summary, checkpoints), timings, q)
    return [
        Block("h2", "Set-aware selection", fold=True),
        Block("text", (
            f"{GXD_GREEDY} picks each layer's Shock@{q_label(q)} units greedily (SPEC S5): in rounds, with every unit "
            "picked so far clamped to its reference, GXD is recomputed on the calibration set and each layer picks "
            "its next lowest-GXD units. Joint Shock@q is the shock of clamping the whole set at once; gxd ranks "
            "every unit once on the intact network; the oracle's set is its lowest individual shocks (not the "
            "lowest joint shock, so a set can beat it). greedy / gxd < 1: the greedy set does less joint damage. "
            "Shock@q: the mean individual shock of the set's units. greedy s: its seconds per checkpoint "
            "(timings.json; n/a for checkpoints finished by an earlier launch).")),
        Block("table", table=table, keys=2),
    ]
