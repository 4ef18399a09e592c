"""The CI gate (DESIGN "The CI gate"): a run's ranking quality against a baseline file, pass or fail.

A baseline holds, per (model family, utility, shock metric, pooled scope), the family means over
checkpoints of the pooled SummaryTable statistics (SPEC S5) that `resetassay baseline` read from a
run, plus absolute floors. Both pooled scopes are gated: `ALL` (each utility over the layers where
it applies, against the oracle there) and `common` (every utility over the layers where all of the
run's utilities apply: the scope the report ranks them on), so a change that keeps a utility's own
numbers but breaks the comparison between utilities still fails. Floors hold on `ALL`. `compare`
checks a new run against it without rerunning a model:

- pooled Spearman ρ may not drop by more than `tolerance` (absolute);
- Shock@q may not rise by more than `rel_tolerance` x its baseline value;
- the oracle gap may not rise by more than `rel_tolerance` x the baseline Shock@q (the gap's own
  scale; a relative rule on the gap alone would fail on any change where the baseline gap is 0);
- every floor holds: `min` (value >= min) or `max` (value <= max), families matched by glob;
- on each unit kind (the verdict's scopes, SPEC S5b; rows with `scope` neurons, channels, heads or
  units): the layer-balanced ρ may not drop by more than `tolerance`, the normalised regret may not
  rise by more than `rel_tolerance` (regret is already a share of the oracle-to-random spread).
A run at another q is bad input; other config differences from the baseline's run are notes.
A floor the run does not clear is refused when the baseline is written (never silently dropped).

Nothing switches the gate off silently: tolerances, margins, floors and baseline values are finite
numbers (NaN passes every comparison), and a run's NaN fails against a finite baseline value, also
when it is in only some of a family's checkpoints (the mean over the others would hide it).

File format (JSON, "resetassay.baseline/4"; /3 has no verdict rows; /2 and /1 are still read: their
rows have no `scope` and gate `ALL`; /1 also lacks the `<stat>_n` and `<stat>_note` keys):
    {"format": "resetassay.baseline/3", "q": 0.05,
     "source": {"run_dir": ..., "config": {...}, "versions": {...}},
     "rows": [{"family": "mlp-silu", "utility": "gxd", "metric": "l1", "scope": "ALL", "n": 2,
               "spearman": 0.984, "shock_at_q": 0.121, "gap": 0.001},
              {"family": "mlp-silu", "utility": "gxd", "metric": "l1", "scope": "neurons", "n": 2,
               "regret": 0.004, "balanced_rho": 0.987}, ...],
     "floors": [{"family": "mlp-silu", "utility": "gxd", "metric": "l1", "stat": "spearman", "min": 0.9}]}
A statistic is a finite number or null. Null with `<stat>_note` (the reason from summary.csv's
`note`) is a NaN the method defines (SPEC S5: e.g. a constant utility): the run passes with a NaN
that has a reason, or with a value. Null without a note is not gated. `<stat>_n`, written when
only some of the `n` checkpoints have a value (with `<stat>_note` saying why the others are NaN),
lets the run lack a value in as many checkpoints as the baseline did.

Over 500 lines: the baseline format, its validation, the comparison rules and their three outputs (text, JUnit,
markdown) are one contract that `resetassay baseline` writes and `resetassay check` reads.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from resetassay.errors import BadInputError, did_you_mean
from resetassay.io.rundir import atomic_write, read_run, read_run_info, run_q, table_path
from resetassay.names import ALL, POOLED_SCOPES, RANDOM
from resetassay.stats.summary import STATS, aggregate, checkpoint_stats
from resetassay.stats.verdict import KIND_OF_LAYER, MIN_RHO_UNITS, UNKNOWN_KIND, checkpoint_verdict_stats

FORMAT = "resetassay.baseline/4"
# /1 has no `<stat>_n`, `<stat>_note` (any NaN of the run fails); /1 and /2 have no `scope` (they gate ALL); /1-/3
# have no verdict rows (scope a unit kind)
READABLE = ("resetassay.baseline/1", "resetassay.baseline/2", "resetassay.baseline/3", FORMAT)
GATED = ("spearman", "shock_at_q", "gap")  # on the pooled scopes ALL and common (SPEC S5)
VERDICT_GATED = ("regret", "balanced_rho")  # on each unit kind's scope (SPEC S5b)
KIND_SCOPES = (*dict.fromkeys(KIND_OF_LAYER.values()), UNKNOWN_KIND)
RANGES = {"spearman": (-1.0, 1.0), "balanced_rho": (-1.0, 1.0), "shock_at_q": (0.0, math.inf), "gap": (0.0, math.inf),
          "regret": (0.0, math.inf)}  # where each gated statistic lies by definition (SPEC S5, S5b)
VERDICT_NAN_NOTES = {"regret": "every unit of the scope's layers costs the same (method S5b)",
                     "balanced_rho": f"no layer of {MIN_RHO_UNITS}+ units with a defined ρ (method S5b)"}
KEYS = ("family", "utility", "metric", "scope")
UNGATED_UTILITIES = (RANDOM,)  # seeded noise: its numbers are chance, not ranking quality
NUMERICALLY_NEUTRAL = ("batch_size", "device", "engine", "max_memory", "joint", "utilities")  # equal numbers either way
RECORDED_SINCE = {"intervention": "clamp"}  # settings some recorded runs predate, at the value those runs used
MAX_BASELINE_BYTES = 50_000_000  # a baseline of every fixture holds ~100 kB; a file far larger is not one
NOISE = 1e-4  # relative changes below this are float noise (engines, devices) and not listed as moved
FLOOR = re.compile(r"^(?P<names>[^<>=]+?)\s*(?P<op>>=|<=)\s*(?P<value>\S+)$")
SUMMARY_NEEDS = ("checkpoint", "utility", "metric", "scope", "spearman")  # columns the gate reads


@dataclass
class Comparison:
    """One gated number: a baseline row's statistic or a floor, against the run's value."""

    family: str
    utility: str
    metric: str
    scope: str  # ALL or common (SPEC S5)
    stat: str
    kind: str  # "baseline" or "floor"
    reference: float  # the baseline value (NaN: the method defines none, see `rule`), or the floor
    value: float  # the run's family mean (NaN when missing)
    limit: float  # the worst value that still passes
    bound: str  # "min": value >= limit passes; "max": value <= limit passes
    rule: str  # the rule in words, for the diff table
    reason: str = ""  # why it failed; "" when it passed

    @property
    def passed(self) -> bool:
        """Whether the check passed (no reason to fail it)."""
        return not self.reason

    @property
    def name(self) -> str:
        """The check's name: family, utility (with its scope), metric and statistic, " floor" for a floor."""
        return f"{self.family} {_scoped(self.utility, self.scope)} {self.metric} {self.stat}" + (
            " floor" if self.kind == "floor" else "")


