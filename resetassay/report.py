"""Run directories and the reports people read: tables on disk, report.md, report.html, figures (SPEC S5).

`write_run` / `read_run` hold a run's tables (DESIGN "Tables are the interface"); `render` turns
them into aggregated tables (mean ± SE over checkpoints and seeds, per model family and training
step), seaborn figures and two documents with the same content: report.md and a self-contained
report.html. Everything here reads the tables; nothing reruns a model, so Shock@q at another q
is recomputed from units.csv, but joint Shock@q exists only for the run's q.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from resetassay import figures
from resetassay.aggregate import aggregate, checkpoint_stats
from resetassay.errors import BadInputError
from resetassay.metrics import checkpoint_summary
from resetassay.report_html import html_document
from resetassay.utilities import ORACLE

TABLES = ("units", "summary", "notes", "checkpoints")
MAY_BE_EMPTY = ("notes", "checkpoints")  # an in-memory model has no checkpoint info; most runs have no notes
# stat -> (column header, which value is best: "max", "min" or None for no mark); "q" stands for the fraction.
COLUMNS = {
    "spearman": ("ρ pooled", "max"),
    "layer_spearman": ("ρ per layer", "max"),
    "shock_at_q": ("Shock@q", "min"),
    "oracle_shock_at_q": ("oracle Shock@q", None),
    "gap": ("gap", "min"),
    "gap_ratio": ("ratio", "min"),
    "overlap": ("top-k overlap", "max"),
    "joint_shock": ("joint Shock@q", "min"),
}
STEP_STATS = ("spearman", "shock_at_q")
# Files `render` writes; any of them a render did not make (e.g. an earlier sweep) is removed.
OUTPUTS = ("aggregate.csv", "sweep.csv", "report.md", "report.html")
FIGURES = ("shock_at_q", "spearman_heatmap", "scatter_l1", "scatter_kl", "shock_vs_step", "layer_spearman",
           "shock_vs_q")


def atomic_write(path: Path, text: str) -> None:
    """Write via a temporary `.<name>.*` file, flushed to disk, and a rename: a crash or a kill never leaves
    half a file under `path`, and a failed write removes its temporary file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_run(out: str | Path, tables: dict[str, pd.DataFrame], run_info: dict) -> Path:
    """Write the tables (csv, one per name in TABLES) and run.json into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        atomic_write(out / f"{name}.csv", tables[name].to_csv(index=False))
    atomic_write(out / "run.json", json.dumps(run_info, indent=2, sort_keys=True, default=str) + "\n")
    return out


def read_run(run_dir: str | Path, names: tuple[str, ...] = TABLES) -> dict[str, pd.DataFrame]:
    """The tables `names` of a run directory; a missing one is a one-line error."""
    run_dir = Path(run_dir)
    tables = {}
    for name in names:
        path = run_dir / f"{name}.csv"
        if not path.exists():
            raise BadInputError(f"{path}: missing; is {run_dir} the --out of a `resetassay run`?")
        try:
            tables[name] = pd.read_csv(path)
        except pd.errors.EmptyDataError as err:
            if name not in MAY_BE_EMPTY:
                raise BadInputError(f"{path}: empty table; rerun the assay") from err
            tables[name] = pd.DataFrame()
        except (pd.errors.ParserError, UnicodeDecodeError) as err:
            raise BadInputError(f"{path}: unreadable table ({err}); rerun the assay") from err
    return tables


def read_run_info(run_dir: str | Path) -> dict:
    """run.json of a run directory (config, versions, device); {} when absent."""
    path = Path(run_dir) / "run.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BadInputError(f"{path}: not valid JSON ({err.msg}); rerun the assay") from err


def run_q(summary: pd.DataFrame, info: dict, path: Path) -> float:
    """The q the run's summary.csv was computed at (SPEC S5)."""
    q = summary["q"].dropna() if "q" in summary else pd.Series(dtype=float)
    if len(q):
        return float(q.iloc[0])
    if "q" in info.get("config", {}):
        return float(info["config"]["q"])
    raise BadInputError(f"{path / 'summary.csv'}: no q recorded; rerun the assay")


