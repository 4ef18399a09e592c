"""Render a run directory's report from its tables alone (SPEC S5): aggregate.csv, figures, report.md, report.html.

Nothing here reruns a model: Shock@q at another q is recomputed from units.csv, but joint
Shock@q exists only for the run's q. The aggregates (mean ± SE over checkpoints and seeds, per
model family and training step) are computed once and feed aggregate.csv, the tables and the
figures. Each figure is drawn once, as PNG or SVG (`--figures`), or not at all; matplotlib and
seaborn are imported only to draw them. A render that fails never touches the tables: report.md
says what failed (`ReportFailed`).
"""

from __future__ import annotations

import json
import math
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from resetassay.errors import BadInputError, one_line
from resetassay.io.rundir import (
    StageClock,
    Tables,
    atomic_write,
    check_figures,
    read_report_timings,
    read_run,
    read_run_info,
    read_timings,
    run_q,
    table_path,
    write_report_timings,
    write_table,
)
from resetassay.names import CBP_RESET, COMMON, RUN_JSON, SET_SELECTORS, TABLES
from resetassay.report.blocks import (
    MIN_SE,
    STEP_STATS,
    Block,
    checkpoint_rho_table,
    family_table,
    pivot_table,
    provenance_table,
    q_label,
)
from resetassay.report.headline import headline_blocks, interval_text, verdict_detail
from resetassay.report.html import html_document
from resetassay.report.interventions import intervention_blocks
from resetassay.report.markdown import markdown_document
from resetassay.report.sets import set_blocks
from resetassay.stats.probe_sampling import DRAWS, LEVEL, probe_sampling_intervals
from resetassay.stats.summary import aggregate, checkpoint_stats, common_units, summary_at_q
from resetassay.stats.verdict import FLAG_NOTE, reliability_flags, verdict_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from resetassay.progress import Progress

# Files `render` writes; any of them a render did not make (e.g. an earlier sweep) is removed, and so is every
# PNG/SVG in figures/ it did not draw (a figure this run has no data for, one of an older version or of the other
# format), and figures/ once empty.
OUTPUTS = ("aggregate.csv", "verdict.csv", "sweep.csv", "report.md", "report.html")


class ReportFailed(UserWarning):
    """Rendering a run's report failed after its tables were read (SPEC S5): raised by `render` once report.md says
    so, issued as a warning by `AssayResult.save` (the assay's tables are written whatever the report does). Its
    message is one line: the cause, and `resetassay report DIR` to retry."""

FIGURE_CAPTIONS = {
    "regret": "The verdict as a picture: normalised regret of each utility's Shock@{q} pick per verdict (family "
              "· unit kind, markers), mean over checkpoints with the 95% paired-bootstrap interval; 0 is the "
              "oracle, 1 (dashed) a random pick, 0.5 (dotted) the fail line. Utilities top down by mean regret, "
              "random last. Filled: the best or indistinguishable from it; hollow: worse; ✗: fails. Linear below "
              "0.01, logarithmic above. The shaded strip on the right: no value there. ⚑: the verdict's reliability "
              "flags (with their details under the headline).",
    "spearman_heatmap": "Pooled Spearman ρ between utility and unit shock on the common scope, per checkpoint, "
                        "written in each cell (three decimals from .9 on). Colours are bands, so .9, .95, .99 and "
                        ".999 differ at a glance: grey from −.5 to .5, red below −.5; hatched: no ρ. Rows coloured as "
                        "the utilities in every figure.",
    "scatter_l1": "Utility rank against the rank of the unit's logit-L1 shock (0 lowest, 1 highest, ties averaged) on "
                  "the common scope of each family's latest checkpoint (named above its row): a row per family, a "
                  "panel per utility, a point per mature unit coloured by its layer's depth; the diagonal is a perfect "
                  "ranking. Ranks are what Spearman's ρ correlates, so every panel has the same axes, and its title "
                  "gives the ρ of exactly its points: that checkpoint's ρ in the heatmap above.",
    "scatter_kl": "Utility rank against the rank of the unit's KL shock, as above.",
    "shock_vs_step": "Shock@{q} on the common scope against training step, for families with at least three steps: "
                     "does a utility degrade as the network ages? Error bars: SE over the checkpoints (seeds) of a "
                     "step, where there are several.",
    "layer_heatmap": "Spearman ρ within each unit layer (rows, input to output) per utility, the mean over a family's "
                     "checkpoints, written in each cell, coloured in the bands of the pooled heatmap: where in the "
                     "network each utility ranks well (hatched: no ρ, where the utility does not apply or the layer's "
                     "values are constant, e.g. dead units).",
    "block_spearman": "Spearman ρ within each transformer block's MLP neurons and attention heads per utility, the "
                      "mean over a family's checkpoints; each panel's title says how many units (heads) every ρ is "
                      "over. No error bars: a ρ over a few heads is noisy however well the checkpoints agree. Does a "
                      "utility stay reliable in deep blocks (SPEC S9)?",
    "growth": "Growth diagnostic, a panel per checkpoint that stores unit ages (CBP), a row per family; the untrained "
              "checkpoint (step 0: every unit newborn) is left out. Each unit's forward activity E|h − r| against its "
              "backward signal E|∂L/∂h| (log axes; units at 0 are counted, not drawn), coloured by age; the star and "
              "the diamond mark the medians of newborn (age ≤ maturity) and mature units, also given in the title: "
              "are newborn units forward-active but backward-starved (SPEC S8)?",
    "shock_vs_q": "Shock@q on the common scope against q (recomputed from units.csv): how the damage grows with the "
                  "fraction reset. The oracle is dashed.",
}


