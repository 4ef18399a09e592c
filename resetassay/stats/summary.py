"""Summary statistics (SPEC S5): per checkpoint from the UnitTable, then across checkpoints and seeds.

`checkpoint_summary` turns one checkpoint's UnitTable into SummaryTable rows: scopes ALL (the
mature units of every layer where the utility applies, pooled), `common` (only the layers where
every requested utility applies, so that utilities are compared on the same units) and each
layer alone; `gap_ratio` is Shock@q(u) / Shock@q(oracle) (>= 1). `checkpoint_stats` and
`aggregate` then give mean ± SE and n per model family (and training step): checkpoints of the
same family and step trained with different seeds fall into the same group, so their spread is
the standard error. Plain functions over tables, no state, no torch.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from resetassay.errors import BadInputError
from resetassay.names import (
    ALL,
    COMMON,
    ORACLE,
    POOLED_SCOPES,
    SET_SELECTORS,
    SUMMARY_COLUMNS,
    shock_column,
    utility_column,
)

# Pooled statistics of one checkpoint, utility and metric; `layer_spearman` is the mean of the
# per-layer Spearman rows, the rest are the SummaryTable's ALL row (SPEC S5).
STATS = ("spearman", "layer_spearman", "shock_at_q", "oracle_shock_at_q", "gap", "gap_ratio", "overlap",
         "joint_shock")
UNKNOWN_FAMILY = "model"
SET_NOTE = "a set selector: it picks a set and ranks no unit, so Spearman ρ is undefined"
UNMEASURED_SET = "a set selector: measured only with joint lesions, at the run's q"
NO_MATURE = "no mature units: every unit is younger than the maturity threshold"


def spearman(utility: np.ndarray, shock: np.ndarray) -> tuple[float, str]:
    """Spearman rho with average ranks for ties; NaN with a reason when undefined (SPEC S5)."""
    if len(utility) < 2:
        return math.nan, "fewer than 2 mature units"
    if np.all(utility == utility[0]):
        return math.nan, "utility is constant over the units"
    if np.all(shock == shock[0]):
        return math.nan, "shock is constant over the units"
    if np.array_equal(utility, shock):  # the oracle: exactly 1, not 1 - 1e-16
        return 1.0, ""
    from scipy.stats import spearmanr  # here: importing scipy.stats costs ~0.7 s

    return float(spearmanr(utility, shock).statistic), ""


def k_at(n_units: int, q: float) -> int:
    """k_l = max(1, ceil(q * n_l)) (SPEC S5)."""
    return max(1, math.ceil(q * n_units - 1e-9))


def bottom_k(utility: np.ndarray, unit: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k lowest utilities, ties broken by unit index (SPEC S5)."""
    return np.lexsort((unit, utility))[:k]


def selection(layer_units: pd.DataFrame, column: str, q: float) -> np.ndarray:
    """Unit indices a utility `column` would reset in one layer's mature units."""
    pos = bottom_k(layer_units[column].to_numpy(), layer_units["unit"].to_numpy(),
                   k_at(len(layer_units), q))
    return layer_units["unit"].to_numpy()[pos]


def _mature_layers(units: pd.DataFrame, column: str | None) -> dict[str, pd.DataFrame]:
    """Mature units per layer, for the layers where `column` is defined (every layer: None)."""
    mature = units[units["mature"]]
    return {name: g for name, g in mature.groupby("layer", sort=False) if column is None or g[column].notna().all()}


def selections(units: pd.DataFrame, column: str, q: float) -> dict[str, np.ndarray]:
    """Per-layer Shock@q selection of one checkpoint's UnitTable by `column`."""
    return {name: selection(g, column, q) for name, g in _mature_layers(units, column).items()}


