"""The closing-the-loop statistics of benchmarks/plasticity.py (SPEC S6): paired differences by seed with the
seed-cluster bootstrap, the smallest detectable effect, and the loop's correlation with its interval."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ttest_rel

from tests.helpers.paths import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
plasticity = pytest.importorskip("plasticity")


def _runs(shift: dict[str, float], seeds: int = 8, noise: float = 0.01) -> pd.DataFrame:
    """Final accuracies per method and seed: a seed effect shared by its runs plus `shift[method]` and noise."""
    rng = np.random.default_rng(1)
    seed_effect = rng.normal(0, 0.05, seeds)
    rows = [{"activation": "relu", "method": m, "seed": s, "final_online": 0.6 + seed_effect[s] + d
             + rng.normal(0, noise), "final_test": 0.7 + seed_effect[s] + d + rng.normal(0, noise)}
            for m, d in shift.items() for s in range(seeds)]
    return pd.DataFrame(rows)


def test_a_difference_shared_by_every_seed_is_resolved_despite_large_seed_effects() -> None:
    """The seed effect (sd .05) cancels in the pairing: +.03 with noise .01 has an interval above 0, and a zero
    difference has one that holds 0."""
    diffs = plasticity.contrasts(_runs({"backprop": 0.0, "random": 0.0, "contribution": 0.03, "gxd": 0.03}))
    online = diffs[diffs["measure"] == "final_online"].set_index(["method", "versus"])
    assert online.loc[("contribution", "random"), "low"] > 0
    assert online.loc[("contribution", "random"), "difference"] == pytest.approx(0.03, abs=0.015)
    gxd = online.loc[("gxd", "contribution")]
    assert gxd["low"] < 0 < gxd["high"]
    assert ("random", "contribution") not in online.index  # the control is compared with backprop only
    assert set(diffs["n_seeds"]) == {8}


def test_seed_bootstrap_interval_covers_the_mean_and_narrows_with_more_seeds() -> None:
    rng = np.random.default_rng(0)
    few, many = rng.normal(0.02, 0.02, 5), rng.normal(0.02, 0.02, 50)
    low, high = plasticity.seed_bootstrap(few)
    assert low < few.mean() < high
    low_many, high_many = plasticity.seed_bootstrap(many)
    assert high_many - low_many < high - low
    assert np.isnan(plasticity.seed_bootstrap(np.array([0.1]))[0])


def test_mde_is_the_effect_a_paired_t_test_finds_with_power_80_percent() -> None:
    """Simulated: paired differences with sd 1 and mean mde(1, 8) are found by a two-sided t-test at α = .05 in
    about 80% of 4000 trials."""
    n, effect = 8, plasticity.mde(1.0, 8)
    rng = np.random.default_rng(2)
    d = rng.normal(effect, 1.0, (4000, n))
    power = float((ttest_rel(d, np.zeros_like(d), axis=1).pvalue < 0.05).mean())
    assert power == pytest.approx(0.8, abs=0.04)
    assert np.isnan(plasticity.mde(1.0, 1))


def test_loop_correlation_of_a_monotone_relation_is_one_and_its_interval_too() -> None:
    loop = pd.DataFrame({"activation": "relu", "method": ["contribution", "gxd", "gxi"] * 4,
                         "seed": np.repeat(range(4), 3), "own_rho": np.arange(12.0)})
    loop["final_online"] = loop["own_rho"] * 0.01
    rows = plasticity.loop_correlations(loop, draws=200)
    assert list(rows["group"]) == ["within relu"]  # one activation: no pooled row
    row = rows.iloc[0]
    assert (row["r"], row["low"], row["high"], row["n_seeds"]) == (1.0, 1.0, 1.0, 4)
