"""The verdict (SPEC S5b; resetassay/stats/verdict.py): normalised regret, layer-balanced ρ, verdicts per unit kind, the
paired bootstrap, the indistinguishable set and the reliability flags.

The arithmetic is checked against plain recomputations (an expanded resample, scipy's Spearman, the per-layer
S5 rows); the cases of issue 22 are rebuilt on small models of the same shapes: an MLP with near-dead layers
(oracle Shock@q 0), a classifier whose last hidden layer dwarfs the others, a transformer with four heads per
layer, a CBP checkpoint with no mature units, a probe at chance.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.paths import FIXTURES
from scipy.stats import spearmanr
from sklearn.datasets import load_digits
from torch import nn

from resetassay.models import create_model
from resetassay.pipeline.assay import AssayConfig, assay_model
from resetassay.pipeline.run import run_assay
from resetassay.report.headline import answer_sentences
from resetassay.stats.summary import checkpoint_summary
from resetassay.stats.verdict import (
    FLAG_NOTE,
    MIN_RHO_UNITS,
    _mean_se,
    _nanmean,
    _rank_correlation,
    _Ranked,
    _span,
    checkpoint_verdict_stats,
    kind_scopes,
    near_chance,
    reliability_flags,
    verdict_table,
)

CONFIG = AssayConfig(utilities=["gxd", "activation", "random", "oracle"], metrics=["l1"], joint=False)


def test_draws_as_unit_multiplicities_equal_the_expanded_resample():
    """A draw's selection (the k lowest, ties by unit index) and its Spearman ρ (average ranks) computed from unit
    multiplicities equal those of the resample written out unit by unit, ties and zero shocks included."""
    rng = np.random.default_rng(3)
    n, k = 23, 3
    values = rng.integers(0, 6, n).astype(float)
    shock = rng.exponential(size=n)
    shock[:5] = 0.0
    unit = np.arange(n)
    draws = rng.integers(0, n, (60, n))
    m = np.stack([np.bincount(d, minlength=n) for d in draws]).astype(float)
    ranked, oracle = _Ranked.of(values, unit), _Ranked.of(shock, unit)
    selected = ranked.selected_mean(shock, m, k)
    rho = _rank_correlation(ranked.ranks(m), oracle.ranks(m), m)
    for b, d in enumerate(draws):
        first = np.lexsort((unit[d], values[d]))[:k]
        assert selected[b] == pytest.approx(shock[d][first].mean(), abs=1e-12)
        want = spearmanr(values[d], shock[d]).statistic
        assert (math.isnan(rho[b]) and math.isnan(want)) or rho[b] == pytest.approx(want, abs=1e-12)


def _units(rng: np.random.Generator) -> pd.DataFrame:
    """One checkpoint: two linear layers (40, 3 units), a conv layer (20) and two head layers (4 each); `u` tracks
    the shock, `noise` does not, `partial` applies to neither the heads nor the conv layer; layer L1's units all
    cost the same."""
    frames = []
    for layer, kind, n in (("L0", "linear", 40), ("L1", "linear", 3), ("C0", "conv", 20), ("H0", "head", 4),
                           ("H1", "head", 4)):
        shock = np.full(n, 0.3) if layer == "L1" else np.exp(rng.normal(size=n))
        frames.append(pd.DataFrame({
            "checkpoint": "c", "layer": layer, "kind": kind, "unit": np.arange(n), "mature": True,
            "u": shock * np.exp(0.3 * rng.normal(size=n)), "noise": rng.uniform(size=n),
            "partial": rng.uniform(size=n) if kind == "linear" else np.nan, "shock_l1": shock}))
    return pd.concat(frames, ignore_index=True)


def test_regret_and_balanced_rho_are_the_weighted_means_of_the_layers_s5_rows():
    """Regret: per layer (Shock@q - oracle) / (mean shock - oracle) from summary.py's own layer rows, weighted by
    k_l, a layer whose units all cost the same left out; balanced ρ: the layer ρ weighted by n_l, layers of fewer
    than MIN_RHO_UNITS units left out; heads keep their scope although `partial` does not apply to them."""
    units = _units(np.random.default_rng(0))
    utilities = ["u", "noise", "partial", "oracle"]
    summary = checkpoint_summary(units, utilities, ["l1"], 0.1)
    scopes = kind_scopes(units, utilities)
    assert scopes == {"neurons": (["L0", "L1"], ["u", "noise", "partial", "oracle"]),
                      "channels": (["C0"], ["u", "noise", "oracle"]), "heads": (["H0", "H1"], ["u", "noise", "oracle"])}
    stats = checkpoint_verdict_stats(units, summary, pd.DataFrame(), 0.1).set_index(["kind", "utility"])
    for kind, (layers, ranked) in scopes.items():
        for utility in ranked:
            rows = summary[(summary.utility == utility) & summary.scope.isin(layers)].set_index("scope")
            regret = weight = rho = count = 0.0
            for layer in layers:
                shock = units.loc[units.layer == layer, "shock_l1"]
                spread = shock.mean() - rows.loc[layer, "oracle_shock_at_q"]
                k = max(1, math.ceil(0.1 * len(shock) - 1e-9))
                if spread > 1e-6 * shock.mean():
                    regret += k * (rows.loc[layer, "shock_at_q"] - rows.loc[layer, "oracle_shock_at_q"]) / spread
                    weight += k
                if len(shock) >= MIN_RHO_UNITS and not math.isnan(rows.loc[layer, "spearman"]):
                    rho += len(shock) * rows.loc[layer, "spearman"]
                    count += len(shock)
            assert stats.loc[(kind, utility), "regret"] == pytest.approx(regret / weight, abs=1e-12)
            assert stats.loc[(kind, utility), "n_units"] == units["layer"].isin(layers).sum()
            assert stats.loc[(kind, utility), "n_layers"] == len(layers)
            got = stats.loc[(kind, utility), "balanced_rho"]
            assert got == pytest.approx(rho / count, abs=1e-12) if count else math.isnan(got)  # heads: 4 < 5 units
    assert stats.loc[("neurons", "oracle"), "regret"] == 0.0


def test_the_paired_bootstrap_gives_an_indistinguishable_set_and_fails_noise():
    rng = np.random.default_rng(1)
    units = pd.concat([_units(rng).assign(checkpoint=c) for c in ("a", "b")], ignore_index=True)
    units["twin"] = units["u"] * 1.0000001  # the same order as u: indistinguishable from it whatever the draw
    utilities = ["u", "twin", "noise", "random", "oracle"]
    units["random"] = rng.uniform(size=len(units))
    summary = pd.concat([checkpoint_summary(g, utilities, ["l1"], 0.1) for _, g in units.groupby("checkpoint")])
    verdict = verdict_table(units, summary, pd.DataFrame(), 0.1).set_index(["kind", "utility"])
    for kind in ("neurons", "channels"):
        assert verdict.loc[(kind, "u"), "indistinguishable"] and verdict.loc[(kind, "twin"), "indistinguishable"]
        assert verdict.loc[(kind, "u"), "diff_low"] == verdict.loc[(kind, "twin"), "diff_high"] == 0.0
        assert verdict.loc[(kind, "noise"), "fails"] and not verdict.loc[(kind, "random"), "fails"]
        assert verdict.loc[(kind, "random"), "regret_low"] <= 1 <= verdict.loc[(kind, "random"), "regret_high"]
        assert not verdict.loc[(kind, "random"), "best"] and not verdict.loc[(kind, "oracle"), "best"]
    for flag in ("best", "indistinguishable", "cheapest", "fails"):  # every row says yes or no, none is blank
        assert verdict[flag].map(type).eq(bool).all(), flag
    marks = verdict.groupby(level="kind")[["best", "cheapest"]].sum()
    assert (marks["best"] == 1).all() and (marks["cheapest"] == 0).all()  # no seconds measured: none is cheapest
    again = verdict_table(units, summary, pd.DataFrame(), 0.1).set_index(["kind", "utility"])
    pd.testing.assert_frame_equal(verdict, again)  # seeded: the same tables give the same intervals


def test_the_mean_over_draws_skips_nan_and_is_nan_only_without_a_value():
    got = _nanmean(np.array([[2.0, np.nan, np.nan], [np.nan, np.nan, np.nan], [1.0, 2.0, 6.0]]))
    assert got[0] == 2.0 and math.isnan(got[1]) and got[2] == 3.0


@pytest.fixture(scope="module")
def fixture_verdict() -> pd.DataFrame:
    result = run_assay([FIXTURES], utilities=["gxd", "mc_adaptable", "random", "oracle"], metrics=["l1"],
                       progress=False)
    return result._analysis.verdict


@pytest.mark.slow
def test_random_is_regret_one_and_the_oracle_zero_on_every_fixture(fixture_verdict):
    """SPEC S5b: R = 0 is the oracle, R = 1 random in expectation: on every fixture verdict the oracle's regret is
    exactly 0 and random's interval holds 1 (its mean over verdicts near 1)."""
    oracle = fixture_verdict[fixture_verdict.utility == "oracle"]
    random = fixture_verdict[fixture_verdict.utility == "random"]
    assert len(oracle) == len(random) >= 7 and (oracle["regret"] == 0).all()
    assert ((random["regret_low"] <= 1) & (random["regret_high"] >= 1)).all()
    assert 0.7 <= random["regret"].mean() <= 1.3