def _caption(figure: str) -> str:
    """A figure's caption; a registered shock metric's scatter is captioned like the built-in ones (SPEC S4)."""
    metric = figure.removeprefix("scatter_")
    return FIGURE_CAPTIONS.get(figure) or f"Utility against the unit's {metric} shock, as above."


def _reading_notes(tables: Tables, info: dict, stats: pd.DataFrame, q: float, base_q: float) -> list[Block]:
    """How to read the detail tables, and what the run left out (a q it did not measure, sampled units)."""
    metrics = ", ".join(dict.fromkeys(stats["metric"]))
    blocks = [Block("text", (
        f"Shock metrics {metrics} (SPEC S4). Shock@{q_label(q)} resets, in every layer, the {q_label(q)} mature "
        "units with the lowest utility (SPEC S5); the oracle picks by measured shock; gap = Shock@q − oracle "
        "Shock@q, ratio = Shock@q / oracle Shock@q; top-k overlap is the share of the oracle's units a utility "
        "picks; joint Shock@q resets the whole selection at once. These tables use each utility's own layers "
        "(scope ALL; the headline compares on the common scope). A cell is mean ± standard error over checkpoints "
        f"and seeds from {MIN_SE} checkpoints on, else the values; **bold**: the unique best of the column within "
        "each metric (the oracle does not compete; tied best cells say tie).")),
    ]
    if not math.isclose(q, base_q):
        blocks.append(Block("text", (
            f"Shock@{q_label(q)} is recomputed from units.csv (the run used q = {q_label(base_q)}); joint "
            f"Shock@q is only measured at the run's q = {q_label(base_q)} (it needs the model), so it is n/a "
            f"here. Rerun `resetassay run --q {q:g}` to measure it.")))
    if "family" not in tables["checkpoints"]:
        blocks.append(Block("text", "checkpoints.csv records no model family: all checkpoints are pooled."))
    return blocks


def _sampled_note(info: dict) -> list[Block]:
    sampled = info.get("config", {}).get("units_per_layer")
    if not sampled:
        return []
    return [Block("text", (
        f"**Sampled units**: at most {sampled} units of each layer were lesioned (drawn with the run's seed, "
        "`resetassay run --units-per-layer`): Spearman ρ, Shock@q and the oracle are estimates over that sample."))]


