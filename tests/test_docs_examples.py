"""The code in README.md and docs/ cannot rot (issue 27): every ```python block runs, and every `resetassay` command
line of a ```bash or ```console block parses with the command's own parser — the command exists, and so does each
flag it gives, with a value of the right type.

A page's python blocks run in order in one fresh interpreter (a later block may use an earlier one's names), in a
temporary folder holding the repository's fixtures, as a reader would run them from a checkout. A block preceded
by `<!-- docs-test: skip (why) -->` is not run; keep such marks rare (data that is not in the repository).
The CLI reference and the report's figure list of the site are generated from the code (scripts/); they are
checked here too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)")
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*\((?P<why>.+)\)\s*-->")
RUNNER = """
import json, sys, traceback
namespace = {"__name__": "__main__"}
for block in json.load(sys.stdin):
    try:
        exec(compile(block["code"], block["where"], "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        sys.exit(f"the python block at {block['where']} failed")
"""


def code_blocks(path: Path) -> list[dict]:
    """The fenced blocks of a markdown file: language, first line (1-based, of the fence), text (dedented to the
    fence), and why it is skipped (None: it is run)."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, body, start = len(match["indent"]), [], i
        i += 1
        while i < len(lines) and not lines[i].strip().startswith("```"):
            line = lines[i]
            body.append(line[indent:] if line[:indent].strip() == "" else line.lstrip())  # as the fence is indented
            i += 1
        before = [line for line in lines[:start] if line.strip()][-1:]  # the line before the fence, blanks aside
        skip = SKIP.search(before[0]) if before else None
        blocks.append({"lang": match["lang"], "line": start + 1, "text": "\n".join(body) + "\n",
                       "skip": skip["why"] if skip else None})
        i += 1
    return blocks


def _python_pages() -> list[Path]:
    return [p for p in PAGES if any(b["lang"] == "python" for b in code_blocks(p))]


@pytest.mark.parametrize("page", _python_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_python_blocks_of_a_page_run(page, tmp_path):
    (tmp_path / "fixtures").symlink_to(ROOT / "fixtures")
    blocks = [{"code": b["text"], "where": f"{page.relative_to(ROOT)}:{b['line']}"}
              for b in code_blocks(page) if b["lang"] == "python" and not b["skip"]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(blocks), cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


def test_skipped_blocks_are_rare_and_say_why():
    skipped = [(p.relative_to(ROOT), b["line"], b["skip"]) for p in PAGES for b in code_blocks(p) if b["skip"]]
    assert len(skipped) <= 3, skipped
    assert all(len(why) > 15 for *_, why in skipped), skipped


def command_lines(text: str, lang: str) -> list[list[str]]:
    """The `resetassay ...` invocations of a shell block as argument lists (after `resetassay`): continuation lines
    joined, comments dropped, `&&`/`||`/`;`/`|` chains split; `python -m resetassay` and `torchrun ... -m
    resetassay` count too. In a console block only the `$ ` lines are commands."""
    text = re.sub(r"\\\n", " ", text)
    lines = text.splitlines()
    if lang == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    found = []
    for line in lines:
        lexer = shlex.shlex(line, posix=True, punctuation_chars="&|;")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        segment: list[str] = []
        for token in [*lexer, ";"]:
            if token not in ("&&", "||", ";", "|", "&"):
                segment.append(token)
                continue
            while segment and re.match(r"^\w+=", segment[0]):  # VAR=value prefixes
                segment = segment[1:]
            if segment[:1] == ["resetassay"]:
                found.append(segment[1:])
            elif "-m" in segment and segment[segment.index("-m") + 1:][:1] == ["resetassay"]:
                found.append(segment[segment.index("-m") + 2:])
            segment = []
    return found


def _documented_commands() -> list[tuple[str, list[str]]]:
    return [(f"{p.relative_to(ROOT)}:{b['line']}", args) for p in PAGES for b in code_blocks(p)
            if b["lang"] in ("bash", "console", "sh", "shell") and not b["skip"]
            for args in command_lines(b["text"], b["lang"])]


def test_the_docs_show_command_lines():
    assert len(_documented_commands()) >= 15
    assert {"run", "report", "check", "baseline", "train", "inspect"} <= {args[0] for _, args in
                                                                           _documented_commands() if args}


@pytest.mark.parametrize(("where", "args"), _documented_commands(), ids=[w for w, _ in _documented_commands()])
def test_a_documented_command_line_parses(where, args):
    """The command exists and its parser accepts every flag and value (it is not run)."""
    import typer.main

    from resetassay.cli.commands import app

    root = typer.main.get_command(app)
    assert args, f"{where}: `resetassay` without a command"
    ctx = root.context_class(root, info_name="resetassay")
    command = root.get_command(ctx, args[0])
    assert command is not None, f"{where}: no command {args[0]!r}; the commands: {root.list_commands(ctx)}"
    if "--help" in args:
        return
    try:
        command.make_context(args[0], list(args[1:]), parent=ctx)
    except Exception as err:  # click's UsageError, BadParameter, NoSuchOption: the line would not run
        pytest.fail(f"{where}: resetassay {shlex.join(args)}: {type(err).__name__}: {err}")


def test_command_lines_are_found_in_chains_and_continuations():
    text = ("pip install -e . && resetassay run fixtures --out r  # a comment\n"
            "torchrun --nproc-per-node 2 -m resetassay run a \\\n    --q 0.1\n"
            "OMP_NUM_THREADS=1 python -m resetassay check r --baseline b.json; echo done\n")
    assert command_lines(text, "bash") == [["run", "fixtures", "--out", "r"], ["run", "a", "--q", "0.1"],
                                           ["check", "r", "--baseline", "b.json"]]
    assert command_lines("$ resetassay inspect c\nerror: ...\n", "console") == [["inspect", "c"]]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_reference_is_generated_from_every_command_verbatim():
    """Every command, argument and option, with the help text as typer has it: the extras' names and
    `pkg.mod:factory` survive (no markup eaten), and the page's placeholder is where the hook puts it."""
    import typer.main

    from resetassay.cli.commands import app

    reference = _script("cli_reference")
    text = reference.cli_markdown()
    listed = reference.commands()
    assert set(listed) == set(typer.main.get_command(app).commands)
    for name, (command, ctx) in listed.items():
        assert f"## resetassay {name}\n" in text
        for param in command.params:
            assert f"| `{param.get_help_record(ctx)[0]}` |" in text, (name, param.name)
    for verbatim in ("resetassay\\[torchvision\\]", "resetassay\\[parquet\\]", "pkg.mod:factory",
                     "package.module:factory", "\\[FAMILY:\\]UTILITY:METRIC:STAT&gt;=VALUE"):
        assert verbatim in text, verbatim
    assert reference.MARK in (ROOT / "docs" / "reference" / "cli.md").read_text()
    assert reference.on_page_markdown(f"a\n{reference.MARK}\nb", None) == f"a\n{text}\nb"


def test_the_report_figure_list_is_read_from_the_report_captions():
    from resetassay.report.render import FIGURE_CAPTIONS

    hooks = _script("docs_hooks")
    table = hooks.report_figures()
    assert all(f"`figures/{name}.png`" in table for name in FIGURE_CAPTIONS)
    assert hooks.REPORT_FIGURES in (ROOT / "docs" / "guide" / "report.md").read_text()
    assert all((ROOT / source).is_file() for source in hooks.FIGURES.values())


def _cells(row: str) -> int:
    """The cells of a markdown table row: `|` separates, except escaped (`\\|`) or inside a code span."""
    count, code, i = 1, False, 0
    while i < len(row):
        if row[i] == "\\":
            i += 2
            continue
        code ^= row[i] == "`"
        count += row[i] == "|" and not code
        i += 1
    return count


def test_every_table_row_has_its_header_s_columns():
    """A `|` in a cell (E|h − r|) must be escaped, or the row grows a column and the table breaks."""
    broken = []
    for page in PAGES:
        lines, fence = page.read_text().splitlines(), False
        for i, line in enumerate(lines[:-1]):
            fence ^= line.strip().startswith("```")
            if fence or not line.startswith("|") or not re.match(r"^\|(\s*:?-+:?\s*\|)+\s*$", lines[i + 1]):
                continue
            for j in range(i + 1, len(lines)):
                if not lines[j].startswith("|"):
                    break
                if _cells(lines[j]) != _cells(line):
                    broken.append(f"{page.relative_to(ROOT)}:{j + 1}")
    assert not broken, broken
