"""gxd2 and gxd_ig (SPEC S3, resetassay/scoring/higher_order.py) against plain references computed here.

gxd2 per example = f'(0) + f''(0) / 2 with f(t) = z_y(h + t d_i), d_i = r_i - h_i on unit i alone: compared
with central finite differences of z_y (steps 1e-3 and 5e-4, Richardson-extrapolated, float64: error ~1e-9).
gxd_ig per example: the joint path's integral by a 2000-step midpoint Riemann sum of plain autograd gradients
(error ~1e-8), and completeness (a layer's attributions sum to z_y(h) - z_y(r)). Tolerance: 1e-6 of the largest
value (at least 1e-6).
"""

from __future__ import annotations

import pytest
import torch
from helpers.models import TinyCNN, TwoLayerMLP
from torch import nn

import resetassay as ra
from resetassay.discovery.hooks import forward_hooks
from resetassay.discovery.sequences import next_token_targets, target_logits
from resetassay.discovery.units import UnitLayer, per_unit, sum_positions, unit_layers
from resetassay.models import cnn, mlp, resnet, transformer
from resetassay.scoring.calibration import calibration_stats
from resetassay.scoring.higher_order import path_attributions, second_order_changes
from resetassay.scoring.reference import unit_references

STEP = 1e-3
RIEMANN_STEPS = 2000
TOL = 1e-6


def _smooth_mlp() -> nn.Module:
    return TwoLayerMLP(seed=3, sizes=(4, 5, 4, 3), activations=(nn.SiLU, nn.Tanh))


