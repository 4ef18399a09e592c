"""Clamp against CBP's reset in the report (SPEC S4, S7): how far the two shocks of a `cbp-reset` run disagree.

A `cbp-reset` run's UnitTable holds the reset's shock as `shock_<metric>` and the clamp's as
`clamp_<metric>`. Per model family and metric: the Spearman ρ between them over each checkpoint's
mature units and the median ratio reset / clamp (units with a clamp shock of 0 left out), as the
detail tables show a statistic over checkpoints; then the units whose two shocks differ most.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from resetassay.names import CBP_RESET, clamp_column, shock_column
from resetassay.report.blocks import Block, stat_cell
from resetassay.stats.summary import spearman, with_checkpoint_info

TOP = 5  # units named per family


def _per_checkpoint(units: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per checkpoint (with its family): ρ(clamp, reset) and the median reset / clamp over its mature units."""
    rows = []
    for (family, checkpoint), g in units.groupby(["family", "checkpoint"], sort=True):
        reset, clamp = g[shock_column(metric)].to_numpy(float), g[clamp_column(metric)].to_numpy(float)
        ratio = reset[clamp > 0] / clamp[clamp > 0]
        rows.append({"family": family, "checkpoint": checkpoint, "units": len(g), "rho": spearman(clamp, reset)[0],
                     "ratio": float(np.median(ratio)) if len(ratio) else np.nan})
    return pd.DataFrame(rows)


def agreement_table(units: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Family x metric: units, ρ(clamp, reset) and median reset / clamp, each a `stat_cell` over checkpoints."""
    rows = []
    for metric in metrics:
        for family, g in _per_checkpoint(units, metric).groupby("family", sort=True):
            n = len(g)
            rows.append({"family": family, "metric": metric, "mature units": int(g["units"].sum()),
                         "ρ(clamp, reset)": stat_cell(g["rho"].to_numpy(float), n),
                         "median reset / clamp": stat_cell(g["ratio"].to_numpy(float), n)})
    return pd.DataFrame(rows)


def differing_units(units: pd.DataFrame, metric: str, top: int = TOP) -> pd.DataFrame:
    """Per family, the `top` mature units of largest |reset − clamp| at `metric`, largest first."""
    gap = (units[shock_column(metric)] - units[clamp_column(metric)]).abs()
    ranked = units.assign(_gap=gap).sort_values(["family", "_gap"], ascending=[True, False], kind="stable")
    table = ranked.groupby("family", sort=True).head(top)
    reset, clamp = table[shock_column(metric)], table[clamp_column(metric)]
    table = pd.DataFrame({"family": table["family"], "checkpoint": table["checkpoint"], "layer": table["layer"],
                          "unit": table["unit"], "clamp": clamp.map("{:.4g}".format),
                          "reset": reset.map("{:.4g}".format), "reset / clamp": (reset / clamp).map("{:.3f}".format)})
    return table.reset_index(drop=True)


def intervention_blocks(units: pd.DataFrame, checkpoints: pd.DataFrame) -> list[Block]:
    """The report's "Clamp against CBP reset" section; nothing for a run without `clamp_<metric>` columns."""
    metrics = [c.removeprefix("clamp_") for c in units.columns if c.startswith("clamp_")]
    if not metrics or units.empty:
        return []
    mature = with_checkpoint_info(units[units["mature"].astype(bool)], checkpoints)
    return [
        Block("h2", "Clamp against CBP reset", fold=True),
        Block("text", (
            f"This run measured CBP's reset (`resetassay run --intervention {CBP_RESET}`, SPEC S7): the unit's "
            "incoming weights drawn afresh, its outgoing weights zeroed and w_out·r added to the consumer's bias (or "
            "taken from the following BatchNorm's running mean). Every shock above is the reset's; the clamp h ← r "
            "(SPEC S4) was measured beside it. Where a Linear alone reads the unit the two are equal; they part at a "
            "Conv consumer's zero-padded border and where the new incoming weights reach the logits another way. "
            "ρ: Spearman between the two over each checkpoint's mature units; ratio: the median of reset / clamp.")),
        Block("table", table=agreement_table(mature, metrics), keys=2),
        Block("text", f"The {TOP} units per family whose reset and clamp shocks ({metrics[0]}) differ most:"),
        Block("table", table=differing_units(mature, metrics[0]), keys=4),
    ]
