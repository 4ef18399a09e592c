"""Reports people read (resetassay/report/render.py, SPEC S5): the files a render writes, the q sweep, figures,
and a self-contained report.html checked in a real headless browser.

A small real run (two fixtures, four utilities) checks the files a render writes; its numbers are checked against
summary.csv (tolerance 1e-12). The aggregation and the q sweep on hand-made tables are in tests/stats/test_summary.py,
the cells and marks of the tables in test_blocks.py.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch
from helpers.paths import FIXTURES
from typer.testing import CliRunner

from resetassay import AssayConfig, assay_model
from resetassay.cli import app
from resetassay.models import mlp
from resetassay.names import ALL, TABLES
from resetassay.report import render
from resetassay.report.render import is_current

CHROMIUM = Path("/usr/bin/chromium")
# .ci/run sets RESETASSAY_REQUIRE_CHROMIUM=1: there a missing browser fails the browser tests instead of skipping them
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("RESETASSAY_REQUIRE_CHROMIUM"),
                                    reason="/usr/bin/chromium absent (apt-get install chromium)")
TOL = 1e-12
runner = CliRunner()


@pytest.mark.slow
def test_render_writes_documents_tables_and_every_figure(run_dir: Path):
    for name in ("report.md", "report.html", "aggregate.csv", "figures/regret.png",
                 "figures/spearman_heatmap.png", "figures/scatter_l1.png", "figures/scatter_kl.png",
                 "figures/layer_heatmap.png"):
        assert (run_dir / name).stat().st_size > 0, name
    assert not list((run_dir / "figures").glob("*.svg"))  # each figure drawn once, as PNG (the default)
    assert not (run_dir / "sweep.csv").exists()  # no sweep asked
    assert not (run_dir / "figures" / "shock_vs_step.png").exists()  # two steps make no trend


@pytest.mark.slow
def test_aggregate_csv_matches_summary_means_per_family(run_dir: Path):
    """Independent recomputation with a plain pandas groupby over summary.csv and checkpoints.csv."""
    summary = pd.read_csv(run_dir / "summary.csv")
    family = pd.read_csv(run_dir / "checkpoints.csv").set_index("checkpoint")["family"]
    pooled = summary[summary["scope"] == ALL].assign(family=lambda s: s["checkpoint"].map(family))
    expected = pooled.groupby(["family", "utility", "metric"])["spearman"].agg(["mean", "std", "count"])
    table = pd.read_csv(run_dir / "aggregate.csv")
    table = table[table["step"] == "all"].set_index(["family", "utility", "metric"])
    for key, row in expected.iterrows():
        assert table.loc[key, "spearman"] == pytest.approx(row["mean"], abs=TOL)
        assert table.loc[key, "spearman_se"] == pytest.approx(row["std"] / math.sqrt(row["count"]), abs=TOL)
        assert table.loc[key, "n"] == row["count"] == 2


@pytest.mark.slow
def test_report_md_has_a_table_per_family_with_every_column_and_a_bold_best(run_dir: Path):
    text = (run_dir / "report.md").read_text()
    for heading in ("### mlp-relu@digits (2 checkpoints, steps 2, 4)",
                    "### mlp-silu@digits (2 checkpoints, steps 2, 4)", "### mlp-relu@digits by training step",
                    "## Provenance"):
        assert heading in text
    header = next(line for line in text.splitlines() if line.startswith("| utility | metric | ρ pooled |"))
    for column in ("ρ pooled", "ρ per layer", "Shock@5%", "oracle Shock@5%", "gap", "ratio", "top-k overlap",
                   "joint Shock@5%"):
        assert f"| {column} |" in header
    gxd_l1 = next(line for line in text.splitlines() if line.startswith("| gxd | l1 |"))
    assert gxd_l1.split(" | ")[2].startswith("**")  # GXD has the best pooled rho among gxd/activation/random
    per_checkpoint = text.split("## Pooled Spearman ρ per checkpoint")[1].split("\n## ")[0]
    rows = [line for line in per_checkpoint.splitlines() if line.startswith("| mlp-")]
    assert len(rows) == 4 * 2  # one row per (checkpoint, metric), nothing else


def _shown_mean(cell: str) -> float:
    """The mean of a "0.987 ± 0.004" or "(4.47 ± 1.30)e-03" cell, or of the values of a "0.5 / 0.7" cell."""
    cell = cell.removesuffix(" tie")
    if " / " in cell:
        return float(np.mean([float(v) for v in cell.split(" / ")]))
    scientific = re.fullmatch(r"\((\S+) ± \S+\)e(\S+)", cell)
    if scientific:
        return float(scientific[1]) * 10 ** int(scientific[2])
    return float(cell.split(" ± ")[0])


@pytest.mark.slow
def test_report_md_numbers_are_the_family_means_of_summary_csv(run_dir: Path):
    """Each family's table shows, per utility and metric, the mean over its checkpoints of the pooled
    Spearman ρ and Shock@q in summary.csv (to the 3 decimals shown)."""
    summary = pd.read_csv(run_dir / "summary.csv")
    families = pd.read_csv(run_dir / "checkpoints.csv").set_index("checkpoint")["family"]
    pooled = summary[summary["scope"] == ALL].assign(family=lambda f: f["checkpoint"].map(families))
    text = (run_dir / "report.md").read_text()
    checked = 0
    for family, rows in pooled.groupby("family"):
        section = text.split(f"### {family} (", 1)[1].split("\n### ", 1)[0]
        header = next(line for line in section.splitlines() if line.startswith("| utility |"))
        columns = [c.strip() for c in header.strip("|").split("|")]
        for line in section.splitlines():
            cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
            if len(cells) != len(columns) or cells[0] not in {"gxd", "activation"}:
                continue
            cell = dict(zip(columns, cells, strict=True))
            mine = rows[(rows["utility"] == cell["utility"]) & (rows["metric"] == cell["metric"])]
            assert _shown_mean(cell["ρ pooled"]) == pytest.approx(mine["spearman"].mean(), abs=5e-4)
            shock = mine["shock_at_q"].mean()
            assert _shown_mean(cell["Shock@5%"]) == pytest.approx(shock, abs=5e-4 if shock >= 0.01 else shock * 5e-3)
            checked += 1
    assert checked == 2 * 2 * 2  # two families, two utilities, two metrics


@pytest.mark.slow
def test_report_html_is_self_contained_with_config_versions_and_provenance(run_dir: Path):
    page = (run_dir / "report.html").read_text()
    assert not re.search(r"""(src|href)=["'](?!data:)""", page), "every resource must be inline"
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    assert sorted(name for name, _ in images) == sorted(p.stem for p in (run_dir / "figures").glob("*.png"))
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for _, data in images)
    assert '<td class="best" data-v="' in page and '<table class="sortable">' in page
    info = (run_dir / "run.json").read_text()
    assert '"torch"' in info and "torch " in page  # package versions
    assert "&quot;q&quot;: 0.05" in page  # the run config
    for provenance in ("split_seed", "data_permutation_seed", "split_calib_size", "fixtures/silu_mlp/task4"):
        assert provenance in page