def _scoped(utility: str, scope: str) -> str:
    """A utility as the diff names it: "gxd" on ALL, "gxd (common)" on the common scope."""
    return utility if scope == ALL else f"{utility} ({scope})"


def family_means(run_dir: str | Path) -> tuple[pd.DataFrame, float, dict]:
    """Per (family, utility, metric, scope): the mean over checkpoints of the pooled STATS of each pooled scope, the
    run's q, run.json.

    Besides `n` (checkpoints) and `<stat>_n` (those with a value), `<stat>_note` says why the others are
    NaN: the distinct parts of summary.csv's `note` of their pooled rows ("" when none says).
    """
    run_dir = Path(run_dir)
    tables = read_run(run_dir, ("summary", "checkpoints", "units"))
    summary, path = tables["summary"], table_path(run_dir, "summary")
    if summary.empty:
        raise BadInputError(f"{path}: no rows (only a header); rerun the assay")
    missing = [c for c in SUMMARY_NEEDS if c not in summary]
    if missing:
        raise BadInputError(f"{path}: no column {', '.join(missing)}; is it the summary table of a `resetassay run`?")
    if not (summary["scope"] == ALL).any():
        raise BadInputError(f"{path}: no pooled rows (scope {ALL}); rerun the assay")
    info = read_run_info(run_dir)
    q = run_q(summary, info, run_dir)
    means = []
    for scope in POOLED_SCOPES:
        stats = checkpoint_stats(summary, tables["checkpoints"], scope).assign(scope=scope)
        means.append(_with_notes(aggregate(stats, ["family", "scope"]), stats, summary, scope))
    kinds = checkpoint_verdict_stats(tables["units"], summary, tables["checkpoints"], q)
    if len(kinds):
        verdict = aggregate(kinds.rename(columns={"kind": "scope"}), ["family", "scope"], VERDICT_GATED)
        for stat in VERDICT_GATED:
            verdict[f"{stat}_note"] = [VERDICT_NAN_NOTES[stat] if k < n else "" for k, n in
                                       zip(verdict[f"{stat}_n"], verdict["n"], strict=True)]
        means.append(verdict)
    return pd.concat(means, ignore_index=True), q, info


def gated(scope: str) -> tuple[str, ...]:
    """The statistics a baseline row of `scope` gates: the S5 ones on ALL and common, the verdict's on a kind."""
    return GATED if scope in POOLED_SCOPES else VERDICT_GATED


def _with_notes(means: pd.DataFrame, stats: pd.DataFrame, summary: pd.DataFrame, scope: str) -> pd.DataFrame:
    """`means` with a `<stat>_note` column per STAT (see `family_means`), from the rows of `scope`."""
    keys = ["checkpoint", "utility", "metric"]
    pooled = summary[summary["scope"] == scope].reindex(columns=[*keys, "note"]).drop_duplicates(keys)
    stats = stats.merge(pooled, on=keys, how="left")
    found = {}
    for key, group in stats.groupby(list(KEYS), sort=False, dropna=False):
        for stat in STATS:
            parts = [p.strip() for note in group.loc[group[stat].isna(), "note"].dropna() for p in str(note).split(";")]
            found[(*key, stat)] = "; ".join(dict.fromkeys(p for p in parts if p))
    out = means.copy()
    for stat in STATS:
        out[f"{stat}_note"] = [found.get((*(row[k] for k in KEYS), stat), "") for _, row in means.iterrows()]
    return out


