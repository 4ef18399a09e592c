"""Bad input through the CLI (tests/test_bad_input.py), part: what a user's plugin returns (issue 24). The plugin is
registered the way users do: an installed package's entry point (`resetassay.utilities` / `resetassay.metrics`),
here a real dist-info folder on sys.path that importlib.metadata reads. Whatever it returns that is not one finite
number per example (metric) or per unit (utility) is one `error:` line naming the plugin, exit 2, and no table
holding its numbers (it was NaN, a broadcast scalar or a traceback, some with exit 0)."""

from __future__ import annotations

import zlib

import pytest
from helpers.cli import invoke, one_error
from helpers.paths import FIXTURES

from resetassay.lesion import shocks
from resetassay.lesion.shocks import SHOCK_METRICS
from resetassay.scoring import registry
from resetassay.scoring.registry import UTILITIES


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """`installed(group, source)`: a package holding the function `source` defines, installed (a dist-info with its
    entry point) on sys.path; returns the name it registers. The registries are copies, so nothing stays."""
    monkeypatch.setattr(registry, "UTILITIES", UTILITIES.copy())
    monkeypatch.setattr(shocks, "SHOCK_METRICS", SHOCK_METRICS.copy())
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def install(group: str, source: str) -> str:
        name = f"odd_{zlib.crc32(source.encode()):x}"  # a module of its own per case (imports are cached by name)
        (site / f"my_{name}.py").write_text(source.replace("FN", name))
        info = site / f"my_{name}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: my-{name}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[{group}]\n{name} = my_{name}:{name}\n")
        return name

    return install


METRICS = {
    # NaN for one example: every mean over the probe set was NaN, the oracle "not applicable", exit 0
    "NaN for one example": ("d = (z - z_lesioned).abs().sum(dim=-1)\n    d[..., 0] = float('nan')\n    return d",
                            "returned NaN or Inf in"),
    # a 0-d tensor: broadcast to every example, every unit of a chunk got the same shock, exit 0
    "0-d tensor": ("return (z - z_lesioned).abs().sum()", "returned shape () for logits of shape"),
    # one value per logit, not per example: a traceback deep in the engine
    "wrong shape": ("return (z - z_lesioned).abs()", "one shock per example"),
}


@pytest.mark.parametrize(("body", "needle"), METRICS.values(), ids=METRICS.keys())
def test_an_installed_metric_returning_what_it_should_not_is_one_line(installed, tmp_path, body, needle):
    name = installed("resetassay.metrics", f"def FN(z, z_lesioned, y):\n    {body}\n")
    out = tmp_path / "run"
    result = invoke("run", FIXTURES / "relu_mlp" / "task2", "--utilities", "gxd,oracle", "--metrics", f"l1,{name}",
                    "--calib-size", "32", "--probe-size", "32", "--no-joint", "--quiet", "--out", out)
    one_error(result, 2, f"--metrics {name}: the registered metric", needle)
    assert not (out / "units.csv").exists()


UTILITIES_RETURNING = {
    # NaN: the utility was "not applicable" in summary.csv, notes.csv said nothing, exit 0
    "NaN": ("stats.gxd * float('nan')", "returned NaN or Inf for 64 of its 64 units"),
    # one score short: a traceback
    "wrong number of scores": ("stats.gxd[:-1]", "returned shape (63,); return one score per unit, shape (64,)"),
}


@pytest.mark.parametrize(("expression", "needle"), UTILITIES_RETURNING.values(), ids=UTILITIES_RETURNING.keys())
def test_an_installed_utility_returning_what_it_should_not_is_one_line(installed, tmp_path, expression, needle):
    name = installed("resetassay.utilities", f"def FN(stats, layer):\n    return {expression}\n\n"
                                             "FN.needs = ('gxd',)\n")
    out = tmp_path / "run"
    result = invoke("run", FIXTURES / "relu_mlp" / "task2", "--utilities", f"gxd,{name}", "--metrics", "l1",
                    "--calib-size", "32", "--probe-size", "32", "--no-joint", "--quiet", "--out", out)
    one_error(result, 2, f"--utilities {name}: on layer layers.0.act (64 units) the utility", needle)
    assert not (out / "units.csv").exists()
