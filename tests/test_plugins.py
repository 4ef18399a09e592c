"""Your own utility (README "Your own utility"): registered from Python or by a package's entry point, loaded only
when named, recorded with where it comes from, assayed like the built-in ones (SPEC S3)."""

from __future__ import annotations

import json
import sys
from importlib.metadata import EntryPoint

import pytest
import torch
from helpers.models import TwoLayerMLP

import resetassay as ra
from resetassay import utilities
from resetassay.utilities import UTILITIES, check_utilities, utility_names


@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr(utilities, "UTILITIES", dict(UTILITIES))
    monkeypatch.setattr(utilities, "PLUGINS", {})
    return utilities


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


def test_bad_registrations_are_refused_by_name(clean_registry):
    with pytest.raises(ra.BadInputError, match="'gxd' is built in"):
        ra.register_utility("gxd", lambda s, layer: s.gxd)
    with pytest.raises(ra.BadInputError, match="needs curvature, which the calibration pass does not compute"):
        ra.register_utility("odd", lambda s, layer: s.gxd, needs=("curvature",))


def test_an_entry_point_utility_loads_only_when_named(clean_registry, monkeypatch, tmp_path):
    (tmp_path / "my_utilities.py").write_text(
        "def firing_gap(stats, layer):\n    return (stats.fire - 0.5).abs()\n\nfiring_gap.needs = ('fire',)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    point = EntryPoint(name="firing_gap", value="my_utilities:firing_gap", group="resetassay.utilities")
    asked = []

    def entry_points(group):
        asked.append(group)
        return [point] if group == "resetassay.utilities" else []

    monkeypatch.setattr("importlib.metadata.entry_points", entry_points)
    assert "firing_gap" not in clean_registry.UTILITIES and "my_utilities" not in sys.modules
    check_utilities(["gxd", "oracle"])
    assert asked == [] and "my_utilities" not in sys.modules  # not loaded while not named
    assert check_utilities(["firing_gap", "gxd"]) == ["firing_gap", "gxd"]
    assert clean_registry.UTILITIES["firing_gap"].needs == {"fire"}
    assert clean_registry.PLUGINS["firing_gap"] == "my_utilities:firing_gap"
    with pytest.raises(ra.BadInputError, match="unknown nothing_here"):
        check_utilities(["nothing_here"])
