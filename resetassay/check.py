"""The CI gate (DESIGN "check.py"): a run's ranking quality against a baseline file, pass or fail.

A baseline holds, per (model family, utility, shock metric), the family means over checkpoints
of the pooled SummaryTable statistics (SPEC S5) that `resetassay baseline` read from a run, plus
absolute floors. `compare` checks a new run against it without rerunning a model:

- pooled Spearman ρ may not drop by more than `tolerance` (absolute);
- Shock@q may not rise by more than `rel_tolerance` x its baseline value;
- the oracle gap may not rise by more than `rel_tolerance` x the baseline Shock@q (the gap's own
  scale; a relative rule on the gap alone would fail on any change where the baseline gap is 0);
- every floor holds: `min` (value >= min) or `max` (value <= max), families matched by glob.
A run at another q is bad input; other config differences from the baseline's run are notes.

File format (JSON, "resetassay.baseline/1"):
    {"format": "resetassay.baseline/1", "q": 0.05,
     "source": {"run_dir": ..., "config": {...}, "versions": {...}},
     "rows": [{"family": "mlp-silu", "utility": "gxd", "metric": "l1", "n": 2,
               "spearman": 0.984, "shock_at_q": 0.121, "gap": 0.001}, ...],
     "floors": [{"family": "mlp-silu", "utility": "gxd", "metric": "l1", "stat": "spearman", "min": 0.9}]}
Statistic values may be null (not gated).
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from resetassay.errors import BadInputError
from resetassay.names import RANDOM
from resetassay.rundir import read_run, read_run_info, run_q
from resetassay.summary import STATS, aggregate, checkpoint_stats

FORMAT = "resetassay.baseline/1"
GATED = ("spearman", "shock_at_q", "gap")
KEYS = ("family", "utility", "metric")
UNGATED_UTILITIES = (RANDOM,)  # seeded noise: its numbers are chance, not ranking quality
NUMERICALLY_NEUTRAL = ("batch_size", "device", "engine", "max_memory", "joint", "utilities")  # equal numbers either way
NOISE = 1e-4  # relative changes below this are float noise (engines, devices) and not listed as moved
FLOOR = re.compile(r"^(?P<names>[^<>=]+?)\s*(?P<op>>=|<=)\s*(?P<value>\S+)$")


@dataclass
class Comparison:
    """One gated number: a baseline row's statistic or a floor, against the run's value."""

    family: str
    utility: str
    metric: str
    stat: str
    kind: str  # "baseline" or "floor"
    reference: float  # the baseline value, or the floor
    value: float  # the run's family mean (NaN when missing)
    limit: float  # the worst value that still passes
    bound: str  # "min": value >= limit passes; "max": value <= limit passes
    rule: str  # the rule in words, for the diff table
    reason: str = ""  # why it failed; "" when it passed

    @property
    def passed(self) -> bool:
        return not self.reason

    @property
    def name(self) -> str:
        return f"{self.family} {self.utility} {self.metric} {self.stat}{' floor' if self.kind == 'floor' else ''}"


def family_means(run_dir: str | Path) -> tuple[pd.DataFrame, float, dict]:
    """Per (family, utility, metric): the mean over checkpoints of the pooled STATS, the run's q, run.json."""
    run_dir = Path(run_dir)
    tables = read_run(run_dir, ("summary", "checkpoints"))
    info = read_run_info(run_dir)
    stats = checkpoint_stats(tables["summary"], tables["checkpoints"])
    return aggregate(stats, ["family"]), run_q(tables["summary"], info, run_dir), info


def _number_or_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def parse_floor(text: str) -> dict:
    """`[FAMILY:]UTILITY:METRIC:STAT>=VALUE` (or <=) into a floor entry; FAMILY is a glob, default every family."""
    match = FLOOR.match(text.strip())
    names = match["names"].split(":") if match else []
    if not match or len(names) not in (3, 4) or not all(n.strip() for n in names):
        raise BadInputError(f"--floor {text!r}: write [FAMILY:]UTILITY:METRIC:STAT>=VALUE, e.g. gxd:l1:spearman>=0.9",
                            flag="--floor")
    names = [n.strip() for n in names]
    family, utility, metric, stat = names if len(names) == 4 else ["*", *names]
    if stat not in STATS:
        raise BadInputError(f"--floor {text!r}: unknown statistic {stat!r}; choose from {', '.join(STATS)}",
                            flag="--floor")
    try:
        value = float(match["value"])
    except ValueError:
        raise BadInputError(f"--floor {text!r}: {match['value']!r} is not a number", flag="--floor") from None
    return {"family": family, "utility": utility, "metric": metric, "stat": stat,
            "min" if match["op"] == ">=" else "max": value}