def q_values(text: str) -> list[float]:
    """Parse `--q 0.05` or a sweep `--q 0.01,0.05,0.1` into fractions in (0, 1]."""
    values = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            q = float(part)
        except ValueError:
            raise BadInputError(f"--q {text!r}: {part!r} is not a number; e.g. --q 0.01,0.05,0.1") from None
        if not 0 < q <= 1:
            raise BadInputError(f"--q {text!r}: {part} must be in (0, 1]; e.g. --q 0.05 for 5%")
        values.append(q)
    if not values:
        raise BadInputError(f"--q {text!r}: give one fraction or a comma list, e.g. --q 0.01,0.05,0.1")
    return list(dict.fromkeys(values))


def summary_at_q(units: pd.DataFrame, summary: pd.DataFrame, q: float, base_q: float) -> pd.DataFrame:
    """The SummaryTable at fraction `q`, recomputed from the UnitTable (SPEC S5).

    At the run's own q (`base_q`) this is the stored table; elsewhere joint Shock@q is NaN,
    because a joint lesion needs the model.
    """
    if math.isclose(q, base_q):
        return summary
    frames = []
    for checkpoint, rows in summary.groupby("checkpoint", sort=False):
        utilities = list(dict.fromkeys(rows["utility"]))
        metrics = list(dict.fromkeys(rows["metric"]))
        frames.append(checkpoint_summary(units[units["checkpoint"] == checkpoint], utilities, metrics, q))
    return pd.concat(frames, ignore_index=True)


def q_label(q: float) -> str:
    """5% for 0.05."""
    return f"{100 * q:g}%"


@dataclass
class Block:
    """One piece of a report, rendered to markdown here and to HTML by `report_html.html_document`."""

    kind: str  # "h1" | "h2" | "h3" | "text" | "code" | "table" | "figure"
    text: str = ""  # heading, paragraph, code, or a figure's caption
    table: pd.DataFrame | None = None
    best: pd.DataFrame | None = None  # same shape as `table`: True where a cell is best in its column
    keys: int = 1  # leading label columns of `table`
    path: Path | None = None  # a figure, relative to the run directory


def _number(value: float, digits: int = 3) -> str:
    """Fixed decimals for magnitudes in [0.01, 1000), scientific otherwise."""
    if value == 0 or 0.01 <= abs(value) < 1000:
        return f"{value:.{digits}f}"
    return f"{value:.{max(digits - 1, 1)}e}"


def mean_se_text(mean: float, se: float, n: int, n_group: int) -> str:
    """"0.987 ± 0.004" or "(4.47 ± 1.30)e-03" (SE to the mean's precision; "<0.001" when it rounds to 0);
    "(n=k)" when only k of the group's checkpoints have a value; "n/a" when none has."""
    if n == 0 or math.isnan(mean):
        return "n/a"
    text = _number(mean)
    if not math.isnan(se):
        if "e" in text:
            mantissa, exponent = text.split("e")
            text = f"({mantissa} ± {se / 10 ** int(exponent):.2f})e{exponent}"
        else:
            text += f" ± {se:.3f}" if se >= 0.0005 or se == 0 else " ± <0.001"
    return text if n == n_group else f"{text} (n={n})"


def _cells(agg: pd.DataFrame, stat: str) -> list[str]:
    return [mean_se_text(r[stat], r[f"{stat}_se"], int(r[f"{stat}_n"]), int(r["n"])) if not pd.isna(r["n"])
            else "n/a" for _, r in agg.iterrows()]


def best_cells(agg: pd.DataFrame, stat: str, better: str | None) -> np.ndarray:
    """True where a row's mean is the best of its metric (max or min, ties all marked); the oracle never competes."""
    marked = np.zeros(len(agg), dtype=bool)
    if better is None:
        return marked
    values = agg[stat].to_numpy(dtype=float)
    for metric in agg["metric"].unique():
        candidates = (agg["metric"] == metric).to_numpy() & (agg["utility"] != ORACLE).to_numpy() & ~np.isnan(values)
        if candidates.any():
            target = values[candidates].max() if better == "max" else values[candidates].min()
            marked |= candidates & np.isclose(values, target, rtol=1e-12, atol=0)
    return marked


