"""The torch.export route of unit discovery (resetassay/discovery/taps.py, SPEC S1, S3): where torch.fx cannot trace a
model, its graph exported on the example batch is read back at module level.

On models that several routes can read, every route must give the same unit layers (names, in order), the same
producers and consumers where the route knows them, and the same references, calibration statistics and shocks
(plain and fast engines), in float64 to rtol 1e-9; on TwoLayerMLP/TinyCNN, also the same as their own declaration.
"""

from __future__ import annotations

import contextlib
import logging
import re

import pytest
import torch
import torch.nn.functional as F
from helpers.foreign_models import functional_mlp, gated_mlp, list_mlp, resnet_tv, shape_branch_mlp
from helpers.models import TinyCNN, TwoLayerMLP
from torch import nn

from resetassay.discovery.taps import HOOK_NOTE, discovery_route, tap_unit_layers
from resetassay.discovery.units import unit_layers
from resetassay.errors import BadInputError
from resetassay.lesion import unit_shocks
from resetassay.scoring.calibration import calibration_stats
from resetassay.scoring.reference import unit_references
from resetassay.scoring.registry import needed_ingredients

TIGHT = {"rtol": 1e-9, "atol": 1e-12}
NEEDS = needed_ingredients(["gxd", "activation", "loss_gradient", "gxd_all"])
FAST_FELL_BACK = "expanded-input path"


def _data(shape: tuple[int, ...], n: int = 24) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2 * n, *shape, generator=g, dtype=torch.float64)
    return x[:n], torch.randint(0, 3, (n,), generator=g), x[n:]  # every model here has >= 3 classes


def _read(model: nn.Module, routes: tuple[str, ...], calib_x, calib_y, probe_x, caplog=None) -> dict:
    """Unit layers of `model` found by `routes`, and all that is computed from them."""
    tapped = tap_unit_layers(model, calib_x[:2], routes=routes)
    layers = unit_layers(tapped, calib_x[:2])
    refs = unit_references(tapped, layers, calib_x)
    if caplog is not None:
        caplog.clear()
    with caplog.at_level(logging.WARNING, logger="resetassay.lesion.fast") if caplog else contextlib.nullcontext():
        fast = unit_shocks(tapped, layers, refs, probe_x, ["l1", "kl"], engine="fast", max_k=3)
    return {
        "route": discovery_route(tapped), "layers": layers, "refs": refs, "fast": fast,
        "stats": calibration_stats(tapped, layers, calib_x, calib_y, refs, NEEDS, batch_size=10),
        "plain": unit_shocks(tapped, layers, refs, probe_x, ["l1", "kl"], engine="plain"),
        "split": caplog is not None and FAST_FELL_BACK not in caplog.text,
    }


def _wiring(read: dict, prefix: str = "") -> list[tuple[str, str | None, str | None]]:
    """(name, producer, consumer) per unit layer, with `prefix` before every module name."""
    def p(name: str | None) -> str | None:
        return None if name is None else prefix + name
    return [(p(la.name), p(la.spec.producer), p(la.spec.consumer)) for la in read["layers"]]


def _assert_same(a: dict, b: dict, wiring: bool = True, b_prefix: str = "") -> None:
    """a and b give the same unit layers (b's names with `b_prefix`), wiring and numbers."""
    assert [la.name for la in a["layers"]] == [b_prefix + lb.name for lb in b["layers"]]
    if wiring:
        assert _wiring(a) == _wiring(b, b_prefix)
        assert [(la.producer_note, la.consumer_note) for la in a["layers"]] == [
            (lb.producer_note, lb.consumer_note) for lb in b["layers"]]
    for la, lb in zip(a["layers"], b["layers"], strict=True):
        assert (la.kind, la.n_units) == (lb.kind, lb.n_units)
        torch.testing.assert_close(a["refs"][la.name], b["refs"][lb.name], **TIGHT)
        for key in NEEDS:
            torch.testing.assert_close(getattr(a["stats"][la.name], key), getattr(b["stats"][lb.name], key), **TIGHT)
        for engine in ("plain", "fast"):
            for metric in ("l1", "kl"):
                torch.testing.assert_close(a[engine][metric][la.name], b[engine][metric][lb.name], **TIGHT)
    for la in a["layers"]:  # the engines agree with each other too, and the shocks are not all zero
        for metric in ("l1", "kl"):
            torch.testing.assert_close(a["fast"][metric][la.name], a["plain"][metric][la.name], **TIGHT)
    assert all(float(a["plain"]["l1"][la.name].max()) > 0 for la in a["layers"])


