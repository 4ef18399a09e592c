"""Utilities (SPEC S3) against values derived by hand or by plain torch autograd.

Tolerances: float64 models; the library returns float32 means, so values are compared with
atol=1e-6 and rtol=1e-6.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerGradientXActivation
from helpers.models import TwoLayerMLP
from torch import nn

from resetassay.discovery.units import UnitLayerSpec, unit_layers
from resetassay.errors import BadInputError
from resetassay.scoring.calibration import calibration_stats
from resetassay.scoring.reference import unit_references
from resetassay.scoring.registry import INGREDIENTS, check_utilities, needed_ingredients, unit_scores, utility_names

ATOL = RTOL = 1e-6
ALL_UTILS = ["activation", "contribution", "mc_contribution", "mc_adaptable",
             "loss_gradient", "gxi", "gxd", "gxd_all"]


class TinyMLP(nn.Module):
    """2 -> 2 (ReLU, the unit layer "act") -> 2 logits, weights set by hand."""

    def __init__(self, producer: str | None = "fc1", consumer: str | None = "fc2",
                 producer_note: str = "", consumer_note: str = ""):
        super().__init__()
        self.fc1 = nn.Linear(2, 2)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(2, 2)
        self._spec = UnitLayerSpec("act", producer, consumer, producer_note, consumer_note)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 2.0]]))
            self.fc1.bias.copy_(torch.tensor([0.0, -0.5]))
            self.fc2.weight.copy_(torch.tensor([[2.0, -1.0], [1.0, 3.0]]))
            self.fc2.bias.copy_(torch.tensor([0.1, -0.2]))
        self.double()

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))

    def unit_layer_specs(self):
        return [self._spec]


X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]], dtype=torch.float64)
Y = torch.tensor([0, 1, 1])
# By hand: h = relu(W1 x + b1) = [1, 0], [0, 1.5], [1, 2.5]; r = mean h = [2/3, 4/3].
R_HAND = torch.tensor([2 / 3, 4 / 3], dtype=torch.float64)


def _sig(t: float) -> float:
    return 1.0 / (1.0 + math.exp(-t))


# Hand derivation (W2 = [[2, -1], [1, 3]], so sum_k |w_out[k, i]| = [3, 4], sum_j |w_in[i, j]|
# = [2, 2.5]; dz_c/dh_i = W2[c, i]):
#   E|h| = [2/3, 4/3]; E|h - r| = [4/9, 8/9]
#   gxi  = mean |h_i W2[y, i]|           = mean([2, 0], [0, 4.5], [1, 7.5])        = [1, 4]
#   gxd  = mean |(h_i - r_i) W2[y, i]|   = mean([2/3, 4/3], [2/3, 1/2], [1/3, 7/2]) = [5/9, 16/9]
#   gxd_all = E|h - r| * mean_c |W2[c, i]| = [4/9 * 3/2, 8/9 * 2]                  = [2/3, 16/9]
#   logits z = [2.1, 0.8], [-1.4, 4.3], [-0.4, 8.3]; with 2 classes
#   dL/dh_i = (p_0 - [y == 0]) (W2[0, i] - W2[1, i]) = (p_0 - [y == 0]) * [1, -4], and
#   |p_0 - [y == 0]| = sigmoid(-1.3), sigmoid(-5.7), sigmoid(-8.7) for the three examples.
_LG = (_sig(-1.3) + _sig(-5.7) + _sig(-8.7)) / 3
HAND = {
    "activation": [2 / 3, 4 / 3],
    "contribution": [2 / 3 * 3, 4 / 3 * 4],
    "mc_contribution": [4 / 9 * 3, 8 / 9 * 4],
    "mc_adaptable": [4 / 9 * 3 / 2, 8 / 9 * 4 / 2.5],
    "loss_gradient": [_LG * 1, _LG * 4],
    "gxi": [1.0, 4.0],
    "gxd": [5 / 9, 16 / 9],
    "gxd_all": [2 / 3, 16 / 9],
}


def _scores(model, x, y, refs, names, batch_size=256, seed=0):
    layers = unit_layers(model, x[:2])
    stats = calibration_stats(model, layers, x, y, refs, needed_ingredients(names),
                              batch_size=batch_size, seed=seed)
    return unit_scores(names, layers, stats)


@pytest.mark.parametrize("batch_size", [1, 2, 256])
def test_mlp_utilities_equal_hand_derivation(batch_size):
    model = TinyMLP().eval()
    scores, notes = _scores(model, X, Y, {"act": R_HAND}, ALL_UTILS, batch_size)
    assert notes == {}
    for name, expected in HAND.items():
        got = scores[name]["act"].double()
        torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64),
                                   atol=ATOL, rtol=RTOL, msg=f"{name}")


@pytest.mark.parametrize("name", ALL_UTILS)
def test_each_utility_computed_alone_equals_hand_derivation(name):
    """Asking for one utility must not depend on the ingredients of the others."""
    scores, notes = _scores(TinyMLP().eval(), X, Y, {"act": R_HAND}, [name], batch_size=2)
    assert notes == {} and list(scores) == [name]
    torch.testing.assert_close(scores[name]["act"].double(),
                               torch.tensor(HAND[name], dtype=torch.float64), atol=ATOL, rtol=RTOL)


def test_empty_calibration_set_is_an_error():
    model = TinyMLP().eval()
    layers = unit_layers(model, X[:2])
    with pytest.raises(BadInputError, match="calibration set is empty"):
        calibration_stats(model, layers, X[:0], Y[:0], {"act": R_HAND}, {"gxd"})


def test_calibration_mean_reference_is_hand_mean_of_activations():
    model = TinyMLP().eval()
    layers = unit_layers(model, X[:2])
    refs = unit_references(model, layers, X, "calibration-mean", batch_size=2)
    torch.testing.assert_close(refs["act"].double(), R_HAND, atol=ATOL, rtol=RTOL)


def test_zero_reference_makes_gxd_equal_gxi():
    model = TinyMLP().eval()
    layers = unit_layers(model, X[:2])
    refs = unit_references(model, layers, X, "zero")
    assert torch.equal(refs["act"], torch.zeros(2))
    scores, _ = _scores(model, X, Y, refs, ["gxi", "gxd"])
    torch.testing.assert_close(scores["gxd"]["act"], scores["gxi"]["act"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(scores["gxi"]["act"].double(), torch.tensor(HAND["gxi"],
                               dtype=torch.float64), atol=ATOL, rtol=RTOL)


def test_stored_reference_missing_is_an_error_and_present_is_used():
    model = TinyMLP().eval()
    layers = unit_layers(model, X[:2])
    with pytest.raises(BadInputError, match="stores no act.reference"):
        unit_references(model, layers, X, "stored")
    layers[0].stored_reference = torch.tensor([0.25, -1.5])
    refs = unit_references(model, layers, X, "stored")
    assert torch.equal(refs["act"], torch.tensor([0.25, -1.5]))
    with pytest.raises(BadInputError, match="calibration-mean"):
        unit_references(model, layers, X, "median")


# --- Conv: gradient terms sum over H, W before the absolute value (SPEC S3) -----------------


class TinyConv(nn.Module):
    """1x3x3 input -> conv 2x2 (2 channels) -> ReLU unit layer (2x2 maps) -> conv 2x2 -> 3 logits."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(11)
        self.conv1 = nn.Conv2d(1, 2, 2)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(2, 3, 2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.double()

    def forward(self, x):
        return self.conv2(self.act(self.conv1(x))).flatten(1)

    def unit_layer_specs(self):
        return [UnitLayerSpec("act", "conv1", "conv2")]


def _conv_expected(model: TinyConv, x: torch.Tensor, y: torch.Tensor):
    """Every S3 utility by plain functional ops and autograd (no hooks, no captum)."""
    w1, b1 = model.conv1.weight.detach(), model.conv1.bias.detach()
    w2, b2 = model.conv2.weight.detach(), model.conv2.bias.detach()
    h = F.relu(F.conv2d(x, w1, b1))
    r = h.mean(dim=(0, 2, 3))
    dev = h - r.view(1, -1, 1, 1)
    hl = h.clone().requires_grad_(True)
    z = F.conv2d(hl, w2, b2).flatten(1)
    n_classes = z.shape[1]
    per_class = [torch.autograd.grad(z[:, c].sum(), hl, retain_graph=True)[0]
                 for c in range(n_classes)]
    g_target = torch.stack([per_class[int(y[b])][b] for b in range(len(x))])
    loss = F.cross_entropy(z, y, reduction="sum")
    g_loss = torch.autograd.grad(loss, hl)[0]
    out_mass = w2.abs().sum(dim=(0, 2, 3))
    in_mass = w1.abs().sum(dim=(1, 2, 3))
    expected = {
        "activation": h.abs().mean(dim=(0, 2, 3)),
        "contribution": h.abs().mean(dim=(0, 2, 3)) * out_mass,
        "mc_contribution": dev.abs().mean(dim=(0, 2, 3)) * out_mass,
        "mc_adaptable": dev.abs().mean(dim=(0, 2, 3)) * out_mass / in_mass,
        "loss_gradient": g_loss.sum(dim=(2, 3)).abs().mean(0),
        "gxi": (h * g_target).sum(dim=(2, 3)).abs().mean(0),
        "gxd": (dev * g_target).sum(dim=(2, 3)).abs().mean(0),
        "gxd_all": torch.stack([(dev * g).sum(dim=(2, 3)).abs() for g in per_class]).mean(dim=(0, 1)),
    }
    wrong_order = {  # abs per position, then sum: what SPEC S3 rules out
        "gxi": (h * g_target).abs().sum(dim=(2, 3)).mean(0),
        "gxd": (dev * g_target).abs().sum(dim=(2, 3)).mean(0),
        "loss_gradient": g_loss.abs().sum(dim=(2, 3)).mean(0),
    }
    return r, expected, wrong_order


def test_conv_gradient_terms_sum_over_positions_before_abs():
    model = TinyConv().eval()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 1, 3, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    r, expected, wrong_order = _conv_expected(model, x, y)
    layers = unit_layers(model, x[:2])
    assert layers[0].kind == "conv" and layers[0].n_units == 2
    refs = unit_references(model, layers, x, "calibration-mean", batch_size=4)
    torch.testing.assert_close(refs["act"].double(), r, atol=ATOL, rtol=RTOL)
    scores, notes = _scores(model, x, y, {"act": r}, ALL_UTILS, batch_size=4)
    assert notes == {}
    for name, want in expected.items():
        torch.testing.assert_close(scores[name]["act"].double(), want, atol=ATOL, rtol=RTOL,
                                   msg=name)
    # The example must tell the two orders apart, or the check above proves nothing.
    for name, bad in wrong_order.items():
        assert (bad - expected[name]).abs().max() > 1e-3, name


# --- random, not-applicable notes, names ------------------------------------------------------


def test_random_is_reproducible_per_seed_and_differs_across_seeds():
    model = TinyMLP().eval()
    a, _ = _scores(model, X, Y, {"act": R_HAND}, ["random"], seed=3)
    b, _ = _scores(model, X, Y, {"act": R_HAND}, ["random"], seed=3)
    c, _ = _scores(model, X, Y, {"act": R_HAND}, ["random"], seed=4)
    assert torch.equal(a["random"]["act"], b["random"]["act"])
    assert not torch.equal(a["random"]["act"], c["random"]["act"])
    values = a["random"]["act"]
    assert values.shape == (2,) and bool(((values >= 0) & (values < 1)).all())


def test_layer_without_producer_marks_mc_adaptable_not_applicable_with_reason():
    reason = "producer hidden behind a custom normaliser"
    model = TinyMLP(producer=None, producer_note=reason).eval()
    scores, notes = _scores(model, X, Y, {"act": R_HAND},
                            ["mc_adaptable", "mc_contribution", "gxd"])
    assert notes == {("mc_adaptable", "act"): reason}
    assert "act" not in scores["mc_adaptable"]
    # utilities that do not need the producer are still computed, and still right
    torch.testing.assert_close(scores["mc_contribution"]["act"].double(),
                               torch.tensor(HAND["mc_contribution"], dtype=torch.float64),
                               atol=ATOL, rtol=RTOL)
    assert "act" in scores["gxd"]


def test_layer_without_consumer_marks_weight_utilities_not_applicable():
    reason = "read by two modules"
    model = TinyMLP(consumer=None, consumer_note=reason).eval()
    names = ["contribution", "mc_contribution", "mc_adaptable", "activation"]
    scores, notes = _scores(model, X, Y, {"act": R_HAND}, names)
    assert notes == {(n, "act"): reason for n in names[:3]}
    assert "act" in scores["activation"]


def test_check_utilities_rejects_unknown_name_listing_valid_names():
    with pytest.raises(BadInputError) as err:
        check_utilities(["gxd", "gxdd"])
    message = str(err.value)
    assert "gxdd" in message
    for name in [*ALL_UTILS, "random", "oracle"]:
        assert name in message
    assert check_utilities(["gxd", "oracle"]) == ["gxd", "oracle"]
    assert set(ALL_UTILS) | {"random", "oracle"} <= set(utility_names())


def test_needed_ingredients_are_known_ingredients():
    needs = needed_ingredients(utility_names())
    assert set(INGREDIENTS) - needs == {"gxi_signed", "gxd_signed"}  # only for your own utilities


# --- several unit layers at once; a Linear consumer reading flattened conv maps -------------


def test_gradient_utilities_of_two_stacked_layers_match_autograd():
    model = TwoLayerMLP(seed=21, sizes=(3, 4, 3, 3), activations=(nn.ReLU, nn.SiLU))  # gradients cross a SiLU
    g = torch.Generator().manual_seed(8)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    refs = {"act1": torch.rand(4, generator=g, dtype=torch.float64),
            "act2": torch.rand(3, generator=g, dtype=torch.float64) - 0.5}
    # independent forward, gradients at the two intermediate tensors by autograd
    h1 = torch.relu(x @ model.fc1.weight.T + model.fc1.bias)
    h2 = F.silu(h1 @ model.fc2.weight.T + model.fc2.bias)
    z = h2 @ model.head.weight.T + model.head.bias
    hs = {"act1": h1, "act2": h2}
    per_class = [torch.autograd.grad(z[:, c].sum(), [h1, h2], retain_graph=True)
                 for c in range(3)]
    g_loss = torch.autograd.grad(F.cross_entropy(z, y, reduction="sum"), [h1, h2])
    scores, notes = _scores(model, x, y, refs, ["gxi", "gxd", "gxd_all", "loss_gradient"],
                            batch_size=3)
    assert notes == {}
    for k, name in enumerate(["act1", "act2"]):
        h = hs[name].detach()
        dev = h - refs[name]
        g_y = torch.stack([per_class[int(y[b])][k][b] for b in range(len(x))])
        want = {
            "gxi": (h * g_y).abs().mean(0),
            "gxd": (dev * g_y).abs().mean(0),
            "gxd_all": torch.stack([(dev * gc[k]).abs() for gc in per_class]).mean(dim=(0, 1)),
            "loss_gradient": g_loss[k].abs().mean(0),
        }
        for util, value in want.items():
            torch.testing.assert_close(scores[util][name].double(), value, atol=ATOL, rtol=RTOL,
                                       msg=f"{util} {name}")


class ConvFlatLinear(nn.Module):
    """conv (2 channels, 2x2 maps, unit layer "act") -> flatten (channel-major) -> Linear 8 -> 3."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(31)
        self.conv, self.act, self.head = nn.Conv2d(1, 2, 2), nn.ReLU(), nn.Linear(8, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.double()

    def forward(self, x):
        return self.head(self.act(self.conv(x)).flatten(1))

    def unit_layer_specs(self):
        return [UnitLayerSpec("act", "conv", "head")]


def test_contribution_with_linear_consumer_of_flattened_maps_sums_each_channels_block():
    model = ConvFlatLinear().eval()
    x = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    h = F.relu(F.conv2d(x, model.conv.weight, model.conv.bias)).detach()
    w = model.head.weight.detach().abs()
    mass = torch.stack([w[:, 0:4].sum(), w[:, 4:8].sum()])  # channel i -> columns 4i..4i+3
    scores, notes = _scores(model, x, torch.zeros(4, dtype=torch.long),
                            {"act": torch.zeros(2, dtype=torch.float64)}, ["contribution"])
    assert notes == {}
    torch.testing.assert_close(scores["contribution"]["act"].double(),
                               h.abs().mean(dim=(0, 2, 3)) * mass, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("chunk", [1, 2, 16])
@pytest.mark.parametrize("batched", [True, False], ids=["batched backward", "one backward per class"])
def test_gxd_all_from_batched_class_gradients_equals_one_backward_per_class(monkeypatch, chunk, batched):
    """gxd_all takes dz_c/dh for every class from one forward and class-batched backwards; chunks of classes and
    the per-class fallback (for ops without a batching rule) give the same numbers as captum per class."""
    import resetassay.scoring.calibration as calibration

    model = TwoLayerMLP(seed=21, sizes=(3, 4, 3, 5), activations=(nn.ReLU, nn.SiLU))
    g = torch.Generator().manual_seed(4)
    x = torch.randn(9, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (9,), generator=g)
    layers = unit_layers(model, x[:2])
    refs = {"act1": torch.rand(4, generator=g, dtype=torch.float64), "act2": torch.rand(3, generator=g,
                                                                                       dtype=torch.float64)}
    want = {layer.name: 0.0 for layer in layers}
    captum = LayerGradientXActivation(model, [layer.module for layer in layers], multiply_by_inputs=False)
    with torch.no_grad():
        h1 = model.act1(model.fc1(x))
        h = {"act1": h1, "act2": model.act2(model.fc2(h1))}
    for c in range(5):
        for layer, grad in zip(layers, captum.attribute(x, target=c), strict=True):
            want[layer.name] = want[layer.name] + ((h[layer.name] - refs[layer.name]) * grad).abs().mean(0) / 5
    monkeypatch.setattr(calibration, "CLASS_CHUNK", chunk)
    if not batched:
        real = torch.autograd.grad

        def no_batching(*args, **kwargs):
            if kwargs.get("is_grads_batched"):
                raise RuntimeError("no batching rule (simulated)")
            return real(*args, **kwargs)

        monkeypatch.setattr(torch.autograd, "grad", no_batching)
    stats = calibration_stats(model, layers, x, y, refs, {"gxd_all"}, batch_size=4)
    for layer in layers:
        torch.testing.assert_close(stats[layer.name].gxd_all.double(), want[layer.name], rtol=RTOL, atol=ATOL)


def test_dormancy_and_firing_rate_by_hand_on_linear_and_conv_units():
    """ReDo's dormancy E|h_i| / mean_j E|h_j| and SNR's firing rate P(h_i > 0), over examples and H, W (SPEC S8)."""
    from helpers.models import TinyCNN

    torch.manual_seed(0)
    for model, x in ((TwoLayerMLP(), torch.randn(30, 4, dtype=torch.float64)),
                     (TinyCNN(), torch.randn(30, 1, 6, 6, dtype=torch.float64))):
        layers = unit_layers(model, x[:2])
        refs = unit_references(model, layers, x)
        y = torch.zeros(len(x), dtype=torch.long)
        scores, _ = unit_scores(["dormancy", "firing_rate"], layers,
                                calibration_stats(model, layers, x, y, refs, needed_ingredients(["dormancy",
                                                                                                   "firing_rate"])))
        for layer in layers:
            seen: list[torch.Tensor] = []
            handle = layer.module.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.detach()))
            model(x)
            handle.remove()
            h = seen[0]
            dims = [d for d in range(h.dim()) if d != 1]
            abs_act = h.abs().mean(dim=dims)
            torch.testing.assert_close(scores["dormancy"][layer.name].double(), abs_act / abs_act.mean(),
                                       atol=ATOL, rtol=RTOL)
            torch.testing.assert_close(scores["firing_rate"][layer.name].double(), (h > 0).double().mean(dim=dims),
                                       atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_signed_ingredients_are_means_before_the_absolute_value(batch_size):
    """gxi_signed, gxd_signed (for utilities such as |E[(h - r) dz_y/dh]|): by hand, gxd_signed = mean([2/3, 4/3],
    [-2/3, 1/2], [1/3, 7/2]) = [1/9, 16/9], where gxd = [5/9, 16/9]."""
    model = TinyMLP().eval()
    layers = unit_layers(model, X[:2])
    stats = calibration_stats(model, layers, X, Y, {"act": R_HAND}, frozenset({"gxi_signed", "gxd_signed", "gxd"}),
                              batch_size=batch_size)["act"]
    torch.testing.assert_close(stats.gxi_signed.double(), torch.tensor([1.0, 4.0], dtype=torch.float64),
                               atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(stats.gxd_signed.double(), torch.tensor([1 / 9, 16 / 9], dtype=torch.float64),
                               atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(stats.gxd.double(), torch.tensor(HAND["gxd"], dtype=torch.float64), atol=ATOL,
                               rtol=RTOL)
