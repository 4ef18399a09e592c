"""The report's first screen (SPEC S5b): the question, the verdict per model family and unit kind by the stated
rule, the ranking by normalised regret with its intervals, the reliability flags, and what was assayed.

Every sentence is derived from the verdict table (`verdict.verdict_table`) by the rule printed with it, never
written by hand: the **best** utility of a verdict has the lowest mean regret; the utilities whose paired
bootstrap interval of regret minus the best's contains 0 are **indistinguishable** from it (≈), and the
cheapest of them by measured calibration seconds is named; a utility **fails** (✗) where its regret interval
lies above 0.5 or its layer-balanced ρ interval below 0.5. `random` is the yardstick (regret ≈ 1), shown and
never ranked; the oracle (regret 0) is not ranked.
"""

from __future__ import annotations

import math

import pandas as pd

from resetassay.names import ORACLE, RANDOM, utility_order
from resetassay.report.blocks import Block, q_label
from resetassay.stats.verdict import FAIL_AT, LEVEL, MIN_CHECKPOINTS, MIN_RHO_UNITS, RESAMPLES


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def number(value: float) -> str:
    """A regret or ρ as the headline prints it: two decimals, three below 0.1 in magnitude; "n/a" for NaN."""
    if math.isnan(value):
        return "n/a"
    value = 0.0 if abs(value) < 5e-4 else value  # no "-0.000" from round-off
    return f"{value:.3f}" if abs(value) < 0.1 else f"{value:.2f}"


def seconds_text(value: float) -> str:
    """Measured calibration seconds: "0.41 s"; "not timed" for NaN."""
    return "not timed" if math.isnan(value) else f"{value:.2g} s"


def _column_name(family: str, kind: str, n: int) -> str:
    """The ranking table's column of one verdict: "family · kind (n=checkpoints)"."""
    return f"{family} · {kind} (n={n})"


def _verdict_columns(verdict: pd.DataFrame) -> list[tuple[str, str]]:
    """The (family, kind) verdicts of one metric's rows, families sorted, kinds as found."""
    return sorted(dict.fromkeys(zip(verdict["family"], verdict["kind"], strict=True)), key=lambda fk: fk[0])


def _cell(row: pd.Series) -> str:
    """"0.031" with ≈ (indistinguishable from the best), "cheapest", ✗ (fails, with the ρ where the ρ is the
    reason); the intervals behind the marks are in the report's "The verdict in full" and verdict.csv."""
    if math.isnan(row["regret"]):
        return "n/a"
    text = number(row["regret"])
    if row["indistinguishable"] and not row["best"]:
        text += " ≈"
    if row["cheapest"]:
        text += " cheapest"
    if row["fails"]:
        text += f" ✗ ρ {number(row['balanced_rho'])}" if "ρ" in row["fail_reason"] else " ✗"
    return text