@pytest.mark.slow
def test_report_cli_sweep_recomputes_shock_at_each_q_and_says_joint_is_only_at_run_q(run_dir: Path,
                                                                                     tmp_path: Path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    result = runner.invoke(app, ["report", str(copy), "--q", "0.1,0.05"])
    assert result.exit_code == 0, result.output
    sweep = pd.read_csv(copy / "sweep.csv")
    assert sorted(sweep["q"].unique()) == [0.05, 0.1]
    assert (copy / "figures" / "shock_vs_q.png").stat().st_size > 0
    # at the run's q the sweep equals the stored summary's family mean
    summary = pd.read_csv(copy / "summary.csv")
    family = pd.read_csv(copy / "checkpoints.csv").set_index("checkpoint")["family"]
    gxd = summary[(summary["scope"] == ALL) & (summary["utility"] == "gxd") & (summary["metric"] == "l1")
                  & summary["checkpoint"].map(family).eq("mlp-silu@digits")]
    row = sweep[(sweep["family"] == "mlp-silu@digits") & (sweep["utility"] == "gxd") & (sweep["metric"] == "l1")
                & (sweep["q"] == 0.05)]
    assert row["shock_at_q"].iloc[0] == pytest.approx(gxd["shock_at_q"].mean(), abs=TOL)
    assert row["joint_shock_n"].iloc[0] == 2
    assert sweep.loc[sweep["q"] == 0.1, "joint_shock_n"].eq(0).all()
    text = (copy / "report.md").read_text()
    assert "Shock@q sweep" in text and "Shock@5%" in text  # headline stays at the run's q

    result = runner.invoke(app, ["report", str(copy), "--q", "0.1"])
    assert result.exit_code == 0, result.output
    text = (copy / "report.md").read_text()
    assert "joint Shock@q is only measured at the run's q = 5%" in text and "Shock@10%" in text
    assert not (copy / "sweep.csv").exists() and not (copy / "figures" / "shock_vs_q.png").exists()


@pytest.mark.slow
def test_render_keeps_the_callers_matplotlib_backend_and_pyplot_figures(run_dir: Path, tmp_path: Path):
    """A notebook's backend and open figures survive `import resetassay.report` and a render (figures.py
    draws on its own Figure objects, never through pyplot)."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    script = textwrap.dedent(f"""
        import matplotlib
        matplotlib.use("svg")
        import matplotlib.pyplot as plt
        plt.figure()  # the notebook's open figure
        import resetassay.report
        resetassay.report.render({str(copy)!r})
        assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
        assert plt.get_fignums() == [1], plt.get_fignums()
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=FIXTURES.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"
    assert (copy / "figures" / "regret.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_svg_figures_are_drawn_once_each_with_progress_replacing_the_png_and_timed(run_dir: Path, tmp_path: Path):
    """--figures svg: each figure once, as SVG (linked by report.md, embedded by report.html), the PNGs of the
    earlier render removed, progress per figure, and timings.json's report stage beside the checkpoints'."""
    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    before = json.loads((copy / "timings.json").read_text())["checkpoints"]
    calls = []
    render(copy, figures="svg", progress=lambda *call: calls.append(call))
    names = sorted(p.name for p in (copy / "figures").iterdir())
    assert names == sorted(f"{p.stem}.svg" for p in (run_dir / "figures").glob("*.png"))
    assert calls == [("figures", done, len(names)) for done in range(len(names) + 1)]
    text = (copy / "report.md").read_text()
    assert all(f"](figures/{name})" in text for name in names)
    images = re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', (copy / "report.html").read_text())
    assert len(images) == len(names) and all(b"<svg" in base64.b64decode(data) for data in images)
    timings = json.loads((copy / "timings.json").read_text())
    assert timings["checkpoints"] == before
    assert set(timings["report"]) == {"analysis", "figures", "documents"}
    assert all(seconds > 0 for seconds in timings["report"].values())


@pytest.mark.slow
def test_figures_none_draws_no_figure_imports_no_matplotlib_and_says_so(run_dir: Path, tmp_path: Path):
    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    script = (f"import sys, resetassay.report; resetassay.report.render({str(copy)!r}, figures='none'); "
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'seaborn')))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=FIXTURES.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"
    assert not (copy / "figures").exists()  # the earlier render's PNGs are not this report's
    text = (copy / "report.md").read_text()
    assert "No figures (`resetassay run --figures none`)" in text and "![" not in text
    assert "<img" not in (copy / "report.html").read_text()


