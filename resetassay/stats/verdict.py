"""The verdict (SPEC S5b): per model family, unit kind and shock metric, which utility is best, which are
indistinguishable from it and the cheapest of those, which fail, and the flags that say how far to trust it.

The S5 statistics (pooled ρ, the oracle ratio) stay in the tables; verdicts read two statistics that a
near-zero oracle or one dominant layer cannot swing:

- **normalised regret** per layer, `R_l = (S_l(u) - S_l(oracle)) / (S̄_l - S_l(oracle))` (0 the oracle, 1 a
  random pick in expectation), averaged over the layers of a scope weighted by `k_l`;
- **layer-balanced ρ**, the per-layer Spearman ρ averaged weighted by `n_l` (layers of fewer than
  `MIN_RHO_UNITS` units left out).

Each unit kind (neurons, channels, heads) has its own common scope. A paired bootstrap (`RESAMPLES` draws,
seeded) redraws the units of every layer (or, from `MIN_CHECKPOINTS` checkpoints on, the checkpoints) once
and evaluates every utility on the same draw, so that differences between utilities have intervals too.
Draws are multiplicities: a utility's selection and its ranks on a draw come from its sorted order of the
original units (`_Ranked`), with no sort per draw. Plain functions over tables, no torch.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from resetassay.names import NOTE_COLUMNS, ORACLE, RANDOM, SET_SELECTORS, shock_column, utility_column, utility_order
from resetassay.stats.summary import k_at, with_checkpoint_info

KIND_OF_LAYER = {"linear": "neurons", "token": "neurons", "conv": "channels", "head": "heads"}
UNKNOWN_KIND = "units"  # a UnitTable written before units.csv recorded each layer's kind
MIN_RHO_UNITS = 5  # layers with fewer mature units have no place in the layer-balanced ρ
FLAT = 1e-6  # S̄_l - S_l(oracle) at or below FLAT * S̄_l: every unit costs the same, the layer has no regret
RESAMPLES = 1000
MIN_CHECKPOINTS = 5  # from this many checkpoints with a value on, the bootstrap resamples checkpoints
LEVEL = 0.95
DRAW_CELLS = 4_000_000  # bootstrap draws x units of a scope evaluated at once (memory: ~10 float arrays of it)
FAIL_AT = 0.5  # fails: regret interval above it, or layer-balanced ρ interval below it
FEW_RESET = 3  # flag: k_l below it in every layer of the scope
CHANCE_FACTOR = 1.5  # flag: labelled probe accuracy below this many times chance
DOMINANT_SHARE = 0.5  # flag: one layer holding more than this share of the scope's shock mass
VERDICT_SEED = 0
COST_STAGE = "utility {}"  # timings.json: the calibration seconds a utility needs (pipeline/assay.py)
FLAG_NOTE = "verdict"  # the `utility` of a reliability flag's row in notes.csv

VERDICT_COLUMNS = [
    "family", "kind", "metric", "utility", "n", "n_layers", "n_units", "regret", "regret_se", "regret_low",
    "regret_high", "diff_low", "diff_high", "balanced_rho", "balanced_rho_se", "rho_low", "rho_high", "resampled",
    "seconds", "best", "indistinguishable", "cheapest", "fails", "fail_reason", "flags",
]
MARKS = ("best", "indistinguishable", "cheapest", "fails")
FLAG_COLUMNS = ["family", "kind", "metric", "checkpoint", "layer", "flag", "detail", "message"]


def _unit_kinds(units: pd.DataFrame) -> pd.Series:
    """The verdict kind of every row of a UnitTable: neurons, channels or heads (SPEC S5b); `UNKNOWN_KIND` for a
    table that records no `kind`."""
    if "kind" not in units:
        return pd.Series(UNKNOWN_KIND, index=units.index)
    return units["kind"].map(KIND_OF_LAYER).fillna(UNKNOWN_KIND)


def _ranked_utilities(summary: pd.DataFrame, checkpoint: str) -> list[str]:
    """The utilities a checkpoint's summary rows compare, set selectors left out (they rank no unit)."""
    names = summary.loc[summary["checkpoint"] == checkpoint, "utility"]
    return [u for u in dict.fromkeys(names) if u not in SET_SELECTORS]


