"""The greedy set-aware selector gxd_greedy (SPEC S5, "Set-aware selection") against a hand-written greedy loop.

The reference computes GXD by explicit autograd on a float64 MLP, the picked units clamped by its own hooks, and
picks by sorting (value, unit index) in plain Python; the library's sets must be the same, one recomputation
with m >= k must be gxd's own Shock@q selection, and the set's joint Shock@q must be a plain joint lesion of it.
Shocks are compared at rtol 1e-6: the library's references are float32 means, the hand-written ones float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers.models import TwoLayerMLP
from typer.testing import CliRunner

from resetassay.cli import app
from resetassay.discovery.units import unit_layers
from resetassay.errors import BadInputError
from resetassay.names import ALL, GXD_GREEDY, ORACLE
from resetassay.pipeline.assay import AssayConfig, assay_model
from resetassay.report.sets import set_table
from resetassay.scoring.greedy import ROUNDS, greedy_selection
from resetassay.scoring.reference import unit_references
from resetassay.scoring.registry import utility_names
from resetassay.stats.summary import checkpoint_stats, selections

NAMES = ("act1", "act2")
Q = 0.5  # k = 8 of 16 units in act1, 6 of 12 in act2: room for the greedy to part from gxd


@pytest.fixture(scope="module")
def setup(one_thread):
    """A float64 MLP 6 -> 16 -> 12 -> 4 (ReLU, Tanh), 40 calibration and 40 probe examples labelled by the model."""
    model = TwoLayerMLP(seed=4, sizes=(6, 16, 12, 4))
    x = torch.randn(80, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, (x[:40], y[:40]), (x[40:], y[40:])


def _forward(model, x, clamp: dict[str, list[int]], refs: dict[str, torch.Tensor]):
    """Logits of `model` on `x` with the units `clamp[name]` set to `refs[name]`, and each unit layer's output."""
    outputs, handles = {}, []
    for name in NAMES:
        def hook(_m, _i, out, name=name):
            out = out.clone()
            if clamp.get(name):
                out[:, clamp[name]] = refs[name][clamp[name]]
            outputs[name] = out
            return out
        handles.append(getattr(model, name).register_forward_hook(hook))
    try:
        return model(x), outputs
    finally:
        for handle in handles:
            handle.remove()


def _hand_refs(model, x) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        _, h = _forward(model, x, {}, {})
    return {name: h[name].mean(0) for name in NAMES}


def _hand_gxd(model, x, y, refs, clamp) -> dict[str, list[float]]:
    """E|(h - r) dz_y/dh| per unit by explicit autograd, with `clamp` held at the reference (SPEC S3)."""
    z, h = _forward(model, x, clamp, refs)
    grads = torch.autograd.grad(z.gather(1, y[:, None]).sum(), [h[name] for name in NAMES])
    return {name: ((h[name] - refs[name]) * g).abs().mean(0).tolist() for name, g in zip(NAMES, grads, strict=True)}


def _hand_greedy(model, x, y, refs, q, every):
    """The greedy loop written out: rounds over all layers, each short layer taking its next m lowest GXD."""
    n = {name: len(refs[name]) for name in NAMES}
    k = {name: max(1, math.ceil(q * n[name])) for name in NAMES}
    picked: dict[str, list[int]] = {name: [] for name in NAMES}
    while short := [name for name in NAMES if len(picked[name]) < k[name]]:
        gxd = _hand_gxd(model, x, y, refs, picked)
        for name in short:
            m = every if every is not None else max(1, math.ceil(k[name] / 4))
            rest = sorted((u for u in range(n[name]) if u not in picked[name]), key=lambda u: (gxd[name][u], u))
            picked[name] += rest[:min(m, k[name] - len(picked[name]))]
    return picked


def _library_greedy(model, calib, refs, q, every):
    x, y = calib
    layers = unit_layers(model, x[:2])
    pool = {layer.name: np.arange(layer.n_units) for layer in layers}
    return greedy_selection(model, layers, refs, x, y, pool, q, every, batch_size=16)


def _hand_joint(model, probe_x, refs, chosen) -> dict[str, float]:
    """L1 and KL shock of clamping every unit of `chosen` at once, averaged over the probe set (SPEC S4)."""
    with torch.no_grad():
        z, _ = _forward(model, probe_x, {}, refs)
        z2, _ = _forward(model, probe_x, chosen, refs)
    p, logp, logp2 = z.softmax(1), z.log_softmax(1), z2.log_softmax(1)
    return {"l1": (z - z2).abs().sum(1).mean().item(), "kl": (p * (logp - logp2)).sum(1).mean().item()}


@pytest.mark.parametrize("every", [1, 2, None])
def test_greedy_picks_the_sets_of_a_hand_written_greedy_loop(setup, every):
    model, calib, _ = setup
    refs = _hand_refs(model, calib[0])
    want = _hand_greedy(model, *calib, refs, Q, every)
    got = _library_greedy(model, calib, refs, Q, every)
    assert {name: got[name].tolist() for name in NAMES} == want  # the same units, in the same order
    plain = _hand_greedy(model, *calib, refs, Q, 10**6)
    assert any(set(want[name]) != set(plain[name]) for name in NAMES)  # the clamp changed a pick


