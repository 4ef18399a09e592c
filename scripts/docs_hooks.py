"""MkDocs hooks of the documentation site (mkdocs.yml `hooks:`), besides the CLI reference (cli_reference.py):

- committed figures outside docs/ (FIGURES: a site path -> the repository file) are added to the site as they are,
  so a page shows the figure the benchmark wrote, never a copy that could go stale;
- `<!-- report-figures -->` on a page becomes the table of the report's figures and their captions, read from
  `resetassay.report.render.FIGURE_CAPTIONS` (what the report itself prints under each figure).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = {"assets/oracle_ratio.png": "reports/replication/figures/oracle_ratio.png"}
REPORT_FIGURES = "<!-- report-figures -->"


def on_files(files, config, **_kwargs):
    from mkdocs.structure.files import File

    for site_path, source in FIGURES.items():
        files.append(File.generated(config, site_path, abs_src_path=str(ROOT / source)))
    return files


def report_figures() -> str:
    """The report's figures, one row each: file name and caption (Shock@{q}: Shock@q, the run's q)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from resetassay.report.render import FIGURE_CAPTIONS

    rows = ["| figure | what it shows |", "|---|---|"]
    for name, caption in FIGURE_CAPTIONS.items():
        text = caption.replace("{q}", "q").replace("|", "\\|")
        rows.append(f"| `figures/{name}.png` | {text} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, **_kwargs) -> str:
    return markdown.replace(REPORT_FIGURES, report_figures()) if REPORT_FIGURES in markdown else markdown
