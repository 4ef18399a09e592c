"""Your own utility and your own shock metric (README "Your own utility", "Your own metric"): registered from Python
or by a package's entry point, loaded only when named, recorded with where it comes from, used like the built-in
ones (SPEC S3, S4); a metric that reads the probe labels measures the same in both lesion engines."""

from __future__ import annotations

import json
import sys
import zlib
from importlib.metadata import EntryPoint

import pytest
import torch
from helpers.models import TinyCNN, TwoLayerMLP
from helpers.paths import FIXTURES
from typer.testing import CliRunner

import resetassay as ra
from resetassay.cli import app
from resetassay.discovery.sequences import example_losses, next_token_targets
from resetassay.discovery.units import unit_layers
from resetassay.lesion import joint_shocks, shocks, unit_shocks
from resetassay.lesion.plain import clamped
from resetassay.lesion.shocks import SHOCK_METRICS, check_metrics
from resetassay.models import create_model, transformer
from resetassay.scoring import registry as utilities
from resetassay.scoring.reference import unit_references
from resetassay.scoring.registry import UTILITIES, check_utilities, utility_names


@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr(utilities, "UTILITIES", UTILITIES.copy())
    return utilities


@pytest.fixture
def clean_metrics(monkeypatch):
    monkeypatch.setattr(shocks, "SHOCK_METRICS", SHOCK_METRICS.copy())
    return shocks


def loss_increase(z, z_lesioned, y):
    """The README's example: the cross-entropy of the lesioned logits minus that of the intact ones."""
    def cross_entropy(logits):
        return torch.logsumexp(logits, dim=-1) - logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    return cross_entropy(z_lesioned) - cross_entropy(z)


def linf(z, z_lesioned, y):
    """max_c |z_c - z'_c|: a metric of the logits alone."""
    return (z - z_lesioned).abs().amax(dim=-1)


def _entry_points(monkeypatch, tmp_path, group, name, source):
    """An installed package's entry point `name` in `group`, served by a module written into tmp_path; returns the
    groups asked for."""
    (tmp_path / f"my_{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    point = EntryPoint(name=name, value=f"my_{name}:{name}", group=group)
    asked = []

    def entry_points(group):
        asked.append(group)
        return [point] if group == point.group else []

    monkeypatch.setattr("importlib.metadata.entry_points", entry_points)
    return asked


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=g, dtype=torch.float64)
    return (x[:20], torch.randint(0, 3, (20,), generator=g)), (x[20:], torch.randint(0, 3, (20,), generator=g))


def test_a_python_utility_is_assayed_and_recorded(clean_registry, tmp_path):
    def squared_deviation(stats, layer):
        return stats.abs_dev ** 2

    ra.register_utility("squared_deviation", squared_deviation, needs=("abs_dev",))
    calib, probe = _data()
    result = ra.assay_model(TwoLayerMLP(), calib, probe, config=ra.AssayConfig(
        utilities=["squared_deviation", "mc_contribution", "oracle"], metrics=["l1"]))
    assert result.units["squared_deviation"].notna().all()
    ours = result.summary.query("utility == 'squared_deviation' and scope == 'ALL'")["spearman"].iloc[0]
    assert -1 <= ours <= 1
    assert "squared_deviation" not in utility_names()  # the default stays the built-in set
    result.save(tmp_path / "run")
    versions = json.loads((tmp_path / "run" / "run.json").read_text())["versions"]
    assert versions["utilities"]["squared_deviation"].endswith("squared_deviation")


def test_one_registry_holds_utilities_metrics_and_models_and_suggests_close_names(clean_registry):
    """plugins.Registry (DESIGN "Extension points"): names in registration order, the built-ins first, and an unknown
    name is one line that suggests the close ones."""
    from resetassay.models import MODELS

    assert MODELS.names() == ["mlp", "cnn", "resnet", "transformer"]
    assert SHOCK_METRICS.names()[:2] == ["l1", "kl"] and "gxd" in clean_registry.UTILITIES
    with pytest.raises(ra.BadInputError, match=r"unknown model 'mpl' \(did you mean mlp\?\); choose from mlp, cnn"):
        create_model("mpl")
    ra.register_utility("squared_deviation", lambda s, layer: s.abs_dev ** 2, needs=("abs_dev",))
    assert clean_registry.UTILITIES.get("squared_deviation").needs == {utilities.Ingredient.ABS_DEV}
    assert list(clean_registry.UTILITIES.sources) == ["squared_deviation"]


def test_bad_registrations_are_refused_by_name(clean_registry):
    with pytest.raises(ra.BadInputError, match="'gxd' is built in"):
        ra.register_utility("gxd", lambda s, layer: s.gxd)
    with pytest.raises(ra.BadInputError, match="needs curvature, which the calibration pass does not compute"):
        ra.register_utility("odd", lambda s, layer: s.gxd, needs=("curvature",))


