"""Summary statistics (SPEC S5) on hand-made UnitTables with hand-worked answers: per checkpoint, across checkpoints
and seeds (mean and SE per family or training step), and Shock@q at another q.

Tolerances: 1e-12 absolute on sums of a few hand-written floats.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata, sem

from resetassay.errors import BadInputError
from resetassay.names import ALL, SUMMARY_COLUMNS
from resetassay.stats.summary import (
    UNKNOWN_FAMILY,
    aggregate,
    checkpoint_stats,
    checkpoint_summary,
    common_units,
    k_at,
    mean_and_se,
    q_values,
    selections,
    spearman,
    summary_at_q,
    with_checkpoint_info,
)

TOL = 1e-12


def _pearson_of_average_ranks(a, b) -> float:
    return float(np.corrcoef(rankdata(a, method="average"), rankdata(b, method="average"))[0, 1])


@pytest.mark.parametrize("u, s", [
    ([1.0, 2.0, 2.0, 3.0, 5.0, 5.0, 5.0], [0.1, 0.4, 0.3, 0.3, 0.9, 0.2, 0.9]),
    ([3.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 0.0]),
    ([0.0, 0.0, 1.0], [5.0, 4.0, 3.0]),
])
def test_spearman_uses_average_ranks_for_ties(u, s):
    rho, note = spearman(np.array(u), np.array(s))
    assert note == ""
    assert rho == pytest.approx(_pearson_of_average_ranks(u, s), abs=TOL)


def test_spearman_of_two_units_is_their_order_and_of_the_shock_itself_exactly_one():
    assert spearman(np.array([1.0, 2.0]), np.array([3.0, 5.0])) == (pytest.approx(1.0, abs=TOL), "")
    assert spearman(np.array([1.0, 2.0]), np.array([5.0, 3.0])) == (pytest.approx(-1.0, abs=TOL), "")
    x = np.random.default_rng(0).normal(size=5)  # scipy gives 0.9999999999999999 here
    assert spearman(x, x.copy()) == (1.0, "")


def test_per_layer_rows_keep_the_order_of_the_unit_table():
    units = pd.DataFrame({"checkpoint": "c", "layer": ["z"] * 4 + ["a"] * 4, "unit": list(range(4)) * 2,
                          "mature": True, "u": [1.0, 2.0, 3.0, 4.0] * 2, "shock_l1": [1.0, 3.0, 2.0, 4.0] * 2})
    scopes = checkpoint_summary(units, ["u"], ["l1"], 0.25)["scope"].tolist()
    assert scopes[scopes.index("z"):] == ["z", "a"]  # the model's order, not the alphabet's


def test_spearman_of_constant_vector_is_nan_with_reason():
    rho, note = spearman(np.array([2.0, 2.0, 2.0]), np.array([1.0, 2.0, 3.0]))
    assert math.isnan(rho) and "utility is constant" in note
    rho, note = spearman(np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.5, 0.5]))
    assert math.isnan(rho) and "shock is constant" in note
    rho, note = spearman(np.array([1.0]), np.array([1.0]))
    assert math.isnan(rho) and note


@pytest.mark.parametrize("n, q", [(20, "0.05"), (21, "0.05"), (3, "0.05"), (100, "0.07"),
                                  (100, "0.05"), (7, "0.3"), (1, "0.5"), (10, "1")])
def test_k_at_is_max_1_ceil_q_n_in_exact_arithmetic(n, q):
    assert k_at(n, float(q)) == max(1, math.ceil(Fraction(q) * n))


def _table() -> pd.DataFrame:
    """Two layers; layer a unit 5 and layer b unit 0 are immature (and would otherwise win)."""
    rows = [
        # layer, unit, mature, u,   v,     shock_l1, shock_kl
        ("a", 0, True, 0.2, 1.0, 1.0, 0.10),
        ("a", 1, True, 0.1, 2.0, 4.0, 0.40),
        ("a", 2, True, 0.3, 3.0, 2.0, 0.20),
        ("a", 3, True, 0.1, 4.0, 0.8, 0.08),
        ("a", 4, True, 0.1, 5.0, 0.5, 0.05),
        ("a", 5, False, 0.0, 0.0, 9.0, 0.90),
        ("b", 0, False, 0.0, math.nan, 0.1, 0.01),
        ("b", 1, True, 0.7, math.nan, 0.2, 0.02),
        ("b", 2, True, 0.6, math.nan, 5.0, 0.50),
        ("b", 3, True, 0.6, math.nan, 1.5, 0.15),
    ]
    df = pd.DataFrame(rows, columns=["layer", "unit", "mature", "u", "v", "shock_l1", "shock_kl"])
    df.insert(0, "checkpoint", "ck")
    df["age"] = np.where(df["mature"], 100.0, 1.0)
    df["reference"] = 0.0
    return df


def _row(summary: pd.DataFrame, utility: str, metric: str, scope: str) -> pd.Series:
    hit = summary[(summary.utility == utility) & (summary.metric == metric) & (summary.scope == scope)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_shock_at_q_worked_example():
    # q = 0.25. Mature: a has 5 units -> k = ceil(1.25) = 2; b has 3 -> k = ceil(0.75) = 1.
    # u selects in a: the lowest u = 0.1 is shared by units 1, 3, 4 -> index order -> {1, 3};
    #   in b: 0.6 shared by units 2, 3 -> {2}. (Immature a5, b0 have the lowest u: excluded.)
    # oracle (shock_l1) selects in a: 0.5 (unit 4), 0.8 (unit 3) -> {3, 4}; in b: 0.2 -> {1}.
    # Shock@q(u)      = mean(4.0, 0.8, 5.0) = 9.8 / 3   (pooled over units, not layer means)
    # Shock@q(oracle) = mean(0.5, 0.8, 0.2) = 0.5
    # overlap = mean(|{1,3} & {3,4}| / 2, |{2} & {1}| / 1) = mean(0.5, 0) = 0.25
    summary = checkpoint_summary(_table(), ["u", "oracle"], ["l1"], q=0.25)
    row = _row(summary, "u", "l1", ALL)
    assert row.n_units == 8
    assert row.shock_at_q == pytest.approx(9.8 / 3, abs=TOL)
    assert row.oracle_shock_at_q == pytest.approx(0.5, abs=TOL)
    assert row.gap == pytest.approx(9.8 / 3 - 0.5, abs=TOL)
    assert row.gap_ratio == pytest.approx((9.8 / 3) / 0.5, abs=TOL)
    assert row.overlap == pytest.approx(0.25, abs=TOL)
    assert row.q == 0.25 and row.checkpoint == "ck"

    layer_a = _row(summary, "u", "l1", "a")
    assert layer_a.shock_at_q == pytest.approx((4.0 + 0.8) / 2, abs=TOL)
    assert layer_a.oracle_shock_at_q == pytest.approx((0.5 + 0.8) / 2, abs=TOL)
    assert layer_a.overlap == pytest.approx(0.5, abs=TOL)
    assert layer_a.n_units == 5
    layer_b = _row(summary, "u", "l1", "b")
    assert layer_b.shock_at_q == pytest.approx(5.0, abs=TOL)
    assert layer_b.oracle_shock_at_q == pytest.approx(0.2, abs=TOL)
    assert layer_b.overlap == 0.0

    oracle = _row(summary, "oracle", "l1", ALL)
    assert oracle.shock_at_q == pytest.approx(0.5, abs=TOL)
    assert oracle.gap == pytest.approx(0.0, abs=TOL) and oracle.overlap == 1.0
    assert oracle.spearman == pytest.approx(1.0, abs=TOL)


def test_spearman_in_summary_pools_mature_units_and_is_per_layer():
    df = _table()
    summary = checkpoint_summary(df, ["u"], ["l1", "kl"], q=0.25)
    mature = df[df.mature]
    for metric in ("l1", "kl"):
        pooled = _row(summary, "u", metric, ALL)
        want = _pearson_of_average_ranks(mature["u"], mature[f"shock_{metric}"])
        assert pooled.spearman == pytest.approx(want, abs=TOL)
        for layer in ("a", "b"):
            g = mature[mature.layer == layer]
            want = _pearson_of_average_ranks(g["u"], g[f"shock_{metric}"])
            assert _row(summary, "u", metric, layer).spearman == pytest.approx(want, abs=TOL)


def test_utility_not_applicable_to_a_layer_is_left_out_with_a_note():
    # v is NaN on layer b: ALL covers layer a only, k_a = 2 -> v picks units 0, 1 (v = 1, 2).
    summary = checkpoint_summary(_table(), ["v"], ["l1"], q=0.25)
    row = _row(summary, "v", "l1", ALL)
    assert row.n_units == 5
    assert row.shock_at_q == pytest.approx((1.0 + 4.0) / 2, abs=TOL)
    assert row.oracle_shock_at_q == pytest.approx((0.5 + 0.8) / 2, abs=TOL)
    assert "not applicable: b" in row.note
    assert set(summary.scope) == {ALL, "common", "a"}


def test_constant_utility_gives_nan_spearman_with_reason_in_summary():
    df = _table()
    df["flat"] = 1.0
    summary = checkpoint_summary(df, ["flat"], ["l1"], q=0.25)
    row = _row(summary, "flat", "l1", ALL)
    assert math.isnan(row.spearman)
    assert "constant" in row.note
    # ties everywhere: selection falls back to unit index -> a {0, 1}, b {1}
    assert row.shock_at_q == pytest.approx((1.0 + 4.0 + 0.2) / 3, abs=TOL)


def test_joint_shock_is_reported_on_the_pooled_row_only():
    summary = checkpoint_summary(_table(), ["u"], ["l1"], q=0.25, joint={("u", "l1"): 7.5})
    assert _row(summary, "u", "l1", ALL).joint_shock == 7.5
    assert math.isnan(_row(summary, "u", "l1", "a").joint_shock)


def test_missing_utility_column_is_not_applicable_to_any_layer():
    summary = checkpoint_summary(_table(), ["absent"], ["l1"])
    assert len(summary) == 1
    assert summary.iloc[0].n_units == 0 and "not applicable" in summary.iloc[0].note


def test_oracle_shock_at_q_is_a_lower_bound_for_every_utility():
    rng = np.random.default_rng(0)
    for trial in range(20):
        sizes = {"x": int(rng.integers(1, 15)), "y": int(rng.integers(1, 15))}
        rows = []
        for layer, n in sizes.items():
            for unit in range(n):
                rows.append({"checkpoint": "c", "layer": layer, "unit": unit,
                             "mature": bool(rng.random() > 0.2) or unit == 0,
                             "age": 1.0, "reference": 0.0,
                             "u1": float(rng.integers(0, 3)), "u2": float(rng.random()),
                             "shock_l1": float(rng.integers(0, 4)), "shock_kl": float(rng.random())})
        df = pd.DataFrame(rows)
        q = float(rng.choice([0.05, 0.2, 0.5]))
        summary = checkpoint_summary(df, ["u1", "u2"], ["l1", "kl"], q=q)
        assert len(summary) > 0
        assert (summary.oracle_shock_at_q <= summary.shock_at_q + 1e-12).all(), trial
        assert (summary.gap >= -1e-12).all(), trial
        defined = summary.overlap.notna()
        assert summary.overlap[defined].between(0, 1).all(), trial
        assert summary.note[~defined].str.contains("top-k overlap undefined where shock is constant").all(), trial


def test_mean_and_se_match_numpy_and_scipy():
    values = pd.Series([1.0, 2.5, math.nan, 4.0, -0.5])
    mean, se, n = mean_and_se(values)
    clean = np.array([1.0, 2.5, 4.0, -0.5])
    assert n == 4
    assert mean == pytest.approx(np.mean(clean), abs=TOL)
    assert se == pytest.approx(float(sem(clean)), abs=TOL)
    assert se == pytest.approx(np.std(clean, ddof=1) / 2.0, abs=TOL)
    mean, se, n = mean_and_se(pd.Series([3.0]))
    assert (mean, n) == (3.0, 1) and math.isnan(se)
    mean, se, n = mean_and_se(pd.Series([math.nan]))
    assert n == 0 and math.isnan(mean) and math.isnan(se)


def test_top_k_overlap_is_nan_with_a_note_where_every_shock_is_equal():
    """All-zero shocks: the oracle's pick is a tie-break by unit index, so an overlap of 1.0 would be an
    artefact of that rule, not agreement (SPEC S5)."""
    units = _table()
    units.loc[units["layer"] == "b", "shock_l1"] = 0.0
    summary = checkpoint_summary(units, ["u"], ["l1"], q=0.25)
    layer_b = _row(summary, "u", "l1", "b")
    assert math.isnan(layer_b.overlap) and "top-k overlap undefined where shock is constant" in layer_b.note
    pooled = _row(summary, "u", "l1", ALL)
    assert pooled.overlap == _row(summary, "u", "l1", "a").overlap  # layer b left out of the pooled mean
    assert "(b)" in pooled.note
    units["shock_l1"] = 0.0
    pooled = _row(checkpoint_summary(units, ["u"], ["l1"], q=0.25), "u", "l1", ALL)
    assert math.isnan(pooled.overlap) and "(every layer)" in pooled.note


def test_common_scope_pools_only_the_layers_where_every_utility_applies():
    """`v` does not apply to layer b: the common rows of every utility cover layer a alone (SPEC S5 coverage),
    while each utility's ALL row keeps its own layers; n_layers and n_units say so."""
    summary = checkpoint_summary(_table(), ["u", "v", "oracle"], ["l1"], q=0.25)
    for utility in ("u", "v", "oracle"):
        common = _row(summary, utility, "l1", "common")
        layer_a = _row(summary, utility, "l1", "a")
        assert (common.n_layers, common.n_units) == (1, 5)
        for stat in ("spearman", "shock_at_q", "oracle_shock_at_q", "gap", "overlap"):
            assert common[stat] == pytest.approx(layer_a[stat], abs=TOL), (utility, stat)
        assert math.isnan(common.joint_shock)
    assert (_row(summary, "u", "l1", ALL).n_layers, _row(summary, "u", "l1", ALL).n_units) == (2, 8)
    assert _row(summary, "v", "l1", ALL).n_layers == 1
    alone = checkpoint_summary(_table(), ["u", "oracle"], ["l1"], q=0.25)
    for stat in ("spearman", "shock_at_q", "gap"):  # every utility applies everywhere: common = ALL
        assert _row(alone, "u", "l1", "common")[stat] == _row(alone, "u", "l1", ALL)[stat]


