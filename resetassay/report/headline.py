"""The report's first screen (SPEC S5): the question, the answer per model family by a stated rule, the
utility ranking by the `common`-scope oracle ratio with bootstrap intervals, and what was assayed.

Every sentence is derived from the numbers by the rule printed with it, never written by hand:
a utility is **best** in a family where its mean oracle ratio (Shock@q / oracle Shock@q) is the
lowest of the family's (ties within `TIE` say so); it **fails** where its common-scope Spearman ρ
is below `FAIL_RHO` or its ratio above `FAIL_RATIO`. `random` is the floor, not a contender; the
oracle is the yardstick (ratio 1).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from resetassay.bootstrap import MIN_CHECKPOINTS
from resetassay.names import ORACLE, RANDOM, utility_order
from resetassay.report.blocks import Block, q_label

FAIL_RHO = 0.5
FAIL_RATIO = 2.0
TIE = 1e-9  # relative difference under which two ratios tie


def _families(n: int) -> str:
    return f"{n} famil{'ies' if n != 1 else 'y'}"


def _interval(row: pd.Series) -> str:
    """"1.03 [1.01, 1.06]"; "n/a" without a value."""
    if pd.isna(row["ratio"]):
        return "n/a"
    text = _ratio_text(row["ratio"])
    if not (pd.isna(row["low"]) or pd.isna(row["high"])):
        text += f" [{_ratio_text(row['low'])}, {_ratio_text(row['high'])}]"
    return text


def _ratio_text(value: float) -> str:
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _best(ratios: pd.Series) -> list[str]:
    """The utilities with the lowest ratio (several when they tie); random and the oracle do not compete."""
    contenders = ratios.drop([RANDOM, ORACLE], errors="ignore").dropna()
    if contenders.empty:
        return []
    low = contenders.min()
    return [u for u, r in contenders.items() if math.isclose(r, low, rel_tol=TIE, abs_tol=0)]


def verdicts(ranking: pd.DataFrame) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Per utility, the families where it is best and where it fails (the rule of this module), from
    `ranking` rows family, utility, ratio, rho."""
    best: dict[str, list[str]] = {}
    fails: dict[str, list[str]] = {}
    for family, g in ranking.groupby("family", sort=True):
        for u in _best(g.set_index("utility")["ratio"]):
            best.setdefault(u, []).append(family)
        for _, r in g.iterrows():
            if _fails(r["utility"], r):
                fails.setdefault(r["utility"], []).append(family)
    return best, fails


def _fails(utility: str, row: pd.Series) -> bool:
    """Whether a utility's ranking row (ratio, rho) fails by the rule; random and the oracle are never said to."""
    return utility not in (RANDOM, ORACLE) and (row["rho"] < FAIL_RHO or row["ratio"] > FAIL_RATIO)


def _failure_mark(utility: str, row: pd.Series) -> str:
    """" ✗" after a failing ranking cell, with the ρ where a low ρ is (part of) the reason; "" otherwise."""
    if not _fails(utility, row):
        return ""
    return f" ✗ ρ {row['rho']:.2f}" if row["rho"] < FAIL_RHO else " ✗"


