"""report.md (resetassay/report/markdown.py, SPEC S5): its tables as markdown."""

from __future__ import annotations

import pandas as pd

from resetassay.report.markdown import markdown_table


def test_markdown_table_bolds_the_marked_cells():
    table = pd.DataFrame({"utility": ["gxd", "activation"], "ρ": ["0.99", "0.5"]})
    best = pd.DataFrame({"utility": [False, False], "ρ": [True, False]})
    lines = markdown_table(table, best).splitlines()
    assert lines[2] == "| gxd | **0.99** |" and lines[3] == "| activation | 0.5 |"