def test_a_utility_that_applies_nowhere_does_not_empty_the_common_scope():
    """`w` is NaN everywhere (not applicable to any layer, like mc_adaptable behind BatchNorm): the common scope
    is still every layer where `u` and `v` apply (layer a), and `w` gets no common row of its own."""
    units = _table().assign(w=math.nan)
    summary = checkpoint_summary(units, ["u", "v", "w", "oracle"], ["l1"], q=0.25)
    assert (_row(summary, "u", "l1", "common").n_layers, _row(summary, "u", "l1", "common").n_units) == (1, 5)
    assert summary[(summary.utility == "w") & (summary.scope == "common")].empty
    assert _row(summary, "w", "l1", ALL).note == "not applicable to any layer"


def _summary_rows(rows: list[tuple]) -> pd.DataFrame:
    """SummaryTable rows from (checkpoint, utility, metric, scope, spearman, shock_at_q, oracle) tuples."""
    frame = pd.DataFrame(rows, columns=["checkpoint", "utility", "metric", "scope", "spearman", "shock_at_q",
                                        "oracle_shock_at_q"])
    frame["gap"] = frame["shock_at_q"] - frame["oracle_shock_at_q"]
    frame["gap_ratio"] = frame["shock_at_q"] / frame["oracle_shock_at_q"]
    frame["q"] = 0.05
    return frame.reindex(columns=SUMMARY_COLUMNS)