def _run_stat(row: pd.Series, stat: str) -> tuple[float, int, int, str]:
    """The run's family mean of `stat`, its checkpoints, how many of them have a value, and why the others do not."""
    value = float(row[stat])
    n = int(row["n"]) if not pd.isna(row.get("n", math.nan)) else 1
    count = row.get(f"{stat}_n", math.nan)
    count = int(count) if not pd.isna(count) else (0 if math.isnan(value) else n)
    note = row.get(f"{stat}_note")
    return value, n, count, note if isinstance(note, str) else ""


def _nan_why(note: str) -> str:
    return f"NaN: {note}" if note else "NaN"


def _flag_number(value: float, field: str) -> float:
    """A tolerance or margin: a finite number >= 0 (a NaN would pass every comparison)."""
    if not (math.isfinite(value) and value >= 0):
        raise BadInputError(f"`{field}` {value}: must be a finite number >= 0", field=field)
    return value


def parse_floor(text: str) -> dict:
    """`[FAMILY:]UTILITY:METRIC:STAT>=VALUE` (or <=) into a floor entry; FAMILY is a glob, default every family."""
    match = FLOOR.match(text.strip())
    names = match["names"].split(":") if match else []
    if not match or len(names) not in (3, 4) or not all(n.strip() for n in names):
        raise BadInputError(f"`floor` {text!r}: write [FAMILY:]UTILITY:METRIC:STAT>=VALUE, e.g. gxd:l1:spearman>=0.9",
                            field="floor")
    names = [n.strip() for n in names]
    family, utility, metric, stat = names if len(names) == 4 else ["*", *names]
    if stat not in (*STATS, *VERDICT_GATED):
        raise BadInputError(f"`floor` {text!r}: unknown statistic {stat!r}; choose from "
                            f"{', '.join((*STATS, *VERDICT_GATED))}", field="floor")
    try:
        value = float(match["value"])
    except ValueError:
        raise BadInputError(f"`floor` {text!r}: {match['value']!r} is not a number", field="floor") from None
    if not math.isfinite(value):
        raise BadInputError(f"`floor` {text!r}: {match['value']!r} is not a finite number", field="floor")
    return {"family": family, "utility": utility, "metric": metric, "scope": "*" if stat in VERDICT_GATED else ALL,
            "stat": stat, "min" if match["op"] == ">=" else "max": value}


def _baseline_row(r: pd.Series, run_dir: Path) -> dict | None:
    """A baseline row from a run's family means; None when the run leaves every gated statistic NaN unexplained."""
    n = int(r["n"])
    row = {**{k: r[k] for k in KEYS}, "n": n}
    for stat in gated(r["scope"]):
        value, _, count, note = _run_stat(r, stat)
        if math.isinf(value):
            raise BadInputError(f"{table_path(run_dir, 'summary')}: {r['family']} {r['utility']} {r['metric']} "
                                f"{stat} is {value}; rerun the assay")
        row[stat] = None if math.isnan(value) else value
        if 0 < count < n:
            row[f"{stat}_n"] = count
        if count < n and note:
            row[f"{stat}_note"] = note
    return row if any(row[s] is not None or f"{s}_note" in row for s in gated(r["scope"])) else None


def make_baseline(run_dir: str | Path, floors: list[str] | None = None, margin: float = 0.02,
                  utilities: list[str] | None = None, force_floors: bool = False) -> tuple[dict, list[str]]:
    """A baseline from a run, and the warnings of the floors written although the run does not clear them.

    Rows cover `utilities` (default: every utility of the run except UNGATED_UTILITIES) on the pooled scopes
    (S5 statistics) and on each unit kind (the verdict's regret and layer-balanced ρ, SPEC S5b); a statistic the
    method leaves NaN is written as null with its reason (module docstring). Each `--floor` is written once per
    matching family. A floor that matches nothing, or a family whose mean does not clear it by `margin` (or has
    no value in some checkpoint), is a BadInputError naming every such family, unless `force_floors`: then it is
    written anyway (the gate fails until the run clears it) and said in a warning. A floor is never dropped.
    """
    _flag_number(margin, "margin")
    parsed = [(text, parse_floor(text)) for text in floors or []]
    means, q, info = family_means(run_dir)
    keep = utilities or [u for u in dict.fromkeys(means["utility"]) if u not in UNGATED_UTILITIES]
    unknown = sorted(set(keep) - set(means["utility"]))
    if unknown:
        raise BadInputError(f"`utilities`: {', '.join(unknown)} not in the run"
                            f"{did_you_mean(unknown, list(dict.fromkeys(means['utility'])))}; it has "
                            f"{', '.join(dict.fromkeys(means['utility']))}", field="utilities")
    rows = [row for _, r in means[means["utility"].isin(keep)].iterrows() if (row := _baseline_row(r, Path(run_dir)))]
    written, unmet = [], []
    for text, floor in parsed:
        bound, limit = ("min", floor["min"]) if "min" in floor else ("max", floor["max"])
        matches = _matching(means, floor)
        if matches.empty:
            unmet.append(f"`floor` {text}: no (family, utility, metric) of the run matches{_unmatched(means, floor)}")
            if force_floors:
                written.append(floor)
        for _, r in matches.iterrows():
            value, n, count, note = _run_stat(r, floor["stat"])
            where = f"{r['family']}" + (f" ({r['scope']})" if r["scope"] != ALL else "")
            if count < n:
                unmet.append(f"`floor` {text}: {where} has no value in {n - count} of {n} checkpoints "
                             f"({_nan_why(note)})")
            elif not (value >= limit + margin if bound == "min" else value <= limit - margin):
                unmet.append(f"`floor` {text}: {where} has {value:.4g}, not clear of {limit:g} by {margin:g}")
            else:
                written.append({**{k: r[k] for k in KEYS}, "stat": floor["stat"], bound: limit})
                continue
            if force_floors:
                written.append({**{k: r[k] for k in KEYS}, "stat": floor["stat"], bound: limit})
    if unmet and not force_floors:
        raise BadInputError("the run does not clear every floor: " + "; ".join(unmet) + "; lower the floor, or "
                            "write it anyway with `force_floors` (the check then fails until the run clears it)",
                            field="floor")
    baseline = {
        "format": FORMAT, "q": q,
        "source": {"run_dir": str(run_dir), "config": info.get("config", {}), "versions": info.get("versions", {})},
        "rows": rows, "floors": written,
    }
    return baseline, [f"{line}; written anyway (`force_floors`): the check fails until the run clears it"
                      for line in unmet]


