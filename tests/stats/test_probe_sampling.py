"""Probe-sampling intervals of a sequential run's summary statistics (resetassay/stats/probe_sampling.py, SPEC S4b):
on hand-made UnitTables whose shocks carry known standard errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from resetassay.names import ALL
from resetassay.stats.probe_sampling import SAMPLED_STATS, probe_sampling_intervals
from resetassay.stats.summary import checkpoint_summary


def _units(se: np.ndarray, n: int = 40) -> pd.DataFrame:
    """One layer of n units: shock = 1..n, utility `u` = the shock plus a little noise, standard errors `se`."""
    rng = np.random.default_rng(0)
    shock = np.arange(1.0, n + 1)
    return pd.DataFrame({"checkpoint": "c", "layer": "L", "unit": range(n), "mature": True, "shock_l1": shock,
                         "u": shock + rng.normal(0, 3, n), "se_l1": se, "probes": 64})


def _intervals(units: pd.DataFrame) -> pd.DataFrame:
    summary = checkpoint_summary(units, ["u", "oracle"], ["l1"], q=0.1)
    return probe_sampling_intervals(units, summary, 0.1, draws=60).set_index(["utility", "statistic"]), summary


def test_exact_runs_have_no_probe_sampling_interval():
    units = _units(np.zeros(40))
    summary = checkpoint_summary(units, ["u"], ["l1"], q=0.1)
    assert probe_sampling_intervals(units, summary, 0.1).empty  # every unit saw the whole probe set
    assert probe_sampling_intervals(units.drop(columns="se_l1"), summary, 0.1).empty  # no SE column at all


def test_the_interval_holds_the_stored_value_and_widens_with_the_standard_errors():
    narrow, summary = _intervals(_units(np.full(40, 0.5)))
    wide, _ = _intervals(_units(np.full(40, 5.0)))
    stored = summary[(summary["scope"] == ALL) & (summary["utility"] == "u")].iloc[0]
    for stat in SAMPLED_STATS:
        assert narrow.loc[("u", stat), "value"] == pytest.approx(stored[stat])
    rho_narrow, rho_wide = narrow.loc[("u", "spearman")], wide.loc[("u", "spearman")]
    assert rho_narrow["low"] <= rho_narrow["high"]
    assert rho_wide["high"] - rho_wide["low"] > 2 * (rho_narrow["high"] - rho_narrow["low"])
    assert rho_wide["low"] < rho_narrow["low"]


def test_units_that_saw_the_whole_probe_set_keep_their_shocks():
    """Only the 20 highest units stopped early: u's bottom 10% are exact, so its Shock@q does not move, while
    the oracle's pick, which the redrawn shocks can change, keeps its exact units too (they are the lowest)."""
    se = np.r_[np.zeros(20), np.full(20, 2.0)]
    got, summary = _intervals(_units(se))
    shock = got.loc[("oracle", "shock_at_q")]
    assert shock["low"] == shock["high"] == pytest.approx(shock["value"])
    assert got.loc[("u", "spearman"), "high"] > got.loc[("u", "spearman"), "low"]
