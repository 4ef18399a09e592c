"""Sequential probes (resetassay/lesion/sequential.py, SPEC S4b): the stopping rule's guarantee by simulation
(units with known per-example shock distributions), and against the exact engine on a small zoo MLP.
"""

from __future__ import annotations

import pytest
import torch

import resetassay as ra
from resetassay.errors import BadInputError
from resetassay.lesion import LesionRequest, unit_shocks_of
from resetassay.lesion.sequential import (
    DRAWS,
    block_redraws,
    block_weights,
    ruled_out,
    schedule,
    sequential_shocks,
    sequential_unit_shocks,
)
from resetassay.lesion.shocks import probe_logits
from resetassay.stats.summary import k_at


def bottom(values: torch.Tensor, k: int) -> set[int]:
    return set(torch.argsort(values, stable=True)[:k].tolist())


def test_ruled_out_reads_lower_ends_against_the_kth_exact_shock():
    mean = torch.tensor([0.0, 1.0, 5.0, 6.0], dtype=torch.float64)
    exact = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)
    assert ruled_out(mean, torch.full((4,), 0.1), exact, 2).tolist() == [False, False, True, True]  # above 2.0
    assert ruled_out(mean, torch.tensor([0.0, 0.0, 3.5, 3.9]), exact, 2).tolist() == [False, False, False, True]
    assert ruled_out(mean, torch.zeros(4), exact, 3).tolist() == [False, False, True, True]  # strictly above 3.0
    assert not ruled_out(mean, torch.zeros(4), exact, 4).any()  # fewer exact shocks than k: none
    assert not ruled_out(torch.tensor([2.0]), torch.zeros(1), exact, 2).any()  # at the k-th: not above it
    assert schedule(64) == [8, 12, 16, 23, 32, 46, 64] and schedule(3) == [2, 3]  # an eighth, then x√2 (ceil)
    assert schedule(1024, first=16) == [64, 91, 128, 182, 256, 363, 512, 725, 1024]


def test_block_redraws_move_each_estimate_by_its_se_and_together_on_the_same_examples():
    """The redraws of a unit's estimate spread like its SE (finite-population corrected), are 0 for a unit that saw
    every block, and two units with the same per-example shocks up to scale move together (correlation 1); units
    whose shocks share nothing but the examples move independently."""
    g = torch.Generator().manual_seed(0)
    n_blocks, seen = 512, 128
    sizes = torch.full((n_blocks,), 2.0, dtype=torch.float64)
    common = torch.rand(n_blocks, generator=g, dtype=torch.float64) * 2
    means = torch.stack([common, 3 * common, torch.rand(n_blocks, generator=g, dtype=torch.float64) * 2, common])
    done = torch.tensor([seen, seen, seen, n_blocks])
    moves = block_redraws(means, done, sizes, block_weights(n_blocks, seed=0))
    assert moves.shape == (4, DRAWS) and (moves[3] == 0).all()
    se = means[0, :seen].std() / seen ** 0.5 * (1 - seen / n_blocks) ** 0.5
    assert float(moves[0].std()) == pytest.approx(float(se), rel=0.15)
    assert float(torch.corrcoef(moves[:2])[0, 1]) == pytest.approx(1.0, abs=1e-9)
    assert abs(float(torch.corrcoef(moves[[0, 2]])[0, 1])) < 0.25
    assert torch.equal(block_weights(n_blocks, 3), block_weights(n_blocks, 3))