def output_path(path: str | Path, field: str, example: str) -> Path:
    """Refuse an output file that cannot be written (a folder, under a file, in a read-only folder) before any
    work; `field` names the option and `example` a file name for the hint."""
    path = Path(path)
    if path.is_dir():
        raise BadInputError(f"`{field}` {path}: is a directory; name a file, e.g. {path / example}", field=field)
    folder = next((p for p in path.parents if p.exists()), Path("."))
    if not folder.is_dir():
        raise BadInputError(f"`{field}` {path}: {folder} is a file, not a folder; name a file in a folder", field=field)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BadInputError(f"`{field}` {path}: cannot write in {folder} (permission denied); name a folder you can "
                            "write", field=field)
    return path


def _write(path: Path, text: str, field: str, example: str) -> Path:
    """Write `text` to `path` atomically (a crash never leaves half a file), creating its folder."""
    output_path(path, field, example)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text)
    except (OSError, BadInputError) as err:
        cause = err if isinstance(err, OSError) else err.__cause__
        why = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(err)
        raise BadInputError(f"`{field}` {path}: cannot write ({why}); free space or fix permissions and rerun",
                            field=field) from err
    return path


def write_baseline(baseline: dict, path: str | Path) -> Path:
    """Write a baseline as indented JSON (stable key order, so regenerating it diffs cleanly), atomically; refuse
    one that `read_baseline` would refuse, and refuse to replace an existing file that is not a baseline (only
    what resetassay wrote is overwritten)."""
    path = output_path(path, "output", "baseline.json")
    _validate_baseline(baseline, f"baseline for {path}")
    if path.exists():
        try:
            previous = _load_json(path)
        except BadInputError:
            previous = None
        if not (isinstance(previous, dict) and previous.get("format") in READABLE):
            raise BadInputError(f"`output` {path}: exists and is not a resetassay baseline; name another file, or "
                                "remove it first", field="output")
    return _write(path, json.dumps(baseline, indent=1, sort_keys=True) + "\n", "output", "baseline.json")


def _key(entry: dict | pd.Series) -> tuple[str, str, str, str]:
    """(family, utility, metric, scope) of a baseline entry or a row of family means; no scope: ALL."""
    return entry["family"], entry["utility"], entry["metric"], entry.get("scope", ALL)


def _unmatched(means: pd.DataFrame, entry: dict) -> str:
    """Why `entry` (a floor or a baseline row) matches no row of the run: the first of its family, utility and metric
    (globs in a floor) that no row of the run has, with the run's close names ("did you mean"); "" if each has one."""
    for key, pattern in zip(KEYS[:3], _key(entry)[:3], strict=True):
        values = sorted(dict.fromkeys(map(str, means[key])))
        if not any(fnmatch.fnmatchcase(v, str(pattern)) for v in values):
            return f": the run has no {key} {pattern}{did_you_mean([str(pattern)], values)}"
    return ""


