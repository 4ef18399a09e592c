"""Fuzzing what `resetassay report` and `check` read back (issue 24): whatever a run directory's tables or a
baseline file hold — cut short, a column dropped, text in a number column, rows repeated, random JSON — reading
them renders a report, or raises a one-line `BadInputError` naming the file; never another exception."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resetassay.errors import BadInputError
from resetassay.report.gate import read_baseline
from resetassay.report.render import render

TABLES = ["units.csv", "summary.csv", "checkpoints.csv", "notes.csv"]


@st.composite
def table_edits(draw: st.DrawFn) -> tuple[str, str, int, str]:
    """(table, kind of damage, a position in [0, 1e6), replacement text)."""
    return (draw(st.sampled_from(TABLES)),
            draw(st.sampled_from(["cut", "drop_column", "cell", "repeat_rows", "empty", "header_only"])),
            draw(st.integers(0, 10**6)), draw(st.text(max_size=6) | st.sampled_from(["nan", "inf", "-1", "8e9e0", ""])))


def _damaged(text: str, kind: str, at: int, new: str) -> str:
    lines = text.splitlines(keepends=True)
    if not lines:
        return text
    if kind == "cut":
        return text[: at % max(len(text), 1)]
    if kind == "empty":
        return ""
    if kind == "header_only":
        return lines[0]
    if kind == "repeat_rows":
        return "".join(lines + lines[1:])
    rows = [line.rstrip("\n").split(",") for line in lines]
    column = at % len(rows[0])
    if kind == "drop_column":
        return "".join(",".join(r[:column] + r[column + 1:]) + "\n" for r in rows)
    row = 1 + at % max(len(rows) - 1, 1)
    if row < len(rows) and column < len(rows[row]):
        rows[row][column] = new.replace(",", ";").replace("\n", " ")
    return "".join(",".join(r) + "\n" for r in rows)


def _one_line(err: BadInputError) -> None:
    message = str(err)
    assert message and "\n" not in message and "Traceback" not in message, message


@pytest.mark.slow
@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # the same cases in every CI run
@given(edits=st.lists(table_edits(), min_size=1, max_size=2))
def test_report_on_damaged_tables_renders_or_is_one_line(run_dir: Path, edits: list) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "run"
        shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("figures", "report.*"))
        for table, kind, at, new in edits:
            path = copy / table
            path.write_text(_damaged(path.read_text(), kind, at, new))
        try:
            render(copy, figures="none")
        except BadInputError as err:
            _one_line(err)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    | st.sampled_from(["resetassay.baseline/4", "gxd", "l1", "spearman", "ALL", "*@digits:gxd:l1:spearman>=0.9"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["format", "rows", "floors", "family", "utility", "metric", "stat", "value", "kind", "scope",
                         "n"]) | st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(content=json_values | st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
def test_a_baseline_of_any_content_reads_or_is_one_line(content: object) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "baseline.json"
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        try:
            read_baseline(path)
        except BadInputError as err:
            _one_line(err)