def _sequential_note(info: dict, tables: Tables, q: float) -> list[Block]:
    confidence = info.get("config", {}).get("sequential")
    if confidence is None:
        return []
    precision = info.get("config", {}).get("rank_precision", 2)
    ranks = (f", and then each utility's pooled Spearman ρ was settled to within {precision:g} of the exact run's "
             "(about that confidence)" if precision < 2 else "")
    note = Block("text", (
        f"**Sequential probes** (`resetassay run --sequential {confidence:g}`, SPEC S4b): each unit was lesioned on "
        "a growing seeded share of the probe set until its layer's oracle bottom-k set was settled at confidence "
        f"{confidence:g}{ranks}; units.csv gives each unit's probes used and the standard error of its shock. "
        "Units that stopped early have estimated shocks, so Spearman ρ carries that sampling error (the units of "
        "every Shock@q and of the oracle's saw every probe example): the "
        f"intervals below redraw those shocks from their standard errors ({LEVEL:.0%}, {DRAWS} draws; they leave "
        "out the sampling of units and checkpoints, which the verdict's intervals hold)."))
    intervals = probe_sampling_intervals(tables["units"], tables["summary"], q)
    if intervals.empty:
        return [note]
    shown = intervals[intervals["statistic"].isin(["spearman", "gap_ratio"])].assign(
        interval=lambda f: [f"{v:.3f} [{lo:.3f}, {hi:.3f}]" for v, lo, hi in zip(f["value"], f["low"], f["high"],
                                                                                   strict=True)])
    table = shown.pivot(index=["checkpoint", "utility", "metric"], columns="statistic", values="interval")
    table = table.reindex(columns=["spearman", "gap_ratio"]).reset_index().rename(
        columns={"spearman": "Spearman ρ [probe-sampling interval]", "gap_ratio": "Shock@q / oracle [interval]"})
    return [note, Block("table", table=table, keys=3)]


def _report_blocks(tables: Tables, info: dict, headline: list[Block], stats: pd.DataFrame,  # noqa: PLR0913 — the report's parts, each computed once by the caller
                   sweep_stats: pd.DataFrame | None, made: list[Path], q: float, base_q: float,
                  timings: dict[str, dict[str, float]] | None = None, figures_note: str = "",
                  verdict: pd.DataFrame | None = None) -> list[Block]:
    """The whole report as blocks: the headline (one screen), the figures (`made`, relative to the run
    directory; `figures_note` says why there are none or not all), then folded details: the verdict in full
    (`verdict`: `verdict.verdict_table`, SPEC S5b), tables per family
    (`stats`: per-checkpoint statistics of scope ALL), by training step, the q sweep, per-checkpoint ρ, clamp
    against reset (a cbp-reset run), set-aware selection (a run with a set selector; `timings`: timings.json's
    stages per checkpoint), not-applicable notes, provenance."""
    blocks = [Block("h1", "resetassay report"), *headline, *_sampled_note(info),
              *_sequential_note(info, tables, base_q), Block("h2", "Figures")]
    for path in made:
        blocks.append(Block("figure", _caption(path.stem).format(q=q_label(q)), path=path))
    blocks += [Block("text", figures_note)] if figures_note else []
    if verdict is not None and len(verdict):
        blocks += [Block("h2", "The verdict in full", fold=True),
                   Block("text", "Every verdict of every metric (verdict.csv; method S5b): regret mean ± SE over "
                         "checkpoints with its 95% interval, the interval of its difference to the best, the "
                         "layer-balanced ρ, the measured calibration seconds, and the marks. " + interval_text()),
                   Block("table", table=verdict_detail(verdict), keys=4)]
    blocks += [Block("h2", "Tables per model family", fold=True), *_reading_notes(tables, info, stats, q, base_q)]
    for family, ckpts in stats.groupby("family", sort=True):
        steps = sorted(ckpts["step"].dropna().unique())
        step_text = f", steps {', '.join(f'{s:g}' for s in steps)}" if steps else ""
        n = ckpts["checkpoint"].nunique()
        blocks.append(Block("h3", f"{family} ({n} checkpoint{'s' if n != 1 else ''}{step_text})"))
        table, best = family_table(ckpts, q)
        blocks.append(Block("table", table=table, best=best, keys=2))
        if len(steps) > 1:
            blocks.append(Block("h3", f"{family} by training step"))
            table, best = pivot_table(ckpts.dropna(subset=["step"]), "step", STEP_STATS,
                                      "{label} @ step {value:g} (n={n})", q)
            blocks.append(Block("table", table=table, best=best, keys=2))
        if sweep_stats is not None:
            blocks.append(Block("h3", f"{family}: Shock@q sweep (recomputed from units.csv)"))
            table, best = pivot_table(sweep_stats[sweep_stats["family"] == family], "q", ("shock_at_q", "gap_ratio"),
                                      "{label} @ q={value:g}")
            blocks.append(Block("table", table=table, best=best, keys=2))
    blocks += [Block("h2", "Pooled Spearman ρ per checkpoint", fold=True),
               Block("table", table=checkpoint_rho_table(stats), keys=4),
               *intervention_blocks(tables["units"], tables["checkpoints"]),
               *set_blocks(tables["summary"], tables["checkpoints"], timings or {}, base_q)]
    notes = tables["notes"][tables["notes"]["utility"] != FLAG_NOTE]  # flags: under the headline
    if len(notes):
        blocks += [Block("h2", "Not applicable", fold=True),
                   Block("text", "Utilities left out of a layer, and why (SPEC S3); pooled rows use the other layers."
                         + (f" {CBP_RESET}: a layer CBP's reset cannot write (SPEC S7), left out of the whole run."
                            if (notes["utility"] == CBP_RESET).any() else "")),
                   Block("table", table=notes.drop_duplicates(["utility", "layer", "reason"])
                         .drop(columns="checkpoint", errors="ignore").reset_index(drop=True), keys=3)]
    return blocks + _provenance_blocks(tables, info)