def _matching(means: pd.DataFrame, entry: dict) -> pd.DataFrame:
    """Rows of `means` whose family, utility, metric and scope match `entry` (globs allowed)."""
    mask = means["scope"].isin(KIND_SCOPES if entry.get("stat") in VERDICT_GATED else POOLED_SCOPES)
    for key, pattern in zip(KEYS, _key(entry), strict=True):
        mask &= means[key].map(lambda v, pattern=pattern: fnmatch.fnmatchcase(str(v), pattern))
    return means[mask]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_row(entry: dict, where: str) -> None:
    """A baseline row's keys, `n` and statistics (module docstring): NaN and Infinity, values outside the range a
    statistic has by definition and keys a row does not hold are refused."""
    names = gated(entry["scope"])
    known = {*KEYS, "n", *names, *(f"{s}{suffix}" for s in names for suffix in ("_n", "_note"))}
    if unknown := sorted(set(entry) - known):
        raise BadInputError(f"{where}: unknown key {', '.join(map(repr, unknown))}; a {entry['scope']} row holds "
                            f"{', '.join(sorted(known))}")
    n = entry.get("n")
    if n is not None and not (_is_count(n) and n >= 1):
        raise BadInputError(f"{where}: 'n' must be a whole number >= 1 (checkpoints), got {n!r}")
    if not any(s in entry for s in names):
        raise BadInputError(f"{where}: {', '.join(names)} must be numbers or null")
    for stat in names:
        value, note, count = entry.get(stat), entry.get(f"{stat}_note"), entry.get(f"{stat}_n")
        if value is not None and not _is_number(value):
            raise BadInputError(f"{where}: {', '.join(names)} must be numbers or null; '{stat}' is {value!r}")
        if value is not None and not math.isfinite(value):
            raise BadInputError(f"{where}: '{stat}' is {value} (JSON NaN/Infinity), not a finite number; write a "
                                f"number, or null with a '{stat}_note' where the method gives NaN")
        low, high = RANGES[stat]
        if value is not None and not low <= value <= high:
            raise BadInputError(f"{where}: '{stat}' is {value}, outside [{low:g}, {high:g}] where it lies by "
                                "definition; regenerate the baseline with `resetassay baseline`")
        if note is not None and not isinstance(note, str):
            raise BadInputError(f"{where}: '{stat}_note' must be a string (why the run's {stat} is NaN)")
        if count is not None and not (_is_count(count) and _is_count(n) and count <= n):
            raise BadInputError(f"{where}: '{stat}_n' must be a whole number from 0 to 'n' (checkpoints with a "
                                f"value), got {count!r}")


def _check_floor(entry: dict, where: str) -> None:
    """A floor's statistic and its one finite bound."""
    if entry.get("stat") not in (*STATS, *VERDICT_GATED):
        raise BadInputError(f"{where}: 'stat' must be one of {', '.join((*STATS, *VERDICT_GATED))}")
    given = [b for b in ("min", "max") if b in entry]
    if len(given) != 1 or not _is_number(entry[given[0]]):
        raise BadInputError(f"{where}: give exactly one number, 'min' or 'max'")
    if not math.isfinite(entry[given[0]]):
        raise BadInputError(f"{where}: '{given[0]}' is {entry[given[0]]} (JSON NaN/Infinity), not a finite number")


def _validate_baseline(baseline: object, where: str) -> dict:
    """Check a baseline's structure and numbers; any defect is a BadInputError starting with `where` and
    naming the entry."""
    if not isinstance(baseline, dict) or baseline.get("format") not in READABLE:
        found = baseline.get("format") if isinstance(baseline, dict) else type(baseline).__name__
        raise BadInputError(f"{where}: format is {found!r}, expected {FORMAT!r} (or {READABLE[0]!r})")
    q = baseline.get("q")
    if not _is_number(q) or not 0 < q <= 1:  # NaN is refused here too
        raise BadInputError(f"{where}: 'q' must be a number in (0, 1], got {q!r}")
    if not baseline.get("rows") and not baseline.get("floors"):
        raise BadInputError(f"{where}: no 'rows' and no 'floors': nothing to check")
    seen: dict[tuple, int] = {}
    for section, check in (("rows", _check_row), ("floors", _check_floor)):
        entries = baseline.get(section, [])
        if not isinstance(entries, list):
            raise BadInputError(f"{where}: '{section}' must be a list")
        for i, entry in enumerate(entries):
            at = f"{where}: {section}[{i}]"
            if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in KEYS[:3]):
                raise BadInputError(f"{at}: needs string 'family', 'utility' and 'metric'")
            scopes = (*POOLED_SCOPES, *KIND_SCOPES, *(("*",) if section == "floors" else ()))
            if "scope" not in entry and baseline["format"] not in READABLE[:2]:
                raise BadInputError(f"{at}: no 'scope' ({', '.join(scopes)}); rows of {baseline['format']} name it")
            if entry.setdefault("scope", ALL) not in scopes:  # rows of /1 and /2 files gate ALL
                raise BadInputError(f"{at}: 'scope' must be one of {', '.join(scopes)}, got {entry['scope']!r}")
            check(entry, at)
            if section == "rows" and (key := _key(entry)) in seen:
                raise BadInputError(f"{at}: the same family, utility, metric and scope as rows[{seen[key]}]; keep "
                                    "one row per key")
            seen[_key(entry)] = i
    return baseline