def _scope_row(groups: dict[str, pd.DataFrame], column: str | None, shock: str, q: float,
               picked: dict[str, np.ndarray] | None = None) -> dict:
    """One SummaryTable row over the layers `groups` (SPEC S5), of the selection by `column`, or of a set
    selector's `picked` units per layer (then Spearman ρ is NaN: a set ranks no unit). Top-k overlap is undefined
    in a layer whose shock is the same for every unit and that resets fewer than all of them (the oracle's pick is
    then a tie-break, not a ranking): such layers are left out of it, with a note, and it is NaN when none is left."""
    chosen, oracle, overlaps, tied = [], [], [], []
    for name, g in groups.items():
        mine = set(selection(g, column, q)) if picked is None else set(picked[name].tolist())
        best = set(selection(g, shock, q))
        by_unit = g.set_index("unit")[shock]
        chosen += [by_unit[u] for u in mine]
        oracle += [by_unit[u] for u in best]
        if len(best) < len(g) and np.all(g[shock].to_numpy() == g[shock].iloc[0]):
            tied.append(name)
        else:
            overlaps.append(len(mine & best) / len(mine))
    pooled = pd.concat(groups.values())
    rho, note = (spearman(pooled[column].to_numpy(), pooled[shock].to_numpy()) if picked is None
                 else (math.nan, SET_NOTE))
    if tied:
        where = "every layer" if not overlaps else ", ".join(tied)
        note = "; ".join(filter(None, [note, f"top-k overlap undefined where shock is constant ({where})"]))
    s, o = float(np.mean(chosen)), float(np.mean(oracle))
    return {
        "n_layers": len(groups), "n_units": len(pooled), "spearman": rho, "shock_at_q": s, "oracle_shock_at_q": o,
        "gap": s - o, "gap_ratio": s / o if o > 0 else math.nan,
        "overlap": float(np.mean(overlaps)) if overlaps else math.nan, "note": note,
    }


def _common_layers(units: pd.DataFrame, utilities: list[str]) -> list[str]:
    """The layers of one checkpoint's UnitTable where every utility in `utilities` applies: the `common` scope
    (SPEC S5). The oracle applies everywhere; a utility that applies to no layer does not count (it would
    leave no common layer; its comparisons are n/a)."""
    applies = [set(_mature_layers(units, u)) if u in units else set() for u in utilities if u != ORACLE]
    return [name for name in dict.fromkeys(units["layer"]) if all(name in layers for layers in applies if layers)]