def _provenance_blocks(tables: Tables, info: dict) -> list[Block]:
    versions = info.get("versions", {})
    blocks = [Block("h2", "Provenance", fold=True)]
    if versions or "device" in info:
        text = ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
        device = info.get("device", "not recorded")
        blocks.append(Block("text", f"Packages: {text or 'not recorded'}; device: {device}."))
    if "config" in info:
        blocks += [Block("text", "Run config (run.json):"),
                   Block("code", json.dumps(info["config"], indent=1, sort_keys=True))]
    if len(tables["checkpoints"]):
        blocks += [Block("text", "Checkpoints and the data each was assayed on: data source, task, permutation and "
                                 "split seeds, calibration and probe sizes (SPEC S1)."),
                   Block("table", table=provenance_table(tables["checkpoints"]), keys=3)]
    return blocks


def _report_figures(tables: Tables, summary: pd.DataFrame, verdict: pd.DataFrame, common: pd.DataFrame,
                   sweep_common: pd.DataFrame | None, q: float) -> dict[str, Figure]:
    """Every figure the run's tables support, by name (the keys of FIGURE_CAPTIONS): the verdict (`verdict`:
    `verdict.verdict_table`, SPEC S5b), then the S5 statistics on the common scope (`common`: its per-checkpoint
    statistics)."""
    from resetassay.report import figures  # matplotlib and seaborn load only when figures are drawn

    shared = common_units(tables["units"], summary)
    drawn = {"regret": figures.regret_dots(verdict),
             "spearman_heatmap": figures.spearman_heatmap(common)}
    drawn |= {f"scatter_{metric}": figures.utility_scatter(shared, tables["checkpoints"], metric)
              for metric in dict.fromkeys(summary["metric"])}
    drawn |= {"shock_vs_step": figures.shock_vs_step(common, q_label(q)),
              "layer_heatmap": figures.layer_heatmap(summary, tables["checkpoints"]),
              "block_spearman": figures.block_spearman(summary, tables["checkpoints"]),
              "growth": figures.growth_scatter(tables["units"], tables["checkpoints"])}
    if sweep_common is not None:
        drawn["shock_vs_q"] = figures.shock_vs_q(sweep_common)
    return {name: figure for name, figure in drawn.items() if figure is not None}


def _remove_stale(run_dir: Path, written: list[Path]) -> None:
    """Drop outputs of an earlier render that this one did not make (e.g. a sweep, figures of the other format),
    and figures/ once empty, so nothing stale remains."""
    folder = run_dir / "figures"
    pictures = [*folder.glob("*.png"), *folder.glob("*.svg")]  # ours, old names too
    kept = set(written)
    for path in [run_dir / name for name in OUTPUTS] + pictures:
        if path not in kept and path.exists():
            path.unlink()
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


