"""Bootstrap intervals of the common-scope oracle ratio (SPEC S5; resetassay/bootstrap.py).

scipy draws its own resamples, so the units scheme is checked in three ways: with no resampling
the statistic equals the SummaryTable's ratio exactly; a hand-written stratified bootstrap (a
plain loop) gives the same interval to Monte-Carlo tolerance (15% of its width); the interval
narrows as units grow. The checkpoints scheme equals scipy's own bootstrap of the mean.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import bootstrap

from resetassay.bootstrap import MIN_CHECKPOINTS, RESAMPLES, _layers, _ratio, ratio_intervals
from resetassay.names import COMMON
from resetassay.summary import checkpoint_summary, k_at

Q = 0.1


def _units(checkpoint: str, seed: int, sizes: tuple[int, ...] = (40, 25, 1)) -> pd.DataFrame:
    """Random units in layers of `sizes`; utility u tracks the shock loosely, v applies only to the first layer."""
    rng = np.random.default_rng(seed)
    frames = []
    for j, n in enumerate(sizes):
        shock = rng.gamma(2.0, 1.0, n)
        frames.append(pd.DataFrame({
            "checkpoint": checkpoint, "layer": f"l{j}", "unit": np.arange(n), "mature": True,
            "u": shock + rng.normal(0, 1.0, n), "v": rng.normal(0, 1, n) if j == 0 else math.nan,
            "random": rng.random(n), "shock_l1": shock}))
    return pd.concat(frames, ignore_index=True)


def _run(n_checkpoints: int, sizes: tuple[int, ...] = (40, 25, 1)) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    units = pd.concat([_units(f"c{i}", i, sizes) for i in range(n_checkpoints)], ignore_index=True)
    summary = pd.concat([checkpoint_summary(units[units.checkpoint == c], ["u", "random", "oracle"], ["l1"], Q)
                         for c in units.checkpoint.unique()], ignore_index=True)
    checkpoints = pd.DataFrame({"checkpoint": units.checkpoint.unique(), "family": "f", "step": 1.0})
    return units, summary, checkpoints


def test_statistic_without_resampling_is_the_summary_ratio():
    units, summary, _ = _run(1)
    common = summary[(summary.scope == COMMON) & (summary.utility == "u")].iloc[0]
    layers = _layers(units, "u", "l1", Q)
    assert _ratio(layers, [None] * len(layers))[0] == pytest.approx(common.gap_ratio, rel=1e-12)


def test_unit_interval_matches_a_hand_written_stratified_bootstrap():
    """Same scheme written as a loop (draw each layer's units with replacement, reselect, ratio): the percentile
    bounds agree to Monte-Carlo error (999 resamples on both sides)."""
    units, summary, checkpoints = _run(1)
    got = ratio_intervals(units, summary, checkpoints, Q).set_index("utility").loc["u"]
    assert got.resampled == "units" and got.low <= got.ratio <= got.high
    rng = np.random.default_rng(123)
    ratios = []
    for _ in range(RESAMPLES):
        chosen = oracle = 0.0
        for _, g in units.groupby("layer"):
            draw = g.iloc[rng.integers(0, len(g), len(g))]
            k = k_at(len(g), Q)
            by_u = draw.sort_values(["u", "unit"], kind="stable")
            by_s = draw.sort_values(["shock_l1", "unit"], kind="stable")
            chosen += by_u.shock_l1.iloc[:k].sum()
            oracle += by_s.shock_l1.iloc[:k].sum()
        ratios.append(chosen / oracle)
    low, high = np.percentile(ratios, [2.5, 97.5])
    width = high - low
    assert got.low == pytest.approx(low, abs=0.15 * width)
    assert got.high == pytest.approx(high, abs=0.15 * width)


def test_interval_narrows_with_more_units_and_is_reproducible():
    small = ratio_intervals(*_run(1, (20, 20)), Q).set_index("utility").loc["u"]
    large = ratio_intervals(*_run(1, (400, 400)), Q).set_index("utility").loc["u"]
    assert large.high - large.low < 0.6 * (small.high - small.low)
    again = ratio_intervals(*_run(1, (20, 20)), Q).set_index("utility").loc["u"]
    assert (again.low, again.high) == (small.low, small.high)


def test_checkpoint_scheme_is_scipys_mean_bootstrap_over_checkpoint_ratios():
    units, summary, checkpoints = _run(MIN_CHECKPOINTS)
    got = ratio_intervals(units, summary, checkpoints, Q).set_index("utility").loc["u"]
    values = summary[(summary.scope == COMMON) & (summary.utility == "u")]["gap_ratio"].to_numpy()
    want = bootstrap((values,), np.mean, n_resamples=RESAMPLES, method="percentile",
                     rng=np.random.default_rng(0)).confidence_interval
    assert got.resampled == "checkpoints" and got.n == MIN_CHECKPOINTS
    assert (got.low, got.high) == pytest.approx((want.low, want.high), rel=1e-12)
    assert got.ratio == pytest.approx(values.mean(), rel=1e-12)


def test_common_scope_only_layers_where_every_utility_applies():
    """v applies to l0 only: with v requested, u's interval is over l0 alone and its point estimate is l0's ratio."""
    units = _units("c0", 0)
    summary = checkpoint_summary(units, ["u", "v", "oracle"], ["l1"], Q)
    checkpoints = pd.DataFrame({"checkpoint": ["c0"], "family": ["f"], "step": [1.0]})
    got = ratio_intervals(units, summary, checkpoints, Q).set_index("utility")
    layer = summary[(summary.scope == "l0") & (summary.utility == "u")].iloc[0]
    assert got.loc["u"].ratio == pytest.approx(layer.gap_ratio, rel=1e-12)
    assert "oracle" not in got.index



def test_resamples_whose_oracle_shock_is_zero_give_no_interval_and_print_nothing():
    """A few units with zero shock: some resamples draw k of them, the oracle's Shock@q is 0 there and their ratio
    undefined, so scipy returns no interval (and warns, misleadingly, about BCa): the ratio stands alone, silently."""
    units, _, checkpoints = _run(1, (40,))
    units.loc[:1, "shock_l1"] = 0.0  # 2 of 40; k = 4
    summary = checkpoint_summary(units, ["u", "oracle"], ["l1"], Q)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = ratio_intervals(units, summary, checkpoints, Q).set_index("utility").loc["u"]
    assert math.isfinite(got.ratio) and math.isnan(got.low) and math.isnan(got.high)
