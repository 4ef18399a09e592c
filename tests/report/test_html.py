"""report.html's sort values never kill a report (issue 25): a cell is a number only where its leading number is a
whole token, finite, and otherwise text. A data file's sha256 such as "8e9e0dcd..." once read as the float "8e9e0"
and crashed the report after a finished run."""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from resetassay.cli import app
from resetassay.report.html import _sort_value

runner = CliRunner()
HASH = "8e9e0dcd" + "0" * 56  # a sha256 whose first characters read as digits, "e", digits


@pytest.mark.parametrize(("text", "value"), [
    ("0.987", 0.987), ("-0.5", -0.5), ("12", 12.0), ("1.5e-03", 1.5e-3),
    ("0.987 ± 0.004", 0.987), ("(4.47 ± 1.30)e-03", 4.47e-3), ("(1.2 ± 0.3)", 1.2), ("1.03 [1.0, 1.1]", 1.03),
    ("0.52 s", 0.52), ("0.912 / 0.871", 0.912), ("0.9 tie", 0.9), ("49×", 49.0), ("12%", 12.0),
    (HASH, None), ("8e9e0", None), ("1e5e5", None), ("12ab", None), ("3rd", None), ("3.5.1", None), ("1e999", None),
    ("-1e999 ± 1", None), ("digits task 1", None), ("", None), ("n/a", None), ("nan", None), ("inf", None),
])
def test_sort_value_is_a_finite_number_or_none_and_never_raises(text: str, value: float | None):
    assert _sort_value(text) == value


def test_a_run_whose_checkpoints_table_holds_a_float_like_sha256_renders(run_dir: Path, tmp_path: Path):
    """The provenance table shows data_sha256 as text (no data-v); `resetassay report DIR` exits 0."""
    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    checkpoints = pd.read_csv(copy / "checkpoints.csv")
    checkpoints["data_sha256"] = HASH
    checkpoints.to_csv(copy / "checkpoints.csv", index=False)
    result = runner.invoke(app, ["report", str(copy), "--quiet", "--figures", "none"])
    assert result.exit_code == 0, result.output
    page = (copy / "report.html").read_text()
    cells = re.findall(r"<td([^>]*)>([^<]*)</td>", page)
    hashes = [attr for attr, text in cells if html.unescape(text) == HASH]
    assert hashes and not any("data-v" in attr for attr in hashes)