def _model(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A tiny float64 model with its inputs and targets: smooth downstream of every unit layer where it can be."""
    g = torch.Generator().manual_seed(5)
    if name == "mlp":
        return _smooth_mlp(), torch.randn(6, 4, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    if name == "tiny_cnn":  # ReLU then SiLU
        return TinyCNN(), torch.randn(4, 1, 5, 5, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    if name == "cnn":  # the zoo's: Conv -> BatchNorm (eval) -> tanh
        model = cnn(widths=(3, 4), activation="tanh", n_classes=3)
        x = torch.randn(4, 1, 6, 6, generator=g, dtype=torch.float64)
    elif name == "resnet":  # the zoo's: BatchNorm, residual adds, SiLU
        model = resnet(widths=(2, 3), blocks=(1, 1), activation="silu", n_classes=3)
        x = torch.randn(3, 1, 6, 6, generator=g, dtype=torch.float64)
    else:  # the zoo's transformer: MLP neurons (GELU) and attention heads (softmax, LayerNorm)
        model = transformer(vocab=5, max_len=4, d_model=8, n_layers=1, n_heads=2, mlp_ratio=1)
        ids = torch.randint(0, 5, (3, 4), generator=g)
        return model.double().eval(), ids, next_token_targets(ids)
    model.double().eval()
    with torch.no_grad():  # BatchNorm with running statistics that are not the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    return model, x, torch.randint(0, 3, (len(x),), generator=g)


def _setup(name: str):
    model, x, y = _model(name)
    layers = unit_layers(model, x[:2])
    refs = unit_references(model, layers, x, "calibration-mean")
    return model, layers, x, y, refs


def _outputs(model: nn.Module, layers: list[UnitLayer], x: torch.Tensor) -> dict[str, torch.Tensor]:
    outs = {}
    with torch.no_grad(), forward_hooks({k.module: lambda m, i, o, k=k: outs.__setitem__(k.name, o.clone())
                                         for k in layers}):
        model(x)
    return outs


def _target_logit(model, layer, x, y, values) -> torch.Tensor:
    """z_y per example `(B,)` with the layer's output replaced by `values`."""
    with forward_hooks({layer.module: lambda m, i, o: values}):
        return target_logits(model(x), y)


def _finite_differences(model, layer, x, y, h, ref) -> tuple[torch.Tensor, torch.Tensor]:
    """`(B, n)` twice: f'(0) and f''(0) by central differences at steps STEP and STEP / 2, Richardson-extrapolated
    (error O(STEP^4)), f(t) = z_y(h + t d_i)."""
    first, second = (torch.zeros(len(x), layer.n_units, dtype=torch.float64) for _ in range(2))
    hu = layer.view(h)
    with torch.no_grad():
        f0 = _target_logit(model, layer, x, y, h)
        for i in range(layer.n_units):
            d = torch.zeros_like(h)
            layer.view(d)[:, i] = (per_unit(ref, hu) - hu)[:, i]
            estimates = []
            for step in (STEP, STEP / 2):
                up, down = (_target_logit(model, layer, x, y, h + sign * step * d) for sign in (1, -1))
                estimates.append(((up - down) / (2 * step), (up - 2 * f0 + down) / step**2))
            (d1, s1), (d2, s2) = estimates
            first[:, i], second[:, i] = (4 * d2 - d1) / 3, (4 * s2 - s1) / 3
    return first, second


def _riemann_attributions(model, layer, x, y, h, ref) -> torch.Tensor:
    """`(B, n)`: sum_s (h - r) * mean over midpoints a of dz_y/dh(r + a (h - r)), the whole layer on the path (all
    midpoints in one batch)."""
    hu = layer.view(h)
    start = h.clone()
    layer.view(start).copy_(per_unit(ref, hu).expand_as(hu))
    a = (torch.arange(RIEMANN_STEPS, dtype=h.dtype) + 0.5) / RIEMANN_STEPS
    points = (start + a.view(-1, *[1] * h.dim()) * (h - start)).flatten(0, 1).requires_grad_()
    repeat = [RIEMANN_STEPS, *[1] * (x.dim() - 1)]
    z_y = _target_logit(model, layer, x.repeat(repeat), y.repeat([RIEMANN_STEPS, *[1] * (y.dim() - 1)]), points)
    (grad,) = torch.autograd.grad(z_y.sum(), points)
    return sum_positions(layer.view((h - start) * grad.unflatten(0, (RIEMANN_STEPS, len(x))).mean(dim=0)))


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=0, atol=TOL * max(1.0, want.abs().max().item()))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp", "tiny_cnn", "cnn", "resnet", "transformer"])
def test_gxd2_equals_finite_differences_of_the_target_logit(name):
    model, layers, x, y, refs = _setup(name)
    outs = _outputs(model, layers, x)
    got = second_order_changes(model, layers, x, y, refs)
    curvature = 0.0
    for layer in layers:
        first, second = _finite_differences(model, layer, x, y, outs[layer.name], refs[layer.name])
        _close(got[layer.name], first + second / 2)
        curvature = max(curvature, second.abs().max().item())
    assert curvature > 1e-3  # the second-order term is there to be found: gxd2 is not gxd here


@pytest.mark.parametrize("name", ["mlp", "cnn", "transformer"])
def test_gxd_ig_equals_a_fine_riemann_sum_and_is_complete(name):
    model, layers, x, y, refs = _setup(name)
    outs = _outputs(model, layers, x)
    for layer in layers:
        h, r = outs[layer.name], refs[layer.name]
        got = path_attributions(model, layer, x, y, h, r)
        _close(got, _riemann_attributions(model, layer, x, y, h, r))
        start = h.clone()
        layer.view(start).copy_(per_unit(r, layer.view(h)).expand_as(layer.view(h)))
        with torch.no_grad():  # completeness: the joint path's attributions add up to the whole change of z_y
            change = _target_logit(model, layer, x, y, h) - _target_logit(model, layer, x, y, start)
        _close(got.sum(dim=1), change)


