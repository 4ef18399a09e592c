"""Unit layers (SPEC S1): zoo declarations, --layers selection, refusal of reused modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resetassay.discovery.units import UnitLayerSpec, declared_specs, select_specs, unit_layers
from resetassay.errors import BadInputError
from resetassay.models import create_model


def _summary(layers):
    return [(la.name, la.kind, la.n_units) for la in layers]


def test_mlp_unit_layers_are_the_activations_with_linear_producer_and_consumer():
    model = create_model("mlp", in_features=8, widths=(5, 6, 7), n_classes=3)
    layers = unit_layers(model, torch.randn(2, 8))
    assert _summary(layers) == [("layers.0.act", "linear", 5), ("layers.1.act", "linear", 6),
                                ("layers.2.act", "linear", 7)]
    assert layers[0].module is model.layers[0].act
    assert layers[0].producer is model.layers[0].linear
    assert layers[0].consumer is model.layers[1].linear
    assert layers[2].consumer is model.head


def test_layernorm_mlp_has_no_producer_and_says_why():
    model = create_model("mlp", in_features=8, widths=(5,), n_classes=3, layer_norm=True)
    (layer,) = unit_layers(model, torch.randn(2, 8))
    assert layer.producer is None and "LayerNorm" in layer.producer_note
    assert layer.consumer is model.head


def test_cnn_unit_layers_are_conv_channels():
    model = create_model("cnn", in_channels=1, widths=(3, 4), n_classes=2)
    layers = unit_layers(model, torch.randn(2, 1, 8, 8))
    assert _summary(layers) == [("blocks.0.act", "conv", 3), ("blocks.1.act", "conv", 4)]
    assert layers[0].producer is None and "BatchNorm" in layers[0].producer_note
    assert layers[0].consumer is model.blocks[1].conv
    assert layers[1].consumer is model.head


def test_resnet_unit_layers_in_forward_order_with_residual_notes():
    model = create_model("resnet", in_channels=1, widths=(2, 3, 4), blocks=(1, 2, 1), n_classes=5)
    layers = unit_layers(model, torch.randn(2, 1, 8, 8))
    assert _summary(layers) == [
        ("stem.act", "conv", 2),
        ("stages.0.0.act1", "conv", 2), ("stages.0.0.act2", "conv", 2),
        ("stages.1.0.act1", "conv", 3), ("stages.1.0.act2", "conv", 3),
        ("stages.1.1.act1", "conv", 3), ("stages.1.1.act2", "conv", 3),
        ("stages.2.0.act1", "conv", 4), ("stages.2.0.act2", "conv", 4),
    ]
    by_name = {la.name: la for la in layers}
    assert by_name["stages.1.0.act2"].consumer is None
    assert "residual" in by_name["stages.1.0.act2"].consumer_note
    assert by_name["stages.1.0.act1"].consumer is model.stages[1][0].conv2
    assert by_name["stages.2.0.act2"].consumer is model.head
    assert all(la.producer is None and la.producer_note for la in layers)


@pytest.mark.parametrize("patterns, expected", [
    (["layers.1.*"], ["layers.1.act"]),
    (["layers.[02].act"], ["layers.0.act", "layers.2.act"]),
    (["*.0.act", "layers.2*"], ["layers.0.act", "layers.2.act"]),
    (None, ["layers.0.act", "layers.1.act", "layers.2.act"]),
])
def test_layers_glob_patterns_select_unit_layers(patterns, expected):
    model = create_model("mlp", in_features=4, widths=(3, 3, 3), n_classes=2)
    assert [s.module for s in select_specs(declared_specs(model), patterns)] == expected
    assert [la.name for la in unit_layers(model, torch.randn(2, 4), patterns)] == expected


def test_resnet_glob_selects_first_activations_of_blocks():
    model = create_model("resnet", in_channels=1, widths=(2, 3), blocks=(1, 1), n_classes=2)
    layers = unit_layers(model, torch.randn(2, 1, 8, 8), ["*.act1"])
    assert [la.name for la in layers] == ["stages.0.0.act1", "stages.1.0.act1"]


def test_pattern_matching_nothing_lists_available_names():
    model = create_model("mlp", in_features=4, widths=(3, 3), n_classes=2)
    with pytest.raises(BadInputError) as err:
        unit_layers(model, torch.randn(2, 4), ["head", "conv*"])
    message = str(err.value)
    assert "head,conv*" in message
    assert "layers.0.act" in message and "layers.1.act" in message


class ReusedReLU(nn.Module):
    """Foreign model calling one nn.ReLU twice: its two calls hold different units."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(4, 3), nn.Linear(3, 3), nn.Linear(3, 2)
        self.shared_relu = nn.ReLU()

    def forward(self, x):
        return self.head(self.shared_relu(self.fc2(self.shared_relu(self.fc1(x)))))


