"""Clamp against CBP's reset in the report (resetassay/report/interventions.py, SPEC S4, S7): the agreement table
and the units where the two shocks differ most, against a hand computation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from resetassay.report.interventions import agreement_table, differing_units


def test_report_tables_of_clamp_against_reset_match_a_hand_computation():
    rng = np.random.default_rng(0)
    rows = []
    for family, checkpoint in [("a", "a/1"), ("a", "a/2"), ("b", "b/1")]:
        clamp = rng.random(9) + 0.1
        rows.append(pd.DataFrame({"family": family, "checkpoint": checkpoint, "layer": "l", "unit": range(9),
                                  "clamp_l1": clamp, "shock_l1": clamp * rng.uniform(0.5, 2, 9)}))
    units = pd.concat(rows, ignore_index=True)
    table = agreement_table(units, ["l1"])
    for family, g in units.groupby("family"):
        rho = [spearmanr(c["clamp_l1"], c["shock_l1"]).statistic for _, c in g.groupby("checkpoint")]
        ratio = [np.median(c["shock_l1"] / c["clamp_l1"]) for _, c in g.groupby("checkpoint")]
        row = table[table["family"] == family].iloc[0]
        assert row["ρ(clamp, reset)"] == " / ".join(f"{v:.3f}" for v in rho)
        assert row["median reset / clamp"] == " / ".join(f"{v:.3f}" for v in ratio)
    top = differing_units(units, "l1", top=2)
    gap = (units["shock_l1"] - units["clamp_l1"]).abs()
    for family, g in top.groupby("family"):
        want = units.loc[gap[units["family"] == family].nlargest(2).index]
        assert g[["checkpoint", "unit"]].values.tolist() == want[["checkpoint", "unit"]].values.tolist()