def test_the_set_and_what_utilities_reset_go_to_every_example_right_after_the_first_round():
    """After round 1, one pass takes the units among the k lowest estimates and those a utility would reset to the
    whole probe set, before any other unit's second round: the others are judged against their exact shocks."""
    n, n_probe, k = 30, 256, 3
    x = torch.linspace(1.0, 3.0, n).unsqueeze(1).repeat(1, n_probe).double()
    x *= 1 + 0.5 * torch.randn(n, n_probe, generator=torch.Generator().manual_seed(0)).double()
    calls = []

    def measure(idx, groups, which):
        calls.append((len(idx), set(which["a"].tolist())))
        per_example = x[:, idx][which["a"]]
        sums = per_example.new_zeros(len(per_example), int(groups.max()) + 1).index_add_(1, groups, per_example)
        return {"l1": {"a": sums / torch.bincount(groups)}}

    utility = torch.arange(n, 0, -1).double()  # would reset units 27, 28, 29: the dearest
    out = sequential_shocks(measure, {"a": n}, n_probe, ["l1"], 0.95, k / n, utilities={"a": utility.unsqueeze(0)})
    first = torch.randperm(n_probe, generator=torch.Generator().manual_seed(0))[:n_probe // 8]  # seed 0's order
    assert calls[0] == (len(first), set(range(n)))
    assert calls[1] == (n_probe - len(first), bottom(x[:, first].mean(1), k) | {27, 28, 29})
    assert (out.probes["a"][[27, 28, 29]] == n_probe).all()


def _simulated(true_means: torch.Tensor, n_probe: int, seed: int) -> torch.Tensor:
    """Per-example shocks `(n, P)`: gamma (shape 2, skewed like real shocks) around each unit's mean."""
    gamma = torch.distributions.Gamma(torch.tensor(2.0), torch.tensor(2.0))
    torch.manual_seed(seed)
    return true_means.unsqueeze(1) * gamma.sample((len(true_means), n_probe)).double()


@pytest.mark.slow
def test_simulation_finds_the_exact_bottom_k_at_the_stated_rate(one_thread):
    """Units of known shock distributions: the bottom-k set found equals the full probe set's (the exact one) in at
    least `confidence` of the repetitions, with fewer probe-forwards."""
    confidence, q, n, n_probe, reps = 0.9, 0.1, 40, 512, 40
    k = k_at(n, q)
    found, forwards = 0, 0
    for rep in range(reps):
        true_means = torch.linspace(1.0, 3.0, n)[torch.randperm(n, generator=torch.Generator().manual_seed(rep))]
        x = _simulated(true_means, n_probe, rep)

        def measure(idx, groups, which, x=x):
            per_example = x[:, idx][which["a"]]
            sums = per_example.new_zeros(len(per_example), int(groups.max()) + 1).index_add_(1, groups, per_example)
            return {"l1": {"a": sums / torch.bincount(groups)}}

        out = sequential_shocks(measure, {"a": n}, n_probe, ["l1"], confidence, q, seed=rep)
        found += bottom(out.shocks["l1"]["a"], k) == bottom(x.mean(1), k)
        forwards += out.forwards
        full = out.probes["a"] == n_probe
        assert full[list(bottom(out.shocks["l1"]["a"], k))].all()  # the set found is measured on every example
        torch.testing.assert_close(out.shocks["l1"]["a"][full], x.mean(1)[full], rtol=1e-12, atol=1e-12)
        assert (out.se["l1"]["a"][full] == 0).all()
    assert found / reps >= confidence
    assert forwards < 0.8 * reps * n * n_probe


def test_confidence_is_checked():
    with pytest.raises(BadInputError, match="sequential"):
        sequential_shocks(lambda idx, groups, which: {}, {"a": 3}, 10, ["l1"], 1.5, 0.1)
    with pytest.raises(BadInputError, match="sequential"):
        ra.AssayConfig(sequential=0)


@pytest.fixture(scope="module")
def mlp_request(one_thread):
    torch.manual_seed(0)
    net = ra.models.create_model("mlp", in_features=16, widths=(64, 64), n_classes=5).eval()
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(1))
    layers = ra.find_unit_layers(net, input_shape=(16,))
    refs = {layer.name: torch.zeros(layer.n_units) for layer in layers}
    request = LesionRequest(net, layers, refs, x, ["l1", "kl"], base=probe_logits(net, x))
    return request, unit_shocks_of(request)


def test_full_confidence_equals_the_exact_engine(mlp_request):
    request, exact = mlp_request
    out = sequential_unit_shocks(request, 1.0, 0.05, blocks=16)
    for m, per_layer in exact.items():
        for name, values in per_layer.items():
            torch.testing.assert_close(out.shocks[m][name], values, rtol=1e-6, atol=1e-9)
            assert (out.se[m][name] == 0).all()
    assert out.forwards == sum(layer.n_units for layer in request.layers) * len(request.probe_x)


def test_loose_confidence_keeps_the_oracle_sets_with_fewer_forwards(mlp_request):
    request, exact = mlp_request
    out = sequential_unit_shocks(request, 0.5, 0.1, blocks=16)
    total = sum(layer.n_units for layer in request.layers) * len(request.probe_x)
    assert out.forwards < total
    same = [bottom(out.shocks[m][layer.name], k_at(layer.n_units, 0.1))
            == bottom(exact[m][layer.name], k_at(layer.n_units, 0.1))
            for m in request.metrics for layer in request.layers]
    assert sum(same) >= 0.75 * len(same)