def test_foreign_model_reusing_one_activation_module_is_refused_by_name():
    with pytest.raises(BadInputError, match=r"module shared_relu is called 2 times"):
        unit_layers(ReusedReLU(), torch.randn(2, 4))


def test_foreign_model_pattern_matching_nothing_lists_its_activation_modules():
    with pytest.raises(BadInputError, match="available: shared_relu"):
        unit_layers(ReusedReLU(), torch.randn(2, 4), ["fc*"])


def test_foreign_model_with_separate_activations_gets_them_without_producer():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    layers = unit_layers(model, torch.randn(2, 4))
    assert _summary(layers) == [("1", "linear", 3), ("3", "linear", 5)]
    for layer in layers:
        assert layer.producer is None and layer.consumer is None
        assert "not from the resetassay zoo" in layer.producer_note
        assert "not from the resetassay zoo" in layer.consumer_note
    assert layers[0].module is model[1]


def test_foreign_conv_model_gets_channel_units():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(3, 2))
    assert _summary(unit_layers(model, torch.randn(2, 1, 6, 6))) == [("1", "conv", 3)]


def test_activation_never_called_in_forward_is_refused():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.act, self.spare = nn.Linear(4, 2), nn.ReLU(), nn.GELU()

        def forward(self, x):
            return self.act(self.fc(x))

    with pytest.raises(BadInputError, match="spare is called never"):
        unit_layers(Unused(), torch.randn(2, 4))
    assert [la.name for la in unit_layers(Unused(), torch.randn(2, 4), ["act"])] == ["act"]


def test_unit_layer_with_unsupported_shape_is_refused():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    with pytest.raises(BadInputError, match=r"\(B, n\), \(B, C, H, W\) or \(B, T, n\)"):
        unit_layers(model, torch.randn(2, 5, 6, 7, 4))


def test_declared_producer_that_is_not_weighted_is_dropped_with_a_note():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.norm, self.act, self.head = (nn.Linear(4, 3), nn.LayerNorm(3),
                                                       nn.ReLU(), nn.Linear(3, 2))

        def forward(self, x):
            return self.head(self.act(self.norm(self.fc(x))))

        def unit_layer_specs(self):
            return [UnitLayerSpec("act", "norm", "head")]

    (layer,) = unit_layers(Odd(), torch.randn(2, 4))
    assert layer.producer is None and "LayerNorm, not Linear/Conv2d" in layer.producer_note
    assert isinstance(layer.consumer, nn.Linear)


def test_mature_is_age_above_threshold_or_all_without_ages():
    model = create_model("mlp", in_features=4, widths=(4,), n_classes=2)
    (layer,) = unit_layers(model, torch.randn(2, 4))
    assert layer.mature(10).tolist() == [True] * 4
    layer.ages = torch.tensor([0, 10, 11, 500])
    assert layer.mature(10).tolist() == [False, False, True, True]


def test_capture_records_every_call_replaces_outputs_and_removes_its_hooks_also_on_error():
    """`hooks.capture` (DESIGN "Stages"): a copy of each chosen module's output, every call listed in forward order
    with `every_call`, an output replaced where asked, and no hook left behind, also when the forward fails."""
    from resetassay.discovery.hooks import capture

    model = create_model("mlp", in_features=8, widths=(5, 6), n_classes=3)
    x = torch.randn(4, 8)
    layers = unit_layers(model, x[:2])
    with capture(model, layers, every_call=True) as seen, torch.no_grad():
        z = model(x)
    assert [name for name, _ in seen.calls] == ["layers.0.act", "layers.1.act"]
    torch.testing.assert_close(seen["layers.1.act"], model.layers[1].act(model.layers[1].linear(seen["layers.0.act"])))
    with capture(model, ["layers.1.act"], replace=lambda _name, out: torch.zeros_like(out)) as seen, torch.no_grad():
        zeroed = model(x)
    torch.testing.assert_close(zeroed, model.head.bias.expand_as(z).detach())
    assert float(seen["layers.1.act"].abs().sum()) == 0
    with pytest.raises(RuntimeError), capture(model, layers):
        model(torch.randn(4, 7))  # the wrong width
    assert not any(m._forward_hooks for m in model.modules())