@dataclass
class Analysis:
    """What a report shows, computed once from a run's tables at fraction `q` (SPEC S5): the SummaryTable at q,
    the per-checkpoint statistics of the ALL and common scopes, the verdict (SPEC S5b) and its reliability flags,
    and with several q the per-checkpoint statistics of each (`sweep`, `sweep_common`)."""

    tables: Tables
    q: float
    summary: pd.DataFrame
    stats: pd.DataFrame
    common: pd.DataFrame
    verdict: pd.DataFrame
    flags: pd.DataFrame
    sweep: pd.DataFrame | None = None
    sweep_common: pd.DataFrame | None = None

    def headline(self, metric: str | None = None) -> list[Block]:
        """The first screen, read at `metric` (default: the run's first)."""
        metric = metric or str(self.summary["metric"].iloc[0])
        return headline_blocks(self.verdict, self.flags, self.stats, self.tables["checkpoints"], self.q, metric)

    def figures(self) -> dict[str, Figure]:
        """The report's figures by name."""
        return _report_figures(self.tables, self.summary, self.verdict, self.common, self.sweep_common, self.q)


def analyse(tables: Tables, base_q: float, q: list[float] | None = None,
            timings: dict[str, dict[str, float]] | None = None) -> Analysis:
    """The Analysis of a run's tables at the fractions `q` (default: the run's `base_q`); the first screen and the
    tables use `base_q` when listed, else the first value. `timings`: seconds per checkpoint and stage (what each
    utility costs, for the verdict's cheapest)."""
    qs = q or [base_q]
    headline_q = next((v for v in qs if math.isclose(v, base_q)), qs[0])
    ranked = tables["summary"][~tables["summary"]["utility"].isin(SET_SELECTORS)]  # sets: their own section
    summaries = {v: summary_at_q(tables["units"], ranked, v, base_q) for v in qs}
    summary, checkpoints = summaries[headline_q], tables["checkpoints"]
    analysis = Analysis(tables, headline_q, summary, checkpoint_stats(summary, checkpoints),
                        checkpoint_stats(summary, checkpoints, scope=COMMON),
                        verdict_table(tables["units"], summary, checkpoints, headline_q, timings),
                        reliability_flags(tables["units"], summary, checkpoints, headline_q))
    if len(qs) > 1:
        analysis.sweep = pd.concat([checkpoint_stats(s, checkpoints) for s in summaries.values()], ignore_index=True)
        analysis.sweep_common = pd.concat([checkpoint_stats(s, checkpoints, scope=COMMON) for s in summaries.values()],
                                          ignore_index=True)
    return analysis


def is_current(run_dir: str | Path) -> bool:
    """Whether the run's report is up to date: report.md is no older than the tables and run.json, and the render
    that wrote it succeeded (timings.json records its stages). `report --log` logs such a report as it is."""
    run_dir = Path(run_dir)
    report = run_dir / "report.md"
    if not report.exists() or not read_report_timings(run_dir):
        return False
    info = read_run_info(run_dir)
    inputs = [table_path(run_dir, name, info) for name in TABLES] + [run_dir / RUN_JSON]
    return all(report.stat().st_mtime_ns >= p.stat().st_mtime_ns for p in inputs if p.exists())


def _write_aggregates(run_dir: Path, analysis: Analysis) -> list[Path]:
    """verdict.csv (SPEC S5b), aggregate.csv (per family, and per family and step) and with a sweep sweep.csv;
    returns their paths."""
    atomic_write(run_dir / "verdict.csv", write_table(analysis.verdict))
    stats = analysis.stats
    by_family = aggregate(stats, ["family", "q"])
    by_step = aggregate(stats.dropna(subset=["step"]), ["family", "step", "q"])
    aggregated = pd.concat([by_family.assign(step="all").reindex(columns=by_step.columns), by_step], ignore_index=True)
    atomic_write(run_dir / "aggregate.csv", write_table(aggregated))
    written = [run_dir / "verdict.csv", run_dir / "aggregate.csv"]
    if analysis.sweep is None:
        return written
    atomic_write(run_dir / "sweep.csv", write_table(aggregate(analysis.sweep, ["family", "q"])))
    return [*written, run_dir / "sweep.csv"]


def _draw(run_dir: Path, analysis: Analysis, figures: str,
          progress: Progress | None) -> tuple[list[Path], Exception | None]:
    """Save each figure once as figures/<name>.<figures> (none: no figure), each dropped once saved, calling
    `progress("figures", done, total)`. Returns the figures saved, and the error that stopped the drawing, if any."""
    made: list[Path] = []
    if figures == "none":
        return made, None
    report = progress or (lambda _task, _done, _total: None)
    try:
        from resetassay.report.figures import save

        drawn = analysis.figures()
        (run_dir / "figures").mkdir(exist_ok=True)
        names = list(drawn)
        for done, name in enumerate(names):
            report("figures", done, len(names))
            made.append(save(drawn.pop(name), run_dir / "figures" / f"{name}.{figures}"))
        report("figures", len(names), len(names))
    except Exception as err:  # any drawing error: the report is written without the figures
        return made, err
    return made, None


