"""Unit discovery that does not give up (SPEC S1): the hook route (forced here; by default torch.export is tried
first, tests/discovery/test_taps.py) gives models fx cannot trace their unit layers.

`tap_unit_layers` on a model with `if x.dim() != 2:` in forward (fx cannot trace it) counts the
calls of its activation modules on the example batch and taps each call of a reused one. Expected
values come from the same model without the branch (traced by fx) and from its forward written
out by hand below, which does not use resetassay. Float64 throughout; rtol 1e-9.
"""

from __future__ import annotations

import contextlib
import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from helpers import foreign_models
from helpers.foreign_models import shape_branch_mlp
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from resetassay.cli import app
from resetassay.discovery.taps import HOOK_NOTE, discovery_route, tap_unit_layers
from resetassay.discovery.units import unit_layers
from resetassay.errors import BadInputError
from resetassay.lesion import unit_shocks
from resetassay.models import create_model
from resetassay.scoring.calibration import calibration_stats
from resetassay.scoring.reference import unit_references
from resetassay.scoring.registry import needed_ingredients

TIGHT = {"rtol": 1e-9, "atol": 1e-12}
SITES = ["relu@0", "relu@1"]


def _data(n: int = 30) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2 * n, 64, generator=g, dtype=torch.float64)
    return x[:n], torch.randint(0, 4, (n,), generator=g), x[n:]


def _both(seed: int = 0):
    """(hook-tapped ShapeBranchMLP, its layers, fx-tapped twin without the branch, its layers)."""
    calib_x, _, _ = _data()
    model = shape_branch_mlp(seed).double()
    twin = shape_branch_mlp(seed, branch=False).double()
    with pytest.warns(UserWarning, match=r"ShapeBranchMLP: torch\.fx cannot trace it .*forward hooks"):
        hooked = tap_unit_layers(model, calib_x[:2], routes=("fx", "hooks"))
    traced = tap_unit_layers(twin, calib_x[:2])
    return hooked, unit_layers(hooked, calib_x[:2]), traced, unit_layers(traced, calib_x[:2])