RESNET_WIRING = [
    ("relu", None, None, "BatchNorm bn1 rescales the producer's output (conv1)",
     "read by layer1.0.conv1 and by a residual add"),
    ("layer1.0.relu@0", None, "layer1.0.conv2",
     "BatchNorm layer1.0.bn1 rescales the producer's output (layer1.0.conv1)", ""),
    ("layer1.0.relu@1", None, None, "residual add: layer1.0.bn2 plus relu",
     "read by layer2.0.conv1 and by layer2.0.downsample.0"),
    ("layer2.0.relu@0", None, "layer2.0.conv2",
     "BatchNorm layer2.0.bn1 rescales the producer's output (layer2.0.conv1)", ""),
    ("layer2.0.relu@1", None, "fc", "residual add: layer2.0.bn2 plus layer2.0.downsample.1", ""),
]


@pytest.mark.slow
@pytest.mark.parametrize(("factory", "shape"), [(resnet_tv, (1, 8, 8)), (list_mlp, (64,))])
def test_fx_export_and_hooks_agree_on_models_with_activation_modules(factory, shape, caplog):
    calib_x, calib_y, probe_x = _data(shape)
    model = factory(seed=2).double()
    fx_read = _read(model, ("fx",), calib_x, calib_y, probe_x, caplog)
    export_read = _read(model, ("export",), calib_x, calib_y, probe_x, caplog)
    with pytest.warns(UserWarning, match="forward hooks"):
        hooks_read = _read(model, ("hooks",), calib_x, calib_y, probe_x, caplog)
    assert (fx_read["route"], export_read["route"], hooks_read["route"]) == ("fx", "export", "hooks")
    assert (fx_read["split"], export_read["split"], hooks_read["split"]) == (True, True, False)
    _assert_same(fx_read, export_read)
    _assert_same(fx_read, hooks_read, wiring=False)  # the hook route knows no producer or consumer
    assert {(la.producer_note, la.consumer_note) for la in hooks_read["layers"]} == {(HOOK_NOTE, HOOK_NOTE)}
    if factory is resnet_tv:  # a ReLU module called twice per block: relu@0, relu@1
        assert [(la.name, la.spec.producer, la.spec.consumer, la.producer_note, la.consumer_note)
                for la in export_read["layers"]] == RESNET_WIRING
    else:
        assert _wiring(export_read) == [("layers.1", "layers.0", "layers.2"), ("layers.3", "layers.2", "layers.4")]


@pytest.mark.parametrize(("model", "shape"), [(TwoLayerMLP(seed=3), (4,)), (TinyCNN(seed=4), (1, 5, 5))])
def test_every_route_equals_the_models_own_declaration(model, shape):
    """Wrapped in an nn.Sequential, TwoLayerMLP/TinyCNN no longer declare their unit layers: each route must find
    the declared ones (as `0.act1`, ...) with the declared producers and consumers, and the same numbers."""
    calib_x, calib_y, probe_x = _data(shape)
    declared = _read(model, ("fx", "export", "hooks"), calib_x, calib_y, probe_x)
    assert declared["route"] == "declared"
    wrapped = nn.Sequential(model)
    for routes in (("fx",), ("export",)):
        read = _read(wrapped, routes, calib_x, calib_y, probe_x)
        assert read["route"] == routes[0]
        _assert_same(read, declared, b_prefix="0.")
    with pytest.warns(UserWarning, match="forward hooks"):
        _assert_same(_read(wrapped, ("hooks",), calib_x, calib_y, probe_x), declared, wiring=False, b_prefix="0.")


