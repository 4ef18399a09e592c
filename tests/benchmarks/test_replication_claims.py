"""Issue 26: the replication pages cannot drift from the tables (SPEC S6). Every findings file equals a fresh render
from the committed tables, every snippet of one names a block it has, and the hand-written replication prose states
no result-like number outside those blocks."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from helpers.paths import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import generated  # noqa: E402
import plasticity  # noqa: E402
import replicate_paper  # noqa: E402
import replicate_resnet  # noqa: E402
import replication_variants  # noqa: E402

REPLICATION = ROOT / "reports" / "replication"
RENDERS = {
    "mlp": lambda: replicate_paper.findings_file(REPLICATION),
    "init": lambda: replicate_paper.findings_file(REPLICATION / "init"),
    "variants": lambda: replication_variants.findings_file(REPLICATION),
    "resnet-cosine": lambda: replicate_resnet.findings_file(REPLICATION / "resnet_cifar10", "cosine"),
    "resnet-table3": lambda: replicate_resnet.findings_file(REPLICATION / "resnet_table3", "table3"),
    "plasticity": lambda: plasticity.readme_file(REPLICATION / "plasticity"),
}
PAGES = sorted((ROOT / "docs" / "replication").glob("*.md"))
SUMMARIES = [ROOT / "README.md", ROOT / "docs" / "index.md"]  # only their paragraphs about the replication
SNIPPET = re.compile(r'^--8<-- "([^"]+)"$', re.M)
RESULT = re.compile(r"\d+(?:\.\d+)?\s?(?:×|%|s\b|SE\b|min\b|minutes\b)|\d*\.\d{2,}")
# protocol settings and facts of construction, not results: the only numbers the prose may state by hand
ALLOWED = ["lr 0.01", "2.45× smaller", "Shock@5%", "the 5%", "32×32", "3×3 stem", "30, 60 and 80 %", "α = .05",
           "decay 0.99"]


def test_every_findings_file_is_the_render_of_its_tables():
    stale = []
    for name, render in RENDERS.items():
        path, text = render()
        if path.read_text() != text:
            stale.append(f"{name}: {path.relative_to(ROOT)} (rerun its script with --render)")
    assert not stale, stale


def test_every_findings_snippet_names_a_block_of_its_file():
    missing = []
    for page in PAGES:
        for include in SNIPPET.findall(page.read_text()):
            file, _, section = include.partition(":")
            if Path(file).name.endswith("findings.md") and section not in generated.blocks((ROOT / file).read_text()):
                missing.append(f"{page.name}: {include}")
    assert not missing, missing


def prose(text: str) -> str:
    """`text` without what is not hand-written prose: snippet includes, fenced code, inline code, link targets."""
    text = SNIPPET.sub("", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
    return re.sub(r"\]\([^)]*\)", "]", re.sub(r"`[^`]*`", "", text))


def result_numbers(text: str) -> list[str]:
    """The result-like numbers of hand-written prose (decimals, ratios, percentages, times), allowed phrases aside."""
    for phrase in ALLOWED:
        text = text.replace(phrase, "")
    return [m.group(0) for m in RESULT.finditer(prose(text))]


def replication_prose(path: Path) -> str:
    """A replication page whole; of README.md and docs/index.md, the paragraphs that point to the replication."""
    text = path.read_text()
    if path in SUMMARIES:
        return "\n\n".join(p for p in text.split("\n\n") if "replication" in p)
    return text


@pytest.mark.parametrize("path", PAGES + SUMMARIES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_hand_written_replication_prose_states_no_result(path):
    assert result_numbers(replication_prose(path)) == []


def test_the_scan_finds_a_hand_written_result():
    assert result_numbers("GXD .993 ± .000, 4 SE below, 43× the oracle, 2.26 s a checkpoint, 12% after 5 tasks, "
                          "55 minutes") == [".993", ".000", "4 SE", "43×", "2.26 s", "12%", "55 minutes"]
    assert result_numbers('lr 0.01, Shock@5%, `--lr 0.1 --epochs 10`\n--8<-- "reports/replication/findings.md:relu"') \
        == []