def by_hand(m: nn.Module, x: torch.Tensor, site: str | None = None, unit: int = 0,
            value: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ShapeBranchMLP's forward for (B, 64) inputs, the k-th relu call clamped at `site` ("relu@k")."""
    acts = {}
    h = x
    for k, fc in enumerate((m.fc1, m.fc2)):
        h = F.relu(fc(h))
        if site == f"relu@{k}":
            h = h.clone()
            h[:, unit] = value
        acts[f"relu@{k}"] = h
    return m.head(h), acts


def _shocks_by_hand(z: torch.Tensor, z_lesioned: torch.Tensor) -> dict[str, float]:
    """SPEC S4: mean L1 of the logit change, mean KL(softmax z || softmax z')."""
    log_p, log_q = torch.log_softmax(z, 1), torch.log_softmax(z_lesioned, 1)
    return {"l1": (z - z_lesioned).abs().sum(1).mean().item(),
            "kl": (log_p.exp() * (log_p - log_q)).sum(1).mean().item()}


def test_hook_route_names_each_call_of_a_reused_module_as_the_fx_route_does():
    hooked, layers, traced, twin_layers = _both()
    assert discovery_route(hooked) == "hooks" and discovery_route(traced) == "fx"
    assert [(la.name, la.kind, la.n_units) for la in layers] == [("relu@0", "linear", 7), ("relu@1", "linear", 5)]
    assert [la.name for la in twin_layers] == SITES
    for layer in layers:
        assert layer.producer is None and layer.consumer is None
        assert layer.producer_note == layer.consumer_note == HOOK_NOTE
    assert layers[0].module is not layers[1].module


def test_route_is_reported_for_every_kind_of_model():
    model = create_model("mlp", in_features=4, widths=(3,), n_classes=2)
    assert discovery_route(tap_unit_layers(model, torch.randn(2, 4))) == "declared"
    assert discovery_route(nn.Sequential(nn.Linear(4, 3), nn.ReLU())) == "modules"


def test_hook_route_gives_the_models_outputs_and_shares_its_state():
    calib_x, _, probe_x = _data()
    model = shape_branch_mlp().double()
    with pytest.warns(UserWarning):
        hooked = tap_unit_layers(model, calib_x[:2], routes=("fx", "hooks"))
    torch.testing.assert_close(hooked(probe_x), model(probe_x), rtol=0, atol=0)
    ours, theirs = hooked.state_dict(keep_vars=True), model.state_dict(keep_vars=True)
    assert sorted(ours) == sorted(theirs) and all(ours[k] is theirs[k] for k in theirs)
    assert not model.relu._forward_hooks and not model._forward_pre_hooks  # the user's model is untouched
    twin = copy.deepcopy(hooked)  # a deep copy dispatches to its own taps
    assert twin.unit_layer_specs() == hooked.unit_layer_specs()
    calls = []
    handle = twin.get_submodule("relu@1").register_forward_hook(lambda *_: calls.append(1))
    hooked(probe_x), twin(probe_x)
    handle.remove()
    assert calls == [1]


def test_a_later_forward_calling_a_module_more_often_is_refused_not_mixed():
    calib_x, _, _ = _data()
    with pytest.warns(UserWarning):
        hooked = tap_unit_layers(shape_branch_mlp().double(), calib_x[:2], routes=("fx", "hooks"))
    with pytest.raises(BadInputError, match="module relu is called more than the 2 times per forward"):
        hooked(calib_x.view(-1, 1, 8, 8))  # takes the branch: a third call
    hooked(calib_x)  # counting starts again with each forward


@pytest.mark.slow
def test_references_and_shocks_equal_the_traced_twin_and_the_hand_written_forward():
    calib_x, _, probe_x = _data()
    hooked, layers, traced, twin_layers = _both()
    model = hooked  # parameters shared with the model: the hand-written forward reads them
    with torch.no_grad():
        _, acts = by_hand(model, calib_x)
        refs = {name: h.mean(0) for name, h in acts.items()}
        z, _ = by_hand(model, probe_x)
        expected = {m: {name: torch.zeros(len(refs[name]), dtype=torch.float64) for name in SITES}
                    for m in ("l1", "kl")}
        for name in SITES:
            for i in range(len(refs[name])):
                zl, _ = by_hand(model, probe_x, name, i, refs[name][i])
                for metric, value in _shocks_by_hand(z, zl).items():
                    expected[metric][name][i] = value

    hook_refs, fx_refs = unit_references(hooked, layers, calib_x), unit_references(traced, twin_layers, calib_x)
    for name in SITES:
        torch.testing.assert_close(hook_refs[name], fx_refs[name], **TIGHT)
        torch.testing.assert_close(hook_refs[name].double(), refs[name], rtol=1e-6, atol=1e-7)  # returned as float32

    metrics = ["l1", "kl"]
    hook_plain = unit_shocks(hooked, layers, refs, probe_x, metrics, engine="plain")
    fx_plain = unit_shocks(traced, twin_layers, refs, probe_x, metrics, engine="plain")
    for metric in metrics:
        for name in SITES:
            torch.testing.assert_close(hook_plain[metric][name], fx_plain[metric][name], **TIGHT)
            torch.testing.assert_close(hook_plain[metric][name], expected[metric][name], **TIGHT)
    assert (hook_plain["l1"]["relu@0"] > 0).any() and (hook_plain["l1"]["relu@1"] > 0).any()


def test_fast_engine_equals_plain_on_the_hook_route(caplog):
    calib_x, _, probe_x = _data()
    hooked, layers, _, _ = _both()
    refs = unit_references(hooked, layers, calib_x)
    plain = unit_shocks(hooked, layers, refs, probe_x, ["l1", "kl"], engine="plain")
    with caplog.at_level(logging.WARNING, logger="resetassay.lesion.fast"):
        fast = unit_shocks(hooked, layers, refs, probe_x, ["l1", "kl"], engine="fast", max_k=3)
    assert "expanded-input path" in caplog.text
    for metric in ("l1", "kl"):
        for name in SITES:
            torch.testing.assert_close(fast[metric][name], plain[metric][name], **TIGHT)


def test_captum_utilities_on_the_hook_route_equal_the_traced_twin():
    calib_x, calib_y, _ = _data()
    hooked, layers, traced, twin_layers = _both()
    refs = unit_references(hooked, layers, calib_x)
    needs = needed_ingredients(["gxd", "activation", "loss_gradient"])
    ours = calibration_stats(hooked, layers, calib_x, calib_y, refs, needs, batch_size=16)
    theirs = calibration_stats(traced, twin_layers, calib_x, calib_y, refs, needs, batch_size=16)
    for name in SITES:
        for key in needs:
            torch.testing.assert_close(getattr(ours[name], key), getattr(theirs[name], key), rtol=1e-6, atol=1e-9)
        assert ours[name].gxd.abs().sum() > 0


class _LinearNorm(nn.Module):
    """fx traces it: two Linear layers around a LayerNorm, no activation at all."""

    def __init__(self):
        super().__init__()
        self.fc, self.norm, self.head = nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.norm(self.fc(x)).mean(1))