def test_an_entry_point_utility_loads_only_when_named(clean_registry, monkeypatch, tmp_path):
    asked = _entry_points(monkeypatch, tmp_path, "resetassay.utilities", "firing_gap",
                          "def firing_gap(stats, layer):\n    return (stats.fire - 0.5).abs()\n\n"
                          "firing_gap.needs = ('fire',)\n")
    assert "firing_gap" not in clean_registry.UTILITIES and "my_firing_gap" not in sys.modules
    check_utilities(["gxd", "oracle"])
    assert asked == [] and "my_firing_gap" not in sys.modules  # not loaded while not named
    assert check_utilities(["firing_gap", "gxd"]) == ["firing_gap", "gxd"]
    assert clean_registry.UTILITIES["firing_gap"].needs == {"fire"}
    assert clean_registry.UTILITIES.sources["firing_gap"] == "my_firing_gap:firing_gap"
    with pytest.raises(ra.BadInputError, match="unknown nothing_here"):
        check_utilities(["nothing_here"])


def _lesioned_by_hand(model, layer, refs, x, unit):
    with torch.no_grad(), clamped([(layer, torch.tensor([unit]), refs[layer.name][[unit]])]):
        return model(x)


@pytest.mark.parametrize("name", ["mlp", "cnn", "transformer"])
def test_a_metric_of_the_labels_equals_its_direct_formula_in_both_engines(clean_metrics, name):
    """loss_increase per unit = mean over the probe set of example_losses(z') - example_losses(z) (a sequence: over
    its positions that have a target), the same from the plain engine, the fast one (shortcut on and off, K swept)
    and joint lesions."""
    ra.register_metric("loss_increase", loss_increase, targets=True)
    ra.register_metric("linf", linf)
    g = torch.Generator().manual_seed(4)
    if name == "transformer":
        model = transformer(vocab=5, max_len=4, d_model=8, n_layers=1, n_heads=2, mlp_ratio=1).double().eval()
        x = torch.randint(0, 5, (6, 4), generator=g)
        y = next_token_targets(x)
    else:
        model = TwoLayerMLP() if name == "mlp" else TinyCNN()
        x = torch.randn(6, *((4,) if name == "mlp" else (1, 5, 5)), generator=g, dtype=torch.float64)
        y = torch.randint(0, 3, (6,), generator=g)
    layers = unit_layers(model, x[:2])
    refs = unit_references(model, layers, x)
    metrics = ["l1", "loss_increase", "linf"]
    plain = unit_shocks(model, layers, refs, x, metrics, engine="plain", targets=y)
    with torch.no_grad():
        z = model(x)
    for layer in layers:
        for unit in range(layer.n_units):
            zl = _lesioned_by_hand(model, layer, refs, x, unit)
            want = {"loss_increase": (example_losses(zl, y) - example_losses(z, y)).mean(),
                    "linf": (z - zl).abs().amax(dim=-1).mean(dim=tuple(range(zl.dim() - 1)))}
            for metric, value in want.items():
                assert plain[metric][layer.name][unit].item() == pytest.approx(value.item(), rel=1e-9, abs=1e-12)
    for shortcut, max_k in ((True, 2), (False, None)):
        fast = unit_shocks(model, layers, refs, x, metrics, engine="fast", shortcut=shortcut, max_k=max_k, targets=y)
        for metric in metrics:
            for layer in layers:
                torch.testing.assert_close(fast[metric][layer.name], plain[metric][layer.name], rtol=1e-9, atol=1e-12)
    lesions = [{layers[0].name: torch.tensor([0, 1])}, {layers[-1].name: torch.tensor([1])}]
    got, want = (joint_shocks(model, layers, refs, lesions, x, metrics, engine=e, targets=y) for e in ("fast", "plain"))
    for metric in metrics:
        torch.testing.assert_close(got[metric], want[metric], rtol=1e-9, atol=1e-12)


def test_a_python_metric_is_assayed_and_recorded(clean_metrics, tmp_path):
    ra.register_metric("loss_increase", loss_increase, targets=True)
    calib, probe = _data()
    result = ra.assay_model(TwoLayerMLP(), calib, probe, config=ra.AssayConfig(
        utilities=["gxd", "oracle"], metrics=["l1", "loss_increase"]))
    assert result.units["shock_loss_increase"].notna().all()
    row = result.summary.query("utility == 'oracle' and metric == 'loss_increase' and scope == 'ALL'")
    assert row["spearman"].iloc[0] == pytest.approx(1.0)
    result.save(tmp_path / "run")
    versions = json.loads((tmp_path / "run" / "run.json").read_text())["versions"]
    assert versions["metrics"]["loss_increase"].endswith("loss_increase")


