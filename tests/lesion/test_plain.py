"""Lesions and shocks (SPEC S4) against hand-built modified models: the plain engine, and joint lesions by both.

A lesion of unit i clamps h_i to r_i. For a Linear consumer this equals the compensated reset
(zero w_out[:, i], add w_out[:, i] * r_i to the consumer bias); for a Conv consumer without
padding, every output position reads the whole kernel, so the compensation is
r_i * sum_{kh, kw} w_out[:, i, kh, kw]. Models are float64; tolerances atol=1e-10, rtol=1e-9.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.models import TinyCNN, TwoLayerMLP
from torch import nn
from torch.distributions import Categorical, kl_divergence

from resetassay.discovery.units import unit_layers
from resetassay.errors import BadInputError
from resetassay.lesion import joint_shocks, unit_shocks
from resetassay.lesion.plain import clamped
from resetassay.lesion.shocks import probe_logits

TOL = {"atol": 1e-10, "rtol": 1e-9}


CONSUMER = {"act1": "fc2", "act2": "head"}
CNN_CONSUMER = {"act1": "conv2", "act2": "head"}


def _compensated(model: nn.Module, consumers: dict[str, str], lesions: dict[str, list[int]],
                 refs: dict[str, torch.Tensor]) -> nn.Module:
    """A copy with CBP's compensated reset of every unit in `lesions` (SPEC S4)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for layer, units in lesions.items():
            consumer = out.get_submodule(consumers[layer])
            for i in units:
                col = consumer.weight[:, i].clone()
                mass = col.sum(dim=(1, 2)) if col.dim() == 3 else col  # Conv: whole kernel
                consumer.bias += mass * refs[layer][i]
                consumer.weight[:, i] = 0.0
    return out


def _expected_shocks(z: torch.Tensor, z2: torch.Tensor) -> dict[str, float]:
    l1 = (z - z2).abs().sum(dim=1).mean().item()
    kl = kl_divergence(Categorical(logits=z), Categorical(logits=z2)).mean().item()
    return {"l1": l1, "kl": kl}


def _setup_mlp(n_probe: int = 10):
    model = TwoLayerMLP()
    g = torch.Generator().manual_seed(3)
    probe = torch.randn(n_probe, 4, generator=g, dtype=torch.float64)
    refs = {"act1": torch.rand(5, generator=g, dtype=torch.float64) + 0.2,
            "act2": torch.rand(4, generator=g, dtype=torch.float64) - 0.5}
    layers = unit_layers(model, probe[:2])
    return model, layers, refs, probe


def test_clamp_equals_compensated_reset_for_linear_consumer():
    model, layers, refs, probe = _setup_mlp()
    for layer in layers:
        for i in range(layer.n_units):
            idx = torch.tensor([i])
            with clamped([(layer, idx, refs[layer.name][idx])]):
                z_clamped = model(probe)
            z_hand = _compensated(model, CONSUMER, {layer.name: [i]}, refs)(probe)
            torch.testing.assert_close(z_clamped, z_hand, **TOL)


@pytest.mark.parametrize("batch_size", [1, 3, 7, 64])
def test_unit_shocks_equal_compensated_reset_model_for_l1_and_kl(batch_size):
    model, layers, refs, probe = _setup_mlp(n_probe=10)
    shocks = unit_shocks(model, layers, refs, probe, ["l1", "kl"], batch_size=batch_size, engine="plain")
    z = model(probe).detach()
    for layer in layers:
        for i in range(layer.n_units):
            z2 = _compensated(model, CONSUMER, {layer.name: [i]}, refs)(probe).detach()
            want = _expected_shocks(z, z2)
            for m in ("l1", "kl"):
                assert shocks[m][layer.name][i].item() == pytest.approx(want[m], rel=1e-9, abs=1e-12)


def test_unit_shocks_index_the_lesioned_unit_not_a_neighbour():
    """Every unit's shock is distinct, so clamping unit i +/- 1 would show up."""
    model, layers, refs, probe = _setup_mlp()
    shocks = unit_shocks(model, layers, refs, probe, ["l1"], batch_size=4, engine="plain")
    z = model(probe).detach()
    for layer in layers:
        want = torch.tensor([
            _expected_shocks(z, _compensated(model, CONSUMER, {layer.name: [i]}, refs)(probe))["l1"]
            for i in range(layer.n_units)
        ], dtype=torch.float64)
        gaps = (want[:, None] - want[None, :]).abs() + torch.eye(len(want)) * 1e9
        assert gaps.min() > 1e-6  # the example can tell units apart
        torch.testing.assert_close(shocks["l1"][layer.name], want, **TOL)


def test_clamp_sets_only_the_named_unit():
    model, layers, refs, probe = _setup_mlp()
    act1, act2 = layers
    seen = {}
    handle = model.fc2.register_forward_pre_hook(lambda m, inp: seen.__setitem__("h", inp[0]))
    try:
        model(probe)
        free = seen["h"].clone()
        idx = torch.tensor([2])
        with clamped([(act1, idx, refs["act1"][idx])]):
            model(probe)
        held = seen["h"]
    finally:
        handle.remove()
    assert torch.equal(held[:, 2], refs["act1"][2].expand(len(probe)))
    others = [0, 1, 3, 4]
    assert torch.equal(held[:, others], free[:, others])


