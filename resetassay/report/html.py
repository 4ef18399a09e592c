"""report.html: one self-contained page (inline CSS, figures as data: URIs) readable offline (SPEC S5).

It renders the same blocks as report.md (`blocks.Block`); nothing here reads tables.
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

import pandas as pd

from resetassay.report.blocks import Block

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1em auto; max-width: 1400px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; margin: 0 0 .5em; font-size: 1.8em; }
#headline ul { margin: .4em 0; }
h2 { border-bottom: 1px solid #bbb; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 11.5px; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; white-space: nowrap; }
th { background: #eee; position: sticky; top: 0; white-space: normal; }
td.key, th.key { text-align: left; }
tbody tr:nth-child(even) { background: #f7f7f7; }
td.best { font-weight: bold; background: #dff0d8; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 13px; color: #555; }
pre { background: #f4f4f4; padding: .8em; overflow-x: auto; font-size: 12px; }
code { background: #f4f4f4; padding: 0 3px; }
.scroll { overflow-x: auto; }
table.sortable th { cursor: pointer; }
table.sortable th[data-dir="asc"]::after { content: " ▲"; }
table.sortable th[data-dir="desc"]::after { content: " ▼"; }
details > summary { font-size: 1.3em; font-weight: bold; margin-top: 1.2em; cursor: pointer;
                    border-bottom: 1px solid #bbb; }
"""
# Click a header to sort by that column (numbers by the value in data-v, else the text); no library, no CDN.
SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach((th, col) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0];
  const key = td => td.dataset.v !== undefined ? parseFloat(td.dataset.v) : td.textContent.trim();
  const dir = th.dataset.dir = th.dataset.dir === "asc" ? "desc" : "asc";
  th.parentNode.querySelectorAll("th").forEach(o => { if (o !== th) delete o.dataset.dir; });
  [...body.rows].sort((a, b) => {
    const x = key(a.cells[col]), y = key(b.cells[col]);
    const c = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
    return dir === "asc" ? c : -c;
  }).forEach(row => body.appendChild(row));
}));
"""
MEDIA_TYPES = {".png": "image/png", ".svg": "image/svg+xml"}  # of the figures report.html embeds
# A cell's leading number: "(m ± se)e-03" (one exponent, outside the parentheses) or a plain decimal, and only as a
# whole token: what follows it may not continue a word or a number (so a sha256 "8e9e0dcd..." stays text).
NUMBER = re.compile(r"^(?:\((?P<scaled>-?\d+(?:\.\d+)?) ± [^)]*\)(?P<exponent>e[-+]?\d+)?"
                    r"|(?P<plain>-?\d+(?:\.\d+)?(?:e[-+]?\d+)?))(?![\w.])")


def _inline(text: str) -> str:
    """Escape text; `code` spans and **bold** become HTML."""
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _html_table(table: pd.DataFrame, best: pd.DataFrame | None = None, keys: int = 1) -> str:
    """A table; the first `keys` columns are left-aligned labels, cells where `best` is True are bold, shaded."""
    key = ' class="key"'
    head = "".join(f"<th{key if j < keys else ''}>{html.escape(str(c))}</th>" for j, c in enumerate(table.columns))
    rows = []
    for i in range(len(table)):
        cells = []
        for j, value in enumerate(table.iloc[i]):
            classes = ["key"] if j < keys else []
            if best is not None and bool(best.iloc[i, j]):
                classes.append("best")
            attr = f' class="{" ".join(classes)}"' if classes else ""
            text = _cell(value)
            number = _sort_value(text) if j >= keys else None
            attr += f' data-v="{number!r}"' if number is not None else ""
            cells.append(f"<td{attr}>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _sort_value(text: str) -> float | None:
    """The number a cell shows, for sorting: "0.987 ± 0.004" -> 0.987, "(4.47 ± 1.30)e-03" -> 0.00447, "1.03 [1.0,
    1.1]" -> 1.03, "0.52 s" -> 0.52; None for text, including a number that runs into letters or digits (a sha256
    such as "8e9e0dcd...", a name such as "3rd") and one that is not finite. Never raises: the report must not die
    on a cell."""
    match = NUMBER.match(text)
    if match is None:
        return None
    literal = match["plain"] or match["scaled"] + (match["exponent"] or "")
    try:
        number = float(literal)
    except ValueError:  # not reachable with NUMBER as it is; a cell is text rather than a crash
        return None
    return number if math.isfinite(number) else None


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "" if pd.isna(value) else f"{value:.4g}"
    return str(value)


def _html_figure(path: Path, caption: str) -> str:
    """A PNG or SVG embedded as a data: URI, so the page needs no other file."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(path.stem)
    return (f'<figure><img alt="{alt}" src="data:{MEDIA_TYPES[path.suffix]};base64,{data}">'
            f"<figcaption>{_inline(caption)}</figcaption></figure>")


def html_body(blocks: list[Block], base: Path | None = None) -> str:
    """The blocks as HTML; figure paths are relative to `base` (the run directory). What comes before the first h2
    is the headline, `<section id="headline">`, meant to fit one screen; an h2 with `fold` opens a `<details>`."""
    parts = ['<section id="headline">']
    in_headline, folded = True, False
    for block in blocks:
        if block.kind in ("h1", "h2") and folded:
            parts.append("</details>")
            folded = False
        if block.kind == "h2" and in_headline:
            parts.append("</section>")
            in_headline = False
        if block.kind == "h2" and block.fold:
            parts.append(f"<details><summary>{_inline(block.text)}</summary>")
            folded = True
        elif block.kind in ("h1", "h2", "h3"):
            parts.append(f"<{block.kind}>{_inline(block.text)}</{block.kind}>")
        elif block.kind == "list":
            parts.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in block.items) + "</ul>")
        elif block.kind == "text":
            parts.append(f"<p>{_inline(block.text)}</p>")
        elif block.kind == "code":
            parts.append(f"<pre>{html.escape(block.text)}</pre>")
        elif block.kind == "table":
            parts.append(_html_table(block.table, block.best, block.keys))
        elif block.kind == "figure" and base is not None:
            parts.append(_html_figure(base / block.path, block.text))
    parts.append("</details>" if folded else "</section>" if in_headline else "")
    return "\n".join(parts)


def html_document(blocks: list[Block], base: Path) -> str:
    """The whole page (`html_body` with the style and the sorting script inline), titled by its h1."""
    title = next((b.text for b in blocks if b.kind == "h1"), "resetassay report")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n{html_body(blocks, base)}\n"
            f"<script>{SORT_SCRIPT}</script>\n</body></html>\n")