def _ordered(agg: pd.DataFrame) -> pd.DataFrame:
    """Rows grouped by metric (run order), utilities in registry order within each."""
    rank = {u: i for i, u in enumerate(figures.utility_order(agg["utility"]))}
    metric_rank = {m: i for i, m in enumerate(dict.fromkeys(agg["metric"]))}
    key = agg["metric"].map(metric_rank) * len(rank) + agg["utility"].map(rank)
    return agg.assign(_key=key).sort_values("_key", kind="stable").drop(columns="_key").reset_index(drop=True)


def family_table(agg: pd.DataFrame, q: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Utility x metric for one family: every COLUMN as mean ± SE, and where each column's best is."""
    agg = _ordered(agg)
    table = agg[["utility", "metric", "n"]].copy()
    best = pd.DataFrame(False, index=table.index, columns=table.columns)
    for stat, (label, better) in COLUMNS.items():
        header = label.replace("@q", f"@{q_label(q)}")
        table[header] = _cells(agg, stat)
        best[header] = best_cells(agg, stat, better)
    return table, best


def _pivot_table(agg: pd.DataFrame, over: str, stats: tuple[str, ...], header: str,
                 q: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Utility x metric rows, one column per (stat, value of `over`); `header` formats the column name,
    whose "@q" becomes e.g. "@5%" when `q` is given."""
    keys = _ordered(agg.drop_duplicates(["utility", "metric"]))[["utility", "metric"]]
    table = keys.copy()
    best = pd.DataFrame(False, index=table.index, columns=table.columns)
    for stat in stats:
        label, better = COLUMNS[stat]
        for value, g in agg.groupby(over, sort=True):
            g = keys.merge(g, on=["utility", "metric"], how="left")
            if q is not None:
                label = COLUMNS[stat][0].replace("@q", f"@{q_label(q)}")
            name = header.format(label=label, value=value, n=int(g["n"].max()))
            table[name] = _cells(g, stat)
            best[name] = best_cells(g, stat, better)
    return table, best


def _checkpoint_rho_table(stats: pd.DataFrame) -> pd.DataFrame:
    """Pooled Spearman ρ per checkpoint and metric, one column per utility."""
    wide = stats.set_index(["family", "step", "checkpoint", "metric", "utility"])["spearman"].unstack("utility")
    wide = wide.reindex(columns=figures.utility_order(stats["utility"])).reset_index()
    wide.columns.name = None
    metric_rank = {m: i for i, m in enumerate(dict.fromkeys(stats["metric"]))}
    wide = wide.sort_values(["family", "step", "checkpoint", "metric"], key=lambda c: c.map(metric_rank)
                            if c.name == "metric" else c, kind="stable")
    return wide.round(3).astype(object).where(wide.notna(), "")


def _provenance_table(checkpoints: pd.DataFrame) -> pd.DataFrame:
    """Per checkpoint: where it is, what it is, which data and split (seeds, sizes) it was assayed on."""
    keep = [c for c in checkpoints.columns
            if c in ("checkpoint", "path", "family", "step") or c.startswith(("data_", "split_"))]
    table = checkpoints[keep].dropna(axis=1, how="all")
    return table.astype(object).where(table.notna(), "")


FIGURE_CAPTIONS = {
    "shock_at_q": "Shock@{q} per utility (bars: mean ± SE over checkpoints, log scale) against the oracle "
                  "(dashed), which picks the units by their measured shock on the same layers: the lower and closer "
                  "to the oracle, the less a reset by that utility damages the network (paper Figure 2).",
    "spearman_heatmap": "Pooled Spearman ρ between utility and unit shock, per checkpoint (rows coloured as the "
                        "utilities in every figure).",
    "scatter_l1": "Utility against the unit's logit-L1 shock, one point per mature unit, one panel per utility "
                  "(markers: model family; log axes where the values span more than two decades).",
    "scatter_kl": "Utility against the unit's KL shock, as above.",
    "shock_vs_step": "Shock@{q} against training step (mean ± SE over seeds): does a utility degrade as the "
                     "network ages? The oracle (dashed) covers every layer; a utility left out of some layers "
                     "(see Not applicable) is pooled over fewer.",
    "layer_spearman": "Spearman ρ within each unit layer (mean ± SE over checkpoints), input to output.",
    "shock_vs_q": "Shock@q against q (recomputed from units.csv): how the damage grows with the fraction reset. "
                  "The oracle (dashed) covers every layer.",
}


def _headline_text(tables: dict[str, pd.DataFrame], stats: pd.DataFrame, q: float, base_q: float) -> list[Block]:
    checkpoints = stats["checkpoint"].nunique()
    families = stats["family"].nunique()
    metrics = ", ".join(dict.fromkeys(stats["metric"]))
    blocks = [Block("text", (
        f"{checkpoints} checkpoint{'s' if checkpoints != 1 else ''} in {families} model "
        f"famil{'ies' if families != 1 else 'y'}; shock metrics {metrics} (SPEC S4). Shock@{q_label(q)} resets, "
        f"in every layer, the {q_label(q)} mature units with the lowest utility (SPEC S5); the oracle picks by "
        "measured shock; gap = Shock@q − oracle Shock@q, ratio = Shock@q / oracle Shock@q; top-k overlap is the "
        "share of the oracle's units a utility picks; joint Shock@q resets the whole selection at once. "
        "Cells are mean ± standard error over checkpoints and seeds (n = checkpoints). "
        "**Bold**: best value of the column within each metric (the oracle does not compete)."))]
    if not math.isclose(q, base_q):
        blocks.append(Block("text", (
            f"Shock@{q_label(q)} is recomputed from units.csv (the run used q = {q_label(base_q)}); joint "
            f"Shock@q is only measured at the run's q = {q_label(base_q)} (it needs the model), so it is n/a "
            f"here. Rerun `resetassay run --q {q:g}` to measure it.")))
    if "family" not in tables["checkpoints"]:
        blocks.append(Block("text", "checkpoints.csv records no model family: all checkpoints are pooled."))
    return blocks


def report_blocks(tables: dict[str, pd.DataFrame], info: dict, stats: pd.DataFrame, sweep: pd.DataFrame | None,
                  made: list[Path], q: float, base_q: float) -> list[Block]:
    """The whole report as blocks: headline tables per family, by training step, the q sweep, per-checkpoint ρ,
    not-applicable notes, figures (`made`, relative to the run directory) and provenance."""
    blocks = [Block("h1", "resetassay report"), *_headline_text(tables, stats, q, base_q)]
    by_family = aggregate(stats, ["family"])
    by_step = aggregate(stats.dropna(subset=["step"]), ["family", "step"])
    for family, agg in by_family.groupby("family", sort=True):
        ckpts = stats[stats["family"] == family]
        steps = sorted(ckpts["step"].dropna().unique())
        step_text = f", steps {', '.join(f'{s:g}' for s in steps)}" if steps else ""
        n = ckpts["checkpoint"].nunique()
        blocks.append(Block("h2", f"{family} ({n} checkpoint{'s' if n != 1 else ''}{step_text})"))
        table, best = family_table(agg, q)
        blocks.append(Block("table", table=table, best=best, keys=3))
        family_steps = by_step[by_step["family"] == family]
        if family_steps["step"].nunique() > 1:
            blocks.append(Block("h3", "By training step"))
            table, best = _pivot_table(family_steps, "step", STEP_STATS, "{label} @ step {value:g} (n={n})", q)
            blocks.append(Block("table", table=table, best=best, keys=2))
        if sweep is not None:
            blocks.append(Block("h3", "Shock@q sweep (recomputed from units.csv)"))
            table, best = _pivot_table(sweep[sweep["family"] == family], "q", ("shock_at_q", "gap_ratio"),
                                       "{label} @ q={value:g}")
            blocks.append(Block("table", table=table, best=best, keys=2))
    blocks += [Block("h2", "Pooled Spearman ρ per checkpoint"),
               Block("table", table=_checkpoint_rho_table(stats), keys=4)]
    notes = tables["notes"]
    if len(notes):
        blocks += [Block("h2", "Not applicable"),
                   Block("text", "Utilities left out of a layer, and why (SPEC S3); pooled rows use the other layers."),
                   Block("table", table=notes.drop_duplicates(["utility", "layer", "reason"])
                         .drop(columns="checkpoint", errors="ignore").reset_index(drop=True), keys=3)]
    blocks.append(Block("h2", "Figures"))
    for path in made:
        blocks.append(Block("figure", FIGURE_CAPTIONS[path.stem].format(q=q_label(q)), path=path))
    blocks += _provenance_blocks(tables, info)
    return blocks


def _provenance_blocks(tables: dict[str, pd.DataFrame], info: dict) -> list[Block]:
    versions = info.get("versions", {})
    blocks = [Block("h2", "Provenance")]
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
                   Block("table", table=_provenance_table(tables["checkpoints"]), keys=3)]
    return blocks


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
        elif block.kind == "code":
            lines.append(f"```\n{block.text}\n```")
        elif block.kind == "table":
            lines.append(markdown_table(block.table, block.best))
        elif block.kind == "figure":
            lines.append(f"![{block.path.stem}]({block.path.as_posix()})\n\n*{block.text}*")
        lines.append("")
    return "\n".join(lines)


def _figures(run_dir: Path, tables: dict[str, pd.DataFrame], stats: pd.DataFrame, sweep_stats: pd.DataFrame | None,
             q: float) -> list[Path]:
    """Draw every figure that the run's tables support; returns the files made."""
    out = run_dir / "figures"
    out.mkdir(exist_ok=True)
    summary, units, checkpoints = tables["summary"], tables["units"], tables["checkpoints"]
    made = [figures.shock_bars(stats, out / "shock_at_q.png", q_label(q)),
            figures.spearman_heatmap(stats, out / "spearman_heatmap.png")]
    made += [figures.utility_scatter(units, checkpoints, stats, metric, out / f"scatter_{metric}.png")
             for metric in dict.fromkeys(summary["metric"])]
    made += [figures.shock_vs_step(stats, out / "shock_vs_step.png", q_label(q)),
             figures.layer_spearman(summary, checkpoints, out / "layer_spearman.png")]
    if sweep_stats is not None:
        made.append(figures.shock_vs_q(sweep_stats, out / "shock_vs_q.png"))
    return [p for p in made if p is not None]


def _remove_stale(run_dir: Path, written: list[Path]) -> None:
    """Drop outputs of an earlier render that this one did not make (e.g. a sweep), so nothing stale remains."""
    for path in [run_dir / name for name in OUTPUTS] + [run_dir / "figures" / f"{n}.png" for n in FIGURES]:
        if path not in written and path.exists():
            path.unlink()


def render(run_dir: str | Path, q: list[float] | None = None) -> Path:
    """Write report.md, report.html, aggregate.csv and figures/ of a run directory from its tables alone.

    `q`: the fractions for Shock@q (default: the run's own). The headline tables use the run's q
    when listed, else the first value; more than one value adds a sweep (sweep.csv, a table per
    family, figures/shock_vs_q.png). Returns the path of report.md.
    """
    run_dir = Path(run_dir)
    tables = read_run(run_dir)
    info = read_run_info(run_dir)
    base_q = run_q(tables["summary"], info, run_dir)
    qs = q or [base_q]
    headline_q = next((v for v in qs if math.isclose(v, base_q)), qs[0])
    summaries = {v: summary_at_q(tables["units"], tables["summary"], v, base_q) for v in qs}
    stats = checkpoint_stats(summaries[headline_q], tables["checkpoints"])
    written = [run_dir / "aggregate.csv", run_dir / "report.md", run_dir / "report.html"]
    by_step = aggregate(stats.dropna(subset=["step"]), ["family", "step", "q"])
    aggregated = pd.concat([aggregate(stats, ["family", "q"]).assign(step="all").reindex(columns=by_step.columns),
                            by_step], ignore_index=True)
    atomic_write(run_dir / "aggregate.csv", aggregated.to_csv(index=False))
    sweep_stats, sweep = None, None
    if len(qs) > 1:
        sweep_stats = pd.concat([checkpoint_stats(s, tables["checkpoints"]) for s in summaries.values()],
                                ignore_index=True)
        sweep = aggregate(sweep_stats, ["family", "q"])
        atomic_write(run_dir / "sweep.csv", sweep.to_csv(index=False))
        written.append(run_dir / "sweep.csv")
    made = _figures(run_dir, tables, stats, sweep_stats, headline_q)
    _remove_stale(run_dir, written + made)
    blocks = report_blocks(tables, info, stats, sweep, [p.relative_to(run_dir) for p in made], headline_q, base_q)
    atomic_write(run_dir / "report.md", markdown_document(blocks))
    atomic_write(run_dir / "report.html", html_document(blocks, run_dir))
    return run_dir / "report.md"