def test_greedy_with_m_at_least_k_is_gxd_bottom_k(setup):
    """One recomputation on the intact network is gxd's Shock@q selection, so every summary row of gxd_greedy but
    Spearman equals gxd's; its Spearman is NaN with the reason."""
    model, calib, probe = setup
    config = AssayConfig(utilities=["gxd", GXD_GREEDY, ORACLE], metrics=["l1", "kl"], q=Q, greedy_every=8)
    result = assay_model(model, calib, probe, config=config)
    layers = unit_layers(model, calib[0][:2])
    refs = unit_references(model, layers, calib[0], "calibration-mean", config.batch_size)
    got = _library_greedy(model, calib, refs, Q, 8)
    want = selections(result.units, "gxd", Q)
    assert {name: sorted(v.tolist()) for name, v in got.items()} == {name: sorted(v.tolist()) for name, v in
                                                                      want.items()}
    rows = result.summary.set_index(["utility", "metric", "scope"]).sort_index()
    stats = ["n_layers", "n_units", "shock_at_q", "oracle_shock_at_q", "gap", "overlap", "joint_shock"]
    gxd, greedy = rows.loc["gxd", stats], rows.loc[GXD_GREEDY, stats]
    assert np.allclose(greedy.to_numpy(float), gxd.to_numpy(float), rtol=1e-12, atol=0, equal_nan=True)
    assert rows.loc[GXD_GREEDY, "spearman"].isna().all()
    assert rows.loc[GXD_GREEDY, "note"].str.contains("ranks no unit").all()


def test_joint_shock_of_the_greedy_set_is_a_plain_joint_lesion_of_it(setup):
    """The ALL row of gxd_greedy: joint Shock@q = the hand-clamped joint lesion of the hand-written greedy set, and
    Shock@q = the mean individual shock of its units; gxd's set differs, so its value would not pass."""
    model, calib, probe = setup
    config = AssayConfig(utilities=["gxd", GXD_GREEDY, ORACLE], metrics=["l1", "kl"], q=Q, greedy_every=1)
    result = assay_model(model, calib, probe, config=config)
    refs = _hand_refs(model, calib[0])
    chosen = _hand_greedy(model, *calib, refs, Q, 1)
    want = _hand_joint(model, probe[0], refs, chosen)
    rows = result.summary[result.summary["scope"] == ALL].set_index(["utility", "metric"])
    units = result.units.set_index(["layer", "unit"])
    for metric in ("l1", "kl"):
        assert rows.loc[(GXD_GREEDY, metric), "joint_shock"] == pytest.approx(want[metric], rel=1e-6)
        individual = [units.loc[(name, u), f"shock_{metric}"] for name in NAMES for u in chosen[name]]
        assert rows.loc[(GXD_GREEDY, metric), "shock_at_q"] == pytest.approx(np.mean(individual), rel=1e-12)
        gxd = {name: v.tolist() for name, v in selections(result.units, "gxd", Q).items()}
        assert rows.loc[("gxd", metric), "joint_shock"] == pytest.approx(_hand_joint(model, probe[0], refs,
                                                                                       gxd)[metric], rel=1e-6)
        assert rows.loc[(GXD_GREEDY, metric), "joint_shock"] != pytest.approx(rows.loc[("gxd", metric),
                                                                                        "joint_shock"], rel=1e-6)
    assert result.timings["model"]["greedy"] > 0


def test_default_picks_a_quarter_of_k_per_round(setup):
    """Without greedy_every each layer picks ceil(k / ROUNDS) units a round: k = 8 and 6 give m = 2 in both."""
    model, calib, _ = setup
    refs = _hand_refs(model, calib[0])
    assert ROUNDS == 4
    got = _library_greedy(model, calib, refs, Q, None)
    assert {name: v.tolist() for name, v in got.items()} == _hand_greedy(model, *calib, refs, Q, 2)


def test_report_table_reads_the_joint_shocks_and_the_greedy_seconds(setup):
    model, calib, probe = setup
    config = AssayConfig(utilities=["gxd", GXD_GREEDY, ORACLE], metrics=["l1"], q=Q, greedy_every=1)
    result = assay_model(model, calib, probe, config=config)
    joint = result.summary[result.summary["scope"] == ALL].set_index("utility")["joint_shock"]
    table = set_table(checkpoint_stats(result.summary, result.checkpoints), {"model": {"greedy": 1.25}}, Q)
    row = table.iloc[0]
    assert row["joint Shock@50% gxd"] == f"{joint['gxd']:.3f}"
    assert row["joint Shock@50% gxd_greedy"] == f"{joint[GXD_GREEDY]:.3f}"
    assert row["joint Shock@50% oracle"] == f"{joint[ORACLE]:.3f}"
    assert row["greedy / gxd"] == f"{joint[GXD_GREEDY] / joint['gxd']:.3f}"
    assert row["greedy s"] == "1.250"
    assert list(result.best()["utility"]) != [GXD_GREEDY]  # the ranking leaves the set selector out


def test_gxd_greedy_is_opt_in_and_needs_joint_lesions_and_the_clamp():
    assert GXD_GREEDY not in AssayConfig().utilities and GXD_GREEDY not in utility_names()
    with pytest.raises(BadInputError, match="drop `joint`=False"):
        AssayConfig(utilities=["gxd", GXD_GREEDY], joint=False)
    with pytest.raises(BadInputError, match="`intervention` clamp"):
        AssayConfig(utilities=[GXD_GREEDY], intervention="cbp-reset")
    with pytest.raises(BadInputError, match="`greedy_every` applies only with gxd_greedy"):
        AssayConfig(utilities=["gxd"], greedy_every=2)
    with pytest.raises(BadInputError, match="`greedy_every` 0: must be a whole number >= 1"):
        AssayConfig(utilities=[GXD_GREEDY], greedy_every=0)


def test_cli_refuses_greedy_every_without_gxd_greedy_before_any_work(tmp_path):
    result = CliRunner().invoke(app, ["run", "fixtures/relu_mlp", "--out", str(tmp_path / "out"), "--utilities",
                                      "gxd", "--greedy-every", "2"])
    assert result.exit_code == 2
    assert "error: --greedy-every applies only with gxd_greedy" in result.output
    assert not (tmp_path / "out" / "parts").exists()
