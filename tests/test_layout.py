"""The architecture holds (DESIGN "Stages", "Dependencies point down"): the stages import downwards only, reading
a run needs no torch, the run identity covers every source file, the public examples run, the zoo's manifest names
resolve, and the torch-free vocabulary matches the registries it mirrors."""

from __future__ import annotations

import doctest
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers.paths import ROOT

import resetassay
import resetassay.pipeline.assay
import resetassay.pipeline.run
from resetassay.names import METRICS, UTILITY_ORDER
from resetassay.pipeline.assay import AssayConfig
from resetassay.pipeline.run import run_assay, source_digest
from resetassay.scoring.registry import utility_names

BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "captum"):
                raise ImportError(f"{name} is not importable in this test")
            return None

    sys.meta_path.insert(0, Refuse())
""")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    run_assay([ROOT / "fixtures" / "relu_mlp"], utilities=["gxd", "activation", "oracle"], metrics=["l1"],
              calib_size=64, probe_size=64, progress=False, out=out)
    return out


@pytest.mark.slow
def test_report_gate_rundir_and_stats_read_a_run_with_torch_and_captum_unimportable(small_run: Path, tmp_path: Path):
    script = BLOCK_TORCH + textwrap.dedent(f"""
        import matplotlib
        matplotlib.use("svg")  # a notebook's backend: rendering must not switch it
        import resetassay, resetassay.report, resetassay.report.gate, resetassay.report.tracking, resetassay.io
        import resetassay.io.rundir, resetassay.stats, resetassay.stats.summary, resetassay.stats.verdict
        import resetassay.report.headline, resetassay.report.render, resetassay.report.sets
        from resetassay.report.gate import check_run, make_baseline, write_baseline
        tables = resetassay.io.rundir.read_run({str(small_run)!r})
        resetassay.report.render({str(small_run)!r})
        baseline, _ = make_baseline({str(small_run)!r})
        write_baseline(baseline, {str(tmp_path / "baseline.json")!r})
        comparisons, _ = check_run({str(small_run)!r}, {str(tmp_path / "baseline.json")!r})
        assert all(c.passed for c in comparisons) and comparisons
        assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "captum")]
        assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
        print("ok", len(tables["units"]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok ")


def test_torch_blocker_of_the_layering_test_does_block_torch():
    """The test above would pass vacuously if the blocker let torch through."""
    done = subprocess.run([sys.executable, "-c", BLOCK_TORCH + "import resetassay.pipeline.assay"], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode != 0 and "torch is not importable" in done.stderr


def test_import_resetassay_loads_neither_torch_nor_matplotlib():
    script = "import sys, resetassay; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'matplotlib'}))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]"


def test_source_digest_covers_files_in_subpackages(tmp_path: Path):
    """An edit under lesion/ changes the run identity, so resumed parts of the old code are not reused."""
    copy = tmp_path / "resetassay"
    shutil.copytree(Path(resetassay.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = source_digest(copy)
    assert before == source_digest(Path(resetassay.__file__).parent)
    with (copy / "lesion" / "fast.py").open("a") as f:
        f.write("# an edit\n")
    assert source_digest(copy) != before


def test_the_torch_free_vocabulary_matches_the_registries():
    assert list(UTILITY_ORDER) == utility_names()
    assert set(METRICS) == {"l1", "kl"}


def test_run_assay_applies_keyword_overrides_to_a_given_config(monkeypatch):
    seen = {}

    def fake(ckpt, config, data=None, progress=None):
        seen["config"] = config
        raise KeyboardInterrupt  # stop before any work

    monkeypatch.setattr(resetassay.pipeline.run, "assay_checkpoint", fake)
    with pytest.raises(KeyboardInterrupt):
        run_assay([ROOT / "fixtures" / "relu_mlp" / "task2"], AssayConfig(seed=3, metrics=["l1"]), q=0.1,
                  progress=False)
    assert (seen["config"].seed, seen["config"].q, seen["config"].metrics) == (3, 0.1, ["l1"])


@pytest.mark.slow
@pytest.mark.parametrize("module", [resetassay.pipeline.assay, resetassay.pipeline.run])
def test_public_api_examples_run(module, monkeypatch):
    monkeypatch.chdir(ROOT)
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert attempted > 0 and failed == 0


def test_every_error_that_starts_with_a_field_carries_it():
    """A run stops on an error about the request (`BadInputError.field`), not by reading its message: every
    message that opens with a backticked field (or a flag, in cli/) must also pass it as `field=`."""
    import ast

    missing = []
    for path in sorted(Path(resetassay.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "BadInputError" and node.args):
                continue
            first = node.args[0]
            head = first.values[0] if isinstance(first, ast.JoinedStr) and first.values else first
            opens_with_field = (isinstance(head, ast.Constant) and str(head.value).startswith(("`", "--"))) or (
                isinstance(head, ast.FormattedValue) and getattr(head.value, "id", None) in ("flag", "field"))
            if opens_with_field and not any(k.arg == "field" for k in node.keywords):
                missing.append(f"{path.name}:{node.lineno}")
    assert not missing


def test_every_warning_goes_through_warn_user():
    """Warnings name the user's line (docs/design.md): no module but errors.py calls `warnings.warn` or counts
    frames with `stacklevel`."""
    import ast

    package = Path(resetassay.__file__).parent
    direct = [f"{path.relative_to(package)}:{node.lineno}" for path in sorted(package.rglob("*.py"))
              if path.name != "errors.py" for node in ast.walk(ast.parse(path.read_text()))
              if isinstance(node, ast.Call) and (getattr(node.func, "attr", None) == "warn"
                                                 or any(k.arg == "stacklevel" for k in node.keywords))]
    assert not direct


def test_the_library_names_fields_and_only_the_command_line_names_flags():
    """Outside cli/, a string spells a flag only inside a command line it quotes (`resetassay report DIR --figures
    svg`, a torchrun or tracker command): errors and warnings name fields (docs/design.md "Fields, not flags")."""
    import ast
    import re

    flag = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
    command = re.compile(r"(resetassay|torchrun|tensorboard|mlflow|wandb) [^`\n]*$")
    wrong = []
    package = Path(resetassay.__file__).parent
    for path in sorted(package.rglob("*.py")):
        if path.parent.name == "cli":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        parts_of_fstrings = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):  # an f-string: its text with each {…} as one word
                text = "".join(v.value if isinstance(v, ast.Constant) else "X" for v in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings | \
                    parts_of_fstrings:
                text = node.value
            else:
                continue
            for match in flag.finditer(text):
                if not command.search(text[:match.start()]):
                    wrong.append(f"{path.relative_to(package)}:{node.lineno}: {match.group(0)}")
    assert not wrong, "\n".join(wrong)


def test_a_field_means_one_flag_in_every_command_and_messages_print_it():
    import typer

    from resetassay.cli.commands import app
    from resetassay.cli.flags import as_flags, command_flags

    seen: dict[str, set] = {}
    for command in typer.main.get_command(app).commands.values():
        for name, flags in command_flags(command).items():
            seen.setdefault(name, set()).add(flags)
    assert {name: flags for name, flags in seen.items() if len(flags) > 1} == {}
    assert as_flags("`calib_size` 0: must be >= 1; drop `joint`=False, or set `q`=0.1; `nothing` stays") == (
        "--calib-size 0: must be >= 1; drop --no-joint, or set --q 0.1; `nothing` stays")
    assert as_flags("`table_format` parquet, `probe` x, `out` y") == "--format parquet, --probe-data x, --out y"


def test_every_field_of_the_assay_config_is_a_run_flag_with_its_help():
    import dataclasses

    import typer

    from resetassay.cli.commands import app
    from resetassay.cli.flags import command_flags
    from resetassay.config import AssayConfig

    run = typer.main.get_command(app).commands["run"]
    flags = command_flags(run)
    helps = {p.name: p.help for p in run.params}
    for f in dataclasses.fields(AssayConfig):
        assert f.name in flags, f.name
        assert helps[f.name] and "`" not in helps[f.name], (f.name, helps[f.name])


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet", "transformer"])
def test_manifest_factory_names_of_the_zoo_keep_resolving(name: str):
    """Checkpoint manifests (fixtures/, users' checkpoints) name `resetassay.models:<name>`; wherever the zoo's
    code lives, that string must build the model, both as a manifest names it and as `--model` names it."""
    from resetassay.io.checkpoint import ZOO_MODULE, _zoo_factory, import_factory
    from resetassay.models import MODELS

    spec = f"resetassay.models:{name}"
    assert ZOO_MODULE == "resetassay.models"
    assert _zoo_factory(spec, ROOT / "manifest.json") is MODELS[name]
    assert import_factory(spec) is MODELS[name]


def test_every_fixture_manifest_names_a_zoo_factory_that_resolves():
    import json

    from resetassay.io.checkpoint import _zoo_factory

    manifests = sorted((ROOT / "fixtures").glob("*/*/manifest.json"))
    assert manifests
    for path in manifests:
        factory = json.loads(path.read_text())["model"]["factory"]
        assert factory.startswith("resetassay.models:") and callable(_zoo_factory(factory, path))


# The stages from the bottom up (docs/design.md "Dependencies point down"): a module may import
# from its own stage and from stages below it, never from one above.
STAGES = ["base", "stats", "discovery", "data", "models", "io", "lesion", "scoring", "pipeline", "report", "train",
          "cli"]
BASE = {"names", "errors", "fields", "config", "shapes", "progress", "plugins", "__init__", "__main__"}
# io/imports.py imports nothing of ours but errors: data/ (`--data pkg.mod:factory`) and io/ (`--model`) both use
# it, so it counts as a base module although it lives with the other readers of what the user names.
LEAVES = {"resetassay.io.imports": "base"}
# Imports that point up on purpose, each inside a function or under TYPE_CHECKING (never at import time):
UPWARD = {
    # AssayResult.report()/.html(): a notebook renders the result it holds with the report's own code
    ("resetassay.pipeline.assay", "resetassay.report.render"),
    ("resetassay.pipeline.assay", "resetassay.report.html"),
    # AssayConfig checks utility and metric names against the registries (which load torch) when a config is made;
    # importing it stays torch-free so that the command line builds `run`'s flags from it at once
    ("resetassay.config", "resetassay.scoring.registry"),
    ("resetassay.config", "resetassay.lesion.shocks"),
}


def _stage(module: str) -> str:
    if module in LEAVES:
        return LEAVES[module]
    parts = module.split(".")
    return "base" if len(parts) < 2 or parts[1] in BASE else parts[1]


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported resetassay module, at top level) for every import in `path`."""
    import ast

    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("resetassay"):
            names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "resetassay" else [node.module]
            found += [(n, id(node) in top) for n in names]
        elif isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names if a.name.startswith("resetassay")]
    return found


def test_dependencies_point_down_the_stages():
    package = Path(resetassay.__file__).parent
    wrong = []
    for path in sorted(package.rglob("*.py")):
        module = ".".join(("resetassay", *path.relative_to(package).with_suffix("").parts))
        module = module.removesuffix(".__init__")
        if module in ("resetassay", "resetassay.__main__"):
            continue  # the lazy public names and `python -m resetassay` reach every stage by design
        mine = STAGES.index(_stage(module))
        for imported, at_top in _imports(path):
            if imported in ("resetassay", "resetassay.__version__"):
                continue
            if STAGES.index(_stage(imported)) > mine and not ((module, imported) in UPWARD and not at_top):
                wrong.append(f"{module} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_every_stage_package_says_what_it_holds():
    package = Path(resetassay.__file__).parent
    import ast

    for init in sorted(package.glob("*/__init__.py")):
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), init
        assert any(isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in n.targets)
                   for n in tree.body), f"{init}: no __all__"
        assert init.parent.name in STAGES, f"{init.parent.name} is not a stage of STAGES"


def test_every_design_citation_names_a_heading_of_docs_design_md():
    """Docstrings cite docs/design.md by the word DESIGN and one or more quoted headings; each must exist."""
    import re

    headings = set(re.findall(r"^#+ (.+?)\s*$", (ROOT / "docs" / "design.md").read_text(), flags=re.M))
    cited = {}
    for path in sorted([*Path(resetassay.__file__).parent.rglob("*.py"), *(ROOT / "tests").rglob("*.py"),
                        *(ROOT / "benchmarks").glob("*.py")]):
        for group in re.findall(r'DESIGN((?:\s*,?\s*"[^"]+")+)', path.read_text()):
            for heading in re.findall(r'"([^"]+)"', group):
                cited.setdefault(heading, path.name)
    assert cited
    assert not {h: f for h, f in cited.items() if h not in headings}


def test_a_module_over_500_lines_says_why_at_its_top():
    """Issue 23: no module over ~500 lines without a reason written at its top (its docstring's "Over 500 lines:")."""
    import ast

    package = Path(resetassay.__file__).parent
    silent = [str(path.relative_to(package)) for path in sorted(package.rglob("*.py"))
              if len(path.read_text().splitlines()) > 500
              and "Over 500 lines:" not in (ast.get_docstring(ast.parse(path.read_text())) or "")]
    assert not silent, silent