class _Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.fc(x), approximate="tanh")


ACTIVATIONS = [
    lambda m, h: F.relu(h, inplace=True), lambda m, h: F.relu6(h), lambda m, h: F.leaky_relu(h, 0.2, inplace=True),
    lambda m, h: F.elu(h, 0.5), lambda m, h: F.selu(h), lambda m, h: F.celu(h, 1.5, inplace=True),
    lambda m, h: F.silu(h), lambda m, h: F.mish(h), lambda m, h: F.hardswish(h), lambda m, h: F.softplus(h, 2.0),
    lambda m, h: F.prelu(h, m.slope), lambda m, h: torch.sigmoid(h), lambda m, h: h.tanh_(), lambda m, h: h.relu(),
    lambda m, h: m.block(h), lambda m, h: m.block(h),
]
ACTIVATION_NAMES = ["relu@0", "relu6@0", "leaky_relu@0", "elu@0", "elu@1", "selu@0", "celu@0", "silu@0", "mish@0",
                    "hardswish@0", "softplus@0", "prelu@0", "sigmoid@0", "tanh@0", "relu@1", "block.gelu@0",
                    "block.gelu@1"]


class _AllActivations(nn.Module):
    """Every functional activation the fx route knows, in place and as methods too, between Linear layers; a
    non-leaf block called twice scopes its calls (`block.gelu@k`)."""

    def __init__(self, width: int = 6, n_classes: int = 3):
        super().__init__()
        self.fcs = nn.ModuleList(nn.Linear(width, width) for _ in ACTIVATIONS[:-2])
        self.block = _Block(width)
        self.slope = nn.Parameter(torch.tensor([0.1]))
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for k, act in enumerate(ACTIVATIONS):
            h = act(self, self.fcs[k](h) if k < len(self.fcs) else h)
            if k == 3:
                h = F.elu(h)  # a second call of one function at one scope: elu@1
        return self.head(h)


@pytest.mark.slow
def test_fx_and_export_name_every_functional_activation_alike():
    calib_x, calib_y, probe_x = _data((6,))
    torch.manual_seed(0)
    model = _AllActivations().double().eval()
    fx_read = _read(model, ("fx",), calib_x, calib_y, probe_x)
    export_read = _read(model, ("export",), calib_x, calib_y, probe_x)
    assert [la.name for la in export_read["layers"]] == ACTIVATION_NAMES
    assert _wiring(export_read)[:4] == [("relu@0", "fcs.0", "fcs.1"), ("relu6@0", "fcs.1", "fcs.2"),
                                        ("leaky_relu@0", "fcs.2", "fcs.3"), ("elu@0", "fcs.3", None)]
    assert _wiring(export_read)[-2:] == [("block.gelu@0", "block.fc", "block.fc"), ("block.gelu@1", "block.fc", "head")]
    _assert_same(fx_read, export_read)


def test_fx_and_export_agree_on_functional_activations():
    calib_x, calib_y, probe_x = _data((64,))
    model = functional_mlp(seed=4).double()
    fx_read = _read(model, ("fx",), calib_x, calib_y, probe_x)
    export_read = _read(model, ("export",), calib_x, calib_y, probe_x)
    assert _wiring(export_read) == [("relu@0", "fc1", "fc2"), ("relu@1", "fc2", "fc3"), ("tanh@0", "fc3", "head")]
    _assert_same(fx_read, export_read)


def test_a_shape_branch_fx_cannot_trace_goes_through_export_with_producers_and_consumers(caplog):
    """ShapeBranchMLP tests `x.dim()` in forward: fx fails, export specialises the branch to (B, 64) inputs; the
    result equals its twin without the branch, traced by fx, wiring included (the hook route knows none), and the
    fast engine splits the exported graph rather than falling back."""
    calib_x, calib_y, probe_x = _data((64,))
    model, twin = shape_branch_mlp(seed=1).double(), shape_branch_mlp(seed=1, branch=False).double()
    with pytest.warns(UserWarning, match=r"ShapeBranchMLP: torch\.fx cannot trace it \(.+\); its unit layers "
                                         r"were found by torch\.export"):
        exported = _read(model, ("fx", "export", "hooks"), calib_x, calib_y, probe_x, caplog)
    assert exported["route"] == "export" and exported["split"]
    assert _wiring(exported) == [("relu@0", "fc1", "fc2"), ("relu@1", "fc2", "head")]
    _assert_same(exported, _read(twin, ("fx",), calib_x, calib_y, probe_x))