def _figures_note(figures: str, failed: Exception | None) -> str:
    """What report.md says under Figures when there are none (`--figures none`), or not all (drawing failed)."""
    if failed is not None:
        return f"Drawing the figures failed ({one_line(failed)}); `resetassay report` on this folder retries."
    if figures == "none":
        return "No figures (`resetassay run --figures none`); `resetassay report` on this folder draws them."
    return ""


def _write_failure(run_dir: Path, err: Exception) -> None:
    """In place of the report, a report.md saying rendering failed and why; the other report files and the report's
    timings removed. Best effort: what failed may be the disk."""
    with suppress(BadInputError):  # atomic_write's one-line error: the disk is full or read-only
        atomic_write(run_dir / "report.md", f"# resetassay report\n\nRendering the report failed ({one_line(err)}). "
                     "The assay's tables are complete; `resetassay report` on this folder retries.\n")
        _remove_stale(run_dir, [run_dir / "report.md"])
        write_report_timings(run_dir, None)


def render(run_dir: str | Path, q: list[float] | None = None, figures: str = "png",
           progress: Progress | None = None) -> Path:
    """Write report.md, report.html, aggregate.csv and figures/ of a run directory from its tables alone (SPEC S5).

    `q`: the fractions for Shock@q (default: the run's own). The headline and tables use the run's q
    when listed, else the first value; more than one value adds a sweep (sweep.csv, a table per
    family, figures/shock_vs_q.png). `figures`: png or svg (each figure drawn once, in that format), or none (no
    figures; the report says so); `progress` is called as `progress("figures", done, total)` while they are
    drawn. timings.json's `report` records the seconds of the stages analysis, figures and documents. Returns
    the path of report.md.

    Raises:
        BadInputError: the tables cannot be read, or `figures` is not png, svg or none; nothing is written.
        ReportFailed: drawing the figures failed (report.md and report.html are written without them), or
            anything else did (report.md says so; the other report files are removed). The tables are never
            touched.
    """
    check_figures(figures)
    run_dir = Path(run_dir)
    tables = read_run(run_dir)
    info = read_run_info(run_dir)
    base_q = run_q(tables["summary"], info, run_dir)
    clock, timings = StageClock(), read_timings(run_dir)
    try:
        with clock("analysis"):
            analysis = analyse(tables, base_q, q, timings)
            written = _write_aggregates(run_dir, analysis)
        with clock("figures"):
            made, failed = _draw(run_dir, analysis, figures, progress)
        with clock("documents"):
            _remove_stale(run_dir, written + [run_dir / "report.md", run_dir / "report.html"] + made)
            blocks = _report_blocks(tables, info, analysis.headline(), analysis.stats, analysis.sweep,
                                   [p.relative_to(run_dir) for p in made], analysis.q, base_q, timings,
                                   _figures_note(figures, failed), analysis.verdict)
            atomic_write(run_dir / "report.md", markdown_document(blocks))
            atomic_write(run_dir / "report.html", html_document(blocks, run_dir))
        write_report_timings(run_dir, None if failed else clock.seconds)
    except Exception as err:
        _write_failure(run_dir, err)
        raise ReportFailed(f"{run_dir}: rendering the report failed ({one_line(err)}); the tables are written and "
                           f"report.md says so — run `{_retry(run_dir, figures)}` to retry") from err
    if failed is not None:
        raise ReportFailed(f"{run_dir}: drawing the report's figures failed ({one_line(failed)}); the tables and the "
                           f"report without them are written — run `{_retry(run_dir, figures)}` to retry, or "
                           "`figures` none to skip them") from failed
    return run_dir / "report.md"


def _retry(run_dir: Path, figures: str) -> str:
    """The command that renders the report again, as this render was asked to."""
    return f"resetassay report {run_dir} --figures {figures}" if figures != "png" else f"resetassay report {run_dir}"
