"""Models we did not write (SPEC S1, S3, S4): unit layers found by tracing, checked by hand.

The models live in tests/helpers/foreign_models.py (`--model helpers.foreign_models:<factory>`).
Every expected value comes from code in this file that does not use resetassay.discovery.taps: the
torchvision-style ResNet's forward written out with F.relu and an `edit` at every call site,
and, for the MLPs, CBP's compensated reset applied to a copy of the original model (SPEC S4).
Library tests run in float64 and compare with rtol 1e-5 (atol 1e-10 for exact zeros); values
the library returns as float32 means use rtol 1e-5, atol 1e-7; the CLI runs in float32 and
its CSV is compared with rtol 1e-4, atol 1e-6.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers.foreign_models import functional_mlp, gated_mlp, list_mlp, resnet_tv
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from resetassay.cli import app
from resetassay.data import DataSpec, split_calibration_probe, task_arrays
from resetassay.discovery.taps import TappedModel, discovery_route, tap_unit_layers
from resetassay.discovery.units import layer_table, unit_layers
from resetassay.errors import BadInputError
from resetassay.lesion import unit_shocks
from resetassay.models import create_model
from resetassay.scoring.calibration import calibration_stats
from resetassay.scoring.reference import unit_references
from resetassay.scoring.registry import unit_scores

TOL = {"rtol": 1e-5, "atol": 1e-10}
F32_TOL = {"rtol": 1e-5, "atol": 1e-7}
runner = CliRunner()
Edit = Callable[[str, torch.Tensor], torch.Tensor]


def _digits(layout: str, n: int = 60) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Disjoint float64 calibration and probe sets of held-out digits, n each."""
    x, y = task_arrays(DataSpec(layout=layout), "holdout")
    x = x.double()
    return x[:n], y[:n], x[n:2 * n], y[n:2 * n]


def _tapped(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, list]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tapped = tap_unit_layers(model, x[:2])
    assert isinstance(tapped, TappedModel), [str(w.message) for w in caught]  # no fall-back
    return tapped, unit_layers(tapped, x[:2])


# --- the forwards written out by hand ------------------------------------------------------

RESNET_SITES = ["relu", "layer1.0.relu@0", "layer1.0.relu@1", "layer2.0.relu@0", "layer2.0.relu@1"]