@pytest.mark.slow
def test_a_report_is_current_until_a_table_changes_or_its_render_fails(run_dir: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch):
    """`report --log`'s rule (is_current); a failed render leaves the tables, a report.md saying why and no other
    report file, and `resetassay report` exits 1 with one line naming the cause and the retry."""
    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    assert is_current(copy)
    later = (copy / "report.md").stat().st_mtime_ns + 10**9
    os.utime(copy / "summary.csv", ns=(later, later))
    assert not is_current(copy)
    os.utime(copy / "report.md", ns=(later, later))
    assert is_current(copy)
    monkeypatch.setattr(sys.modules["resetassay.report.render"], "html_document", lambda *_: 1 / 0)
    result = runner.invoke(app, ["report", str(copy), "--quiet"])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error:") and "(ZeroDivisionError: division by zero)" in line
    assert f"run `resetassay report {copy}` to retry" in line
    assert "Rendering the report failed (ZeroDivisionError: division by zero)" in (copy / "report.md").read_text()
    assert sorted(p.name for p in copy.iterdir()) == sorted(["report.md", "run.json", "timings.json",
                                                              *(f"{name}.csv" for name in TABLES)])
    assert (copy / "units.csv").read_bytes() == (run_dir / "units.csv").read_bytes()
    assert not is_current(copy)  # so `report --log` draws it again


@pytest.mark.slow
def test_in_memory_model_result_renders_without_checkpoint_info(tmp_path: Path):
    """`assay_model(...).save(dir)` has no checkpoints.csv content (DESIGN "Python API"): one pooled family."""
    model = mlp(widths=(8, 8))
    x, y = torch.randn(120, 64), torch.randint(0, 10, (120,))
    result = assay_model(model, (x[:60], y[:60]), (x[60:], y[60:]),
                         config=AssayConfig(utilities=["gxd", "oracle"], metrics=["l1"]))
    report = result.save(tmp_path)
    text = report.read_text()
    assert "## model (1 checkpoint)" in text and "records no model family" in text
    assert (tmp_path / "report.html").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("q", ["0", "x"])
def test_report_cli_bad_q_exits_2_naming_the_flag(run_dir: Path, q: str):
    result = runner.invoke(app, ["report", str(run_dir), "--q", q])
    assert result.exit_code == 2 and "--q" in result.output


@pytest.mark.slow
@needs_chromium
def test_report_html_renders_in_headless_chromium(run_dir: Path, tmp_path: Path):
    shot = tmp_path / "report.png"
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
               (run_dir / "report.html").resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert shot.exists(), done.stderr[-2000:]
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2000, 1200)
    grey = pixels[..., :3].mean(axis=2)
    assert grey.std() > 0.05, "screenshot is blank"  # a page of text and tables on white
    assert (grey < 0.5).mean() > 0.005, "no dark (text) pixels"