def test_bad_metrics_are_refused_by_name(clean_metrics):
    with pytest.raises(ra.BadInputError, match="'kl' is built in"):
        ra.register_metric("kl", linf)
    with pytest.raises(ra.BadInputError, match="`metrics`: unknown nothing_here; choose from l1, kl"):
        check_metrics(["l1", "nothing_here"])
    ra.register_metric("loss_increase", loss_increase, targets=True)
    (x, _), _ = _data()
    model = TwoLayerMLP()
    layers = unit_layers(model, x[:2])
    refs = unit_references(model, layers, x)
    for targets in (None, -torch.ones(len(x), dtype=torch.long)):  # no labels; unlabelled data
        with pytest.raises(ra.BadInputError, match="`metrics` loss_increase: reads the probe labels"):
            unit_shocks(model, layers, refs, x, ["l1", "loss_increase"], targets=targets)


def test_an_entry_point_metric_loads_only_when_named_and_runs_from_the_cli(clean_metrics, monkeypatch, tmp_path):
    asked = _entry_points(monkeypatch, tmp_path, "resetassay.metrics", "linf",
                          "def linf(z, z_lesioned, y):\n    return (z - z_lesioned).abs().amax(dim=-1)\n")
    check_metrics(["l1", "kl"])
    assert asked == [] and "my_linf" not in sys.modules  # not loaded while not named
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(FIXTURES / "relu_mlp" / "task2"), "--utilities", "gxd,oracle",
                                      "--metrics", "l1,linf", "--calib-size", "64", "--probe-size", "64",
                                      "--out", str(out), "--quiet", "--no-joint"])
    assert result.exit_code == 0, result.output
    assert clean_metrics.SHOCK_METRICS["linf"].targets is False
    assert json.loads((out / "run.json").read_text())["versions"]["metrics"] == {"linf": "my_linf:linf"}
    assert "shock_linf" in (out / "units.csv").read_text().splitlines()[0]


@pytest.mark.parametrize(("body", "needle"), [
    # NaN for a single example: every mean over the probe set was NaN, the oracle "not applicable", exit 0
    ("d = (z - z_lesioned).abs().sum(dim=-1)\n    d[..., 0] = float('nan')\n    return d",
     "returned NaN or Inf in"),
    # a 0-d tensor: broadcast to every example, every unit of a chunk got the same shock, exit 0
    ("return (z - z_lesioned).abs().sum()", "returned shape () for logits of shape"),
    # reduced over the examples: a traceback deep in the engine
    ("return (z - z_lesioned).abs().sum(dim=-1).mean(dim=-1)", "one shock per example"),
    ("return 3.0", "returned float"),
])
def test_a_metric_returning_what_it_should_not_is_one_line_naming_it(clean_metrics, monkeypatch, tmp_path, body,
                                                                    needle):
    """What a plugin returns is validated at the boundary (issue 24): one `error:` line naming the metric, exit 2,
    never a NaN or a broadcast scalar in units.csv."""
    name = f"odd_{zlib.crc32(body.encode())}"  # a module of its own per case (imported modules are cached by name)
    _entry_points(monkeypatch, tmp_path, "resetassay.metrics", name, f"def {name}(z, z_lesioned, y):\n    {body}\n")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(FIXTURES / "relu_mlp" / "task2"), "--utilities", "gxd,oracle",
                                      "--metrics", f"l1,{name}", "--calib-size", "32", "--probe-size", "32",
                                      "--out", str(out), "--quiet", "--no-joint"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"--metrics {name}: the registered metric" in errors[0] and needle in errors[0]
    assert not (out / "units.csv").exists()


@pytest.mark.parametrize(("score", "needle"), [
    # NaN: the utility was "not applicable" in summary.csv, notes.csv said nothing, exit 0
    (lambda s, layer: s.gxd * float("nan"), "returned NaN or Inf for 32 of its 32 units"),
    (lambda s, layer: s.gxd[:-1], "returned shape (31,); return one score per unit, shape (32,)"),  # a traceback
    (lambda s, layer: s.gxd.sum(), "returned shape (); return one score per unit"),
    (lambda s, layer: s.gxd.tolist(), "returned list; return a tensor of shape (32,)"),
])
def test_a_utility_returning_what_it_should_not_is_one_line_naming_it_and_the_layer(clean_registry, score, needle):
    ra.register_utility("odd", score, needs=("gxd",))
    model = create_model("mlp", in_features=4, widths=[32], n_classes=3)
    (x, y), probe = _data()
    with pytest.raises(ra.BadInputError, match=r"`utilities` odd: on layer layers\.0\.act \(32 units\) the utility") \
            as caught:
        ra.assay_model(model, (x.float(), y), (probe[0].float(), probe[1]),
                       config=ra.AssayConfig(utilities=["odd", "oracle"], metrics=["l1"]))
    assert needle in str(caught.value) and "\n" not in str(caught.value)