def answer_sentences(ranking: pd.DataFrame) -> list[str]:
    """One sentence per utility that is best somewhere, one naming those that fail somewhere (their cells are
    marked in the ranking table), one naming those without a value somewhere: short enough for one screen."""
    families = ranking["family"].unique()
    best, fails = verdicts(ranking)
    ties = {f for f, g in ranking.groupby("family") if len(_best(g.set_index("utility")["ratio"])) > 1}
    lines = []
    for u in sorted(best, key=lambda u: (-len(best[u]), utility_order(ranking["utility"]).index(u))):
        where = ", ".join(f"{f} (tie)" if f in ties else f for f in best[u])
        lines.append(f"**{u}** ranks reset cost best in {len(best[u])} of {_families(len(families))}: {where}.")
    if fails:
        worst = sorted(fails, key=lambda u: (-len(fails[u]), utility_order(fails).index(u)))
        lines.append("Fails (✗ in the table): " + ", ".join(
            f"**{u}** in {len(fails[u])} of {_families(len(families))}" if i == 0 else f"**{u}** in {len(fails[u])}"
            for i, u in enumerate(worst)) + ".")
    missing = ranking[ranking["ratio"].isna()].groupby("utility", sort=False)["family"].apply(list)
    if len(missing):
        lines.append("No value (not applicable to any layer of the common scope, or none measured): " + "; ".join(
            f"**{u}** in {', '.join(where)}" for u, where in missing.items()) + ".")
    if not lines:
        lines.append("No utility has a value on the common scope.")
    return lines


