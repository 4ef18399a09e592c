"""Continual backprop (SPEC S7): online utilities, the selection rule, the accumulator and the
compensated reset, checked against hand computations and the offline utilities of SPEC S3."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from resetassay.discovery.units import unit_layers
from resetassay.errors import BadInputError
from resetassay.models import create_model
from resetassay.names import ONLINE_UTILITIES, RANDOM
from resetassay.scoring.calibration import calibration_stats
from resetassay.scoring.registry import UTILITIES, unit_scores
from resetassay.train.cbp import CBPConfig, ContinualBackprop

pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp(widths: tuple[int, ...] = (6, 5), **kwargs: object):
    return create_model("mlp", in_features=8, widths=list(widths), **kwargs)


def _cbp(model, x: torch.Tensor, **config: object) -> ContinualBackprop:
    return ContinualBackprop(model, CBPConfig(**{"replacement_rate": 0.0, **config}), x[:2])


def _track(model, cbp: ContinualBackprop, batches: list[torch.Tensor]) -> None:
    """Forward each batch in train mode and update the online state (no SGD step)."""
    model.train()
    for xb in batches:
        model(xb)
        cbp.update()


@pytest.mark.parametrize("layer_name", ["layers.0.act", "layers.1.act"])
def test_reset_keeps_logits_when_the_unit_sits_at_its_running_mean(layer_name: str) -> None:
    """A constant unit h ≡ 0.7 has bias-corrected running mean 0.7; resetting it moves no logit."""
    model, unit = _mlp(), 2
    x = torch.randn(16, 8)
    cbp = _cbp(model, x, decay=0.9)
    site = cbp.traces[layer_name].site
    with torch.no_grad():
        site.producer.weight[unit] = 0
        site.producer.bias[unit] = 0.7  # relu(0.7) = 0.7 on every input
    _track(model, cbp, list(x.split(4)))
    assert float(cbp.state()[f"{layer_name}.reference"][unit]) == pytest.approx(0.7, rel=1e-6)
    # without compensation the consumer would move by w_out * 0.7: large enough to see
    assert float((site.consumer.weight[:, unit].detach() * 0.7).abs().max()) > 0.05
    before = model.eval()(x).detach()
    cbp.reset_unit(layer_name, unit)
    after = model(x).detach()
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    assert torch.count_nonzero(site.consumer.weight[:, unit]) == 0
    assert torch.count_nonzero(site.producer.weight[unit]) == site.producer.in_features  # resampled


def test_reset_of_a_conv_unit_keeps_logits_when_a_linear_head_reads_it() -> None:
    """CNN: a channel constant at 0.7 (zero conv row, BatchNorm bias 0.7) feeds the pooled head."""
    model = create_model("cnn", widths=[4, 6])
    x = torch.rand(12, 1, 8, 8)
    cbp = ContinualBackprop(model, CBPConfig(replacement_rate=0.0, decay=0.9), x[:2])
    site, unit = cbp.traces["blocks.1.act"].site, 3
    with torch.no_grad():
        site.producer.weight[unit] = 0
        site.producer_norm.bias[unit] = 0.7
    _track(model, cbp, list(x.split(4)))
    assert float(cbp.state()["blocks.1.act.reference"][unit]) == pytest.approx(0.7, rel=1e-6)
    before = model.eval()(x).detach()
    cbp.reset_unit("blocks.1.act", unit)
    torch.testing.assert_close(model(x).detach(), before, atol=1e-5, rtol=0)
    assert site.producer_norm.weight[unit].item() == 1 and site.producer_norm.bias[unit].item() == 0


def test_reset_into_a_bias_free_conv_moves_its_batchnorm_mean_away_from_the_border() -> None:
    """CNN blocks.0 -> blocks.1.conv (no bias): the compensation goes to blocks.1.bn's running mean,
    exact (eval mode) at the output positions whose 3x3 window does not touch the zero padding."""
    model = create_model("cnn", widths=[4, 6])
    x = torch.rand(12, 1, 8, 8)
    cbp = ContinualBackprop(model, CBPConfig(replacement_rate=0.0, decay=0.9), x[:2])
    site, unit = cbp.traces["blocks.0.act"].site, 1
    with torch.no_grad():
        site.producer.weight[unit] = 0
        site.producer_norm.bias[unit] = 0.7
    _track(model, cbp, list(x.split(4)))
    seen = {}
    model.blocks[1].bn.register_forward_hook(lambda _m, _i, out: seen.__setitem__("bn", out.detach()))
    model.eval()(x)
    before = seen["bn"]
    cbp.reset_unit("blocks.0.act", unit)
    model(x)
    # stride 2 on 8x8 -> 4x4; output o reads inputs 2o-1 .. 2o+1, inside the image for o >= 1
    torch.testing.assert_close(seen["bn"][:, :, 1:, 1:], before[:, :, 1:, 1:], atol=1e-5, rtol=0)


def test_reset_picks_the_mature_unit_of_lowest_bias_corrected_utility() -> None:
    model = _mlp(widths=(4,))
    cbp = _cbp(model, torch.randn(4, 8), replacement_rate=0.5, maturity=10, decay=0.99)
    trace = cbp.traces["layers.0.act"]
    trace.age = torch.tensor([5, 11, 200, 300])
    trace.utility = torch.tensor([0.01, 0.3, 0.5, 2.0], dtype=torch.float64)
    # unit 0 is immature (age 5 <= 10) although its utility is lowest; bias-corrected by hand:
    # 0.3 / (1 - .99^11) = 2.865, 0.5 / (1 - .99^200) = 0.577, 2.0 / (1 - .99^300) = 2.103
    # so unit 2 goes, not unit 1 (lowest raw utility among the mature units)
    assert cbp.replace() == 1  # c = 3 eligible * 0.5 = 1.5
    assert trace.age.tolist() == [5, 11, 0, 300]
    assert trace.pending == pytest.approx(0.5)
    assert float(trace.utility[2]) == 0 and float(trace.mean[2]) == 0


def test_replacement_accumulator_adds_n_eligible_times_rho_and_spends_one_per_reset() -> None:
    model = _mlp(widths=(4,))
    cbp = _cbp(model, torch.randn(4, 8), replacement_rate=0.25, maturity=0)
    trace = cbp.traces["layers.0.act"]
    trace.age = torch.full((4,), 1000)
    trace.utility = torch.tensor([0.4, 0.1, 0.3, 0.2], dtype=torch.float64)
    resets, pending = [], []
    for _ in range(5):
        resets.append(cbp.replace())
        pending.append(trace.pending)
    # eligible 4 -> c 1.0 -> 1 reset; 3 -> 0.75; 3 -> 1.5 -> 1 reset; 2 -> 1.0 -> 1 reset; 1 -> 0.25
    assert resets == [1, 0, 1, 1, 0]
    assert pending == pytest.approx([0.0, 0.75, 0.5, 0.0, 0.25])
    assert trace.age.tolist() == [1000, 0, 0, 0]  # lowest utilities first: units 1, 3, 2


def test_replacement_rate_one_resets_every_mature_unit_at_once() -> None:
    model = _mlp(widths=(4,))
    cbp = _cbp(model, torch.randn(4, 8), replacement_rate=1.0, maturity=3)
    trace = cbp.traces["layers.0.act"]
    trace.age = torch.tensor([2, 9, 9, 9])
    assert cbp.replace() == 3
    assert trace.age.tolist() == [2, 0, 0, 0] and trace.pending == 0


@pytest.mark.parametrize("utility", ["contribution", "mc_adaptable"])
def test_ema_and_bias_correction_match_a_hand_computation(utility: str) -> None:
    """f_t = η f + (1-η) mean h, u_t = η u + (1-η) u_batch(r̂_t), stored r̂ = f/(1-η^t), û = u/(1-η^t)."""
    model, decay = _mlp(widths=(4, 3)), 0.9
    batches = list(torch.randn(15, 8).split(5))
    cbp = _cbp(model, batches[0], utility=utility, decay=decay)
    _track(model, cbp, batches)
    w0, b0 = model.layers[0].linear.weight.detach().double(), model.layers[0].linear.bias.detach().double()
    w_out = model.layers[1].linear.weight.detach().double()
    f = u = torch.zeros(4, dtype=torch.float64)
    for t, xb in enumerate(batches, start=1):
        h = torch.relu(xb.double() @ w0.T + b0)
        f = decay * f + (1 - decay) * h.mean(0)
        r = f / (1 - decay ** t)
        if utility == "contribution":
            now = h.abs().mean(0) * w_out.abs().sum(0)
        else:
            now = (h - r).abs().mean(0) * w_out.abs().sum(0) / w0.abs().sum(1)
        u = decay * u + (1 - decay) * now
    state, t = cbp.state(), len(batches)
    torch.testing.assert_close(state["layers.0.act.reference"].double(), f / (1 - decay ** t), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(state["layers.0.act.utility"].double(), u / (1 - decay ** t), rtol=1e-5, atol=1e-7)
    assert state["layers.0.act.age"].tolist() == [3, 3, 3, 3]


@pytest.mark.parametrize("utility", ONLINE_UTILITIES)
def test_online_utility_after_one_step_equals_the_offline_utility_on_that_batch(utility: str) -> None:
    """After one step (age 1) the bias correction is exact: û = the S3 utility over the batch with
    r = the batch mean, which captum-based `calibration_stats` computes independently."""
    model = _mlp(activation="silu")
    x, y = torch.randn(24, 8), torch.randint(0, 10, (24,))
    cbp = _cbp(model, x, utility=utility)
    model.train()
    logits = model(x)
    cbp.observe(logits, y)
    F.cross_entropy(logits, y).backward()
    cbp.update()
    state = cbp.state()
    model.eval()
    layers = unit_layers(model, x[:2])
    h0 = F.silu(x @ model.layers[0].linear.weight.T + model.layers[0].linear.bias).detach()
    torch.testing.assert_close(state["layers.0.act.reference"], h0.mean(0))  # r̂ after one step = batch mean
    refs = {la.name: state[f"{la.name}.reference"] for la in layers}
    stats = calibration_stats(model, layers, x, y, refs, set(UTILITIES[utility].needs), batch_size=24)
    offline, _ = unit_scores([utility], layers, stats)
    for la in layers:
        torch.testing.assert_close(state[f"{la.name}.utility"], offline[utility][la.name], rtol=1e-4, atol=1e-6)


def test_momentum_of_the_reset_weights_is_cleared_and_the_rest_kept() -> None:
    model = _mlp()
    x, y = torch.randn(8, 8), torch.randint(0, 10, (8,))
    cbp = _cbp(model, x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    site, unit = cbp.traces["layers.0.act"].site, 4
    buffers = {p: optimizer.state[p]["momentum_buffer"].clone() for p in
               (site.producer.weight, site.producer.bias, site.consumer.weight)}
    cbp.reset_unit("layers.0.act", unit, optimizer)
    for p, old in buffers.items():
        now = optimizer.state[p]["momentum_buffer"]
        cleared = (unit,) if p is not site.consumer.weight else (slice(None), unit)
        assert torch.count_nonzero(now[cleared]) == 0
        kept = torch.ones_like(now, dtype=torch.bool)
        kept[cleared] = False
        assert torch.equal(now[kept], old[kept]) and torch.count_nonzero(old[cleared]) > 0


def test_resnet_resets_only_the_act1_layers_and_tracks_the_rest() -> None:
    model = create_model("resnet", widths=[4, 8], blocks=[1, 1])
    cbp = ContinualBackprop(model, CBPConfig(), torch.rand(2, 1, 8, 8))
    assert cbp.reset_layers == ["stages.0.0.act1", "stages.1.0.act1"]
    skipped = cbp.skipped_layers()
    assert set(skipped) == {"stem.act", "stages.0.0.act2", "stages.1.0.act2"}
    assert "residual" in skipped["stem.act"] and "residual" in skipped["stages.1.0.act2"]
    assert cbp.traces["stages.0.0.act1"].site.consumer_norm is model.stages[0][0].bn2


def test_layernorm_mlp_resets_the_linear_before_the_norm_and_the_norm_entry() -> None:
    model = _mlp(layer_norm=True)
    x = torch.randn(8, 8)
    cbp = _cbp(model, x)
    site = cbp.traces["layers.0.act"].site
    assert site.producer is model.layers[0].linear and site.producer_norm is model.layers[0].norm
    with torch.no_grad():
        site.producer_norm.weight.fill_(2.0)
        site.producer_norm.bias.fill_(0.5)
    _track(model, cbp, [x])
    cbp.reset_unit("layers.0.act", 1)
    assert site.producer_norm.weight.tolist() == [2.0, 1.0, 2.0, 2.0, 2.0, 2.0]
    assert site.producer_norm.bias.tolist() == [0.5, 0.0, 0.5, 0.5, 0.5, 0.5]


@pytest.mark.parametrize(
    ("make", "config", "needle"),
    [
        (lambda: _mlp(layer_norm=True), {"utility": "mc_adaptable"}, "`utility` mc_adaptable"),
        (_mlp, {"utility": "gxd_all"}, "`utility` 'gxd_all'"),
        (_mlp, {"replacement_rate": 1.5}, "`replacement_rate`"),
        (_mlp, {"decay": 1.0}, "`decay`"),
    ],
)
def test_bad_cbp_settings_are_refused_naming_the_flag(make, config: dict, needle: str) -> None:
    with pytest.raises(BadInputError, match=needle):
        ContinualBackprop(make(), CBPConfig(**config), torch.randn(2, 8))


def test_random_control_resets_every_eligible_unit_alike() -> None:
    """CBP `random` (the control, SPEC S7) draws afresh each step: over many resets of one layer every unit is
    chosen about equally often. A fixed per-unit score (the assay's seeded `random`) would keep picking the few
    units ranked lowest once they mature again."""
    model = _mlp(widths=(6,))
    x = torch.randn(16, 8)
    cbp = ContinualBackprop(model, CBPConfig(utility=RANDOM, replacement_rate=0.5, maturity=0), x[:2], seed=3)
    picked: list[int] = []
    reset_unit = cbp.reset_unit
    cbp.reset_unit = lambda name, unit, optimizer=None: (picked.append(unit), reset_unit(name, unit, optimizer))
    model.train()
    for _ in range(400):
        model(x)
        cbp.step()
    counts = torch.bincount(torch.tensor(picked), minlength=6).double()
    assert counts.sum() >= 1000
    expected = counts.sum() / 6
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 20.5, counts.tolist()  # χ²(5) beyond 20.5 has p < .001
