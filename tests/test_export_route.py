"""The torch.export route of unit discovery (resetassay/taps.py, SPEC S1, S3): where torch.fx cannot trace a model,
its graph exported on the example batch is read back at module level.

On models that several routes can read, every route must give the same unit layers (names, in order), the same
producers and consumers where the route knows them, and the same references, calibration statistics and shocks
(both engines), in float64 to rtol 1e-9.
"""

from __future__ import annotations

import logging

import pytest
import torch
from helpers.foreign_models import functional_mlp, gated_mlp, list_mlp, resnet_tv, shape_branch_mlp

from resetassay.lesion import unit_shocks
from resetassay.reference import unit_references
from resetassay.taps import discovery_route, tap_unit_layers
from resetassay.units import unit_layers
from resetassay.utilities import calibration_stats, needed_ingredients

TIGHT = {"rtol": 1e-9, "atol": 1e-12}
NEEDS = needed_ingredients(["gxd", "activation", "loss_gradient", "gxd_all"])


def _data(shape: tuple[int, ...], n: int = 24) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2 * n, *shape, generator=g, dtype=torch.float64)
    return x[:n], torch.randint(0, 4, (n,), generator=g), x[n:]


def _read(model: torch.nn.Module, routes: tuple[str, ...], calib_x, calib_y, probe_x) -> dict:
    tapped = tap_unit_layers(model, calib_x[:2], routes=routes)
    layers = unit_layers(tapped, calib_x[:2])
    refs = unit_references(tapped, layers, calib_x)
    return {
        "route": discovery_route(tapped), "layers": layers, "refs": refs,
        "stats": calibration_stats(tapped, layers, calib_x, calib_y, refs, NEEDS, batch_size=10),
        "plain": unit_shocks(tapped, layers, refs, probe_x, ["l1", "kl"], engine="plain"),
        "fast": unit_shocks(tapped, layers, refs, probe_x, ["l1", "kl"], engine="fast", max_k=3),
    }


def _assert_same(a: dict, b: dict, wiring: bool = True) -> None:
    assert [la.name for la in a["layers"]] == [lb.name for lb in b["layers"]]
    for la, lb in zip(a["layers"], b["layers"], strict=True):
        assert (la.kind, la.n_units) == (lb.kind, lb.n_units)
        if wiring:
            assert (la.spec.producer, la.spec.consumer) == (lb.spec.producer, lb.spec.consumer), la.name
            assert (la.producer_note, la.consumer_note) == (lb.producer_note, lb.consumer_note), la.name
        torch.testing.assert_close(a["refs"][la.name], b["refs"][lb.name], **TIGHT)
        for key in NEEDS:
            torch.testing.assert_close(getattr(a["stats"][la.name], key), getattr(b["stats"][lb.name], key), **TIGHT)
        for engine in ("plain", "fast"):
            for metric in ("l1", "kl"):
                torch.testing.assert_close(a[engine][metric][la.name], b[engine][metric][lb.name], **TIGHT)
    assert any(float(a["plain"]["l1"][la.name].abs().max()) > 0 for la in a["layers"])


@pytest.mark.parametrize(("factory", "shape"), [(resnet_tv, (1, 8, 8)), (list_mlp, (64,))])
def test_fx_export_and_hooks_agree_on_models_with_activation_modules(factory, shape):
    calib_x, calib_y, probe_x = _data(shape)
    model = factory(seed=2).double()
    fx_read = _read(model, ("fx",), calib_x, calib_y, probe_x)
    export_read = _read(model, ("export",), calib_x, calib_y, probe_x)
    with pytest.warns(UserWarning, match="forward hooks"):
        hooks_read = _read(model, ("hooks",), calib_x, calib_y, probe_x)
    assert (fx_read["route"], export_read["route"], hooks_read["route"]) == ("fx", "export", "hooks")
    _assert_same(fx_read, export_read)
    _assert_same(fx_read, hooks_read, wiring=False)  # the hook route knows no producer or consumer


def test_fx_and_export_agree_on_functional_activations():
    calib_x, calib_y, probe_x = _data((64,))
    model = functional_mlp(seed=4).double()
    fx_read = _read(model, ("fx",), calib_x, calib_y, probe_x)
    export_read = _read(model, ("export",), calib_x, calib_y, probe_x)
    assert [la.name for la in export_read["layers"]] == ["relu@0", "relu@1", "tanh@0"]
    _assert_same(fx_read, export_read)


def test_a_shape_branch_fx_cannot_trace_goes_through_export_with_producers_and_consumers():
    """ShapeBranchMLP tests `x.dim()` in forward: fx fails, export specialises the branch to (B, 64) inputs; the
    result equals its twin without the branch, traced by fx, wiring included (the hook route knows none)."""
    calib_x, calib_y, probe_x = _data((64,))
    model, twin = shape_branch_mlp(seed=1).double(), shape_branch_mlp(seed=1, branch=False).double()
    with pytest.warns(UserWarning, match=r"ShapeBranchMLP: torch\.fx cannot trace it .*found by torch\.export"):
        exported = _read(model, ("fx", "export", "hooks"), calib_x, calib_y, probe_x)
    assert exported["route"] == "export"
    assert [(la.name, la.spec.producer, la.spec.consumer) for la in exported["layers"]] == [
        ("relu@0", "fc1", "fc2"), ("relu@1", "fc2", "head")]
    _assert_same(exported, _read(twin, ("fx",), calib_x, calib_y, probe_x))


def test_batch_size_is_not_baked_into_the_exported_graph():
    calib_x, _, probe_x = _data((64,))
    model = shape_branch_mlp(seed=1).double()
    with pytest.warns(UserWarning):
        tapped = tap_unit_layers(model, calib_x[:2])
    for n in (1, 3, 24):
        torch.testing.assert_close(tapped(probe_x[:n]), model(probe_x[:n]), rtol=0, atol=0)


def test_data_dependent_control_flow_falls_to_hooks_naming_both_failures(caplog):
    calib_x, _, _ = _data((64,))
    model = gated_mlp(seed=0).double()
    with caplog.at_level(logging.CRITICAL), pytest.warns(UserWarning) as caught:
        tapped = tap_unit_layers(model, calib_x[:2].float().double())
    text = " ".join(str(w.message) for w in caught)
    assert "torch.fx cannot trace it" in text and "torch.export cannot trace it" in text and "forward hooks" in text
    assert discovery_route(tapped) == "hooks"
