"""Run directories: the tables on disk, report.md and seaborn figures (DESIGN "Tables are the
interface"). Everything here reads the tables; nothing reruns a model."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from resetassay.errors import BadInputError  # noqa: E402
from resetassay.metrics import ALL, mean_and_se  # noqa: E402

TABLES = ("units", "summary", "notes", "checkpoints")
HEADLINE = {"spearman": "Spearman ρ", "shock_at_q": "Shock@q", "gap": "oracle gap"}
SCATTER_UTILITIES = ("gxd", "activation")


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_run(out: str | Path, tables: dict[str, pd.DataFrame], run_info: dict) -> Path:
    """Write the tables (csv, one per name in TABLES) and run.json into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        _atomic_write(out / f"{name}.csv", tables[name].to_csv(index=False))
    _atomic_write(out / "run.json", json.dumps(run_info, indent=2, sort_keys=True, default=str) + "\n")
    return out


def read_run(run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The tables of a run directory; a missing one is a one-line error."""
    run_dir = Path(run_dir)
    tables = {}
    for name in TABLES:
        path = run_dir / f"{name}.csv"
        if not path.exists():
            raise BadInputError(f"{path}: missing; is {run_dir} the --out of a `resetassay run`?")
        try:
            tables[name] = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise BadInputError(f"{path}: unreadable table ({err}); rerun the assay") from err
    return tables


def with_family(summary: pd.DataFrame, checkpoints: pd.DataFrame) -> pd.DataFrame:
    """Summary rows with the checkpoint's model family attached ("model" when unknown)."""
    if checkpoints.empty or "family" not in checkpoints:
        return summary.assign(family="model")
    return summary.merge(checkpoints[["checkpoint", "family"]], on="checkpoint", how="left")


def headline_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Utility x metric: pooled Spearman, Shock@q, oracle gap as mean ± SE over checkpoints (SPEC S5)."""
    pooled = summary[summary["scope"] == ALL]
    rows = []
    for (utility, metric), g in pooled.groupby(["utility", "metric"], sort=False):
        row = {"utility": utility, "metric": metric}
        for column, label in HEADLINE.items():
            mean, se, n = mean_and_se(g[column])
            row[label] = _pm(mean, se, n)
        rows.append(row)
    return pd.DataFrame(rows)


def _pm(mean: float, se: float, n: int) -> str:
    if n == 0:
        return "n/a"
    text = f"{mean:.4g}"
    return f"{text} ± {se:.2g} (n={n})" if not math.isnan(se) else f"{text} (n={n})"


def utility_palette(utilities: list[str]) -> dict[str, tuple]:
    """One colour per utility, the same in every figure (oracle black)."""
    from resetassay.utilities import utility_names

    names = utility_names()
    colours = sns.color_palette("tab10", len(names))
    palette = {name: colours[i] for i, name in enumerate(names)}
    palette["oracle"] = (0.0, 0.0, 0.0)
    return {u: palette.get(u, (0.5, 0.5, 0.5)) for u in utilities}


def shock_bars(summary: pd.DataFrame, path: Path) -> Path:
    """Shock@q per utility with the oracle as a dashed line, per metric and family (paper Fig. 2)."""
    pooled = summary[(summary["scope"] == ALL) & (summary["utility"] != "oracle")].dropna(subset=["shock_at_q"])
    utilities = list(dict.fromkeys(pooled["utility"]))
    grid = sns.catplot(
        data=pooled, x="utility", y="shock_at_q", col="metric", row="family", kind="bar",
        hue="utility", palette=utility_palette(utilities), order=utilities, errorbar="se",
        sharey=False, height=3.2, aspect=1.6, legend=False,
    )
    for (family, metric), ax in grid.axes_dict.items():
        g = pooled[(pooled["family"] == family) & (pooled["metric"] == metric)]
        if len(g):
            ax.axhline(g["oracle_shock_at_q"].mean(), color="black", ls="--", lw=1, label="oracle")
            ax.legend(loc="upper left", fontsize=8)
        ax.tick_params(axis="x", rotation=45)
        ax.set_yscale("log")
    grid.set_axis_labels("", f"Shock@{_q_label(summary)} (log)")
    grid.savefig(path, dpi=110)
    plt.close(grid.figure)
    return path


def _q_label(summary: pd.DataFrame) -> str:
    q = summary["q"].dropna()
    return f"{100 * q.iloc[0]:g}%" if len(q) else "q"


def utility_scatter(units: pd.DataFrame, checkpoints: pd.DataFrame, metric: str, path: Path) -> Path | None:
    """Utility vs unit shock, log axes, one panel per utility, coloured by family."""
    present = [u for u in SCATTER_UTILITIES if u in units]
    shock = f"shock_{metric}"
    if not present or shock not in units:
        return None
    data = with_family(units[units["mature"]], checkpoints)
    long = data.melt(id_vars=["family", shock], value_vars=present, var_name="utility", value_name="score")
    long = long.dropna(subset=["score"])
    long = long[(long["score"] > 0) & (long[shock] > 0)]
    grid = sns.relplot(data=long, x="score", y=shock, col="utility", hue="family", s=12,
                       alpha=0.6, height=3.4, facet_kws={"sharex": False})
    grid.set(xscale="log", yscale="log")
    grid.set_axis_labels("utility (log)", f"unit shock, {metric} (log)")
    grid.savefig(path, dpi=110)
    plt.close(grid.figure)
    return path


def _markdown(table: pd.DataFrame) -> str:
    head = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.4g}"
    return str(value)


def render(run_dir: str | Path) -> Path:
    """Write report.md and figures/ of a run directory from its tables alone."""
    run_dir = Path(run_dir)
    tables = read_run(run_dir)
    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    summary = with_family(tables["summary"], tables["checkpoints"])
    figures = run_dir / "figures"
    figures.mkdir(exist_ok=True)
    made = [shock_bars(summary, figures / "shock_at_q.png")]
    for metric in sorted(summary["metric"].unique()):
        made.append(utility_scatter(tables["units"], tables["checkpoints"], metric,
                                    figures / f"scatter_{metric}.png"))
    lines = ["# resetassay report", ""]
    config = info.get("config", {})
    if config:
        lines += ["Config: " + ", ".join(f"`{k}={v}`" for k, v in sorted(config.items())), ""]
    lines += [f"Shock@q uses q = {_q_label(summary)}; mean ± standard error over checkpoints (SPEC S5).", ""]
    for family, g in summary.groupby("family", sort=True):
        n = g["checkpoint"].nunique()
        lines += [f"## {family} ({n} checkpoint{'s' if n != 1 else ''})", "", _markdown(headline_table(g)), ""]
    pooled = summary[summary["scope"] == ALL]
    per_ckpt = pooled.pivot_table(index=["checkpoint", "metric"], columns="utility",
                                  values="spearman", sort=False).reset_index()
    lines += ["## Pooled Spearman ρ per checkpoint", "", _markdown(per_ckpt), ""]
    if len(tables["notes"]):
        lines += ["## Not applicable", "", _markdown(tables["notes"].drop_duplicates(["utility", "layer", "reason"])
                                                       .drop(columns="checkpoint")), ""]
    lines += ["## Figures", ""] + [f"![{p.stem}](figures/{p.name})" for p in made if p is not None]
    report = run_dir / "report.md"
    _atomic_write(report, "\n".join(lines) + "\n")
    return report