def read_baseline(path: str | Path) -> dict:
    """Read and validate a baseline file; any defect is a BadInputError naming the file and the entry."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such baseline file; write one with `resetassay baseline RUN_DIR -o {path}`")
    return _validate_baseline(_load_json(path), str(path))


def _load_json(path: Path) -> object:
    """A baseline file's JSON, read at this boundary: at most MAX_BASELINE_BYTES, nested at most as deep as Python's
    parser can go; NaN and Infinity literals read as floats (refused by `_validate_baseline`)."""
    size = path.stat().st_size
    if size > MAX_BASELINE_BYTES:
        raise BadInputError(f"{path}: {size / 1e6:.0f} MB, more than a baseline holds (at most "
                            f"{MAX_BASELINE_BYTES / 1e6:.0f} MB); regenerate it with `resetassay baseline`")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadInputError(f"{path}: not valid JSON ({err}); regenerate it with `resetassay baseline`") from err
    except RecursionError:
        raise BadInputError(f"{path}: JSON nested too deep to be a baseline; regenerate it with `resetassay "
                            "baseline`") from None


def _compare(entry: dict, stat: str, kind: str, reference: float, limit: float, bound: str, rule: str,
             run_row: pd.Series | None, may_lack: int = 0) -> Comparison:
    """One rule on the run's value; `may_lack` checkpoints of the family may have no value (as in the baseline)."""
    if run_row is None:
        value, reason = math.nan, "not in the run"
    else:
        value, n, count, note = _run_stat(run_row, stat)
        if math.isnan(value):
            reason = f"no value in the run ({_nan_why(note)})"
        elif math.isinf(value):
            reason = f"no finite value in the run ({value})"
        elif n - count > may_lack:
            reason = (f"no value in {n - count} of {n} checkpoints ({_nan_why(note)}); the mean of the others "
                      f"does not count" + (f" (the baseline allows {may_lack})" if may_lack else ""))
        elif (value < limit) if bound == "min" else (value > limit):
            reason = f"{value:.4g} {'<' if bound == 'min' else '>'} {limit:.4g} ({rule})"
        else:
            reason = ""
    return Comparison(*_key(entry), stat, kind, reference, value, limit,
                      bound, rule, reason)


def _compare_nan(entry: dict, stat: str, note: str, run_row: pd.Series | None) -> Comparison:
    """A statistic the method leaves NaN in the baseline (null with a reason): the run passes with a value, or
    with a NaN that has a reason in its summary.csv."""
    if run_row is None:
        value, reason = math.nan, "not in the run"
    else:
        value, _, _, run_note = _run_stat(run_row, stat)
        reason = "no value in the run (NaN) and no reason in its summary.csv note" if (
            math.isnan(value) and not run_note) else ""
    return Comparison(*_key(entry), stat, "baseline", math.nan, value,
                      math.nan, "min", f"NaN allowed ({note})", reason)


def compare(means: pd.DataFrame, baseline: dict, tolerance: float = 0.02,
            rel_tolerance: float = 0.10) -> list[Comparison]:
    """Every gated baseline statistic and every floor against the run's family means (rules: module docstring)."""
    _flag_number(tolerance, "tolerance")
    _flag_number(rel_tolerance, "rel_tolerance")
    index = {_key(r): r for _, r in means.iterrows()}
    out: list[Comparison] = []
    for entry in baseline.get("rows", []):
        run_row = index.get(_key(entry))
        first = len(out)
        base = {s: entry.get(s) for s in gated(_key(entry)[3])}
        for stat in base:
            reference = base[stat]
            if reference is None:
                if entry.get(f"{stat}_note"):
                    out.append(_compare_nan(entry, stat, entry[f"{stat}_note"], run_row))
                continue
            if stat in ("spearman", "balanced_rho"):
                limit, bound, rule = reference - tolerance, "min", f"drop ≤ {tolerance:g}"
            elif stat == "regret":  # already a share of the oracle-to-random spread: an absolute rise
                limit, bound, rule = reference + rel_tolerance, "max", f"rise ≤ {rel_tolerance:g}"
            elif stat == "shock_at_q":
                limit, bound, rule = reference * (1 + rel_tolerance), "max", f"rise ≤ {rel_tolerance:g} × baseline"
            else:
                scale = base["shock_at_q"] if base["shock_at_q"] is not None else reference
                limit, bound = reference + rel_tolerance * scale, "max"
                rule = f"rise ≤ {rel_tolerance:g} × baseline Shock@q"
            may_lack = entry["n"] - entry[f"{stat}_n"] if f"{stat}_n" in entry else 0
            out.append(_compare(entry, stat, "baseline", reference, limit, bound, rule, run_row, may_lack))
        if run_row is None and (hint := _unmatched(means, entry)):  # its family (utility, metric) is not in the run
            out[first:] = [replace(c, reason=c.reason + hint) for c in out[first:]]
    for floor in baseline.get("floors", []):
        bound = "min" if "min" in floor else "max"
        rule = f"{'≥' if bound == 'min' else '≤'} {floor[bound]:g}"
        matches = _matching(means, floor)
        if matches.empty:
            missing = _compare(floor, floor["stat"], "floor", floor[bound], floor[bound], bound, rule, None)
            out.append(replace(missing, reason=missing.reason + _unmatched(means, floor)))
        for _, row in matches.iterrows():
            entry = dict(zip(KEYS, _key(row), strict=True))
            out.append(_compare(entry, floor["stat"], "floor", floor[bound], floor[bound], bound, rule, row))
    return out