def kind_scopes(units: pd.DataFrame, utilities: list[str]) -> dict[str, tuple[list[str], list[str]]]:
    """Per unit kind of one checkpoint's UnitTable: its common scope (the layers where every utility that applies
    to the kind applies) and those utilities, the oracle included (SPEC S5b). A utility that applies to no layer
    of a kind is left out of that kind and shrinks no scope."""
    mature = units[units["mature"].astype(bool)]
    scopes = {}
    for kind, rows in mature.groupby(_unit_kinds(mature), sort=False):
        layers = dict(list(rows.groupby("layer", sort=False)))
        applies = {u: {name for name, g in layers.items() if u in g and g[u].notna().all()}
                   for u in utilities if u != ORACLE}
        present = [u for u, where in applies.items() if where]
        shared = [name for name in layers if all(name in applies[u] for u in present)]
        scopes[str(kind)] = (shared, [*present, ORACLE])
    return scopes


@dataclass(frozen=True)
class _Ranked:
    """Units sorted by one score (ties by unit index, SPEC S5) and where each run of equal scores begins."""

    order: np.ndarray
    starts: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray, unit: np.ndarray) -> _Ranked:
        order = np.lexsort((unit, values))
        sorted_values = values[order]
        return cls(order, np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]]))

    def selected_mean(self, shock: np.ndarray, m: np.ndarray, k: int) -> np.ndarray:
        """Mean shock of the k lowest-scored draws `(B,)`, draws given as unit multiplicities `m (B, n)`."""
        ms = m[:, self.order]
        take = np.clip(k - (np.cumsum(ms, axis=1) - ms), 0, ms)
        return take @ shock[self.order] / k

    def ranks(self, m: np.ndarray) -> np.ndarray:
        """Average rank of each unit among the draws `(B, n)` (tied scores share their mean rank)."""
        ms = m[:, self.order]
        runs = np.add.reduceat(ms, self.starts, axis=1)
        mean_rank = np.cumsum(runs, axis=1) - runs + (runs + 1) / 2
        out = np.empty_like(ms)
        out[:, self.order] = np.repeat(mean_rank, np.diff(np.r_[self.starts, len(self.order)]), axis=1)
        return out