class _Mixer(nn.Module):
    """Stands for a torch.nn layer with modules inside (as TransformerDecoderLayer): fx's rule makes it a leaf."""

    __module__ = "torch.nn.modules.stand_in"

    def __init__(self):
        super().__init__()
        self.inner, self.act, self.norm = nn.Linear(8, 8), nn.ReLU(), nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.act(self.inner(x)))


class _LeafMLP(nn.Module):
    """A torch.nn leaf with modules of its own inside, behind a shape test."""

    def __init__(self, branch: bool = True):
        super().__init__()
        self.mixer = _Mixer()
        self.fc, self.head = nn.Linear(8, 5), nn.Linear(5, 3)
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.branch or x.dim() == 3:
            x = self.mixer(x).mean(1)
        return self.head(F.relu(self.fc(x)))


def test_a_torch_nn_leaf_is_read_back_as_one_call_with_its_inner_modules():
    calib_x, calib_y, probe_x = _data((4, 8))
    torch.manual_seed(3)
    model = _LeafMLP().double().eval()
    twin = _LeafMLP(branch=False).double().eval()
    twin.load_state_dict(model.state_dict())
    with pytest.warns(UserWarning, match="found by torch.export"):
        exported = _read(model, ("fx", "export"), calib_x, calib_y, probe_x)
    assert exported["route"] == "export" and _wiring(exported) == [("relu@0", "fc", "head")]
    _assert_same(exported, _read(twin, ("fx",), calib_x, calib_y, probe_x))


@pytest.mark.parametrize("rows", [1, 2])
def test_batch_size_is_not_baked_into_the_exported_graph(rows):
    calib_x, _, probe_x = _data((64,))
    model = shape_branch_mlp(seed=1).double()
    with pytest.warns(UserWarning):
        tapped = tap_unit_layers(model, calib_x[:rows])
    assert discovery_route(tapped) == "export"
    for n in (1, 3, 24):
        torch.testing.assert_close(tapped(probe_x[:n]), model(probe_x[:n]), rtol=0, atol=0)
    ours, theirs = tapped.state_dict(keep_vars=True), model.state_dict(keep_vars=True)
    assert list(ours) == list(theirs) and all(ours[k] is theirs[k] for k in theirs)


def test_data_dependent_control_flow_falls_to_hooks_naming_both_failures(capfd):
    """One warning says why fx and export failed; torch's own report of the failed export (its log, the graph
    traced so far) is not printed."""
    calib_x, _, _ = _data((64,))
    model = gated_mlp(seed=0).double()
    capfd.readouterr()
    with pytest.warns(UserWarning) as caught:
        tapped = tap_unit_layers(model, calib_x[:2])
    assert capfd.readouterr().err == ""
    assert len(caught) == 1
    assert re.match(r"GatedMLP: torch\.fx cannot trace it \(.+\); torch\.export cannot trace it \(.+\); unit layers "
                    r"are its activation modules, tapped by forward hooks", str(caught[0].message))
    assert discovery_route(tapped) == "hooks"
    assert [la.name for la in unit_layers(tapped, calib_x[:2])] == ["act@0", "act@1"]


def test_forcing_routes():
    calib_x, _, _ = _data((64,))
    with pytest.raises(BadInputError, match=r"^GatedMLP: torch\.export cannot trace it \(.+\)$"):
        tap_unit_layers(gated_mlp().double(), calib_x[:2], routes=("export",))
    with pytest.raises(ValueError, match="unknown discovery routes"):
        tap_unit_layers(gated_mlp(), calib_x[:2], routes=("trace",))