def config_differences(run_config: dict, baseline_config: dict) -> list[str]:
    """Settings that change the numbers (not NUMERICALLY_NEUTRAL) where a run differs from its baseline's run."""
    run_config, baseline_config = {**RECORDED_SINCE, **run_config}, {**RECORDED_SINCE, **baseline_config}
    keys = sorted((set(run_config) | set(baseline_config)) - set(NUMERICALLY_NEUTRAL))
    return [f"config differs from the baseline's run: {key}: run {run_config.get(key)!r}, baseline "
            f"{baseline_config.get(key)!r}" for key in keys
            if key in run_config and key in baseline_config and run_config[key] != baseline_config[key]]


def _fewer_checkpoints(means: pd.DataFrame, baseline: dict) -> list[str]:
    """One line per family where the run has fewer checkpoints than a baseline row's `n` (a note, not a failure:
    its means are over fewer checkpoints)."""
    index = {_key(r): int(r["n"]) for _, r in means.iterrows()}
    fewer: dict[str, tuple[int, int]] = {}
    for entry in baseline.get("rows", []):
        run_n, base_n = index.get(_key(entry)), entry.get("n")
        if run_n is not None and base_n is not None and run_n < base_n:
            k, n = fewer.get(entry["family"], (run_n, base_n))
            fewer[entry["family"]] = (min(k, run_n), max(n, base_n))
    return [f"{family} has {k} checkpoints in the run and {n} in the baseline (the run's means are over fewer)"
            for family, (k, n) in fewer.items()]


def _shared_families(means: pd.DataFrame, baseline: dict, summary: Path, baseline_path: str | Path) -> None:
    """Refuse a run none of whose model families the baseline names (every comparison would be "not in the run")."""
    run = sorted(set(means["family"]))
    wanted = sorted({e["family"] for e in [*baseline.get("rows", []), *baseline.get("floors", [])]})
    if not any(fnmatch.fnmatchcase(str(f), p) for f in run for p in wanted):
        raise BadInputError(f"{summary}: none of its model families ({', '.join(map(str, run))}) is in "
                            f"{baseline_path} ({', '.join(wanted)}); check it against its own models' baseline, or "
                            "write one with `resetassay baseline`")


def check_run(run_dir: str | Path, baseline_path: str | Path, tolerance: float = 0.02, rel_tolerance: float = 0.10,
              junit: str | Path | None = None, markdown: str | Path | None = None,
              show_all: bool = False) -> tuple[list[Comparison], list[str]]:
    """Compare a run directory with a baseline file; optionally write JUnit XML (`junit`) and a markdown document
    for a pull-request comment (`markdown`; `show_all` also lists the comparisons that did not move). Refuses a
    run at another q, or of none of the baseline's families; flags and output paths are checked before anything
    is read.

    Returns the comparisons and notes (not failures): config differences from the baseline's run, and families
    with fewer checkpoints than in the baseline.
    """
    _flag_number(tolerance, "tolerance")
    _flag_number(rel_tolerance, "rel_tolerance")
    if junit is not None:
        output_path(junit, "junit", "check.xml")
    if markdown is not None:
        output_path(markdown, "markdown", "check.md")
    baseline = read_baseline(baseline_path)
    means, q, info = family_means(run_dir)
    summary = table_path(run_dir, "summary")
    if not math.isclose(q, baseline["q"]):
        raise BadInputError(f"{summary}: q = {q:g}, but {baseline_path} was written at "
                            f"q = {baseline['q']:g}; rerun with `q` {baseline['q']:g} or write a new baseline")
    _shared_families(means, baseline, summary, baseline_path)
    comparisons = compare(means, baseline, tolerance, rel_tolerance)
    source = baseline.get("source", {})
    differences = config_differences(info.get("config", {}), source.get("config", {}) if isinstance(
        source, dict) else {})
    notes = differences + _fewer_checkpoints(means, baseline)
    if junit is not None:
        _write(Path(junit), _junit_xml(comparisons), "junit", "check.xml")
    if markdown is not None:
        _write(Path(markdown), markdown_report(comparisons, notes, show_all), "markdown", "check.md")
    return comparisons, notes


def _fmt(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.4g}"


def moved(c: Comparison) -> bool:
    """Whether a baseline comparison's value differs from the baseline by more than NOISE (relative)."""
    if math.isnan(c.value) and math.isnan(c.reference):
        return False
    return c.kind == "baseline" and not math.isclose(c.value, c.reference, rel_tol=NOISE, abs_tol=1e-12)


def listed(comparisons: list[Comparison], show_all: bool = False) -> list[Comparison]:
    """The comparisons a diff shows, in its order: failures, then passes that moved, then (`show_all`) the rest."""
    return ([c for c in comparisons if not c.passed] + [c for c in comparisons if c.passed and moved(c)]
            + ([c for c in comparisons if c.passed and not moved(c)] if show_all else []))


def verdict(comparisons: list[Comparison]) -> str:
    """The counts line of a diff: comparisons, passed (moved within tolerance), failed."""
    failed = sum(not c.passed for c in comparisons)
    shifted = sum(c.passed and moved(c) for c in comparisons)
    return (f"{len(comparisons)} comparisons: {len(comparisons) - failed} passed "
            f"({shifted} moved by more than {NOISE:.0e} within tolerance), {failed} failed")