def _rank_correlation(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Spearman ρ per draw: the Pearson correlation of average ranks `a`, `b (B, n)` of the draws' units weighted by
    their multiplicities `m`; NaN where either is constant. Average ranks of n draws sum to n(n+1)/2 whatever the
    ties, so their weighted mean is (n+1)/2 without a pass over the data."""
    n = m.sum(axis=1)
    centre = n * ((n + 1) / 2) ** 2
    ma = m * a
    va, vb = (ma * a).sum(axis=1) - centre, (m * b * b).sum(axis=1) - centre
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = ((ma * b).sum(axis=1) - centre) / np.sqrt(va * vb)
    return np.where((va > 1e-9 * centre) & (vb > 1e-9 * centre), rho, np.nan)


@dataclass(frozen=True)
class _Layer:
    """One layer of a scope: the mature units' shocks, k_l, and every utility's order (the oracle's too)."""

    name: str
    shock: np.ndarray
    k: int
    oracle: _Ranked
    by: dict[str, _Ranked]

    def stats(self, m: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per utility, the layer's regret and Spearman ρ on the draws `m (B, n)` (SPEC S5b)."""
        mean = m @ self.shock / len(self.shock)
        oracle = self.oracle.selected_mean(self.shock, m, self.k)
        spread = mean - oracle
        flat = spread <= FLAT * mean
        shock_ranks = self.oracle.ranks(m) if len(self.shock) >= MIN_RHO_UNITS else None
        out = {}
        for utility, ranked in self.by.items():
            with np.errstate(invalid="ignore", divide="ignore"):
                regret = np.where(flat, np.nan, (ranked.selected_mean(self.shock, m, self.k) - oracle) / spread)
            rho = (_rank_correlation(ranked.ranks(m), shock_ranks, m) if shock_ranks is not None
                   else np.full(len(m), np.nan))
            out[utility] = (regret, rho)
        return out


def _scope_layers(units: pd.DataFrame, layers: list[str], utilities: list[str], metric: str, q: float
                  ) -> list[_Layer]:
    shock = shock_column(metric)
    found = []
    for name in layers:
        g = units[(units["layer"] == name) & units["mature"].astype(bool)]
        unit = g["unit"].to_numpy()
        values = g[shock].to_numpy(dtype=float)
        by = {u: _Ranked.of(g[utility_column(u, metric)].to_numpy(dtype=float), unit) for u in utilities}
        found.append(_Layer(name, values, k_at(len(g), q), by[ORACLE], by))
    return found


def _checkpoint_values(layers: list[_Layer], utilities: list[str], draws: list[np.ndarray]
                       ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per utility, the scope's regret (weighted by k_l) and layer-balanced ρ (weighted by n_l) per draw."""
    stats = [layer.stats(m) for layer, m in zip(layers, draws, strict=True)]
    return {u: (_weighted([s[u][0] for s in stats], [layer.k for layer in layers]),
                _weighted([s[u][1] for s in stats], [len(layer.shock) for layer in layers])) for u in utilities}


def _weighted(values: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """The weighted mean over layers of per-draw values `(B,)` each, a layer without a value (NaN) left out; NaN
    where no layer has one."""
    stacked = np.stack(values)
    w = np.asarray(weights, dtype=float)[:, None] * ~np.isnan(stacked)
    total = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (np.nan_to_num(stacked) * w).sum(axis=0) / np.where(total > 0, total, 1), np.nan)


def _ones(layers: list[_Layer]) -> list[np.ndarray]:
    return [np.ones((1, len(layer.shock))) for layer in layers]


def _unit_draws(layers: list[_Layer], rng: np.random.Generator, size: int) -> list[np.ndarray]:
    """`size` draws of every layer's units with replacement, as multiplicities (a one-unit layer never moves)."""
    draws = []
    for layer in layers:
        n = len(layer.shock)
        picks = rng.integers(0, n, (size, n)) + n * np.arange(size)[:, None]
        draws.append(np.bincount(picks.ravel(), minlength=size * n).reshape(size, n).astype(float))
    return draws


@dataclass
class _Scope:
    """One family, kind and metric: its checkpoints' layers and the utilities compared there."""

    checkpoints: list[str]
    layers: list[list[_Layer]]
    utilities: list[str]

    def point(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per utility, every checkpoint's regret and layer-balanced ρ `(n_checkpoints,)`."""
        per = [_checkpoint_values(layers, self.utilities, _ones(layers)) for layers in self.layers]
        return {u: tuple(np.array([v[u][i][0] if u in v else np.nan for v in per]) for i in (0, 1))
                for u in self.utilities}

    def draws(self, seed: int | list[int]) -> tuple[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
        """The paired bootstrap (SPEC S5b): per utility, the family's mean regret and ρ on each of RESAMPLES
        draws `(RESAMPLES,)`, every utility on the same draws; and what was resampled."""
        rng = np.random.default_rng(seed)
        point = self.point()
        if len(self.checkpoints) >= MIN_CHECKPOINTS:
            picks = rng.integers(0, len(self.checkpoints), (RESAMPLES, len(self.checkpoints)))
            return "checkpoints", {u: tuple(_nanmean(values[i][picks]) for i in (0, 1))
                                   for u, values in point.items()}
        found: dict[str, list[list[np.ndarray]]] = {u: [[], []] for u in self.utilities}
        batch = max(1, DRAW_CELLS // max(len(la.shock) for layers in self.layers for la in layers))
        for start in range(0, RESAMPLES, batch):
            size = min(batch, RESAMPLES - start)
            per = [_checkpoint_values(layers, self.utilities, _unit_draws(layers, rng, size))
                   for layers in self.layers]
            for u in self.utilities:
                for i in (0, 1):
                    stacked = np.stack([v[u][i] if u in v else np.full(size, np.nan) for v in per], axis=1)
                    found[u][i].append(_nanmean(stacked))
        return "units", {u: (np.concatenate(r), np.concatenate(p)) for u, (r, p) in found.items()}


def _nanmean(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN where a row has no value."""
    count = (~np.isnan(values)).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.nansum(values, axis=-1) / np.maximum(count, 1), np.nan)


def _interval(values: np.ndarray) -> tuple[float, float]:
    finite = values[~np.isnan(values)]
    if not len(finite):
        return math.nan, math.nan
    low, high = np.percentile(finite, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return float(low), float(high)


def _mean_se(values: np.ndarray) -> tuple[float, float, int]:
    finite = values[~np.isnan(values)]
    if not len(finite):
        return math.nan, math.nan, 0
    se = float(np.std(finite, ddof=1) / math.sqrt(len(finite))) if len(finite) > 1 else math.nan
    return float(np.mean(finite)), se, len(finite)


def _scopes(units: pd.DataFrame, summary: pd.DataFrame, checkpoints: pd.DataFrame, q: float
            ) -> Iterator[tuple[tuple[str, str, str], _Scope]]:
    """Every (family, kind, metric) scope of a run, its checkpoints in table order."""
    info = with_checkpoint_info(pd.DataFrame({"checkpoint": summary["checkpoint"].unique()}), checkpoints)
    family_of = dict(zip(info["checkpoint"], info["family"], strict=True))
    metrics = list(dict.fromkeys(summary["metric"]))
    scopes: dict[tuple[str, str, str], _Scope] = {}
    for checkpoint, mine in units.groupby("checkpoint", sort=False):
        if checkpoint not in family_of:
            continue
        for kind, (layers, utilities) in kind_scopes(mine, _ranked_utilities(summary, checkpoint)).items():
            if not layers:
                continue
            for metric in metrics:
                scope = scopes.setdefault((family_of[checkpoint], kind, metric), _Scope([], [], []))
                scope.checkpoints.append(checkpoint)
                scope.layers.append(_scope_layers(mine, layers, utilities, metric, q))
                scope.utilities += [u for u in utilities if u not in scope.utilities]
    yield from scopes.items()


def checkpoint_verdict_stats(units: pd.DataFrame, summary: pd.DataFrame, checkpoints: pd.DataFrame, q: float
                             ) -> pd.DataFrame:
    """Per checkpoint, unit kind, utility and metric: the regret and layer-balanced ρ of the kind's common scope
    (SPEC S5b) with its coverage (n_layers, n_units), family and step: what the gate and trackers read."""
    rows = []
    for (_, kind, metric), scope in _scopes(units, summary, checkpoints, q):
        point = scope.point()
        for i, (checkpoint, layers) in enumerate(zip(scope.checkpoints, scope.layers, strict=True)):
            for utility in scope.utilities:
                rows.append({"checkpoint": checkpoint, "kind": kind, "utility": utility, "metric": metric,
                             "n_layers": len(layers), "n_units": sum(len(layer.shock) for layer in layers),
                             "regret": point[utility][0][i], "balanced_rho": point[utility][1][i]})
    frame = pd.DataFrame(rows, columns=["checkpoint", "kind", "utility", "metric", "n_layers", "n_units", "regret",
                                        "balanced_rho"])
    return with_checkpoint_info(frame, checkpoints)


def _seed(*parts: str) -> list[int]:
    return [VERDICT_SEED, *(zlib.crc32(p.encode()) for p in parts)]


def _measured_seconds(timings: dict[str, dict[str, float]], checkpoint_names: list[str], utility: str) -> float:
    """Mean calibration seconds `utility` needs over the checkpoints that timed it (timings.json); NaN without."""
    found = [t[COST_STAGE.format(utility)] for c in checkpoint_names
             if COST_STAGE.format(utility) in (t := timings.get(c, {}))]
    return float(np.mean(found)) if found else math.nan


def verdict_table(units: pd.DataFrame, summary: pd.DataFrame, checkpoints: pd.DataFrame, q: float,
                  timings: dict[str, dict[str, float]] | None = None) -> pd.DataFrame:
    """The verdict of a run (SPEC S5b): one row per family, kind, metric and utility (VERDICT_COLUMNS).

    `summary`: the SummaryTable at `q` (which utilities each checkpoint compares); `timings`: timings.json's
    seconds per checkpoint (the cost of each utility; NaN where not timed). Per scope: mean regret and
    layer-balanced ρ over checkpoints with SE and 95% bootstrap intervals, the interval of each utility's regret
    minus the best's, the best (lowest mean regret; random and the oracle are not ranked), the
    indistinguishable set (difference interval contains 0), its cheapest member, fails and the flags.
    """
    flags = reliability_flags(units, summary, checkpoints, q)
    rows = []
    for (family, kind, metric), scope in _scopes(units, summary, checkpoints, q):
        resampled, draws = scope.draws(_seed(family, kind, metric))
        point = scope.point()
        base = {"family": family, "kind": kind, "metric": metric, "resampled": resampled,
                "n_layers": _span([len(layers) for layers in scope.layers]),
                "n_units": _span([sum(len(la.shock) for la in layers) for layers in scope.layers])}
        rows += _scope_rows(base, scope, point, draws, timings or {}, _flag_text(flags, family, kind, metric))
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS).astype(dict.fromkeys(MARKS, bool))


def _span(values: list[int]) -> str:
    low, high = min(values), max(values)
    return f"{low}" if low == high else f"{low}–{high}"


def _scope_rows(base: dict, scope: _Scope, point: dict, draws: dict, timings: dict, flags: str) -> list[dict]:
    rows = {}
    for utility in utility_order(scope.utilities):
        regret, regret_se, n = _mean_se(point[utility][0])
        rho, rho_se, _ = _mean_se(point[utility][1])
        rows[utility] = {**base, "utility": utility, "n": n, "regret": regret, "regret_se": regret_se,
                         **dict(zip(("regret_low", "regret_high"), _interval(draws[utility][0]), strict=True)),
                         "balanced_rho": rho, "balanced_rho_se": rho_se,
                         **dict(zip(("rho_low", "rho_high"), _interval(draws[utility][1]), strict=True)),
                         "seconds": _measured_seconds(timings, scope.checkpoints, utility), "best": False,
                         "indistinguishable": False, "cheapest": False, "fails": False, "fail_reason": "",
                         "diff_low": math.nan, "diff_high": math.nan, "flags": flags}
    contenders = [u for u, r in rows.items() if u not in (RANDOM, ORACLE) and not math.isnan(r["regret"])]
    for utility in contenders:
        rows[utility]["fail_reason"] = _fail_reason(rows[utility])
        rows[utility]["fails"] = bool(rows[utility]["fail_reason"])
    if contenders:
        best = min(contenders, key=lambda u: rows[u]["regret"])
        rows[best]["best"] = True
        for utility in contenders:
            low, high = _interval(draws[utility][0] - draws[best][0])
            rows[utility].update(diff_low=low, diff_high=high,
                                 indistinguishable=utility == best or (low <= 0 <= high))
        tied = [u for u in contenders if rows[u]["indistinguishable"]]
        timed = [u for u in tied if not math.isnan(rows[u]["seconds"])]
        if timed:
            cheapest = min(timed, key=lambda u: (rows[u]["seconds"], not rows[u]["best"], rows[u]["regret"]))
            rows[cheapest]["cheapest"] = True
    return list(rows.values())


def _fail_reason(row: dict) -> str:
    """Why a ranked utility fails (SPEC S5b), or "": its regret interval above FAIL_AT, or its layer-balanced ρ
    interval below it (the point value where the bootstrap gave no interval)."""
    reasons = []
    low = row["regret_low"] if not math.isnan(row["regret_low"]) else row["regret"]
    if low > FAIL_AT:
        reasons.append(f"regret ≥ {low:.2f} > {FAIL_AT:g}")
    high = row["rho_high"] if not math.isnan(row["rho_high"]) else row["balanced_rho"]
    if high < FAIL_AT:
        reasons.append(f"ρ ≤ {high:.2f} < {FAIL_AT:g}")
    return "; ".join(reasons)


def _flag_text(flags: pd.DataFrame, family: str, kind: str, metric: str) -> str:
    """The flags of one verdict as "flag (details); ...", details of its checkpoints joined."""
    mine = flags[(flags["family"] == family) & flags["kind"].isin([kind, ""]) & flags["metric"].isin([metric, ""])]
    return "; ".join(f"{flag} ({', '.join(dict.fromkeys(g['detail']))})"
                     for flag, g in mine.groupby("flag", sort=True))


def reliability_flags(units: pd.DataFrame, summary: pd.DataFrame, checkpoints: pd.DataFrame, q: float
                      ) -> pd.DataFrame:
    """The reliability flags of SPEC S5b, one row each (FLAG_COLUMNS): few units reset per layer, a labelled probe
    accuracy below CHANCE_FACTOR x chance, a checkpoint with no mature units, one layer holding most of a scope's
    shock mass. `kind`/`metric` are "" where a flag holds for every kind/metric of the checkpoint; `detail` is
    the short form the headline shows, `message` the sentence notes.csv keeps."""
    info = with_checkpoint_info(pd.DataFrame({"checkpoint": summary["checkpoint"].unique()}), checkpoints)
    family_of = dict(zip(info["checkpoint"], info["family"], strict=True))
    metrics = list(dict.fromkeys(summary["metric"]))
    rows = []
    for checkpoint, mine in units.groupby("checkpoint", sort=False):
        if checkpoint not in family_of:
            continue
        flag = _Flagger(family_of[checkpoint], str(checkpoint))
        if not mine["mature"].astype(bool).any():
            rows.append(flag("no mature units", str(checkpoint), "no mature units (every unit is younger than the "
                             "maturity threshold), so nothing is assayed there"))
        for kind, (layers, _) in kind_scopes(mine, _ranked_utilities(summary, checkpoint)).items():
            rows += _scope_flags(flag, kind, mine[mine["layer"].isin(layers)], metrics, q)
    return pd.DataFrame(rows + _chance_flags(checkpoints, family_of), columns=FLAG_COLUMNS)


@dataclass(frozen=True)
class _Flagger:
    """Makes the flag rows of one checkpoint."""

    family: str
    checkpoint: str

    def __call__(self, flag: str, detail: str, message: str, kind: str = "", metric: str = "", layer: str = ""
                 ) -> dict:
        return {"family": self.family, "kind": kind, "metric": metric, "checkpoint": self.checkpoint,
                "layer": layer, "flag": flag, "detail": detail, "message": f"{self.checkpoint}: {message}"}


def _scope_flags(flag: _Flagger, kind: str, scope: pd.DataFrame, metrics: list[str], q: float) -> list[dict]:
    """Few units reset in every layer of a kind's scope; one layer holding most of its shock mass."""
    mature = scope[scope["mature"].astype(bool)]
    sizes = mature.groupby("layer", sort=False).size()
    if sizes.empty:
        return []
    rows = []
    ks = [k_at(n, q) for n in sizes]
    if max(ks) < FEW_RESET:
        rows.append(flag("few units reset", f"k = {_span(ks)}", f"{kind}: fewer than {FEW_RESET} units reset in "
                         f"every layer (k = {_span(ks)} at q = {q:g}): raise q or assay more units", kind))
    for metric in metrics:
        mass = mature.groupby("layer", sort=False)[shock_column(metric)].sum()
        total, top = mass.sum(), str(mass.idxmax()) if len(mass) else ""
        if len(mass) > 1 and total > 0 and mass.max() > DOMINANT_SHARE * total:
            share = f"{mass.max() / total:.0%}"
            rows.append(flag("one layer dominates", f"{top} {share} of {metric}", f"{kind}: {top} holds {share} of "
                             f"the {metric} shock mass (pooled ρ and Shock@q describe mostly that layer)", kind,
                             metric, top))
    return rows


def near_chance(accuracy: object, n_classes: object) -> float | None:
    """The chance level 1 / n_classes when a labelled probe accuracy is below CHANCE_FACTOR times it (the flag
    "probe at chance", SPEC S5b), else None (also for a missing accuracy: unlabelled data, or under 2 classes)."""
    acc, classes = pd.to_numeric(accuracy, errors="coerce"), pd.to_numeric(n_classes, errors="coerce")
    if pd.isna(acc) or pd.isna(classes) or float(classes) < 2:
        return None
    chance = 1 / float(classes)
    return chance if float(acc) < CHANCE_FACTOR * chance else None


def _chance_flags(checkpoints: pd.DataFrame, family_of: dict[str, str]) -> list[dict]:
    """Labelled probe accuracy below CHANCE_FACTOR / n_classes: is this the model's data?"""
    if not {"probe_accuracy", "n_classes"} <= set(checkpoints):
        return []
    rows = []
    for _, row in checkpoints.iterrows():
        accuracy = pd.to_numeric(row["probe_accuracy"], errors="coerce")
        if row["checkpoint"] not in family_of:
            continue
        chance = near_chance(accuracy, row["n_classes"])
        if chance is not None:
            flag = _Flagger(family_of[row["checkpoint"]], str(row["checkpoint"]))
            rows.append(flag("probe at chance", f"{row['checkpoint']} {accuracy:.1%}", f"probe accuracy "
                             f"{accuracy:.1%} is below {CHANCE_FACTOR:g}× chance ({chance:.1%}): is this the "
                             "model's data?"))
    return rows


def flag_notes(flags: pd.DataFrame) -> pd.DataFrame:
    """Reliability flags as notes.csv rows (NOTE_COLUMNS): utility `FLAG_NOTE`, the layer (or kind) they concern."""
    return pd.DataFrame({"checkpoint": flags["checkpoint"], "utility": FLAG_NOTE,
                         "layer": [layer or kind for layer, kind in zip(flags["layer"], flags["kind"], strict=True)],
                         "reason": flags["message"]}, columns=NOTE_COLUMNS).drop_duplicates(ignore_index=True)