@pytest.mark.parametrize("batch_size", [2, 64])
def test_calibration_means_are_the_mean_absolute_references(batch_size):
    model, layers, x, y, refs = _setup("mlp")
    outs = _outputs(model, layers, x)
    stats = calibration_stats(model, layers, x, y, refs, {"gxd_ig", "gxd2"}, batch_size=batch_size)
    for layer in layers:
        h, r = outs[layer.name], refs[layer.name]
        first, second = _finite_differences(model, layer, x, y, h, r)
        _close(stats[layer.name].gxd2.double(), (first + second / 2).abs().mean(0))
        _close(stats[layer.name].gxd_ig.double(), _riemann_attributions(model, layer, x, y, h, r).abs().mean(0))


def test_where_z_y_is_piecewise_linear_in_the_units_both_are_gxd():
    """ReLU downstream: no curvature, so gxd2 = gxd in both layers; the last layer feeds the Linear head, so its
    gradient is constant on the path and gxd_ig = gxd there too (the first layer's path crosses ReLU kinks)."""
    model = TwoLayerMLP(seed=4, activations=(nn.ReLU, nn.ReLU))
    x = torch.randn(9, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.arange(9) % 3
    layers = unit_layers(model, x[:2])
    refs = unit_references(model, layers, x, "calibration-mean")
    stats = calibration_stats(model, layers, x, y, refs, {"gxd", "gxd_ig", "gxd2"})
    for layer in layers:
        _close(stats[layer.name].gxd2, stats[layer.name].gxd)
    _close(stats["act2"].gxd_ig, stats["act2"].gxd)


def test_padding_is_left_out_of_gxd_ig_and_gxd2():
    """A right-padded batch of token sequences gives what its sequences give one by one (SPEC S9)."""
    from resetassay.discovery.sequences import padded_tokens, with_padding

    model = transformer(vocab=5, max_len=5, d_model=8, n_layers=1, n_heads=2, mlp_ratio=1).double().eval()
    ids = torch.randint(0, 5, (3, 5), generator=torch.Generator().manual_seed(2))
    lengths = [5, 3, 4]
    mask = (torch.arange(5) < torch.tensor(lengths)[:, None]).long()
    x, y = with_padding(ids, mask), next_token_targets(ids, mask)
    padded = padded_tokens(model, [x])
    layers = unit_layers(padded, x[:2])
    refs = unit_references(padded, layers, x)
    needs = {"gxd_ig", "gxd2"}
    batch = calibration_stats(padded, layers, x, y, refs, needs)
    each = [calibration_stats(model, unit_layers(model, x[i:i + 1, :n]), x[i:i + 1, :n], y[i:i + 1, :n], refs, needs)
            for i, n in enumerate(lengths)]
    for layer in layers:
        for key in needs:
            want = torch.stack([getattr(s[layer.name], key) for s in each]).double().mean(0)
            _close(getattr(batch[layer.name], key).double(), want)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet", "transformer"])
def test_both_apply_to_every_zoo_model(name):
    g = torch.Generator().manual_seed(3)
    if name == "mlp":
        model, x = mlp(in_features=6, widths=(5, 4), activation="silu", layer_norm=True), torch.randn(16, 6)
    elif name == "transformer":
        model, x = transformer(vocab=5, max_len=4, d_model=8, n_layers=1, n_heads=2, mlp_ratio=1), None
    else:
        model = (cnn(widths=(3, 4)) if name == "cnn" else resnet(widths=(2, 3), blocks=(1, 1)))
        x = torch.randn(16, 1, 6, 6, generator=g)
    if x is None:
        ids = torch.randint(0, 5, (16, 4), generator=g)
        x, y = ids, next_token_targets(ids)
    else:
        y = torch.randint(0, 10, (16,), generator=g)
    result = ra.assay_model(model, (x[:8], y[:8]), (x[8:], y[8:]), config=ra.AssayConfig(
        utilities=["gxd", "gxd_ig", "gxd2", "oracle"], metrics=["l1"], joint=False))
    assert result.notes[result.notes.utility != "verdict"].empty  # (reliability flags aside)
    scores = result.units[["gxd_ig", "gxd2"]]
    assert scores.notna().all().all() and (scores >= 0).all().all()
