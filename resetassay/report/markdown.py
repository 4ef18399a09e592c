"""report.md: the blocks as markdown, figures linked (SPEC S5)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from resetassay.report.blocks import Block


def _markdown_cell(value: object) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown_table(table: pd.DataFrame, best: pd.DataFrame | None = None) -> str:
    """A pipe table; cells where `best` is True in bold."""
    head = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = []
    for i in range(len(table)):
        cells = [_markdown_cell(v) for v in table.iloc[i]]
        if best is not None:
            cells = [f"**{c}**" if bool(b) and c else c for c, b in zip(cells, best.iloc[i], strict=True)]
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *body])


def markdown_document(blocks: list[Block]) -> str:
    """report.md from the blocks (figures linked, not embedded)."""
    lines = []
    for block in blocks:
        if block.kind in ("h1", "h2", "h3"):
            lines.append("#" * int(block.kind[1]) + " " + block.text)
        elif block.kind == "text":
            lines.append(block.text)
        elif block.kind == "list":
            lines.extend(f"- {item}" for item in block.items)
        elif block.kind == "code":
            lines.append(f"```\n{block.text}\n```")
        elif block.kind == "table":
            lines.append(markdown_table(block.table, block.best))
        elif block.kind == "figure":
            lines.append(f"![{block.path.stem}]({block.path.as_posix()})\n\n*{block.text}*")
        lines.append("")
    return "\n".join(lines)