@pytest.mark.slow
def test_transformer_heads_keep_their_own_verdict(fixture_verdict):
    """mc_adaptable does not apply to heads; it no longer drops every head from the comparison: the heads have a
    verdict of their own over all of them, and mc_adaptable is compared on the neurons only."""
    transformer = fixture_verdict[fixture_verdict.family.str.startswith("transformer")]
    heads = transformer[transformer.kind == "heads"]
    assert set(heads["n_units"]) == {"8"} and set(heads["n_layers"]) == {"2"}
    assert "mc_adaptable" not in set(heads["utility"]) and heads["regret"].notna().sum() >= 3
    assert "mc_adaptable" in set(transformer[transformer.kind == "neurons"]["utility"])


def _digits(n: int = 400) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x[:2 * n] / 16, dtype=torch.float32), torch.tensor(y[:2 * n])
    return (x[:n], y[:n]), (x[n:], y[n:])


def _trained(model: nn.Module, steps: int = 150) -> nn.Module:
    (x, y), _ = _digits()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


@pytest.mark.slow
def test_near_dead_layers_leave_a_verdict_where_the_oracle_ratio_is_undefined():
    """Most units of both layers dead: the oracle resets only dead units (Shock@q 0), so every S5 ratio is NaN;
    the regret stays defined (the live units make the mean shock positive), gxd finds the dead units (regret
    ~0) and is not said to fail, and the headline names a best."""
    torch.manual_seed(0)
    model = _trained(nn.Sequential(nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 10)))
    with torch.no_grad():
        model[0].bias[:30] = -50.0
        model[2].bias[:30] = -50.0
    calib, probe = _digits()
    result = assay_model(model, calib, probe, config=CONFIG)
    pooled = result.summary[result.summary.scope == "ALL"].set_index("utility")
    assert pooled.loc["oracle", "oracle_shock_at_q"] == 0 and pooled["gap_ratio"].isna().all()
    verdict = result._analysis.verdict.set_index("utility")
    assert verdict.loc["gxd", "regret"] < 0.05 and not verdict.loc["gxd", "fails"]
    assert "gxd" in set(result.best()["utility"])
    lines = answer_sentences(result._analysis.verdict, result._analysis.flags)
    assert lines[0].startswith("Lowest regret: **")
    assert not any(line.startswith("No regret") for line in lines)