def make_baseline(run_dir: str | Path, floors: list[str] | None = None, margin: float = 0.02,
                  utilities: list[str] | None = None) -> tuple[dict, list[str]]:
    """A baseline from a run, and a note per floor left out because the run does not clear it by `margin`.

    Rows cover `utilities` (default: every utility of the run except UNGATED_UTILITIES). Each
    `--floor` is written once per matching family where the run's mean clears it by `margin`.
    """
    if margin < 0:
        raise BadInputError(f"--margin {margin}: must be >= 0", flag="--margin")
    means, q, info = family_means(run_dir)
    keep = utilities or [u for u in dict.fromkeys(means["utility"]) if u not in UNGATED_UTILITIES]
    unknown = sorted(set(keep) - set(means["utility"]))
    if unknown:
        raise BadInputError(f"--utilities: {', '.join(unknown)} not in the run; it has "
                            f"{', '.join(dict.fromkeys(means['utility']))}", flag="--utilities")
    rows = []
    for _, r in means[means["utility"].isin(keep)].iterrows():
        values = {stat: _number_or_none(r[stat]) for stat in GATED}
        if any(v is not None for v in values.values()):
            rows.append({**{k: r[k] for k in KEYS}, "n": int(r["n"]), **values})
    written, skipped = [], []
    for text in floors or []:
        floor = parse_floor(text)
        matches = _matching(means, floor)
        if matches.empty:
            skipped.append(f"--floor {text}: no (family, utility, metric) of the run matches")
        for _, r in matches.iterrows():
            value = r[floor["stat"]]
            bound, limit = ("min", floor["min"]) if "min" in floor else ("max", floor["max"])
            clears = value >= limit + margin if bound == "min" else value <= limit - margin
            if clears:
                written.append({**{k: r[k] for k in KEYS}, "stat": floor["stat"], bound: limit})
            else:
                skipped.append(f"--floor {text}: {r['family']} has {value:.4g}, not clear of {limit:g} by "
                               f"{margin:g}; left out")
    baseline = {
        "format": FORMAT, "q": q,
        "source": {"run_dir": str(run_dir), "config": info.get("config", {}), "versions": info.get("versions", {})},
        "rows": rows, "floors": written,
    }
    return baseline, skipped


def write_baseline(baseline: dict, path: str | Path) -> Path:
    """Write a baseline as indented JSON (stable key order, so regenerating it diffs cleanly)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(baseline, indent=1, sort_keys=True) + "\n")
    return path


def _matching(means: pd.DataFrame, entry: dict) -> pd.DataFrame:
    """Rows of `means` whose family, utility and metric match `entry` (globs allowed)."""
    mask = pd.Series(True, index=means.index)
    for key in KEYS:
        mask &= means[key].map(lambda v, pattern=entry[key]: fnmatch.fnmatchcase(str(v), pattern))
    return means[mask]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def read_baseline(path: str | Path) -> dict:
    """Read and validate a baseline file; any defect is a BadInputError naming the file and the entry."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such baseline file; write one with `resetassay baseline RUN_DIR -o {path}`")
    try:
        baseline = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadInputError(f"{path}: not valid JSON ({err}); regenerate it with `resetassay baseline`") from err
    if not isinstance(baseline, dict) or baseline.get("format") != FORMAT:
        found = baseline.get("format") if isinstance(baseline, dict) else type(baseline).__name__
        raise BadInputError(f"{path}: format is {found!r}, expected {FORMAT!r}")
    q = baseline.get("q")
    if not _is_number(q) or not 0 < q <= 1:
        raise BadInputError(f"{path}: 'q' must be a number in (0, 1], got {q!r}")
    if not baseline.get("rows") and not baseline.get("floors"):
        raise BadInputError(f"{path}: no 'rows' and no 'floors': nothing to check")
    for section, stats, bounds in (("rows", GATED, ()), ("floors", ("stat",), ("min", "max"))):
        entries = baseline.get(section, [])
        if not isinstance(entries, list):
            raise BadInputError(f"{path}: '{section}' must be a list")
        for i, entry in enumerate(entries):
            where = f"{path}: {section}[{i}]"
            if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in KEYS):
                raise BadInputError(f"{where}: needs string 'family', 'utility' and 'metric'")
            if section == "rows":
                bad = [s for s in stats if s in entry and entry[s] is not None and not _is_number(entry[s])]
                if bad or not any(s in entry for s in stats):
                    raise BadInputError(f"{where}: {', '.join(stats)} must be numbers or null")
            else:
                if entry.get("stat") not in STATS:
                    raise BadInputError(f"{where}: 'stat' must be one of {', '.join(STATS)}")
                given = [b for b in bounds if b in entry]
                if len(given) != 1 or not _is_number(entry[given[0]]):
                    raise BadInputError(f"{where}: give exactly one number, 'min' or 'max'")
    return baseline