def _wide_run(out: Path) -> Path:
    """A rendered run shaped like `resetassay run fixtures` at its widest: six families with long names, two
    checkpoints each, the fourteen default utilities (synthetic units, scored by the real summary); one family
    holds two unit kinds (as the fixture transformer: neurons and heads), so the verdict has seven columns."""
    from resetassay.io.rundir import write_run
    from resetassay.names import UTILITY_ORDER
    from resetassay.report.render import render
    from resetassay.stats.summary import checkpoint_summary

    utilities = [u for u in UTILITY_ORDER if u not in ("gxd_ig", "gxd2")]
    rng = np.random.default_rng(0)
    units, summary, checkpoints = [], [], []
    for f in range(6):
        for step in (2, 4):
            name = f"family{f}/task{step}"
            shock = rng.gamma(2.0, 1.0, (3, 40))
            kinds = ["token", "token", "head"] if f == 5 else ["linear"] * 3
            frame = pd.DataFrame({"checkpoint": name, "layer": np.repeat(["l0", "l1", "l2"], 40),
                                  "kind": np.repeat(kinds, 40), "unit": np.tile(np.arange(40), 3), "mature": True,
                                  "shock_l1": shock.ravel()})
            for k, u in enumerate(utilities):
                frame[u] = frame["shock_l1"] * np.exp(rng.normal(0, 0.2 * k, len(frame)))
            units.append(frame)
            summary.append(checkpoint_summary(frame, utilities, ["l1"], 0.05))
            checkpoints.append({"checkpoint": name, "family": f"transformer-d64-l2+cbp-contribution@grammar-{f}",
                                "step": float(step), "probe_accuracy": 0.9})
    write_run(out, {"units": pd.concat(units), "summary": pd.concat(summary), "checkpoints": pd.DataFrame(checkpoints),
                    "notes": pd.DataFrame(columns=["checkpoint", "utility", "layer", "reason"])},
              {"config": {"q": 0.05}, "versions": {}})
    render(out)
    return out


@pytest.mark.slow
@needs_chromium
@pytest.mark.parametrize("shape", ["two fixtures", "six families, fourteen utilities"])
def test_report_headline_fits_one_screen_in_headless_chromium(run_dir: Path, tmp_path: Path, shape: str):
    """At 1400 x 900 the headline section (question, answer, rule, ranking and models tables) ends above the fold
    and within the width: a script added to a copy of the page records its bounding box and the page's scroll
    width in the DOM that chromium dumps."""
    source = run_dir if shape == "two fixtures" else _wide_run(tmp_path / "wide")
    page = (source / "report.html").read_text()
    probe = ('<script>const box = document.getElementById("headline").getBoundingClientRect();'
             'const wide = Math.max(...[...document.querySelectorAll("#headline .scroll")].map(e => e.scrollWidth));'
             'document.body.dataset.box = [box.bottom, Math.max(box.right, wide)].join(",");</script></body>')
    copy = tmp_path / "report.html"
    copy.write_text(page.replace("</body>", probe))
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,900", "--dump-dom", copy.as_uri()]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    match = re.search(r'data-box="([0-9.]+),([0-9.]+)"', dom)
    assert match, dom[-2000:]
    bottom, right = float(match[1]), float(match[2])
    assert 200 < bottom <= 900 and right <= 1400, (bottom, right)


@pytest.mark.slow
def test_a_50_layer_model_renders_every_figure_legibly(tmp_path: Path):
    """A deep MLP (50 unit layers, 4 sampled units each): the report renders; the layer heatmap gives every layer
    a row of at least 15 pixels (its labels cannot overlap)."""
    from sklearn.datasets import load_digits

    from resetassay.models import create_model

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x[:200] / 16, dtype=torch.float32), torch.tensor(y[:200])
    model = create_model("mlp", in_features=64, widths=[12] * 50)
    config = AssayConfig(utilities=["gxd", "activation", "random", "oracle"], metrics=["l1"], units_per_layer=4,
                         joint=False)
    result = assay_model(model, (x[:100], y[:100]), (x[100:], y[100:]), config=config)
    assert result.units["layer"].nunique() == 50
    result.save(tmp_path)
    figures = tmp_path / "figures"
    for name in ("regret", "spearman_heatmap", "scatter_l1", "layer_heatmap"):
        assert (figures / f"{name}.png").stat().st_size > 0
    height = matplotlib.image.imread(figures / "layer_heatmap.png").shape[0]
    assert height >= 50 * 15
    text = (tmp_path / "report.md").read_text()  # the models table: the verdict's scope, then all assayed
    assert "neurons: 50 layers, 200 units | 50 layers, 200 units" in text