def test_a_layer_that_dwarfs_the_others_is_flagged():
    """The last hidden layer's outgoing weights x50: its units carry most of the shock mass; the verdict says so
    (flags in best(), in notes.csv, under the headline)."""
    torch.manual_seed(1)
    model = _trained(nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 10)))
    with torch.no_grad():
        model[4].weight *= 50
    calib, probe = _digits()
    result = assay_model(model, calib, probe, config=CONFIG)
    last = result.units["layer"].iloc[-1]
    mass = result.units[result.units["mature"]].groupby("layer")["shock_l1"].sum()
    flags = [set(cell.split("; ")) for cell in result.best()["flags"]]  # each flag by its exact name and detail
    assert flags and all(f"one layer dominates ({last} {mass[last] / mass.sum():.0%} of l1)" in cell for cell in flags)
    flagged = result.notes[(result.notes.utility == FLAG_NOTE) & result.notes.reason.str.contains("holds")]
    assert len(flagged) == 1 and flagged["layer"].iloc[0] == last
    assert any("one layer dominates" in line for line in answer_sentences(result._analysis.verdict,
                                                                          result._analysis.flags))


def test_no_mature_units_is_said_not_called_not_applicable():
    """A CBP checkpoint at task 0: every unit younger than the maturity threshold. The summary says why, the flags
    name the checkpoint, and the headline gives no verdict instead of a row of NaN."""
    model = create_model("mlp", in_features=64, widths=[16, 16])
    calib, probe = _digits(200)
    state = {f"{layer}.age": torch.zeros(16) for layer in ("layers.0.act", "layers.1.act")}
    result = assay_model(model, calib, probe, config=AssayConfig(**{**CONFIG.__dict__, "maturity": 100}),
                         state=state)
    assert set(result.summary["note"]) == {"no mature units: every unit is younger than the maturity threshold"}
    flags = result._analysis.flags
    assert list(flags["flag"]).count("no mature units") == 1 and result._analysis.verdict.empty
    lines = answer_sentences(result._analysis.verdict, flags)
    assert lines[0].startswith("No verdict") and "no mature units: model (model)" in lines[-1]


def test_a_probe_at_chance_is_flagged():
    """An untrained classifier on digits (10 classes) is right about 10% of the time: below 1.5x chance, flagged
    (is this the model's data?)."""
    model = create_model("mlp", in_features=64, widths=[16, 16])
    calib, probe = _digits(200)
    result = assay_model(model, calib, probe, config=CONFIG)
    assert result.checkpoints["probe_accuracy"].iloc[0] < 0.15 and result.checkpoints["n_classes"].iloc[0] == 10
    flags = reliability_flags(result.units, result.summary, result.checkpoints, CONFIG.q)
    assert "probe at chance" in set(flags["flag"])
    assert (result.notes.utility == FLAG_NOTE).any() and result.best()["flags"].str.contains("probe at chance").all()