def _compare(entry: dict, stat: str, kind: str, reference: float, limit: float, bound: str, rule: str,
             run_row: pd.Series | None) -> Comparison:
    value = math.nan if run_row is None else float(run_row[stat])
    if run_row is None:
        reason = "not in the run"
    elif math.isnan(value):
        reason = "no value in the run (NaN)"
    elif (value < limit) if bound == "min" else (value > limit):
        reason = f"{value:.4g} {'<' if bound == 'min' else '>'} {limit:.4g} ({rule})"
    else:
        reason = ""
    return Comparison(entry["family"], entry["utility"], entry["metric"], stat, kind, reference, value, limit,
                      bound, rule, reason)


def compare(means: pd.DataFrame, baseline: dict, tolerance: float = 0.02,
            rel_tolerance: float = 0.10) -> list[Comparison]:
    """Every gated baseline statistic and every floor against the run's family means (rules: module docstring)."""
    if tolerance < 0:
        raise BadInputError(f"--tolerance {tolerance}: must be >= 0", flag="--tolerance")
    if rel_tolerance < 0:
        raise BadInputError(f"--rel-tolerance {rel_tolerance}: must be >= 0", flag="--rel-tolerance")
    index = {tuple(r[k] for k in KEYS): r for _, r in means.iterrows()}
    out = []
    for entry in baseline.get("rows", []):
        run_row = index.get(tuple(entry[k] for k in KEYS))
        base = {s: entry.get(s) for s in GATED}
        if base["spearman"] is not None:
            out.append(_compare(entry, "spearman", "baseline", base["spearman"], base["spearman"] - tolerance,
                                "min", f"drop ≤ {tolerance:g}", run_row))
        if base["shock_at_q"] is not None:
            out.append(_compare(entry, "shock_at_q", "baseline", base["shock_at_q"],
                                base["shock_at_q"] * (1 + rel_tolerance), "max",
                                f"rise ≤ {rel_tolerance:g} × baseline", run_row))
        if base["gap"] is not None:
            scale = base["shock_at_q"] if base["shock_at_q"] is not None else base["gap"]
            out.append(_compare(entry, "gap", "baseline", base["gap"], base["gap"] + rel_tolerance * scale, "max",
                                f"rise ≤ {rel_tolerance:g} × baseline Shock@q", run_row))
    for floor in baseline.get("floors", []):
        bound = "min" if "min" in floor else "max"
        rule = f"{'≥' if bound == 'min' else '≤'} {floor[bound]:g}"
        matches = _matching(means, floor)
        if matches.empty:
            out.append(_compare(floor, floor["stat"], "floor", floor[bound], floor[bound], bound, rule, None))
        for _, row in matches.iterrows():
            entry = {k: row[k] for k in KEYS}
            out.append(_compare(entry, floor["stat"], "floor", floor[bound], floor[bound], bound, rule, row))
    return out


