"""Ranks to a stated precision (resetassay/lesion/rank_precision.py, SPEC S4b): the bound on ρ's error against
simulated estimates, the rule's guarantee by simulation (one step, and after whole sequential runs), the pooled rule
over a UnitTable, and through `run_assay` against the exact run."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

import resetassay as ra
from resetassay.errors import BadInputError
from resetassay.lesion.rank_precision import pooled_rank_open, rank_open, rho_error
from resetassay.lesion.sequential import DRAWS, sequential_shocks
from resetassay.names import ALL
from resetassay.stats.summary import k_at


def rho(u: torch.Tensor, s: torch.Tensor) -> float:
    return float(spearmanr(u.numpy(), s.numpy()).statistic)


def _layer(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """True shocks, their SEs (some 0: exact units) and a utility correlated with the shocks."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.rand(n, generator=g, dtype=torch.float64) * 2 + 1
    se = torch.rand(n, generator=g, dtype=torch.float64) * 0.15
    se[torch.rand(n, generator=g) < 0.2] = 0
    utility = truth + torch.randn(n, generator=g, dtype=torch.float64) * 0.5
    return truth, se, utility


def _independent(se: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Redraws `(n, DRAWS)` of estimates whose errors are independent normals with these SEs."""
    return se.unsqueeze(1) * torch.randn(len(se), DRAWS, generator=torch.Generator().manual_seed(seed),
                                         dtype=torch.float64)


def test_rho_error_bounds_the_error_of_estimates():
    """The bound read from redraws around one set of estimates is near the 95% quantile of |ρ(estimates) -
    ρ(truth)| over many sets of estimates (within 30%), and its own ρ is Spearman's (ties averaged)."""
    truth, se, utility = _layer(80, 0)
    g = torch.Generator().manual_seed(1)
    errors = torch.tensor([abs(rho(utility, truth + se * torch.randn(80, generator=g, dtype=torch.float64))
                               - rho(utility, truth)) for _ in range(400)])
    estimate = truth + se * torch.randn(80, generator=g, dtype=torch.float64)
    bound = float(rho_error(estimate, _independent(se), utility.unsqueeze(0), 0.95)[0])
    assert bound == pytest.approx(float(torch.quantile(errors, 0.95)), rel=0.3)
    tied = torch.tensor([0.0, 0.0, 1.0, 2.0, 2.0], dtype=torch.float64)
    assert float(rho_error(tied, torch.zeros(5, DRAWS), tied.flip(0).unsqueeze(0), 0.95)[0]) == 0  # exact: no error


@pytest.mark.parametrize("precision", [0.02, 0.005])
def test_units_left_out_keep_rho_within_precision(precision):
    """Units `rank_open` leaves out keep their estimates, those it names become exact: ρ is within `precision` of
    the exact ρ in about 95% of layers (at least 92% of 200: the bound is a bootstrap's, 2 binomial SEs below),
    where the estimates alone are within it in at most 85%, and the tighter the precision, the more units go on."""
    hits, alone, going = 0, 0, []
    for rep in range(200):
        truth, se, utility = _layer(60, rep)
        estimate = truth + se * torch.randn(60, generator=torch.Generator().manual_seed(10_000 + rep),
                                            dtype=torch.float64)
        more = rank_open(estimate, se, _independent(se, rep), utility.unsqueeze(0), precision, 0.95)
        assert not bool(more[se == 0].any())  # exact units never go on
        after = torch.where(more, truth, estimate)
        hits += abs(rho(utility, after) - rho(utility, truth)) <= precision
        alone += abs(rho(utility, estimate) - rho(utility, truth)) <= precision
        going.append(int(more.sum()))
    assert hits / 200 >= 0.92 and alone / 200 <= 0.85
    assert 0 < sum(going) < 200 * 60 * (0.1 if precision > 0.01 else 0.6)


def test_rank_open_edges():
    truth, se, utility = _layer(30, 3)
    moves = _independent(se)
    assert rank_open(truth, se, moves, utility.unsqueeze(0), 0.01, 1.0).equal(se > 0)  # confidence 1: all open
    assert not rank_open(truth, torch.zeros(30), torch.zeros(30, DRAWS), utility.unsqueeze(0), 1e-9, 0.95).any()
    nan = torch.full((1, 30), math.nan, dtype=torch.float64)
    assert not rank_open(truth, se, moves, nan, 1e-9, 0.95).any()  # a utility that does not apply sets nothing
    assert rank_open(truth, se, moves, utility.unsqueeze(0), 1e-9, 0.95).sum() > rank_open(
        truth, se, moves, utility.unsqueeze(0), 0.05, 0.95).sum()


def test_sequential_runs_then_the_rank_rule_hold_rho_within_precision(one_thread):
    """Whole sequential runs on units of known per-example shocks (the bottom-k rule, each unit's shock the mean over
    a prefix of the block order, a unit wanted again catching up on the blocks it missed), then `rank_open` on the
    final estimates, its units made exact: ρ is within the precision of the full probe set's in about 90% of the
    runs (the confidence; at least 80% of 30, 2 binomial SEs below), where the estimates alone manage at most 60%,
    and with fewer forwards than exact."""
    n, n_probe, confidence, precision, reps = 48, 512, 0.9, 0.02, 30
    hits, alone, forwards = 0, 0, 0
    for rep in range(reps):
        g = torch.Generator().manual_seed(rep)
        true_means = torch.rand(n, generator=g, dtype=torch.float64) + 1
        utility = true_means + torch.randn(n, generator=g, dtype=torch.float64) * 0.3
        gamma = torch.distributions.Gamma(torch.tensor(4.0), torch.tensor(4.0))
        torch.manual_seed(rep)
        x = true_means.unsqueeze(1) * gamma.sample((n, n_probe)).double()

        def measure(idx, groups, which, x=x):
            per_example = x[:, idx][which["a"]]
            sums = per_example.new_zeros(len(per_example), int(groups.max()) + 1).index_add_(1, groups, per_example)
            return {"l1": {"a": sums / torch.bincount(groups)}}

        out = sequential_shocks(measure, {"a": n}, n_probe, ["l1"], confidence, 0.05, seed=rep)
        order = torch.randperm(n_probe, generator=torch.Generator().manual_seed(rep))
        seen = torch.stack([x[i, order[:p]].mean() for i, p in enumerate(out.probes["a"].tolist())])
        estimate, se = out.shocks["l1"]["a"], out.se["l1"]["a"]
        torch.testing.assert_close(estimate, seen, rtol=1e-12, atol=1e-12)
        more = rank_open(estimate, se, out.redraws["l1"]["a"], utility.unsqueeze(0), precision, confidence)
        settled = torch.where(more, x.mean(1), estimate)
        exact = rho(utility, x.mean(1))
        hits += abs(rho(utility, settled) - exact) <= precision
        alone += abs(rho(utility, estimate) - exact) <= precision
        forwards += out.forwards + int(more.sum()) * n_probe
    assert hits / reps >= 0.8 and alone / reps <= 0.6
    assert forwards < reps * n * n_probe


def test_the_pooled_rule_reads_the_mature_units_each_utility_scores():
    """`pooled_rank_open` over a UnitTable: units are pooled across layers (S5's ALL scope); an immature unit, or a
    unit of a layer a utility does not apply to, is never chosen for that utility however open its shock."""
    g = torch.Generator().manual_seed(0)
    n = 40
    truth = torch.rand(n, generator=g, dtype=torch.float64)
    units = pd.DataFrame({"layer": ["a"] * 20 + ["b"] * 20, "unit": list(range(20)) * 2,
                          "mature": [True] * 36 + [False] * 4, "u": truth.numpy() + 0.1,
                          "shock_l1": truth.numpy(), "se_l1": 0.05, "probes": [64] * 39 + [512]})
    units.loc[units["layer"] == "b", "u"] = float("nan")  # u does not apply to layer b
    redraws = {"l1": _independent(torch.full((n,), 0.05))}
    chosen = pooled_rank_open(units, ["u"], ["l1"], 0.001, 0.95, redraws)
    assert set(chosen) == {"a"} and len(chosen["a"]) > 0
    loose = pooled_rank_open(units, ["u"], ["l1"], 1.5, 0.95, redraws)
    assert loose == {}


def test_a_run_spends_more_probes_for_finer_ranks_and_checks_the_precision(tmp_path):
    """Through `run_assay` on the ResNet fixture at confidence 0.99: the pooled ranks ask for more probe examples at
    a finer precision (2: none), the units each utility resets saw every probe example (its Shock@q is exact), each
    utility's pooled ρ is within the precision of the exact run's, and a precision outside (0, 2] is refused naming
    the option."""
    from helpers.paths import FIXTURES

    def run(**more):
        return ra.run_assay([FIXTURES / "resnet" / "task4"], utilities=["activation", "gxd", "oracle"],
                            metrics=["l1", "kl"], joint=False, progress=False, **more)

    exact, loose, fine = run(), run(sequential=0.99, rank_precision=2), run(sequential=0.99, rank_precision=0.01)
    n_probe = int(fine.units["probes"].max())
    assert loose.units["probes"].sum() < fine.units["probes"].sum() < n_probe * len(fine.units)
    for units in (loose.units, fine.units):
        for utility in ("activation", "gxd"):
            picked = [g.nsmallest(k_at(len(g), 0.05), utility, keep="first") for _, g in units.groupby("layer")]
            assert all((p["probes"] == n_probe).all() for p in picked)
    pooled = [t.summary[t.summary["scope"] == ALL].set_index(["utility", "metric"])["spearman"] for t in (exact, fine)]
    assert float((pooled[1] - pooled[0]).abs().max()) <= 0.01
    for bad in (0, 2.5, float("nan"), True):
        with pytest.raises(BadInputError, match="rank_precision"):
            ra.AssayConfig(sequential=0.9, rank_precision=bad)