@pytest.mark.slow
def test_a_sequential_run_adds_probes_and_se_and_says_so(tmp_path):
    from helpers.paths import FIXTURES

    result = ra.run_assay([FIXTURES / "relu_mlp" / "task2"], utilities=["oracle"], metrics=["l1"], probe_size=128,
                          calib_size=64, joint=False, sequential=0.9, progress=False)
    units = result.units
    assert {"probes", "se_l1"} <= set(units.columns)
    assert units["probes"].between(1, 128).all() and (units["probes"] < 128).any()
    assert (units.loc[units["probes"] == 128, "se_l1"] == 0).all()
    result.save(tmp_path, figures="none")
    report = (tmp_path / "report.md").read_text()
    assert "Sequential probes" in report and "Spearman ρ [probe-sampling interval]" in report
    assert "pooled Spearman ρ was settled to within 0.01 of the exact run" in report


def test_a_heavy_tailed_unit_is_not_put_in_the_set_by_its_first_examples():
    """Unit 0's shock comes from 3 rare examples: on the first rounds it looks the cheapest with a tiny SE (its
    blocks mostly hold none), though its true shock is the largest. Units settled in go on to every example, so it
    is found out and the set is the exact one."""
    n, n_probe, k = 20, 512, 2
    x = torch.linspace(1.0, 2.0, n).unsqueeze(1).repeat(1, n_probe).double()
    x[0] = 1e-3
    order = torch.randperm(n_probe, generator=torch.Generator().manual_seed(0))  # the run's block order (seed 0)
    x[0, order[-3:]] = 2000.0  # mean ~ 11.7, in the last blocks: the first rounds see none of it

    def measure(idx, groups, which):
        per_example = x[:, idx][which["a"]]
        sums = per_example.new_zeros(len(per_example), int(groups.max()) + 1).index_add_(1, groups, per_example)
        return {"l1": {"a": sums / torch.bincount(groups)}}

    out = sequential_shocks(measure, {"a": n}, n_probe, ["l1"], 0.95, k / n)
    assert bottom(out.shocks["l1"]["a"], k) == bottom(x.mean(1), k) == {1, 2}


def test_every_unit_of_a_set_read_from_the_shocks_saw_every_probe_example(mlp_request):
    """Whatever stopped early, the k lowest final shocks of each layer and metric are exact (SPEC S4b): a unit
    settled out on early blocks whose estimate later falls among them is measured on the rest."""
    request, exact = mlp_request
    for confidence in (0.5, 0.95):
        out = sequential_unit_shocks(request, confidence, 0.1, blocks=16)
        for m in request.metrics:
            for layer in request.layers:
                chosen = list(bottom(out.shocks[m][layer.name], k_at(layer.n_units, 0.1)))
                assert (out.probes[layer.name][chosen] == len(request.probe_x)).all()
                torch.testing.assert_close(out.shocks[m][layer.name][chosen], exact[m][layer.name][chosen],
                                           rtol=1e-6, atol=1e-9)


def test_sets_are_drawn_from_the_mature_units_as_s5_reads_them():
    """With a maturity mask, the oracle set and each utility's selection are the k lowest *mature* units (k of the
    mature count, S5): those end exact, and immature units, which no statistic reads, stop after the first round."""
    n, n_probe = 40, 256
    x = torch.linspace(1.0, 3.0, n).unsqueeze(1).repeat(1, n_probe).double()
    x *= 1 + 0.3 * torch.randn(n, n_probe, generator=torch.Generator().manual_seed(1)).double()

    def measure(idx, groups, which):
        per_example = x[:, idx][which["a"]]
        sums = per_example.new_zeros(len(per_example), int(groups.max()) + 1).index_add_(1, groups, per_example)
        return {"l1": {"a": sums / torch.bincount(groups)}}

    mature = torch.ones(n, dtype=torch.bool)
    mature[:10] = False  # the ten cheapest units are too young to count
    utility = torch.arange(n).double()  # would reset the lowest-indexed mature units: 10, 11
    out = sequential_shocks(measure, {"a": n}, n_probe, ["l1"], 0.95, 0.05, utilities={"a": utility.unsqueeze(0)},
                            mature={"a": mature})
    k = k_at(int(mature.sum()), 0.05)
    shocks, full = out.shocks["l1"]["a"], out.probes["a"] == n_probe
    oracle = {10 + i for i in bottom(shocks[10:], k)}
    assert oracle == {10 + i for i in bottom(x[10:].mean(1), k)} and full[list(oracle)].all()
    assert full[[10, 11]].all() and (out.probes["a"][:10] == n_probe // 8).all()