def config_differences(run_config: dict, baseline_config: dict) -> list[str]:
    """Settings that change the numbers (not NUMERICALLY_NEUTRAL) where a run differs from its baseline's run."""
    keys = sorted((set(run_config) | set(baseline_config)) - set(NUMERICALLY_NEUTRAL))
    return [f"{key}: run {run_config.get(key)!r}, baseline {baseline_config.get(key)!r}" for key in keys
            if key in run_config and key in baseline_config and run_config[key] != baseline_config[key]]


def check_run(run_dir: str | Path, baseline_path: str | Path, tolerance: float = 0.02, rel_tolerance: float = 0.10,
              junit: str | Path | None = None) -> tuple[list[Comparison], list[str]]:
    """Compare a run directory with a baseline file; optionally write JUnit XML. Refuses a run at another q.

    Returns the comparisons and the config differences from the baseline's run (a note, not a failure).
    """
    baseline = read_baseline(baseline_path)
    means, q, info = family_means(run_dir)
    if not math.isclose(q, baseline["q"]):
        raise BadInputError(f"{Path(run_dir) / 'summary.csv'}: q = {q:g}, but {baseline_path} was written at "
                            f"q = {baseline['q']:g}; rerun with --q {baseline['q']:g} or write a new baseline")
    comparisons = compare(means, baseline, tolerance, rel_tolerance)
    if junit is not None:
        Path(junit).parent.mkdir(parents=True, exist_ok=True)
        Path(junit).write_text(junit_xml(comparisons))
    source = baseline.get("source", {})
    return comparisons, config_differences(info.get("config", {}), source.get("config", {}) if isinstance(
        source, dict) else {})


def _fmt(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.4g}"


def diff_table(comparisons: list[Comparison], show_all: bool = False) -> str:
    """Plain-text table: failures first, then passes whose value moved by more than NOISE (relative);
    the others only with `show_all`."""
    def changed(c: Comparison) -> bool:
        return c.kind == "baseline" and not math.isclose(c.value, c.reference, rel_tol=NOISE, abs_tol=1e-12)

    shown = ([c for c in comparisons if not c.passed] + [c for c in comparisons if c.passed and changed(c)]
             + ([c for c in comparisons if c.passed and not changed(c)] if show_all else []))
    header = ("status", "family", "utility", "metric", "stat", "baseline", "run", "change", "limit", "rule")
    rows = [header]
    for c in shown:
        delta = c.value - c.reference if c.kind == "baseline" and not math.isnan(c.value) else math.nan
        rows.append(("FAIL" if not c.passed else "ok", c.family, c.utility, c.metric, c.stat + (" floor" if
                     c.kind == "floor" else ""), _fmt(c.reference), _fmt(c.value),
                     "" if math.isnan(delta) else f"{delta:+.3g}", _fmt(c.limit), c.rule))
    failed = sum(not c.passed for c in comparisons)
    moved = sum(c.passed and changed(c) for c in comparisons)
    footer = (f"{len(comparisons)} comparisons: {len(comparisons) - failed} passed "
              f"({moved} moved by more than {NOISE:.0e} within tolerance), {failed} failed")
    if len(rows) == 1:
        return footer + ("" if show_all else "; no value moved (--all lists them)")
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([*lines, footer])


def junit_xml(comparisons: list[Comparison]) -> str:
    """JUnit XML: one test case per comparison (class = model family), a <failure> naming the broken rule."""
    failures = sum(not c.passed for c in comparisons)
    suites = ET.Element("testsuites", name="resetassay check", tests=str(len(comparisons)), failures=str(failures))
    suite = ET.SubElement(suites, "testsuite", name="resetassay check", tests=str(len(comparisons)),
                          failures=str(failures), errors="0", skipped="0")
    for c in comparisons:
        case = ET.SubElement(suite, "testcase", classname=f"resetassay.check.{c.family}",
                             name=f"{c.utility} {c.metric} {c.stat}{' floor' if c.kind == 'floor' else ''}")
        if not c.passed:
            failure = ET.SubElement(case, "failure", message=f"{c.name}: {c.reason}", type="regression")
            failure.text = (f"baseline {_fmt(c.reference)}, run {_fmt(c.value)}, limit {_fmt(c.limit)} "
                            f"({c.rule})")
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"