def ranking_table(verdict: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Utilities (rows, by their mean rank over verdicts; random last, the oracle left out) x verdicts (family ·
    kind): the regret cell (`_cell`), "n/a" where the utility does not apply; the best of each column marked."""
    ranked = verdict[verdict["utility"] != ORACLE]
    columns = _verdict_columns(ranked)
    rank = ranked.assign(r=ranked.groupby(["family", "kind"])["regret"].rank(method="min"))
    score = rank.groupby("utility", sort=False)["r"].mean()
    registry = utility_order(ranked["utility"])
    order = sorted(registry, key=lambda u: (u == RANDOM, score.get(u, math.inf) if not math.isnan(
        score.get(u, math.inf)) else math.inf, registry.index(u)))
    table = pd.DataFrame({"utility": order})
    best = pd.DataFrame(False, index=table.index, columns=["utility"])
    for family, kind in columns:
        g = ranked[(ranked["family"] == family) & (ranked["kind"] == kind)].set_index("utility")
        header = _column_name(family, kind, int(g["n"].max()))
        table[header] = [_cell(g.loc[u]) if u in g.index else "n/a" for u in order]
        best[header] = [bool(u in g.index and g.loc[u, "best"]) for u in order]
    return table, best


LISTED = 3  # a sentence names at most this many verdicts; beyond, it counts them


def _where(names: list[str], total: int) -> str:
    """The verdicts a sentence is about: "all 7 verdicts", up to LISTED names, or "5 of 7 verdicts"."""
    if len(names) == total and total > 1:
        return f"all {total} verdicts"
    return ", ".join(names) if len(names) <= LISTED else f"{len(names)} of {total} verdicts"


def answer_sentences(verdict: pd.DataFrame, flags: pd.DataFrame) -> list[str]:
    """The verdict in a few sentences (one screen): which utility is best where, which cheaper one is
    indistinguishable from it (with both seconds), which fail, which verdicts have no value, and the reliability
    flags. Each names its verdicts (family · kind) when few, else counts them; "The verdict in full" lists all."""
    columns = _verdict_columns(verdict)
    total = len(columns)
    ranked = verdict[~verdict["utility"].isin([RANDOM, ORACLE])]
    lines = []
    best = ranked[ranked["best"]]
    wins = best.groupby("utility", sort=False).size()
    parts = []
    for utility in sorted(wins.index, key=lambda u: (-wins[u], utility_order(ranked["utility"]).index(u))):
        where = best[best["utility"] == utility]
        names = [f"{f} · {k}" for f, k in zip(where["family"], where["kind"], strict=True)]
        named = f" ({', '.join(names)})" if len(names) <= FLAG_DETAILS and len(names) < total else ""
        parts.append(f"**{utility}** in {wins[utility]}{named}")
    if parts:
        lines.append(f"Lowest regret: {', '.join(parts)} of {_count(total, 'verdict')}.")
    lines += _cheaper_sentences(ranked, total)
    fails = ranked[ranked["fails"]].groupby("utility", sort=False).size()
    if len(fails):
        lines.append("Fails (✗ in the table): " + ", ".join(
            f"**{u}** in {n} of {_count(total, 'verdict')}" if i == 0 else f"**{u}** in {n}"
            for i, (u, n) in enumerate(fails.sort_values(ascending=False, kind="stable").items())) + ".")
    missing = [f"{f} · {k}" for f, k in columns
               if ranked[(ranked["family"] == f) & (ranked["kind"] == k)]["regret"].isna().all()]
    if missing:
        lines.append(f"No regret (every unit costs the same) in {_where(missing, total)}.")
    if not columns:
        lines.append("No verdict: no checkpoint has mature units in a layer every utility applies to.")
    if len(flags):
        lines.append("Flags (method S5b; each in notes.csv): " + "; ".join(_flag_summary(flags, total)) + ".")
    return lines


FLAG_DETAILS = 2  # the flags sentence names at most this many places per flag, with details; beyond, it counts


def _flag_summary(flags: pd.DataFrame, total: int) -> list[str]:
    """One phrase per flag: where it holds ("family · kind", or the family where it concerns a whole checkpoint)
    with its details when few, else in how many places ("The verdict in full" and notes.csv list every one)."""
    place = flags["family"] + flags["kind"].map(lambda k: f" · {k}" if k else "")
    found = []
    for flag, g in flags.assign(place=place).groupby("flag", sort=True):
        places = list(dict.fromkeys(g["place"]))
        if len(places) <= FLAG_DETAILS:
            where = "; ".join(f"{p} ({', '.join(dict.fromkeys(g.loc[g['place'] == p, 'detail']))})" for p in places)
        else:
            where = f"in {len(places)} of {_count(total, 'verdict')}" if len(places) <= total else \
                f"in {len(places)} places"
        found.append(f"{flag}: {where}")
    return found


def _cheaper_sentences(ranked: pd.DataFrame, total: int) -> list[str]:
    """One sentence: the utilities cheaper than the best and indistinguishable from it (the answer a CBP user
    needs), each with how many verdicts, and the largest saving in seconds spelled out."""
    found: dict[str, list[tuple[float, str]]] = {}
    for (family, kind), g in ranked.groupby(["family", "kind"], sort=True):
        top, cheap = g[g["best"]], g[g["cheapest"]]
        if len(top) and len(cheap) and cheap["utility"].iloc[0] != top["utility"].iloc[0]:
            mine, theirs = cheap["seconds"].iloc[0], top["seconds"].iloc[0]
            found.setdefault(cheap["utility"].iloc[0], []).append(
                (theirs / mine if mine > 0 else math.inf,
                 f"{family} · {kind}: {seconds_text(mine)} against {top['utility'].iloc[0]}'s {seconds_text(theirs)}"))
    if not found:
        return []
    order = sorted(found, key=lambda u: (-len(found[u]), -max(r for r, _ in found[u])))
    largest = max((item for items in found.values() for item in items), key=lambda item: item[0])
    return ["As good as the best (≈) and cheaper (the table's `cheapest`): "
            + ", ".join(f"**{u}** in {len(found[u])}" for u in order) + f" of {_count(total, 'verdict')} "
            f"(largest saving: {largest[1]})."]


def _rule_text(q: float, metric: str) -> str:
    """The rule the sentences and marks follow (SPEC S5b), in words."""
    return (f"Rule (method S5b): regret = (Shock@{q_label(q)} of the pick − the oracle's) / (mean shock − the "
            f"oracle's) per layer, weighted by the units reset, over each unit kind's common scope ({metric}): 0 is "
            f"the oracle, 1 random. Best: lowest; ≈: the {LEVEL:.0%} paired-bootstrap interval of its difference to "
            "the best holds 0; cheapest: the fewest measured calibration seconds of those; ✗: regret interval above "
            f"{FAIL_AT:g} or layer-balanced ρ interval below {FAIL_AT:g} (intervals: \"The verdict in full\"). random "
            "is the yardstick, never ranked.")


def interval_text() -> str:
    """How the verdict's intervals are drawn (SPEC S5b), for the section that shows them."""
    return (f"Intervals: {LEVEL:.0%} percentiles of {RESAMPLES} paired bootstrap draws (every utility on the same "
            f"draw), of the checkpoints where a verdict has {MIN_CHECKPOINTS} or more, else of each layer's units; "
            f"the layer-balanced ρ weights each layer's ρ by its units, over layers of {MIN_RHO_UNITS}+ units.")


def models_table(stats: pd.DataFrame, verdict: pd.DataFrame, checkpoints: pd.DataFrame) -> pd.DataFrame:
    """Per family: checkpoints, steps, probe accuracy (n/a when not measured: unlabelled data, whose targets are the
    predicted class, says so), the layers and units of each unit kind's verdict scope against all assayed, and the
    calibration/probe sizes. `stats`: per-checkpoint statistics of scope ALL (the oracle's rows give the
    coverage); `verdict`: the verdict rows of one metric."""
    rows = []
    info = checkpoints.set_index("checkpoint") if "checkpoint" in checkpoints else pd.DataFrame()
    oracle = verdict[verdict["utility"] == ORACLE]
    for family, g in stats[stats["utility"] == ORACLE].groupby("family", sort=True):
        names = list(dict.fromkeys(g["checkpoint"]))
        mine = info.reindex(names) if len(info) else pd.DataFrame(index=names)
        accuracy = pd.to_numeric(mine.get("probe_accuracy", pd.Series(dtype=float)), errors="coerce").dropna()
        scopes = oracle[oracle["family"] == family]
        rows.append({
            "family": family,
            "checkpoints": len(names),
            "steps": ", ".join(f"{s:g}" for s in sorted(g["step"].dropna().unique())) or "n/a",
            "probe accuracy": _accuracy_text(accuracy, mine),
            "verdict scopes": "; ".join(f"{k}: {_count_text(layers, 'layer')}, {units} units" for k, layers, units
                                        in zip(scopes["kind"], scopes["n_layers"], scopes["n_units"], strict=True))
                              or "none",
            "assayed": f"{span(g['n_layers'])} layers, {span(g['n_units'])} units",
            "calibration / probe": _sizes(mine),
        })
    return pd.DataFrame(rows)


def _count_text(n: str, word: str) -> str:
    return f"{n} {word}{'' if n == '1' else 's'}"


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


def headline_blocks(verdict: pd.DataFrame, flags: pd.DataFrame, stats: pd.DataFrame, checkpoints: pd.DataFrame,
                    q: float, metric: str) -> list[Block]:
    """The first screen at `metric`. `verdict`: `verdict.verdict_table`; `flags`: `verdict.reliability_flags`;
    `stats`: per-checkpoint statistics of scope ALL (`summary.checkpoint_stats`)."""
    mine = verdict[verdict["metric"] == metric]
    table, best = ranking_table(mine)
    return [
        Block("text", f"**Question.** Which utility picks the {q_label(q)} of each layer's units whose reset moves "
                      "the outputs least?"),
        Block("list", items=answer_sentences(mine, flags[flags["metric"].isin([metric, ""])])),
        Block("text", _rule_text(q, metric)),
        Block("table", table=table, best=best, keys=1),
        Block("table", table=models_table(stats, mine, checkpoints), keys=1),
    ]


def verdict_detail(verdict: pd.DataFrame) -> pd.DataFrame:
    """The verdict table as the report's folded section shows it: one row per family, kind, metric and utility."""
    def interval(low: float, high: float) -> str:
        return "n/a" if math.isnan(low) else f"[{number(low)}, {number(high)}]"

    def marks(row: pd.Series) -> str:
        found = [name for name, on in (("best", row["best"]), ("≈", row["indistinguishable"] and not row["best"]),
                                       ("cheapest", row["cheapest"]), ("✗ " + row["fail_reason"], row["fails"]))
                 if on]
        return ", ".join(found)

    return pd.DataFrame({
        "family": verdict["family"], "kind": verdict["kind"], "metric": verdict["metric"],
        "utility": verdict["utility"],
        "regret": [number(v) + ("" if math.isnan(se) else f" ± {number(se)}")
                   for v, se in zip(verdict["regret"], verdict["regret_se"], strict=True)],
        "95% interval": [interval(lo, hi) for lo, hi in zip(verdict["regret_low"], verdict["regret_high"],
                                                           strict=True)],
        "− best": [interval(lo, hi) for lo, hi in zip(verdict["diff_low"], verdict["diff_high"], strict=True)],
        "balanced ρ": [number(v) + ("" if math.isnan(lo) else f" [{number(lo)}, {number(hi)}]")
                       for v, lo, hi in zip(verdict["balanced_rho"], verdict["rho_low"], verdict["rho_high"],
                                            strict=True)],
        "seconds": [seconds_text(v) for v in verdict["seconds"]],
        "marks": [marks(row) for _, row in verdict.iterrows()],
    })