def test_the_readme_states_the_fixture_verdict_of_the_committed_table():
    """README's verdict table is rendered from reports/fixtures_verdict.csv (the fixture run's verdict.csv): every
    row, to the digits shown."""
    root = FIXTURES.parent
    verdict = pd.read_csv(root / "reports" / "fixtures_verdict.csv")
    verdict = verdict[(verdict.metric == "l1") & ~verdict.utility.isin(["random", "oracle"])]
    rows = []
    for (family, kind), g in verdict.groupby(["family", "kind"]):
        best, cheap = g[g.best].iloc[0], g[g.cheapest].iloc[0]
        same = ", ".join(g[g.indistinguishable & ~g.best].utility) or "–"
        rows.append(f"| {family} · {kind} | {best.utility} {best.regret:.3f} ({best.seconds:.2g} s) | {same} | "
                    f"{cheap.utility} ({cheap.seconds:.2g} s) |")
    readme = (root / "README.md").read_text()
    block = readme.split("<!-- verdict-table")[1].split("<!-- /verdict-table -->")[0]
    shown = [line for line in block.splitlines() if line.startswith("| ") and "·" in line]
    assert shown[1:] == rows  # after the header


@pytest.mark.parametrize("row, reason", [
    ({"regret": 0.7, "regret_low": 0.6, "balanced_rho": 0.9, "rho_high": 0.95}, "regret ≥ 0.60 > 0.5"),
    ({"regret": 0.1, "regret_low": 0.0, "balanced_rho": 0.3, "rho_high": 0.4}, "ρ ≤ 0.40 < 0.5"),
    ({"regret": 0.7, "regret_low": math.nan, "balanced_rho": 0.3, "rho_high": math.nan},  # no interval: the point
     "regret ≥ 0.70 > 0.5; ρ ≤ 0.30 < 0.5"),
    ({"regret": 0.1, "regret_low": 0.05, "balanced_rho": 0.9, "rho_high": math.nan}, ""),
])
def test_a_fail_reason_reads_the_interval_or_else_the_point(row, reason):
    """SPEC S5b's fail rule: the regret interval's lower end above 0.5, or the layer-balanced ρ interval's upper end
    below it; where the bootstrap gave no interval, the point value; both reasons joined when both hold."""
    from resetassay.stats.verdict import _fail_reason

    assert _fail_reason(row) == reason


def test_the_layer_weighted_mean_leaves_out_missing_layers_and_divides_by_their_weights():
    from resetassay.stats.verdict import _weighted

    got = _weighted([np.array([1.0, np.nan]), np.array([3.0, np.nan])], [0.25, 0.5])
    assert got[0] == pytest.approx((0.25 * 1 + 0.5 * 3) / 0.75) and np.isnan(got[1])


def test_a_single_value_has_no_se_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean, se, n = _mean_se(np.array([0.5, np.nan]))
    assert (mean, n) == (0.5, 1) and math.isnan(se)


def test_a_span_of_one_value_is_that_value():
    assert _span([3, 3]) == "3" and _span([2, 5, 3]) == "2–5"


def test_near_chance_gives_the_chance_level_below_the_flag_and_none_above():
    assert near_chance(0.05, 10) == pytest.approx(0.1)
    assert near_chance(0.9, 10) is None and near_chance(0.05, 1) is None and near_chance(float("nan"), 10) is None


def test_layers_too_small_for_three_resets_are_flagged_with_their_k():
    """16-unit layers at q = 5% reset one unit each: the flag says so by its exact name and detail, and the verdict
    says what it resampled."""
    model = create_model("mlp", in_features=64, widths=[16, 16])
    calib, probe = _digits(200)
    result = assay_model(model, calib, probe, config=CONFIG)
    flags = [set(cell.split("; ")) for cell in result.best()["flags"]]
    assert flags and all("few units reset (k = 1)" in cell for cell in flags)
    assert result._analysis.verdict["resampled"].isin(["units", "checkpoints"]).all()
    assert set(result._analysis.verdict["n_layers"]) == {"2"} and set(result._analysis.verdict["n_units"]) == {"32"}


def test_constant_ranks_give_nan_without_a_warning():
    m = np.ones((2, 4))
    ranks = np.array([[2.5, 2.5, 2.5, 2.5], [1.0, 2.0, 3.0, 4.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rho = _rank_correlation(ranks, ranks[::-1].copy(), m)
    assert np.isnan(rho).all()