def ranking_table(ranking: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Utilities (rows, by their mean rank over families; random last) x families: "ratio [low, high]", with " ✗"
    (and the ρ where it is the reason) where the utility fails. The unique best of a family's column is marked; tied
    best cells are not, and say "tie"."""
    families = sorted(dict.fromkeys(ranking["family"]))
    wide = ranking.pivot_table(index="utility", columns="family", values="ratio", dropna=False, sort=False)
    score = wide.rank(axis=0, method="min").mean(axis=1).fillna(np.inf)
    registry = utility_order(wide.index)
    order = sorted(wide.index, key=lambda u: (u == RANDOM, score[u], registry.index(u)))
    table = pd.DataFrame({"utility": order})
    best = pd.DataFrame(False, index=table.index, columns=["utility"])
    for family in families:
        g = ranking[ranking["family"] == family].set_index("utility")
        winners = _best(g["ratio"])
        header = f"{family} (n={int(g['n'].max())})"
        tied = winners if len(winners) > 1 else []
        table[header] = [(_interval(g.loc[u]) + _failure_mark(u, g.loc[u]) if u in g.index else "n/a")
                         + (" tie" if u in tied else "") for u in order]
        best[header] = [winners == [u] for u in order]
    return table, best


def models_table(stats: pd.DataFrame, common: pd.DataFrame, checkpoints: pd.DataFrame) -> pd.DataFrame:
    """Per family: checkpoints, steps, probe accuracy (n/a when not measured: unlabelled data, whose targets are the
    predicted class, says so), the layers and
    units assayed and how many of them the common scope keeps, and the calibration/probe sizes. `stats` and
    `common`: per-checkpoint statistics of the ALL and `common` scopes (the oracle's rows give the coverage)."""
    rows = []
    info = checkpoints.set_index("checkpoint") if "checkpoint" in checkpoints else pd.DataFrame()
    for family, g in stats[stats["utility"] == ORACLE].groupby("family", sort=True):
        names = list(dict.fromkeys(g["checkpoint"]))
        mine = info.reindex(names) if len(info) else pd.DataFrame(index=names)
        accuracy = pd.to_numeric(mine.get("probe_accuracy", pd.Series(dtype=float)), errors="coerce").dropna()
        shared = common[(common["utility"] == ORACLE) & (common["family"] == family)]
        rows.append({
            "family": family,
            "checkpoints": len(names),
            "steps": ", ".join(f"{s:g}" for s in sorted(g["step"].dropna().unique())) or "n/a",
            "probe accuracy": _accuracy_text(accuracy, mine),
            "layers (common / all)": f"{span(shared['n_layers'], '{:.0f}')} / {span(g['n_layers'], '{:.0f}')}",
            "units (common / all)": f"{span(shared['n_units'], '{:.0f}')} / {span(g['n_units'], '{:.0f}')}",
            "calibration / probe": _sizes(mine),
        })
    return pd.DataFrame(rows)


def _accuracy_text(accuracy: pd.Series, info: pd.DataFrame) -> str:
    """The probe accuracy span; where the data had no labels, "n/a" saying whose class the gradients followed."""
    text = span(accuracy, "{:.1%}")
    targets = info.get("target", pd.Series(dtype=object)).astype(str)
    if targets.str.endswith("(no labels)").any():
        text += " (no labels: targets are the predicted class)"
    return text


def span(values: pd.Series, fmt: str = "{:.0f}") -> str:
    """One value, or "low–high" when the checkpoints differ; "n/a" without any."""
    values = values.dropna()
    if values.empty:
        return "n/a"
    low, high = values.min(), values.max()
    return fmt.format(low) if low == high else f"{fmt.format(low)}–{fmt.format(high)}"


def _sizes(info: pd.DataFrame) -> str:
    if "split_calib_size" not in info or "split_probe_size" not in info:
        return "n/a"
    pairs = {(int(c), int(p)) for c, p in zip(info["split_calib_size"], info["split_probe_size"], strict=True)
             if not (pd.isna(c) or pd.isna(p))}
    return ", ".join(f"{c} / {p}" for c, p in sorted(pairs)) or "n/a"


def ranking_at(intervals: pd.DataFrame, common: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The intervals of one metric with each utility's mean common-scope ρ per family (`rho`): what the rule reads."""
    rho = common[common["metric"] == metric].groupby(["family", "utility"], sort=False)["spearman"].mean()
    ranking = intervals[intervals["metric"] == metric].copy()
    ranking["rho"] = [rho.get((f, u), math.nan) for f, u in zip(ranking["family"], ranking["utility"], strict=True)]
    return ranking.reset_index(drop=True)


def best_table(ranking: pd.DataFrame) -> pd.DataFrame:
    """Per family, the best utility by the rule (several, comma-joined, when they tie) with its ratio, 95% interval
    and ρ (the first's, on a tie)."""
    rows = []
    for family, g in ranking.groupby("family", sort=True):
        winners = _best(g.set_index("utility")["ratio"])
        top = g.set_index("utility").loc[winners[0]] if winners else None
        rows.append({"family": family, "utility": ", ".join(winners) or None,
                     **{k: (float(top[k]) if top is not None else math.nan) for k in ("ratio", "low", "high", "rho")},
                     "checkpoints": int(g["n"].max())})
    return pd.DataFrame(rows, columns=["family", "utility", "ratio", "low", "high", "rho", "checkpoints"])


def headline_blocks(intervals: pd.DataFrame, stats: pd.DataFrame, common: pd.DataFrame, checkpoints: pd.DataFrame,
                    q: float, metric: str) -> list[Block]:
    """The first screen. `intervals`: `bootstrap.ratio_intervals`; `stats`, `common`: per-checkpoint statistics of
    the ALL and `common` scopes (`summary.checkpoint_stats`); `metric`: the one the answer is read at."""
    ranking = ranking_at(intervals, common, metric)
    rule = (f"Rule: best = lowest oracle ratio Shock@{q_label(q)} / oracle Shock@{q_label(q)} ({metric}) on the "
            f"common scope (the layers where every utility applies); fails = common-scope ρ < {FAIL_RHO:g} or "
            f"ratio > {FAIL_RATIO:g} (✗, with the ρ where that is the reason). Brackets: 95% bootstrap intervals, "
            f"over checkpoints in a family of at least {MIN_CHECKPOINTS}, else over units (each layer's units redrawn "
            "with replacement, selections redone).")
    table, best = ranking_table(ranking)
    return [
        Block("text", (
            f"**Question.** Resetting the {q_label(q)} of each layer's units that a utility scores lowest: how far "
            "do the outputs move, and which utility picks the units whose reset costs least? The oracle picks by "
            "the measured shock (ratio 1 is perfect).")),
        Block("list", items=answer_sentences(ranking)),
        Block("text", rule),
        Block("table", table=table, best=best, keys=1),
        Block("table", table=models_table(stats, common, checkpoints), keys=1),
    ]