@pytest.fixture
def hand_summary() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Family F: checkpoints a (step 1) and b (step 3); family G: checkpoint c (step 1)."""
    summary = _summary_rows([
        ("a", "gxd", "l1", ALL, 0.8, 2.0, 1.0), ("a", "gxd", "l1", "L0", 0.6, 2.0, 1.0),
        ("a", "gxd", "l1", "L1", 0.7, 2.0, 1.0),
        ("b", "gxd", "l1", ALL, 1.0, 4.0, 2.0), ("b", "gxd", "l1", "L0", 0.9, 4.0, 2.0),
        ("b", "gxd", "l1", "L1", 1.0, 4.0, 2.0),
        ("c", "gxd", "l1", ALL, 0.5, 3.0, 3.0), ("c", "gxd", "l1", "L0", 0.5, 3.0, 3.0),
    ])
    checkpoints = pd.DataFrame({"checkpoint": ["a", "b", "c"], "family": ["F", "F", "G"], "step": [1.0, 3.0, 1.0]})
    return summary, checkpoints


def test_family_aggregate_is_mean_and_standard_error_over_checkpoints(hand_summary):
    stats = checkpoint_stats(*hand_summary)
    by_family = aggregate(stats, ["family"]).set_index("family")
    f, g = by_family.loc["F"], by_family.loc["G"]
    assert f["n"] == 2 and g["n"] == 1
    # F: rho 0.8 and 1.0 -> mean 0.9, sd = 0.1414.., SE = sd / sqrt(2) = 0.1
    assert f["spearman"] == pytest.approx(0.9, abs=TOL)
    assert f["spearman_se"] == pytest.approx(0.1, abs=TOL)
    # per-layer rho: a (0.6 + 0.7) / 2 = 0.65, b (0.9 + 1.0) / 2 = 0.95 -> mean 0.8, SE 0.15
    assert f["layer_spearman"] == pytest.approx(0.8, abs=TOL)
    assert f["layer_spearman_se"] == pytest.approx(0.15, abs=TOL)
    # gaps 1.0 and 2.0 -> 1.5 ± 0.5; a single checkpoint has no SE
    assert f["gap"] == pytest.approx(1.5, abs=TOL) and f["gap_se"] == pytest.approx(0.5, abs=TOL)
    assert g["spearman"] == pytest.approx(0.5, abs=TOL) and math.isnan(g["spearman_se"])


def test_aggregate_by_training_step_pools_only_checkpoints_of_that_step(hand_summary):
    stats = checkpoint_stats(*hand_summary)
    by_step = aggregate(stats, ["family", "step"]).set_index(["family", "step"])
    assert by_step.loc[("F", 1.0), "spearman"] == pytest.approx(0.8, abs=TOL)
    assert by_step.loc[("F", 3.0), "spearman"] == pytest.approx(1.0, abs=TOL)
    assert by_step.loc[("G", 1.0), "n"] == 1
    assert len(by_step) == 3


def test_checkpoints_without_family_are_pooled_as_one(hand_summary):
    stats = checkpoint_stats(hand_summary[0], pd.DataFrame())
    by_family = aggregate(stats, ["family"])
    assert len(by_family) == 1 and by_family["n"].iloc[0] == 3
    assert by_family["spearman"].iloc[0] == pytest.approx((0.8 + 1.0 + 0.5) / 3, abs=TOL)


def test_shock_at_another_q_is_recomputed_from_units_and_has_no_joint_shock():
    # One layer of 10 units: utility = unit index, shocks hand-picked.
    shock = [0.5, 0.3, 0.9, 0.1, 0.7, 0.2, 0.8, 0.4, 0.6, 1.0]
    units = pd.DataFrame({"checkpoint": "a", "layer": "L", "unit": range(10), "mature": True,
                          "u": [float(i) for i in range(10)], "shock_l1": shock})
    stored = _summary_rows([("a", "u", "l1", ALL, 0.0, 0.0, 0.0)]).assign(joint_shock=7.0)
    at_20 = summary_at_q(units, stored, 0.2, base_q=0.05).set_index("scope").loc[ALL]
    # q = 0.2 -> k = 2: utility picks units 0, 1 (shocks 0.5, 0.3); the oracle picks 0.1 and 0.2.
    assert at_20["shock_at_q"] == pytest.approx(0.4, abs=TOL)
    assert at_20["oracle_shock_at_q"] == pytest.approx(0.15, abs=TOL)
    assert at_20["overlap"] == 0.0
    assert math.isnan(at_20["joint_shock"])
    assert summary_at_q(units, stored, 0.05, base_q=0.05) is stored  # the run's own q: the stored table
    two = summary_at_q(pd.concat([units, units.assign(checkpoint="b")]), pd.concat([stored, stored.assign(
        checkpoint="b")]), 0.2, base_q=0.05)
    assert list(two.index) == list(range(len(two))) and set(two["checkpoint"]) == {"a", "b"}  # one row per label


@pytest.mark.parametrize("text", ["0", "1.5", "abc", ",", "-0.1", "1.0000001"])
def test_bad_q_is_refused_naming_the_field(text):
    with pytest.raises(BadInputError, match="`q`") as caught:
        q_values(text)
    assert caught.value.field == "q"  # the CLI prints it as --q


def test_q_of_one_is_every_unit_and_accepted():
    assert q_values("1") == [1.0]


def test_q_list_keeps_order_and_drops_repeats():
    assert q_values("0.1, 0.01,0.1") == [0.1, 0.01]


def test_mean_and_se_of_one_value_is_that_value_with_no_se_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns on sd of one value with ddof=1: never computed
        mean, se, n = mean_and_se(pd.Series([0.25, math.nan]))
    assert (mean, n) == (0.25, 1) and math.isnan(se)


def test_aggregate_keeps_unknown_groups_last_first_seen_order_and_its_columns(hand_summary):
    """A checkpoint without a step is a group of its own (not dropped), sorted last; groups of equal keys keep the
    order they were first seen in (stable), utilities in theirs; the index is 0..n-1 and the columns are named
    `<stat>`, `<stat>_se`, `<stat>_n`."""
    summary, checkpoints = hand_summary
    extra = _summary_rows([("d", "gxd", "l1", ALL, 0.2, 6.0, 1.0), ("d", "act", "l1", ALL, 0.1, 5.0, 1.0)])
    stats = checkpoint_stats(pd.concat([summary, extra], ignore_index=True),
                             pd.concat([checkpoints, pd.DataFrame({"checkpoint": ["d"], "family": ["F"],
                                                                   "step": [math.nan]})]))
    by_step = aggregate(stats, ["step"], names=("spearman",))
    assert list(by_step.columns) == ["step", "utility", "metric", "n", "spearman", "spearman_se", "spearman_n"]
    assert list(by_step.index) == list(range(len(by_step)))
    assert by_step["step"].tolist()[:2] == [1.0, 3.0] and math.isnan(by_step["step"].iloc[-1])
    assert by_step.loc[by_step["step"].isna(), "utility"].tolist() == ["gxd", "act"]  # first seen, not sorted
    assert by_step.loc[by_step["step"].isna(), "spearman"].tolist() == [0.2, 0.1]
    unsorted = aggregate(stats, [], names=("spearman",))
    assert unsorted["utility"].tolist() == ["gxd", "act"]  # no `by`: the order the groups were first seen in
    empty = aggregate(stats.iloc[:0], ["step"], names=("spearman",))
    assert list(empty.columns) == list(by_step.columns) and empty.empty


def test_shock_at_another_q_keeps_the_checkpoints_in_their_order():
    units = pd.DataFrame({"checkpoint": np.repeat(["z", "a"], 10), "layer": "L", "unit": list(range(10)) * 2,
                          "mature": True, "u": np.arange(20.0), "shock_l1": np.arange(20.0)})
    stored = _summary_rows([("z", "u", "l1", ALL, 0.0, 0.0, 0.0), ("a", "u", "l1", ALL, 0.0, 0.0, 0.0)])
    assert summary_at_q(units, stored, 0.2, base_q=0.05)["checkpoint"].unique().tolist() == ["z", "a"]


def test_common_units_are_each_checkpoints_mature_units_of_its_common_layers():
    """`common_units` (what the figures compare every utility on): per checkpoint, in their order, the mature units
    of the layers where every utility of its summary rows applies; none when no unit is mature."""
    first = _table().assign(checkpoint="z")  # v does not apply to layer b here
    second = _table().assign(checkpoint="a", v=1.0)  # here it applies everywhere, and is not in a's summary
    units = pd.concat([first, second], ignore_index=True)
    summary = pd.concat([checkpoint_summary(first, ["u", "v", "oracle"], ["l1"], q=0.25),
                         checkpoint_summary(second, ["u", "oracle"], ["l1"], q=0.25)])  # z's utilities decide z's
    kept = common_units(units, summary)
    assert list(dict.fromkeys(kept["checkpoint"])) == ["z", "a"]
    assert kept[kept["checkpoint"] == "z"]["layer"].unique().tolist() == ["a"]
    assert kept[kept["checkpoint"] == "a"]["layer"].unique().tolist() == ["a", "b"]
    assert kept["mature"].all() and len(kept) == 5 + 8
    none = common_units(units.assign(mature=False), summary)
    assert none.empty and list(none.columns) == list(units.columns)


def test_a_layer_whose_every_unit_is_reset_keeps_its_overlap_even_with_constant_shocks():
    """q = 1 resets every unit: utility and oracle pick the same (whole) layer, so top-k overlap is 1, not
    undefined, even where every shock is equal (SPEC S5)."""
    units = _table().assign(shock_l1=1.0)
    row = _row(checkpoint_summary(units, ["u", "oracle"], ["l1"], q=1.0), "u", "l1", ALL)
    assert row.overlap == 1.0 and "undefined" not in str(row.note)


def test_a_set_selectors_rows_are_made_of_the_units_it_picked():
    """A set selector (gxd_greedy) is summarised by the units it picked per layer, not by a ranking: its Shock@q is
    their mean shock, and it has no Spearman ρ."""
    units = _table().assign(gxd_greedy=math.nan)
    picked = {"a": np.array([0, 4]), "b": np.array([1])}
    row = _row(checkpoint_summary(units, ["gxd_greedy", "oracle"], ["l1"], q=0.25, sets={"gxd_greedy": picked}),
               "gxd_greedy", "l1", ALL)
    assert row.shock_at_q == pytest.approx((1.0 + 0.5 + 0.2) / 3, abs=TOL) and math.isnan(row.spearman)


def test_selections_skip_a_layer_the_column_does_not_cover():
    """A utility that does not apply to a layer (NaN there) selects nothing in it, rather than its first units."""
    units = pd.DataFrame({"layer": ["a"] * 4 + ["b"] * 4, "unit": list(range(4)) * 2, "mature": True,
                          "u": [0.3, 0.1, 0.2, 0.4] + [math.nan] * 4})
    picked = selections(units, "u", 0.25)
    assert list(picked) == ["a"] and picked["a"].tolist() == [1]


def test_spearman_of_one_unit_says_why_it_is_undefined():
    rho, reason = spearman(np.array([1.0]), np.array([2.0]))
    assert math.isnan(rho) and reason == "fewer than 2 mature units"


def test_checkpoint_info_without_a_checkpoint_column_leaves_the_family_unknown():
    frame = pd.DataFrame({"checkpoint": ["a", "b"], "x": [1.0, 2.0]})
    out = with_checkpoint_info(frame, pd.DataFrame({"family": ["mlp"], "step": [3]}))
    assert out["checkpoint"].tolist() == ["a", "b"] and out["step"].isna().all() and out["family"].nunique() == 1


def _layers(shocks: dict[str, list[float]]) -> pd.DataFrame:
    """One checkpoint's units: a layer per key, its units' shocks in order, utility `u` = 0, 1, 2, ..."""
    return pd.DataFrame([{"checkpoint": "c", "layer": name, "unit": i, "mature": True, "u": float(i), "shock_l1": s}
                         for name, values in shocks.items() for i, s in enumerate(values)])


def test_the_layers_of_constant_shock_are_named_in_the_overlap_note_and_left_out_of_it():
    units = _layers({"a": [1.0, 1.0, 1.0, 1.0], "b": [0.5, 0.5, 0.5, 0.5], "c": [4.0, 3.0, 2.0, 1.0]})
    row = _row(checkpoint_summary(units, ["u", "oracle"], ["l1"], q=0.25), "u", "l1", ALL)
    assert row.note == "top-k overlap undefined where shock is constant (a, b)"
    assert row.overlap == 0.0  # c alone: u picks unit 0, the oracle unit 3


def test_shock_constant_everywhere_gives_both_reasons_and_no_overlap_without_a_warning():
    units = _layers({"a": [2.0, 2.0, 2.0, 2.0], "b": [2.0, 2.0, 2.0, 2.0]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no mean of an empty list
        row = _row(checkpoint_summary(units, ["u", "oracle"], ["l1"], q=0.25), "u", "l1", ALL)
    assert row.note == ("shock is constant over the units; "
                        "top-k overlap undefined where shock is constant (every layer)")
    assert math.isnan(row.overlap) and math.isnan(row.spearman)


def test_the_default_q_is_five_percent():
    units = _table()
    pd.testing.assert_frame_equal(checkpoint_summary(units, ["u", "oracle"], ["l1"]),
                                  checkpoint_summary(units, ["u", "oracle"], ["l1"], q=0.05))
    assert checkpoint_summary(units, ["u", "oracle"], ["l1"])["q"].eq(0.05).all()


def test_a_checkpoint_of_one_unit_has_rows_that_say_why_rho_is_undefined():
    rows = checkpoint_summary(_layers({"a": [0.3]}), ["u", "oracle"], ["l1"], q=0.25)
    row = _row(rows, "u", "l1", ALL)
    assert rows["checkpoint"].eq("c").all() and row.shock_at_q == 0.3 and row.note == "fewer than 2 mature units"


def test_a_utility_missing_from_layers_names_them_after_rhos_reason():
    units = _layers({"a": [1.0, 2.0, 3.0], "b": [1.0, 2.0, 3.0], "c": [3.0, 2.0, 1.0]})
    units["v"] = np.where(units["layer"] == "a", 1.0, math.nan)  # constant on a, missing on b and c
    row = _row(checkpoint_summary(units, ["v", "oracle"], ["l1"], q=0.25), "v", "l1", ALL)
    assert row.note == "utility is constant over the units; not applicable: b, c" and row.n_layers == 1


def test_a_utility_that_applies_nowhere_has_an_empty_all_row_per_metric():
    units = _layers({"a": [1.0, 2.0, 3.0]}).assign(shock_kl=[0.1, 0.2, 0.3], w=math.nan)
    rows = checkpoint_summary(units, ["w", "u", "oracle"], ["l1", "kl"], q=0.25)
    mine = rows[rows["utility"] == "w"]
    assert mine["metric"].tolist() == ["l1", "kl"] and mine["scope"].eq(ALL).all()
    assert mine["n_layers"].tolist() == [0, 0] and mine["n_units"].tolist() == [0, 0]
    assert mine["note"].eq("not applicable to any layer").all()
    assert set(rows.loc[rows["utility"] == "u", "metric"]) == {"l1", "kl"}


def test_aggregate_sorts_by_its_keys_and_keeps_first_seen_order_within_a_key():
    """Sixty groups met in the order step 2, step 1, step 2, ...: sorted by step, each step's utilities in the order
    they were met (a stable sort; numpy's quicksort reorders ties from 17 rows on)."""
    names = [f"u{i:02d}" for i in range(30)]
    stats = pd.DataFrame([{"checkpoint": f"c{step}", "step": float(step), "utility": u, "metric": "l1",
                           "spearman": 0.1} for u in reversed(names) for step in (2, 1)])
    out = aggregate(stats, ["step"], names=("spearman",))
    assert out["step"].tolist() == [1.0] * 30 + [2.0] * 30
    assert out["utility"].tolist() == [*reversed(names)] * 2


def test_checkpoint_info_keeps_checkpoints_it_lacks_and_reads_a_repeated_one_once():
    frame = pd.DataFrame({"checkpoint": ["a", "b", "a"], "x": [1.0, 2.0, 3.0]})
    checkpoints = pd.DataFrame({"checkpoint": ["a", "a"], "family": ["mlp", "cnn"], "step": [1, 2]})
    out = with_checkpoint_info(frame, checkpoints)
    assert out["checkpoint"].tolist() == ["a", "b", "a"] and out["x"].tolist() == [1.0, 2.0, 3.0]
    assert out.loc[out["checkpoint"] == "a", "family"].tolist() == ["mlp", "mlp"]  # the first row of a repeat
    assert out.loc[out["checkpoint"] == "a", "step"].tolist() == [1.0, 1.0]
    assert out.loc[out["checkpoint"] == "b", "family"].tolist() == [UNKNOWN_FAMILY]
    assert math.isnan(out.loc[out["checkpoint"] == "b", "step"].iloc[0])


def test_checkpoint_steps_written_as_text_are_numbers_and_a_step_that_is_not_one_is_unknown():
    frame = pd.DataFrame({"checkpoint": ["a", "b", "c"]})
    checkpoints = pd.DataFrame({"checkpoint": ["a", "b", "c"], "step": ["10", "n/a", ""]})
    out = with_checkpoint_info(frame, checkpoints)
    assert out["step"].dtype == float and out["step"].iloc[0] == 10.0 and out["step"].iloc[1:].isna().all()


def test_checkpoint_info_replaces_a_family_and_step_the_frame_already_has():
    frame = pd.DataFrame({"checkpoint": ["a"], "family": ["old"], "step": [0.0], "x": [1.0]})
    out = with_checkpoint_info(frame, pd.DataFrame({"checkpoint": ["a"], "family": ["mlp"], "step": [5]}))
    assert list(out.columns) == ["checkpoint", "x", "family", "step"]
    assert out.iloc[0].tolist() == ["a", 1.0, "mlp", 5.0]