def common_units(units: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """The mature units of each checkpoint's `common` layers, the utilities of its summary rows deciding which
    (SPEC S5): what every utility is compared on."""
    kept = []
    for checkpoint, mine in units[units["mature"].astype(bool)].groupby("checkpoint", sort=False):
        utilities = list(summary.loc[summary["checkpoint"] == checkpoint, "utility"].unique())
        kept.append(mine[mine["layer"].isin(_common_layers(mine, utilities))])
    return pd.concat(kept) if kept else units.iloc[:0]


def checkpoint_summary(
    units: pd.DataFrame,
    utilities: list[str],
    metrics: list[str],
    q: float = 0.05,
    joint: dict[tuple[str, str], float] | None = None,
    sets: dict[str, dict[str, np.ndarray]] | None = None,
) -> pd.DataFrame:
    """SummaryTable rows of one checkpoint's UnitTable (SPEC S5); `joint[(utility, metric)]` if measured;
    `sets[selector][layer]`: the units a set selector (names.SET_SELECTORS) picked, if it ran.

    Per utility and metric: the ALL row (every layer where the utility applies), the `common` row (only the
    layers where every utility in `utilities` applies: the rows to compare utilities by; its joint Shock@q is
    not measured) and one row per layer. `n_layers` and `n_units` say what each row covers.
    """
    checkpoint = units["checkpoint"].iloc[0]
    all_layers = list(dict.fromkeys(units["layer"]))
    common = _common_layers(units, utilities)
    rows = []
    for utility in utilities:
        picked = (sets or {}).get(utility)
        for metric in metrics:
            column, shock = utility_column(utility, metric), shock_column(metric)
            base = {"checkpoint": checkpoint, "utility": utility, "metric": metric, "q": q}
            if utility in SET_SELECTORS:
                column = None
                groups = {name: g for name, g in _mature_layers(units, None).items() if name in (picked or {})}
                if not groups:
                    rows.append({**base, "scope": ALL, "n_layers": 0, "n_units": 0, "note": UNMEASURED_SET})
                    continue
            else:
                groups = _mature_layers(units, column) if column in units else {}
            if not groups:
                rows.append({**base, "scope": ALL, "n_layers": 0, "n_units": 0,
                             "note": "not applicable to any layer" if units["mature"].any() else NO_MATURE})
                continue
            missing = [name for name in all_layers if name not in groups]
            row = _scope_row(groups, column, shock, q, picked)
            if missing:
                row["note"] = "; ".join(filter(None, [row["note"], f"not applicable: {', '.join(missing)}"]))
            row["joint_shock"] = (joint or {}).get((utility, metric), math.nan)
            rows.append({**base, "scope": ALL, **row})
            shared = {name: g for name, g in groups.items() if name in common}
            if shared:
                rows.append({**base, "scope": COMMON, **_scope_row(shared, column, shock, q, picked),
                             "joint_shock": math.nan})
            else:
                rows.append({**base, "scope": COMMON, "n_layers": 0, "n_units": 0,
                             "note": "no layer where every utility applies"})
            for name, g in groups.items():
                rows.append({**base, "scope": name, **_scope_row({name: g}, column, shock, q, picked),
                             "joint_shock": math.nan})
    return pd.DataFrame(rows).reindex(columns=SUMMARY_COLUMNS)


def mean_and_se(values: pd.Series) -> tuple[float, float, int]:
    """Mean, standard error (sd / sqrt(n)) and n over the non-NaN values (SPEC S5)."""
    v = values.dropna().to_numpy(dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, 0
    se = float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan
    return float(np.mean(v)), se, len(v)


def q_values(text: str) -> list[float]:
    """Parse `--q 0.05` or a sweep `--q 0.01,0.05,0.1` into fractions in (0, 1]."""
    values = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            q = float(part)
        except ValueError:
            raise BadInputError(f"`q` {text!r}: {part!r} is not a number; e.g. `q` 0.01,0.05,0.1",
                                field="q") from None
        if not 0 < q <= 1:
            raise BadInputError(f"`q` {text!r}: {part} must be in (0, 1]; e.g. `q` 0.05 for 5%", field="q")
        values.append(q)
    if not values:
        raise BadInputError(f"`q` {text!r}: give one fraction or a comma list, e.g. `q` 0.01,0.05,0.1", field="q")
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




def with_checkpoint_info(frame: pd.DataFrame, checkpoints: pd.DataFrame) -> pd.DataFrame:
    """`frame` with each checkpoint's model family and training step attached (manifest metadata)."""
    info = pd.DataFrame({"checkpoint": frame["checkpoint"].unique()})
    if not checkpoints.empty and "checkpoint" in checkpoints:
        keep = [c for c in ("checkpoint", "family", "step") if c in checkpoints]
        info = info.merge(checkpoints[keep].drop_duplicates("checkpoint"), on="checkpoint", how="left")
    info = info.reindex(columns=["checkpoint", "family", "step"])
    info["family"] = info["family"].astype(object).fillna(UNKNOWN_FAMILY).astype(str)
    info["step"] = pd.to_numeric(info["step"], errors="coerce")
    return frame.drop(columns=["family", "step"], errors="ignore").merge(info, on="checkpoint", how="left")


def checkpoint_stats(summary: pd.DataFrame, checkpoints: pd.DataFrame, scope: str = ALL) -> pd.DataFrame:
    """One row per (checkpoint, utility, metric): family, step, q and the pooled STATS of `scope` (ALL or
    COMMON), with the row's coverage n_layers and n_units (SPEC S5)."""
    pooled = summary[summary["scope"] == scope]
    layers = summary[~summary["scope"].isin(POOLED_SCOPES)]
    layer_rho = (layers.groupby(["checkpoint", "utility", "metric"], sort=False)["spearman"].mean()
                 .rename("layer_spearman").reset_index())
    rows = pooled.merge(layer_rho, on=["checkpoint", "utility", "metric"], how="left")
    columns = ["checkpoint", "utility", "metric", "q", "n_layers", "n_units", *STATS]
    return with_checkpoint_info(rows.reindex(columns=columns), checkpoints)


def aggregate(stats: pd.DataFrame, by: list[str], names: tuple[str, ...] = STATS) -> pd.DataFrame:
    """Mean, SE and n of every statistic in `names` (default STATS) per `by` + utility + metric, over checkpoints
    and seeds (SPEC S5).

    Columns: `by`, utility, metric, n (checkpoints in the group), and per stat `<stat>`,
    `<stat>_se` (NaN for a single value) and `<stat>_n` (non-NaN values).
    """
    keys = [*by, "utility", "metric"]
    rows = []
    for key, g in stats.groupby(keys, sort=False, dropna=False):
        row = dict(zip(keys, key, strict=True))
        row["n"] = g["checkpoint"].nunique()
        for stat in names:
            row[stat], row[f"{stat}_se"], row[f"{stat}_n"] = mean_and_se(g[stat])
        rows.append(row)
    columns = [*keys, "n", *[f"{s}{suffix}" for s in names for suffix in ("", "_se", "_n")]]
    out = pd.DataFrame(rows, columns=columns)
    return out.sort_values(by, kind="stable", na_position="last").reset_index(drop=True) if by else out

