"""The public API (issue 23 item 4): what `import resetassay` offers a notebook, each package's `__all__`, the
documented and runnable examples of every root export, and `assay_model` taking AssayConfig fields as keywords
as `run_assay` does."""

from __future__ import annotations

import ast
import dataclasses
import doctest
import importlib
import inspect
from pathlib import Path

import pytest
import torch

import resetassay as ra
from resetassay.lesion import shocks
from resetassay.scoring import registry

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "resetassay"
NOTEBOOK = {  # what a notebook needs from `import resetassay` (issue 23 item 4)
    "assay_model", "run_assay", "assay_checkpoint", "AssayConfig", "AssayResult", "find_unit_layers", "UnitLayer",
    "load_checkpoint", "save_checkpoint", "data_spec", "unit_shocks", "joint_shocks", "register_utility",
    "register_metric", "list_utilities", "list_metrics", "NotApplicable", "BadInputError",
}
EXPORTS = sorted(set(ra.__all__) - {"__version__"})


def _modules_with_all() -> list[str]:
    """Every module and package of resetassay whose source assigns `__all__`."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in n.targets)
               for n in tree.body):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def test_every_package_declares_all():
    packages = sorted(p.parent for p in PACKAGE.rglob("__init__.py"))
    declared = set(_modules_with_all())
    missing = [str(p.relative_to(ROOT)) for p in packages
               if ".".join(p.relative_to(ROOT).parts) not in declared]
    assert not missing, f"packages without __all__: {missing}"
    assert {"resetassay.io", "resetassay.models", "resetassay.data", "resetassay.discovery", "resetassay.scoring",
            "resetassay.lesion", "resetassay.stats", "resetassay.pipeline", "resetassay.report", "resetassay.train",
            "resetassay.cli"} <= declared


@pytest.mark.parametrize("name", [m for m in _modules_with_all() if m != "resetassay"])
def test_every_name_in_all_resolves(name):
    module = importlib.import_module(name)
    assert len(module.__all__) == len(set(module.__all__)), f"{name}.__all__ repeats a name"
    for item in module.__all__:
        if not hasattr(module, item):  # a package may list its submodules (io, stats: imported on demand)
            importlib.import_module(f"{name}.{item}")


def test_the_root_exports_what_a_notebook_needs_lazily():
    assert NOTEBOOK.issubset(ra.__all__)
    assert set(ra.__all__) == {*ra._PUBLIC, "__version__"}
    for name in EXPORTS:
        value = getattr(ra, name)
        assert getattr(importlib.import_module(ra._PUBLIC[name]), name) is value
        assert value.__module__.startswith("resetassay."), name
    assert sorted(dir(ra)) == sorted(ra.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        ra.nothing  # noqa: B018


@pytest.mark.parametrize("name", EXPORTS)
def test_every_root_export_is_documented(name):
    """Google style: what it does, Args (where it takes any), Returns (where it returns something), Raises (where it
    takes arguments), and an example; the root module's docstring names it."""
    obj = getattr(ra, name)
    doc = inspect.getdoc(obj) or ""
    assert ">>>" in doc and "Example::" in doc, f"{name}: no Example:: with >>>"
    assert f"`{name}`" in ra.__doc__, f"the root docstring does not name {name}"
    if inspect.isclass(obj):
        declared = dataclasses.is_dataclass(obj) and all(f.metadata.get("help") for f in dataclasses.fields(obj))
        if not issubclass(obj, Exception) and not declared:  # a config documents each field where it declares it
            assert "Args:" in doc or "Attributes:" in doc, f"{name}: no Args:/Attributes:"
        return
    signature = inspect.signature(obj)
    if signature.parameters:
        assert "Args:" in doc and "Raises:" in doc, f"{name}: no Args:/Raises:"
    if signature.return_annotation not in (None, "None"):
        assert "Returns:" in doc, f"{name}: no Returns:"


@pytest.fixture
def own_registries(monkeypatch):
    """The examples register a utility and a metric: into copies of the registries, dropped afterwards."""
    monkeypatch.setattr(registry, "UTILITIES", registry.UTILITIES.copy())
    monkeypatch.setattr(shocks, "SHOCK_METRICS", shocks.SHOCK_METRICS.copy())


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", EXPORTS)
def test_the_examples_of_every_root_export_run(name, monkeypatch, own_registries, one_thread):
    """The docstring examples, run from the repository root (they read fixtures/; they write only into a temporary
    directory and download nothing)."""
    monkeypatch.chdir(ROOT)
    obj = getattr(ra, name)
    tests = [t for t in doctest.DocTestFinder(recurse=False).find(obj, name, globs={}) if t.examples]
    assert tests, f"{name}: no example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0, f"{name}: an example fails (see the output above)"


def _net_and_data():
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.randn(48, 4, generator=g), torch.randint(0, 3, (48,), generator=g)
    return net, (x[:24], y[:24]), (x[24:], y[24:])


def test_assay_model_takes_config_fields_as_keywords_like_run_assay(one_thread):
    net, calib, probe = _net_and_data()
    by_keywords = ra.assay_model(net, calib, probe, utilities=["gxd"], metrics=["l1"])
    by_config = ra.assay_model(net, calib, probe, ra.AssayConfig(utilities=["gxd"], metrics=["l1"]))
    assert by_keywords.config == by_config.config
    assert by_keywords.units.equals(by_config.units) and by_keywords.summary.equals(by_config.summary)
    # keywords replace the fields of a given config, as run_assay's do
    merged = ra.assay_model(net, calib, probe, ra.AssayConfig(utilities=["gxd"], metrics=["l1"], seed=3),
                            layers=["1"], q=0.25)
    assert (merged.config.seed, merged.config.q, merged.config.layers) == (3, 0.25, ["1"])


