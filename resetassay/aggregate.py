"""Aggregation across checkpoints and seeds (SPEC S5): mean ± SE and n per model family and training step.

Input is a run's SummaryTable and checkpoint table (DESIGN "Tables are the interface"); output
is one row per group (family, or family and step) x utility x metric. Checkpoints of the same
family and step trained with different seeds fall into the same group, so their spread is the
standard error.
"""

from __future__ import annotations

import pandas as pd

from resetassay.metrics import ALL, mean_and_se

# Pooled statistics of one checkpoint, utility and metric; `layer_spearman` is the mean of the
# per-layer Spearman rows, the rest are the SummaryTable's ALL row (SPEC S5).
STATS = ("spearman", "layer_spearman", "shock_at_q", "oracle_shock_at_q", "gap", "gap_ratio", "overlap",
         "joint_shock")
UNKNOWN_FAMILY = "model"


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


def checkpoint_stats(summary: pd.DataFrame, checkpoints: pd.DataFrame) -> pd.DataFrame:
    """One row per (checkpoint, utility, metric): family, step, q and the pooled STATS (SPEC S5)."""
    pooled = summary[summary["scope"] == ALL]
    layers = summary[summary["scope"] != ALL]
    layer_rho = (layers.groupby(["checkpoint", "utility", "metric"], sort=False)["spearman"].mean()
                 .rename("layer_spearman").reset_index())
    rows = pooled.merge(layer_rho, on=["checkpoint", "utility", "metric"], how="left")
    columns = ["checkpoint", "utility", "metric", "q", *STATS]
    return with_checkpoint_info(rows.reindex(columns=columns), checkpoints)


def aggregate(stats: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean, SE and n of every STAT per `by` + utility + metric, over checkpoints and seeds (SPEC S5).

    Columns: `by`, utility, metric, n (checkpoints in the group), and per stat `<stat>`,
    `<stat>_se` (NaN for a single value) and `<stat>_n` (non-NaN values).
    """
    keys = [*by, "utility", "metric"]
    rows = []
    for key, g in stats.groupby(keys, sort=False, dropna=False):
        row = dict(zip(keys, key, strict=True))
        row["n"] = g["checkpoint"].nunique()
        for stat in STATS:
            row[stat], row[f"{stat}_se"], row[f"{stat}_n"] = mean_and_se(g[stat])
        rows.append(row)
    columns = [*keys, "n", *[f"{s}{suffix}" for s in STATS for suffix in ("", "_se", "_n")]]
    out = pd.DataFrame(rows, columns=columns)
    return out.sort_values(by, kind="stable", na_position="last").reset_index(drop=True) if by else out

