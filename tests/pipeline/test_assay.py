"""The assay's wiring (SPEC S1-S5): the reference is the calibration mean, shocks are measured on the probe
set, and each utility's joint Shock@q is the joint lesion of that utility's own selection.

Models are float64 (helpers.models); values are compared with rtol 1e-9 (float64 throughout) or 1e-6 where
the library returns float32 means.
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import torch
from helpers.models import TinyCNN, TwoLayerMLP

from resetassay.discovery.units import unit_layers
from resetassay.lesion import joint_shocks
from resetassay.names import ALL, ORACLE, utility_column
from resetassay.pipeline.assay import AssayConfig, assay_model
from resetassay.stats.summary import selections

UTILITIES = ["activation", "gxd", "gxi", "random", ORACLE]


def _data(model: torch.nn.Module, shape: tuple[int, ...], seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(48, *shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    return (x[:24], y[:24]), (x[24:], y[24:])


@pytest.fixture(params=[("mlp", "plain"), ("cnn", "plain"), ("mlp", "fast"), ("cnn", "fast")], ids=str)
def assayed(request):
    kind, engine = request.param
    model, shape = (TwoLayerMLP(), (4,)) if kind == "mlp" else (TinyCNN(), (1, 5, 5))
    calib, probe = _data(model, shape)
    config = AssayConfig(utilities=UTILITIES, metrics=["l1", "kl"], q=0.5, engine=engine)
    return model, calib, probe, assay_model(model, calib, probe, config=config)


def test_reference_is_the_calibration_mean_not_the_probe_mean(assayed):
    model, (calib_x, _), (probe_x, _), result = assayed
    outputs = {}
    for name in ("act1", "act2"):
        hook = getattr(model, name).register_forward_hook(lambda _m, _i, out, name=name: outputs.update({name: out}))
        with torch.no_grad():
            model(calib_x)
            calib_mean = outputs[name].transpose(0, 1).flatten(1).mean(1)
            model(probe_x)
            probe_mean = outputs[name].transpose(0, 1).flatten(1).mean(1)
        hook.remove()
        got = torch.tensor(result.units[result.units["layer"] == name]["reference"].to_numpy())
        torch.testing.assert_close(got, calib_mean.float().double(), rtol=1e-6, atol=1e-7)
        assert not torch.allclose(got, probe_mean, rtol=1e-3, atol=1e-4)


def test_unit_shock_is_measured_on_the_probe_set(assayed):
    """The oracle column is the shock of clamping one unit, averaged over the probe examples (SPEC S4)."""
    model, _, (probe_x, _), result = assayed
    units = result.units
    layers = unit_layers(model, probe_x[:2])
    refs = {name: torch.tensor(g["reference"].to_numpy(), dtype=torch.float32) for name, g in units.groupby("layer")}
    row = units.iloc[len(units) // 2]
    lesion = [{row["layer"]: torch.tensor([int(row["unit"])])}]
    want = joint_shocks(model, layers, refs, lesion, probe_x, ["l1"], engine="plain")["l1"][0].item()
    assert row["shock_l1"] == pytest.approx(want, rel=1e-9)


@pytest.mark.slow
def test_joint_shock_of_every_utility_is_the_joint_lesion_of_its_own_selection(assayed):
    """Each (utility, metric) ALL row's joint Shock@q, the oracle's included, against the plain engine's joint
    shock of the units that utility selects: reading another utility's lesion would fail here."""
    model, _, (probe_x, _), result = assayed
    units, summary = result.units, result.summary
    layers = unit_layers(model, probe_x[:2])
    refs = {name: torch.tensor(g["reference"].to_numpy(), dtype=torch.float32) for name, g in units.groupby("layer")}
    pooled = summary[summary["scope"] == ALL].set_index(["utility", "metric"])["joint_shock"]
    seen = set()
    for (utility, metric), value in pooled.items():
        chosen = selections(units, utility_column(utility, metric), 0.5)
        lesion = {name: torch.as_tensor(idx) for name, idx in chosen.items()}
        want = joint_shocks(model, layers, refs, [lesion], probe_x, [metric], engine="plain")[metric][0].item()
        assert value == pytest.approx(want, rel=1e-9), (utility, metric)
        seen.add(round(want, 12))
    assert len(seen) > 3  # the selections differ, so a value read from the wrong lesion would show


def test_summary_rows_come_from_the_unit_table(assayed):
    """Spearman of the ALL row equals scipy's on the unit table's columns (SPEC S5)."""
    from scipy.stats import spearmanr

    *_, result = assayed
    row = result.summary.set_index(["utility", "metric", "scope"]).loc[("gxd", "l1", ALL)]
    assert row["spearman"] == pytest.approx(spearmanr(result.units["gxd"], result.units["shock_l1"]).statistic)
    assert isinstance(result.units, pd.DataFrame) and row["n_units"] == len(result.units)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["plain", "fast"])
def test_sampled_units_have_the_rows_of_the_full_assay(engine):
    """--units-per-layer lesions a seeded sample of each layer; each sampled unit's row (scores, reference,
    shocks) equals its row in the full assay, and the sample is the same for the same seed."""
    model = TinyCNN()
    calib, probe = _data(model, (1, 5, 5))
    config = AssayConfig(utilities=UTILITIES, metrics=["l1"], engine=engine, units_per_layer=2, seed=3)
    full = assay_model(model, calib, probe, config=replace(config, units_per_layer=None))
    sampled = assay_model(model, calib, probe, config=config).units
    assert sampled.groupby("layer").size().to_dict() == {"act1": 2, "act2": 2}
    rows = full.units.merge(sampled[["layer", "unit"]], on=["layer", "unit"])
    pd.testing.assert_frame_equal(sampled, rows, check_exact=False, rtol=1e-9)
    again = assay_model(model, calib, probe, config=config).units
    assert again[["layer", "unit"]].equals(sampled[["layer", "unit"]])
    other = assay_model(model, calib, probe, config=AssayConfig(utilities=["gxd"], metrics=["l1"], engine=engine,
                                                               units_per_layer=2, seed=4)).units
    assert not other[["layer", "unit"]].equals(sampled[["layer", "unit"]])


def test_target_predicted_scores_against_the_models_own_class():
    """--target predicted: gxd, gxi and loss_gradient follow the model's largest logit, not the label (SPEC S3)."""
    model = TwoLayerMLP()
    g = torch.Generator().manual_seed(9)
    x = torch.randn(48, 4, generator=g, dtype=torch.float64)
    wrong = torch.randint(0, 3, (48,), generator=g)
    with torch.no_grad():
        own = model(x).argmax(1)
    assert not torch.equal(wrong, own)
    config = AssayConfig(utilities=["gxd", "gxi", "loss_gradient", ORACLE], metrics=["l1"])
    predicted = assay_model(model, (x[:24], wrong[:24]), (x[24:], wrong[24:]),
                            config=replace(config, target="predicted"))
    by_label = assay_model(model, (x[:24], own[:24]), (x[24:], wrong[24:]), config=config)
    labelled = assay_model(model, (x[:24], wrong[:24]), (x[24:], wrong[24:]), config=config)
    for u in ("gxd", "gxi", "loss_gradient"):
        pd.testing.assert_series_equal(predicted.units[u], by_label.units[u])
        assert not predicted.units[u].equals(labelled.units[u])
    with pytest.raises(Exception, match="`target` 'guess': choose label or predicted"):
        AssayConfig(target="guess")