@pytest.mark.parametrize("call", ["assay_model", "run_assay"])
def test_an_unknown_keyword_is_a_type_error_naming_it(call):
    net, calib, probe = _net_and_data()
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'utilites' \(did you mean utilities\?\)"):
        if call == "assay_model":
            ra.assay_model(net, calib, probe, utilites=["gxd"])
        else:
            ra.run_assay(["fixtures/relu_mlp"], utilites=["gxd"], progress=False)


def test_assay_model_refuses_a_config_that_is_not_one():
    net, calib, probe = _net_and_data()
    with pytest.raises(TypeError, match=r"config must be an AssayConfig, not list; .*layers="):
        ra.assay_model(net, calib, probe, ["1"])  # the old fourth positional argument, layers


def test_a_bad_config_value_given_as_keyword_is_a_bad_input_error():
    net, calib, probe = _net_and_data()
    with pytest.raises(ra.BadInputError):
        ra.assay_model(net, calib, probe, q=2.0)


class _Functional(torch.nn.Module):
    """Its activation is a function call: the assay taps it on a traced copy."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 8), torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.b(torch.nn.functional.relu(self.a(x)))


def test_find_unit_layers_lists_what_the_assay_finds(one_thread):
    net, calib, probe = _net_and_data()
    by_example = ra.find_unit_layers(net, calib[0])
    by_shape = ra.find_unit_layers(net, input_shape=(4,))
    assert [(la.name, la.kind, la.n_units) for la in by_example] == [("1", "linear", 8)]
    assert [la.name for la in by_shape] == [la.name for la in by_example]
    assert isinstance(by_example[0], ra.UnitLayer)
    assert by_example[0].producer is net[0] and by_example[0].consumer is net[2]
    result = ra.assay_model(net, calib, probe, utilities=["gxd"], metrics=["l1"])
    assert sorted(result.units["layer"].unique()) == [la.name for la in by_example]
    functional = _Functional().eval()
    assert [la.name for la in ra.find_unit_layers(functional, input_shape=(4,))] == ["relu@0"]


def test_find_unit_layers_refuses_what_it_cannot_use():
    net, calib, _ = _net_and_data()
    with pytest.raises(TypeError, match="example_inputs or input_shape"):
        ra.find_unit_layers(net)
    with pytest.raises(TypeError, match="example_inputs or input_shape"):
        ra.find_unit_layers(net, calib[0], input_shape=(4,))
    with pytest.raises(ra.BadInputError, match=r"cannot read input_shape of shape \(2, 5\)"):
        ra.find_unit_layers(net, input_shape=(5,))
    with pytest.raises(ra.BadInputError, match="matched no unit layer"):
        ra.find_unit_layers(net, input_shape=(4,), layers=["nothing*"])


def test_unit_shocks_refuses_layers_of_another_model_and_the_tapped_copy_works(one_thread):
    """Layers found on a traced copy, lesioned through the original model, would read 0 everywhere: refused."""
    from resetassay.discovery import tap_unit_layers

    model = _Functional().eval()
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    layers = ra.find_unit_layers(model, x)
    refs = {la.name: torch.zeros(la.n_units) for la in layers}
    with pytest.raises(ra.BadInputError, match=r"relu@0: not a module of this _Functional.*tap_unit_layers"):
        ra.unit_shocks(model, layers, refs, x, ["l1"])
    with pytest.raises(ra.BadInputError, match="not a module"):
        ra.joint_shocks(model, layers, refs, [{"relu@0": torch.tensor([0])}], x, ["l1"])
    tapped = tap_unit_layers(model, x)
    layers = ra.find_unit_layers(tapped, x)
    shocks = ra.unit_shocks(tapped, layers, refs, x, ["l1"])["l1"]["relu@0"]
    assert shocks.shape == (8,) and bool((shocks > 0).any())
    with pytest.raises(ra.BadInputError, match="`metrics`: unknown l2"):
        ra.unit_shocks(tapped, layers, refs, x, ["l2"])


def test_list_utilities_and_metrics_name_everything_a_run_accepts(own_registries, monkeypatch):
    from importlib.metadata import EntryPoint

    utilities = ra.list_utilities()
    assert set(ra.AssayConfig().utilities) < set(utilities)
    assert {"gxd_ig", "gxd2", "gxd_greedy", "oracle"} <= set(utilities)
    assert all(isinstance(text, str) and text and "\n" not in text for text in utilities.values())
    assert list(ra.list_metrics()) == ["l1", "kl"]

    def undocumented(stats, layer):
        return stats.abs_act

    def linf(z, z_lesioned, y):
        """max_c |z_c - z'_c|.

        More detail that the listing leaves out."""
        return (z_lesioned - z).abs().amax(dim=-1)

    ra.register_utility("undocumented", undocumented, needs=("abs_act",))
    ra.register_metric("linf", linf, targets=True)
    assert ra.list_utilities()["undocumented"].startswith("registered from ")
    assert ra.list_metrics()["linf"] == "max_c |z_c - z'_c|. Reads the probe labels."
    points = {"resetassay.utilities": [EntryPoint("theirs", "their_pkg:theirs", "resetassay.utilities")],
              "resetassay.metrics": [EntryPoint("their_metric", "their_pkg:m", "resetassay.metrics")]}
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: points.get(group, []))
    assert "their_pkg:theirs" in ra.list_utilities()["theirs"]  # listed, not imported (their_pkg does not exist)
    assert list(ra.list_metrics())[-1] == "their_metric"