def _percent(value: float) -> str:
    """A relative change as people write it: "+5.2%", "-0.031%", "+520%" (never "+5.2e+02%")."""
    return f"{value:+.0f}%" if abs(value) >= 10 else f"{value:+.2g}%"


def cells(c: Comparison) -> dict[str, str]:
    """One comparison as the text cells every diff format shows (the plain table, JUnit, markdown): `change` is
    the signed move from the baseline, `moved` the same with its relative size where the baseline is not 0."""
    delta = c.value - c.reference if c.kind == "baseline" else math.nan
    change = "" if math.isnan(delta) else f"{delta:+.3g}"
    relative = f" ({_percent(100 * delta / abs(c.reference))})" if change and c.reference else ""
    return {"status": "FAIL" if not c.passed else "ok", "family": str(c.family),
            "utility": _scoped(str(c.utility), c.scope), "metric": str(c.metric),
            "stat": c.stat + (" floor" if c.kind == "floor" else ""),
            "baseline": _fmt(c.reference), "run": _fmt(c.value), "change": change, "moved": change + relative,
            "limit": _fmt(c.limit), "rule": c.rule, "why": c.reason or c.rule}


def diff_table(comparisons: list[Comparison], show_all: bool = False) -> str:
    """Plain-text table: failures first (with why), then passes whose value moved by more than NOISE (relative);
    the others only with `show_all`."""
    header = ("status", "family", "utility", "metric", "stat", "baseline", "run", "change", "limit", "rule / why")
    keys = ("status", "family", "utility", "metric", "stat", "baseline", "run", "change", "limit", "why")
    rows = [header] + [tuple(cells(c)[k] for k in keys) for c in listed(comparisons, show_all)]
    footer = verdict(comparisons)
    if len(rows) == 1:
        return footer + ("" if show_all else "; no value moved (`all` lists them)")
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([*lines, footer])


def _md(text: str) -> str:
    """Text for a markdown table cell: pipes escaped, HTML characters as entities, on one line."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
    return " ".join(text.split())


def _md_table(comparisons: list[Comparison], columns: dict[str, str]) -> list[str]:
    """A markdown table of `comparisons`, one column per key of `columns` (key of `cells` -> header)."""
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    for c in comparisons:
        row = cells(c)
        lines.append("| " + " | ".join(_md(row[k]) or " " for k in columns) + " |")
    return lines


MD_FAILURES = {"family": "family", "utility": "utility", "metric": "metric", "stat": "stat", "baseline": "baseline",
               "run": "now", "moved": "moved by", "rule": "tolerance", "limit": "limit", "why": "why"}
MD_MOVED = {"family": "family", "utility": "utility", "metric": "metric", "stat": "stat", "baseline": "baseline",
            "run": "now", "moved": "moved by", "rule": "tolerance", "limit": "limit"}


def markdown_report(comparisons: list[Comparison], notes: list[str] | None = None, show_all: bool = False) -> str:
    """The comparison as markdown for a pull-request comment: a one-line verdict with the counts, a table of the
    failures, the notes, and folded (`<details>`) the passes that moved by more than NOISE (with `show_all` also
    those that did not)."""
    failures = [c for c in comparisons if not c.passed]
    passes = [c for c in listed(comparisons, show_all) if c.passed]
    shifted = sum(moved(c) for c in passes)
    mark = "❌ failed" if failures else "✅ passed"
    lines = [f"**resetassay check {mark}**: {verdict(comparisons)}", ""]
    if failures:
        lines += [f"### {len(failures)} failed", "", *_md_table(failures, MD_FAILURES), ""]
    else:
        lines += ["No comparison failed.", ""]
    if notes:
        lines += ["### Notes", "", *(f"- {_md(note)}" for note in notes), ""]
    if passes:
        what = f"{shifted} passed and moved by more than {NOISE:.0e}" + (
            f", {len(passes) - shifted} did not move" if show_all else "")
        lines += ["<details>", f"<summary>{what}</summary>", "", *_md_table(passes, MD_MOVED), "", "</details>", ""]
    else:
        lines += [f"No passing value moved by more than {NOISE:.0e}.", ""]
    return "\n".join(lines)


def _junit_xml(comparisons: list[Comparison]) -> str:
    """JUnit XML: one test case per comparison (class = model family), a <failure> naming the broken rule."""
    failures = sum(not c.passed for c in comparisons)
    suites = ET.Element("testsuites", name="resetassay check", tests=str(len(comparisons)), failures=str(failures))
    suite = ET.SubElement(suites, "testsuite", name="resetassay check", tests=str(len(comparisons)),
                          failures=str(failures), errors="0", skipped="0")
    for c in comparisons:
        case = ET.SubElement(suite, "testcase", classname=f"resetassay.check.{c.family}",
                             name=f"{_scoped(c.utility, c.scope)} {c.metric} {c.stat}"
                                  f"{' floor' if c.kind == 'floor' else ''}")
        if not c.passed:
            row = cells(c)
            failure = ET.SubElement(case, "failure", message=f"{c.name}: {c.reason}", type="regression")
            failure.text = f"baseline {row['baseline']}, run {row['run']}, limit {row['limit']} ({c.rule})"
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"