class _DataBranch(_LinearNorm):
    """Neither fx nor export traces it (a branch on a tensor's value); no activation module for hooks either."""

    def forward(self, x):
        x = self.norm(self.fc(x))
        if x.sum() > 0:
            x = x * 2
        return self.head(x.mean(1))


@pytest.mark.parametrize("factory", [_LinearNorm, _DataBranch])
def test_a_model_without_any_unit_layer_is_refused_in_one_line(factory):
    model = factory().eval()
    fx_fails = factory is _DataBranch
    warned = pytest.warns(UserWarning, match="fx cannot trace") if fx_fails else contextlib.nullcontext()
    with warned, pytest.raises(BadInputError, match=r"no unit layer found in \w+: .*unit_layer_specs") as err:
        tap_unit_layers(model, torch.randn(2, 4, 8))
    assert "\n" not in str(err.value)



@pytest.mark.parametrize(("factory", "route", "names"), [
    ("list_mlp", "fx", ["layers.1", "layers.3"]),
    ("shape_branch_mlp", "export", SITES),
    ("gated_mlp", "hooks", ["act@0", "act@1"]),
])
def test_cli_inspect_names_the_route_that_found_the_units(tmp_path, factory, route, names):
    """`inspect` says which route found the unit layers, on one line whatever the table's width."""
    save_file(getattr(foreign_models, factory)().state_dict(), tmp_path / "m.safetensors")
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "m.safetensors"), "--model",
                                      f"helpers.foreign_models:{factory}", "--input-shape", "64"])
    assert result.exit_code == 0, result.output
    assert f"m.safetensors (unit layers found by: {route})" in result.stdout
    assert all(name in result.stdout.split() for name in names)


def test_cli_run_prints_the_engine_fallback_as_one_warning_line(tmp_path):
    """The fast engine's logged fallback (a hook-route model it cannot split) is a `warning:` line, printed once."""
    save_file(foreign_models.gated_mlp().state_dict(), tmp_path / "m.safetensors")
    save_file({"x": torch.randn(64, 64), "y": torch.randint(0, 10, (64,))}, tmp_path / "d.safetensors")
    result = CliRunner().invoke(app, ["run", str(tmp_path / "m.safetensors"), "--model",
                                      "helpers.foreign_models:gated_mlp", "--data", str(tmp_path / "d.safetensors"),
                                      "--utilities", "gxd,oracle", "--metrics", "l1", "--no-joint", "--quiet",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    fallback = [line for line in result.stderr.splitlines() if "expanded-input path" in line]
    assert len(fallback) == 1 and fallback[0].startswith("warning: "), result.stderr