def test_clamp_does_not_leak_after_the_context_exits():
    model, layers, refs, probe = _setup_mlp()
    act1, act2 = layers
    before = probe_logits(model, probe)
    idx = torch.tensor([0, 3])
    with clamped([(act1, idx, refs["act1"][idx]), (act2, idx, refs["act2"][idx])]):
        inside = probe_logits(model, probe)
    assert not torch.equal(inside, before)
    assert torch.equal(probe_logits(model, probe), before)
    with pytest.raises(RuntimeError), clamped([(act1, idx, refs["act1"][idx])]):
        raise RuntimeError("boom")
    assert torch.equal(probe_logits(model, probe), before)
    unit_shocks(model, layers, refs, probe, ["l1"], batch_size=3, engine="plain")
    assert torch.equal(probe_logits(model, probe), before)
    assert not model.act1._forward_hooks and not model.act2._forward_hooks


def test_dead_unit_clamped_to_its_zero_mean_has_zero_shock():
    model, layers, refs, probe = _setup_mlp()
    with torch.no_grad():
        model.fc1.bias[1] = -1e3  # unit 1 of act1 never fires: h = 0 = r on every example
    refs = {**refs, "act1": refs["act1"].clone()}
    refs["act1"][1] = 0.0
    shocks = unit_shocks(model, layers, refs, probe, ["l1", "kl"], engine="plain")
    assert shocks["l1"]["act1"][1].item() == 0.0
    assert shocks["kl"]["act1"][1].item() == pytest.approx(0.0, abs=1e-15)
    assert shocks["l1"]["act1"][0].item() > 0.0


def _setup_cnn():
    model = TinyCNN()
    g = torch.Generator().manual_seed(4)
    probe = torch.randn(6, 1, 5, 5, generator=g, dtype=torch.float64)
    refs = {"act1": torch.rand(3, generator=g, dtype=torch.float64),
            "act2": torch.rand(4, generator=g, dtype=torch.float64) - 0.3}
    return model, unit_layers(model, probe[:2]), refs, probe


class _ChannelClamp(nn.Module):
    """Replaces a whole feature map by a constant: the lesion written as a module."""

    def __init__(self, inner: nn.Module, channel: int, value: torch.Tensor):
        super().__init__()
        self.inner, self.channel, self.value = inner, channel, value

    def forward(self, x):
        out = self.inner(x).clone()
        out[:, self.channel] = self.value
        return out


@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_conv_unit_lesion_clamps_the_whole_feature_map(batch_size):
    model, layers, refs, probe = _setup_cnn()
    assert [(la.kind, la.n_units) for la in layers] == [("conv", 3), ("conv", 4)]
    shocks = unit_shocks(model, layers, refs, probe, ["l1", "kl"], batch_size=batch_size, engine="plain")
    z = model(probe).detach()
    for layer in layers:
        for i in range(layer.n_units):
            by_weights = _compensated(model, CNN_CONSUMER, {layer.name: [i]}, refs)(probe).detach()
            by_module = copy.deepcopy(model)
            setattr(by_module, layer.name,
                    _ChannelClamp(getattr(model, layer.name), i, refs[layer.name][i]))
            torch.testing.assert_close(by_module(probe).detach(), by_weights, **TOL)
            want = _expected_shocks(z, by_weights)
            for m in ("l1", "kl"):
                assert shocks[m][layer.name][i].item() == pytest.approx(want[m], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("engine", ["plain", "fast"])
def test_joint_shock_of_one_unit_equals_its_unit_shock(engine):
    model, layers, refs, probe = _setup_mlp()
    single = unit_shocks(model, layers, refs, probe, ["l1", "kl"], engine="plain")
    lesions = [{layer.name: torch.tensor([i])} for layer in layers for i in (0, layer.n_units - 1)]
    joint = joint_shocks(model, layers, refs, lesions, probe, ["l1", "kl"], engine=engine, batch_size=3)
    want = {m: torch.stack([single[m][name][int(idx)] for lesion in lesions for name, idx in lesion.items()])
            for m in ("l1", "kl")}
    for m in ("l1", "kl"):
        torch.testing.assert_close(joint[m], want[m], rtol=1e-12, atol=0)


@pytest.mark.parametrize("selection", [
    {"act1": [1, 4]},
    {"act1": [0], "act2": [2]},
    {"act1": [2, 3], "act2": [0, 1]},
])
@pytest.mark.parametrize("engine", ["plain", "fast"])
def test_joint_shock_equals_model_with_all_selected_units_reset(selection, engine):
    model, layers, refs, probe = _setup_mlp()
    chosen = {k: torch.tensor(v) for k, v in selection.items()}
    joint = joint_shocks(model, layers, refs, [chosen], probe, ["l1", "kl"], engine=engine, batch_size=4)
    z = model(probe).detach()
    want = _expected_shocks(z, _compensated(model, CONSUMER, selection, refs)(probe).detach())
    for m in ("l1", "kl"):
        assert joint[m][0].item() == pytest.approx(want[m], rel=1e-9, abs=1e-12)


def test_empty_probe_set_is_an_error():
    model, layers, refs, probe = _setup_mlp()
    with pytest.raises(BadInputError, match="probe"):
        unit_shocks(model, layers, refs, probe[:0], ["l1"], engine="plain")