def resnet_by_hand(model: nn.Module, x: torch.Tensor, edit: Edit) -> torch.Tensor:
    """ResNetTV's forward with F.relu instead of the shared module, `edit` at every relu call."""
    h = edit("relu", F.relu(model.bn1(model.conv1(x))))
    for name in ("layer1.0", "layer2.0"):
        block = model.get_submodule(name)
        skip = h if block.downsample is None else block.downsample(h)
        out = edit(f"{name}.relu@0", F.relu(block.bn1(block.conv1(h))))
        h = edit(f"{name}.relu@1", F.relu(block.bn2(block.conv2(out)) + skip))
    return model.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def functional_by_hand(m: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    h1 = F.relu(m.fc1(x))
    h2 = F.relu(m.fc2(h1))
    return {"relu@0": h1, "relu@1": h2, "tanh@0": torch.tanh(m.fc3(h2))}


def list_by_hand(m: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    h1 = F.relu(m.layers[0](x))
    return {"layers.1": h1, "layers.3": F.silu(m.layers[2](h1))}


MLPS = {  # factory, hidden activations by hand, producer and consumer of each unit layer by hand
    "functional": (functional_mlp, functional_by_hand,
                   {"relu@0": ("fc1", "fc2"), "relu@1": ("fc2", "fc3"), "tanh@0": ("fc3", "head")}),
    "module_list": (list_mlp, list_by_hand,
                    {"layers.1": ("layers.0", "layers.2"), "layers.3": ("layers.2", "layers.4")}),
}


def _capture(store: dict[str, torch.Tensor]) -> Edit:
    def edit(name: str, h: torch.Tensor) -> torch.Tensor:
        store[name] = h
        return h
    return edit


def _clamp(site: str, unit: int, value: torch.Tensor) -> Edit:
    def edit(name: str, h: torch.Tensor) -> torch.Tensor:
        if name != site:
            return h
        h = h.clone()
        h[:, unit] = value
        return h
    return edit


def _shocks_by_hand(z: torch.Tensor, z_lesioned: torch.Tensor) -> dict[str, float]:
    """SPEC S4: mean L1 of the logit change, mean KL(softmax z || softmax z')."""
    log_p, log_q = torch.log_softmax(z, 1), torch.log_softmax(z_lesioned, 1)
    return {"l1": (z - z_lesioned).abs().sum(1).mean().item(),
            "kl": (log_p.exp() * (log_p - log_q)).sum(1).mean().item()}


def _resnet_refs_and_shocks(model: nn.Module, calib_x: torch.Tensor, probe_x: torch.Tensor):
    """Calibration means per site `(n,)` and shocks[metric][site] `(n,)` of the hand-written forward."""
    with torch.no_grad():
        acts: dict[str, torch.Tensor] = {}
        resnet_by_hand(model, calib_x, _capture(acts))
        refs = {name: h.mean(dim=(0, 2, 3)) for name, h in acts.items()}
        z = resnet_by_hand(model, probe_x, lambda _n, h: h)
        shocks = {m: {name: torch.zeros(len(r), dtype=torch.float64) for name, r in refs.items()}
                  for m in ("l1", "kl")}
        for name, r in refs.items():
            for i in range(len(r)):
                lesioned = resnet_by_hand(model, probe_x, _clamp(name, i, r[i]))
                for m, v in _shocks_by_hand(z, lesioned).items():
                    shocks[m][name][i] = v
    return refs, shocks


# --- discovery -------------------------------------------------------------------------------


def test_resnet_has_one_unit_layer_per_relu_call_site_with_counts_kinds_and_notes():
    calib_x, *_ = _digits("image")
    tapped, layers = _tapped(resnet_tv().double(), calib_x)
    rows = {r["layer"]: r for r in layer_table(layers)}
    assert list(rows) == RESNET_SITES
    assert [r["units"] for r in rows.values()] == [4, 4, 4, 6, 6]  # widths (4, 6)
    assert {r["kind"] for r in rows.values()} == {"conv"}
    by_name = {layer.name: layer for layer in layers}
    # conv -> BatchNorm -> relu: the zoo's convention, producer not applicable, the conv named
    for site, bn, conv in [("relu", "bn1", "conv1"), ("layer1.0.relu@0", "layer1.0.bn1", "layer1.0.conv1"),
                           ("layer2.0.relu@0", "layer2.0.bn1", "layer2.0.conv1")]:
        assert by_name[site].producer is None
        assert by_name[site].producer_note == f"BatchNorm {bn} rescales the producer's output ({conv})"
    for site in ("layer1.0.relu@1", "layer2.0.relu@1"):
        assert by_name[site].producer is None and by_name[site].producer_note.startswith("residual add")
    assert by_name["layer1.0.relu@0"].consumer is tapped.get_submodule("layer1.0.conv2")
    assert by_name["layer2.0.relu@0"].consumer is tapped.get_submodule("layer2.0.conv2")
    assert by_name["layer2.0.relu@1"].consumer is tapped.fc  # through avgpool and flatten(1)
    # read by a conv and by the residual skip: no single consumer, and the note says who reads
    assert by_name["relu"].consumer is None
    assert by_name["relu"].consumer_note == "read by layer1.0.conv1 and by a residual add"
    assert by_name["layer1.0.relu@1"].consumer is None
    assert by_name["layer1.0.relu@1"].consumer_note == "read by layer2.0.conv1 and by layer2.0.downsample.0"


@pytest.mark.parametrize("which", sorted(MLPS))
def test_mlp_unit_layers_have_their_linear_producer_and_consumer(which):
    factory, by_hand, wiring = MLPS[which]
    calib_x, *_ = _digits("flat")
    model = factory().double()
    tapped, layers = _tapped(model, calib_x)
    widths = {name: h.shape[1] for name, h in by_hand(model, calib_x[:2]).items()}
    assert [layer.name for layer in layers] == list(wiring)
    for layer in layers:
        producer, consumer = wiring[layer.name]
        assert (layer.kind, layer.n_units) == ("linear", widths[layer.name])
        assert layer.producer is model.get_submodule(producer)
        assert layer.consumer is model.get_submodule(consumer)


def test_mc_adaptable_on_functional_mlp_uses_the_traced_producer_and_consumer():
    calib_x, calib_y, *_ = _digits("flat")
    model = functional_mlp().double()
    tapped, layers = _tapped(model, calib_x)
    with torch.no_grad():
        acts = functional_by_hand(model, calib_x)
        refs = {name: h.mean(0) for name, h in acts.items()}
        h, r = acts["relu@1"], refs["relu@1"]
        # SPEC S3: E|h - r| * sum_k |w_out[k, i]| (fc3 reads relu@1) / sum_j |w_in[i, j]| (fc2 makes it)
        expected = (h - r).abs().mean(0) * model.fc3.weight.abs().sum(0) / model.fc2.weight.abs().sum(1)
    stats = calibration_stats(tapped, layers, calib_x, calib_y, refs, {"abs_dev"})
    scores, notes = unit_scores(["mc_adaptable"], layers, stats)
    assert notes == {}
    torch.testing.assert_close(scores["mc_adaptable"]["relu@1"].double(), expected, **F32_TOL)


def test_functional_calls_are_named_by_scope_and_index_and_an_output_activation_is_skipped():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 5)

        def forward(self, x):
            return F.silu(self.fc(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block, self.head = Block(), nn.Linear(5, 3)

        def forward(self, x):
            h = torch.relu(self.block(self.block(x)))  # one Block called twice
            return torch.sigmoid(self.head(h))         # output only: no hidden units

    x = torch.randn(4, 5)
    tapped, layers = _tapped(Net(), x)
    assert [(layer.name, layer.n_units) for layer in layers] == [("block.silu@0", 5), ("block.silu@1", 5),
                                                                ("relu@0", 5)]
    assert layers[0].consumer is tapped.block.fc and layers[1].consumer is None


def test_layers_globs_select_over_call_site_names():
    calib_x, *_ = _digits("image")
    tapped = tap_unit_layers(resnet_tv(), calib_x[:2].float())
    picked = unit_layers(tapped, calib_x[:2].float(), ["layer*.relu@1"])
    assert [layer.name for layer in picked] == ["layer1.0.relu@1", "layer2.0.relu@1"]
    with pytest.raises(BadInputError, match="layer1.0.relu@0"):  # the message lists what exists
        unit_layers(tapped, calib_x[:2].float(), ["nothing*"])


def test_zoo_model_keeps_its_declared_unit_layers():
    model = create_model("resnet")
    assert tap_unit_layers(model, torch.zeros(2, 1, 8, 8)) is model


# --- the traced model is the model -------------------------------------------------------------


class Unusual(nn.Module):
    """A never-called Linear, a non-persistent buffer and a tensor built inside forward."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.unused = nn.Linear(4, 6), nn.Linear(6, 3), nn.Linear(2, 2)
        self.register_buffer("scale", torch.tensor(2.0), persistent=False)
        self.register_buffer("shift", torch.tensor(0.5))

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x) * self.scale + self.shift) + torch.tensor(1.0))


@pytest.mark.parametrize("factory, shape", [(Unusual, (3, 4)), (resnet_tv, (3, 1, 8, 8)),
                                            (functional_mlp, (3, 64)), (list_mlp, (3, 64))])
def test_traced_model_shares_every_tensor_under_the_same_state_dict_keys(factory, shape):
    model = factory().eval()
    x = torch.rand(shape)
    tapped, _ = _tapped(model, x)
    ours, theirs = tapped.state_dict(keep_vars=True), model.state_dict(keep_vars=True)
    assert list(sorted(ours)) == list(sorted(theirs))
    assert all(ours[k] is theirs[k] for k in theirs)
    with torch.no_grad():  # shared, not copied: changing the model changes the traced graph
        first = next(p for p in model.parameters())
        first.add_(1.0)
        torch.testing.assert_close(tapped(x), model(x), rtol=0, atol=0)


def test_deep_copy_of_a_traced_model_declares_the_same_unit_layers():
    x = torch.rand(3, 1, 8, 8)
    tapped, _ = _tapped(resnet_tv(), x)
    twin = copy.deepcopy(tapped)
    assert twin.unit_layer_specs() == tapped.unit_layer_specs()
    torch.testing.assert_close(twin(x), tapped(x), rtol=0, atol=0)


def test_graph_that_does_not_reproduce_the_model_falls_back_to_hooks_with_a_warning():
    class Counting(nn.Module):  # fx bakes the Python counter into the graph as a constant
        def __init__(self):
            super().__init__()
            self.fc, self.act, self.calls = nn.Linear(3, 3), nn.ReLU(), 0

        def forward(self, x):
            self.calls += 1
            return self.fc(self.act(x)) * self.calls

    model = Counting()
    with pytest.warns(UserWarning, match="does not reproduce the model's outputs.*forward hooks"):
        tapped = tap_unit_layers(model, torch.randn(2, 3))
    assert discovery_route(tapped) == "hooks"
    assert [layer.name for layer in unit_layers(tapped, torch.randn(2, 3))] == ["act"]


# --- lesions, references and utilities on the taps equal the hand-written forward -------------


@pytest.mark.slow
def test_each_relu_call_site_is_lesioned_on_its_own_and_equals_the_hand_written_forward():
    calib_x, _, probe_x, _ = _digits("image")
    model = resnet_tv().double()
    tapped, layers = _tapped(model, calib_x)
    refs, expected = _resnet_refs_and_shocks(model, calib_x, probe_x)

    library_refs = unit_references(tapped, layers, calib_x)
    for name in RESNET_SITES:
        torch.testing.assert_close(library_refs[name].double(), refs[name], **F32_TOL)
    shocks = unit_shocks(tapped, layers, refs, probe_x, ["l1", "kl"], engine="plain")
    for metric in ("l1", "kl"):
        for name in RESNET_SITES:
            torch.testing.assert_close(shocks[metric][name], expected[metric][name], **TOL)
    # the two calls of one module are two unit layers with different damage
    assert (shocks["l1"]["layer1.0.relu@0"] - shocks["l1"]["layer1.0.relu@1"]).abs().max() > 1e-3


@pytest.mark.parametrize("max_k", [1, 3])
def test_fast_engine_splits_at_the_taps_and_equals_the_hand_written_forward(max_k, caplog):
    calib_x, _, probe_x, _ = _digits("image", n=40)
    model = resnet_tv().double()
    tapped, layers = _tapped(model, calib_x)
    refs, expected = _resnet_refs_and_shocks(model, calib_x, probe_x)
    shocks = unit_shocks(tapped, layers, refs, probe_x, ["l1", "kl"], max_k=max_k, engine="fast")
    assert not [r.message for r in caplog.records if r.name == "resetassay.lesion.fast"]  # no fall-back path
    for metric in ("l1", "kl"):
        for name in RESNET_SITES:
            torch.testing.assert_close(shocks[metric][name], expected[metric][name], **TOL)


@pytest.mark.parametrize("which", sorted(MLPS))
def test_mlp_lesion_equals_compensated_reset_of_the_original_model(which):
    factory, by_hand, wiring = MLPS[which]
    calib_x, _, probe_x, _ = _digits("flat")
    model = factory().double()
    tapped, layers = _tapped(model, calib_x)
    with torch.no_grad():
        refs = {name: h.mean(0) for name, h in by_hand(model, calib_x).items()}
        z = model(probe_x)
    library_refs = unit_references(tapped, layers, calib_x)
    shocks = unit_shocks(tapped, layers, refs, probe_x, ["l1", "kl"], engine="plain")
    for name, (_, consumer) in wiring.items():
        torch.testing.assert_close(library_refs[name].double(), refs[name], **F32_TOL)
        for i in range(len(refs[name])):
            reset = copy.deepcopy(model)
            head = reset.get_submodule(consumer)
            with torch.no_grad():  # SPEC S4: zero w_out[:, i], add w_out[:, i] * r_i to the bias
                head.bias += head.weight[:, i] * refs[name][i]
                head.weight[:, i] = 0
                expected = _shocks_by_hand(z, reset(probe_x))
            for metric in ("l1", "kl"):
                assert shocks[metric][name][i].item() == pytest.approx(expected[metric], **{"rel": 1e-5,
                                                                                            "abs": 1e-10})


def test_captum_gradients_at_each_call_site_equal_autograd_through_the_hand_written_forward():
    calib_x, calib_y, *_ = _digits("image")
    model = resnet_tv().double()
    tapped, layers = _tapped(model, calib_x)
    refs, _ = _resnet_refs_and_shocks(model, calib_x, calib_x[:1])
    stats = calibration_stats(tapped, layers, calib_x, calib_y, refs, {"abs_act", "gxi", "gxd", "loss_grad"},
                              batch_size=25)

    acts: dict[str, torch.Tensor] = {}

    def keep_grad(name: str, h: torch.Tensor) -> torch.Tensor:
        h.retain_grad()
        acts[name] = h
        return h

    resnet_by_hand(model, calib_x, keep_grad).gather(1, calib_y[:, None]).sum().backward()
    target_grads = {name: h.grad for name, h in acts.items()}
    F.cross_entropy(resnet_by_hand(model, calib_x, keep_grad), calib_y, reduction="sum").backward()
    for name, h in acts.items():
        h, g, r = h.detach(), target_grads[name], refs[name].view(1, -1, 1, 1)
        expected = {
            "abs_act": h.abs().mean(dim=(0, 2, 3)),
            "gxi": (h * g).sum(dim=(2, 3)).abs().mean(0),
            "gxd": ((h - r) * g).sum(dim=(2, 3)).abs().mean(0),
            "loss_grad": acts[name].grad.sum(dim=(2, 3)).abs().mean(0),
        }
        for key, value in expected.items():
            torch.testing.assert_close(getattr(stats[name], key).double(), value, **F32_TOL)


# --- models fx cannot trace ----------------------------------------------------------------------


def test_untraceable_model_gets_one_unit_layer_per_call_of_its_reused_module():
    model = gated_mlp()
    x = torch.rand(2, 64)
    with pytest.warns(UserWarning, match=r"GatedMLP: torch\.fx cannot trace it .*control flow") as caught:
        tapped = tap_unit_layers(model, x)
    assert "\n" not in str(caught[0].message)
    assert discovery_route(tapped) == "hooks"
    assert [(layer.name, layer.n_units) for layer in unit_layers(tapped, x)] == [("act@0", 8), ("act@1", 8)]


def test_untraceable_model_without_reuse_keeps_its_activation_modules():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.act1, self.fc2, self.act2 = nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Tanh()

        def forward(self, x):
            h = self.act1(self.fc1(x))
            return self.fc2(h if h.sum() > 0 else -h).neg().neg() + self.act2(h).sum(1, keepdim=True)

    model = Branchy()
    with pytest.warns(UserWarning, match="torch.fx cannot trace"):
        same = tap_unit_layers(model, torch.randn(2, 3))
    assert [(layer.name, layer.n_units) for layer in unit_layers(same, torch.randn(2, 3))] == [("act1", 4),
                                                                                              ("act2", 4)]


def test_a_tap_name_clash_falls_back_to_hooks_rather_than_guessing():
    class Clash(nn.Module):  # module self.relu called twice and F.relu: both would be "relu@0"
        def __init__(self):
            super().__init__()
            self.fc, self.relu = nn.Linear(3, 3), nn.ReLU()

        def forward(self, x):
            return self.fc(self.relu(self.fc(F.relu(self.relu(x) - 1))))

    model = Clash()
    with pytest.warns(UserWarning, match="relu@0"):
        tapped = tap_unit_layers(model, torch.randn(2, 3))
    assert discovery_route(tapped) == "hooks"  # the module's two calls; F.relu is not seen
    assert [layer.name for layer in unit_layers(tapped, torch.randn(2, 3))] == ["relu@0", "relu@1"]


# --- the command line ----------------------------------------------------------------------------


def _invoke(args: list[str]):
    result = runner.invoke(app, args)
    return result, result.output


@pytest.mark.slow
def test_cli_assays_a_foreign_resnet_state_dict_and_matches_the_hand_written_forward(tmp_path):
    """`resetassay run STATE.safetensors --model foreign_models:resnet_tv --data digits-image`."""
    model = resnet_tv(seed=7)
    save_file(model.state_dict(), tmp_path / "resnet.safetensors")
    out = tmp_path / "run"
    result, output = _invoke(["run", str(tmp_path / "resnet.safetensors"),
                              "--model", "helpers.foreign_models:resnet_tv", "--data", "digits-image",
                              "--calib-size", "80", "--probe-size", "80",
                              "--utilities", "gxd,contribution,activation", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, output
    units = pd.read_csv(out / "units.csv")
    assert list(units.drop_duplicates("layer")["layer"]) == RESNET_SITES

    x, y = task_arrays(DataSpec(layout="image", permuted=False), "holdout")  # `data` digits-image: plain digits
    split = split_calibration_probe(x, y, 80, 80, seed=0)
    refs, expected = _resnet_refs_and_shocks(model, split.calib_x, split.probe_x)
    for name in RESNET_SITES:
        rows = units[units["layer"] == name].sort_values("unit")
        for column, want in [("reference", refs[name]), ("shock_l1", expected["l1"][name]),
                             ("shock_kl", expected["kl"][name])]:
            got = torch.tensor(rows[column].to_numpy(), dtype=torch.float64)
            torch.testing.assert_close(got, want.double(), rtol=1e-4, atol=1e-6)
    notes = pd.read_csv(out / "notes.csv")
    residual = notes[(notes["layer"] == "layer1.0.relu@1") & (notes["utility"] == "contribution")]
    assert list(residual["reason"]) == ["read by layer2.0.conv1 and by layer2.0.downsample.0"]
    assert not ((notes["layer"] == "layer1.0.relu@0") & (notes["utility"] == "contribution")).any()


@pytest.mark.slow
def test_cli_loads_a_pt_state_dict_with_extra_keys_and_globs_functional_layers(tmp_path):
    torch.save({**functional_mlp(seed=3).state_dict(), "optimizer.step": torch.tensor(9)}, tmp_path / "mlp.pt")
    out = tmp_path / "run"
    result, output = _invoke(["run", str(tmp_path / "mlp.pt"), "--model", "helpers.foreign_models:functional_mlp",
                              "--data", "digits", "--layers", "relu@*", "--calib-size", "60", "--probe-size", "60",
                              "--utilities", "gxd,mc_adaptable", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, output
    assert "ignoring keys the model lacks: optimizer.step" in output
    units = pd.read_csv(out / "units.csv")
    assert units.groupby("layer", sort=False).size().to_dict() == {"relu@0": 12, "relu@1": 10}
    notes = pd.read_csv(out / "notes.csv")
    assert notes[notes.utility != "verdict"].empty  # Linear producer and consumer: every utility applies


@pytest.mark.slow
def test_cli_inspect_lists_call_sites_with_kind_units_producer_and_consumer(tmp_path):
    save_file(resnet_tv().state_dict(), tmp_path / "resnet.safetensors")
    args = ["inspect", str(tmp_path / "resnet.safetensors"), "--model", "helpers.foreign_models:resnet_tv",
            "--data", "digits-image"]
    result, output = _invoke(args)
    assert result.exit_code == 0, output
    for name in RESNET_SITES:
        assert name in output
    assert "layer1.0.conv2" in output and "conv" in output
    result, output = _invoke([*args, "--layers", "layer2.*"])
    assert result.exit_code == 0, output
    assert "layer2.0.relu@1" in output and "layer1.0.relu@0" not in output


@pytest.mark.slow
def test_cli_assays_each_call_of_the_reused_module_of_an_untraceable_model(tmp_path):
    save_file(gated_mlp().state_dict(), tmp_path / "gated.safetensors")
    result, output = _invoke(["run", str(tmp_path / "gated.safetensors"), "--model", "helpers.foreign_models:gated_mlp",
                              "--data", "digits", "--calib-size", "40", "--probe-size", "40",
                              "--utilities", "gxd,activation", "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, output
    assert "torch.fx cannot trace" in output
    units = pd.read_csv(tmp_path / "run" / "units.csv")
    assert units.groupby("layer", sort=False).size().to_dict() == {"act@0": 8, "act@1": 8}


def test_a_view_by_batch_size_flatten_keeps_the_fc_as_the_consumer():
    """`out.view(out.size(0), -1)` (CIFAR ResNet repositories) reads like flatten(1): the size query reads the shape,
    not the units, so the last relu's consumer is still the fc and `contribution` applies."""
    calib_x, *_ = _digits("image")
    tapped, layers = _tapped(resnet_tv(flatten="view").double(), calib_x)
    last = {layer.name: layer for layer in layers}["layer2.0.relu@1"]
    assert last.consumer is tapped.fc, last.consumer_note


def test_attention_modules_without_a_head_tap_are_said_not_silently_dropped():
    """An attention module whose heads are not recognised gets a warning naming it ("attention heads not found");
    a nanoGPT-shaped model, whose heads are found, gets none."""
    import warnings

    from helpers.foreign_models import nano_gpt_full, opaque_attention_net

    ids = torch.randint(0, 16, (2, 8), generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match=r"attention heads not found in 1 attention module\(s\) \(attention\)"):
        tap_unit_layers(opaque_attention_net(), ids)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        tapped = tap_unit_layers(nano_gpt_full(), ids)
    assert not [w for w in said if "attention heads" in str(w.message)], [str(w.message) for w in said]
    assert "model.transformer.h.0.attn.heads" in dict(tapped.named_modules())
