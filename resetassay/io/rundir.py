"""The run directory OUT (DESIGN "Tables are the interface", "Runs are resumable"): its one reader and writer.

    OUT/units.csv, summary.csv, notes.csv, checkpoints.csv   the tables of SPEC S5 (`write_run`, `read_run`);
                              or units.parquet, ... with `table_format="parquet"` (needs pyarrow)
    OUT/run.json              config, inputs, versions, device, seeds, files' sha256, the tables' format
                              (`table_format`, outside the config: it changes no number) (`read_run_info`)
    OUT/failures.csv          checkpoints that failed, with the reason; only when any did (`write_failures`)
    OUT/timings.json          seconds per stage of each checkpoint this launch assayed and of the last render
                              (`write_timings`, `read_timings`, `write_report_timings`, `read_report_timings`)
    OUT/parts/config.json     the run's identity: what decides its numbers, and its hash (`RunParts`)
    OUT/parts/<key>.json      one finished checkpoint: its four tables as csv text and their sha256
    OUT/parts/<key>/*.safetensors   the work items of a checkpoint in flight under torchrun (shard.py):
                              calibration.safetensors, lesions-<i>.safetensors; removed once its part is written
    OUT/.resetassay.lock      held (an OS file lock) by the one launch writing OUT; names its host and pid

Every file is written to a temporary `.<name>.*`, flushed and renamed (`atomic_write`): a killed
run leaves finished files and at most a temporary one, which the next run deletes. Every table
is read by `read_table`, so a value reads back as it was written (only empty cells are missing,
floats exactly). A parquet table holds exactly what its csv would read back as (`as_csv_reads`),
so a run reads the same in either format, to the bit. Readers find a table by `table_path`: the
format run.json records, else whichever file exists. Nothing here imports torch: report/ (and
its gate) reads runs without it (nor pyarrow, until a parquet table is written or read), except the work
items of a sharded run, which hold tensors.

Over 500 lines: the run directory's one reader and writer (tables and their read-back checks, run.json, timings,
locks, resumable parts): every file under OUT is written here, so what a run may delete is decided here alone.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from resetassay.errors import BadInputError, warn_user
from resetassay.names import (
    ALL,
    FAILURE_COLUMNS,
    FAILURES,
    FIGURE_FORMATS,
    MANIFEST,
    NOTE_COLUMNS,
    PARTS,
    RUN_JSON,
    STATE,
    SUMMARY_COLUMNS,
    TABLES,
    TIMINGS,
    WEIGHTS,
)

IDENTITY = "config.json"
PART_FORMAT = "resetassay.part/1"
LOCK = ".resetassay.lock"
PART_NAME = re.compile(r"^[0-9a-f]{64}\.json$")  # a part's file name: its key
ITEMS_NAME = re.compile(r"^[0-9a-f]{64}$")  # the folder of a checkpoint's work items: its key
MAY_BE_EMPTY = ("notes", "checkpoints")  # an in-memory model has no checkpoint info; most runs have no notes
# pandas < 3 parses floats exactly only when asked; pandas 3 always does and deprecates the argument.
EXACT_FLOATS = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}
TABLE_FORMATS = ("csv", "parquet")  # how write_run stores the four tables; csv by default
PARQUET_HINT = "pip install 'resetassay[parquet]' (pyarrow)"
KEEPS = ("int64", "float64", "bool")  # dtypes a csv round trip gives back unchanged (floats in repr form)
Tables = dict[str, pd.DataFrame]
# What a table read back must hold (`_check_table`): its columns, and those that are text; every other column of
# the units and summary tables is a number (a utility's scores, a shock; a statistic), `mature` a boolean.
REQUIRED = {"units": ("checkpoint", "layer", "unit", "mature"), "summary": tuple(SUMMARY_COLUMNS[:4]),
            "notes": tuple(NOTE_COLUMNS), "checkpoints": ("checkpoint",)}
TEXT = {"units": ("checkpoint", "layer", "kind", "mature"), "summary": ("checkpoint", "utility", "metric", "scope",
                                                                        "note")}
# checkpoints.csv is mostly text (paths, data records); these of its columns are numbers where present
NUMBERS = {"checkpoints": ("step", "split_available", "split_calib_size", "split_probe_size", "probe_accuracy",
                           "n_classes")}
KEYS = {"units": ("checkpoint", "layer", "unit"), "summary": ("checkpoint", "utility", "metric", "scope"),
        "checkpoints": ("checkpoint",)}  # each row's identity: no two rows share it


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a resumable run; the checkpoints finished before it are saved."""


TEMPORARY = ".resetassay-tmp"  # the suffix of `atomic_write`'s temporary files: the only dotfiles a run removes


def atomic_write(path: Path, text: str | bytes) -> None:
    """Write via a temporary `.<name>.*.resetassay-tmp` file, flushed to disk, and a rename: a crash or a kill
    never leaves half a file under `path`, and a failed write removes its temporary file. Text is written as
    UTF-8."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    _atomic(path, lambda f: f.write(data))


def _atomic(path: Path, write: Callable[[io.BufferedWriter], object]) -> None:
    """`atomic_write` with `write(file)` filling the temporary file (opened binary)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY)
    except OSError as err:
        raise _unwritable(path, err) from err
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise _unwritable(path, err) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _unwritable(path: Path, err: OSError) -> BadInputError:
    """A write that failed (disk full, read-only, permissions) as one line naming the file."""
    why = "the disk is full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
    return BadInputError(f"{path}: cannot write ({why}); files written before it are kept — free space or "
                         "fix permissions and rerun", field="out")


def write_table(table: pd.DataFrame) -> str:
    """A table as csv text (missing values as empty cells, floats in shortest round-trip form)."""
    return table.to_csv(index=False)


def read_table(source: str | Path) -> pd.DataFrame:
    """A table written by `write_table` (csv text, or a file holding it; a `.parquet` file written by
    `write_run`), read back to the same values: only empty cells are missing, and floats parse exactly. An
    empty text is an empty table."""
    if isinstance(source, Path) and source.suffix == ".parquet":
        _pyarrow(f"{source}: reading a parquet table needs pyarrow", None)
        return pd.read_parquet(source, engine="pyarrow")
    buffer = io.StringIO(source) if isinstance(source, str) else source
    try:
        return pd.read_csv(buffer, keep_default_na=False, na_values=[""], **EXACT_FLOATS)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def as_csv_reads(table: pd.DataFrame) -> pd.DataFrame:
    """`table` as `read_table(write_table(table))` gives it back, without writing the columns a csv round trip
    keeps as they are (int64, float64, bool): the same dtypes, missing values and floats, to the bit."""
    if not len(table) or not len(table.columns):
        return read_table(write_table(table))
    out = table.reset_index(drop=True)
    out.columns = [str(c) for c in out.columns]
    others = [c for c in out.columns if str(out[c].dtype) not in KEEPS]
    if others:
        parsed = read_table(write_table(out[others]))
        out = out.assign(**{c: parsed[c] for c in others})
    return out


def _pyarrow(message: str, field: str | None) -> None:
    """Refuse, in one line with the install hint, when pyarrow (parquet tables) is not installed."""
    try:
        import pyarrow  # noqa: F401
    except ImportError as err:
        raise BadInputError(f"{message}, which is not installed; {PARQUET_HINT}", field=field) from err


def check_table_format(table_format: str) -> str:
    """`table_format` (`--format`) when it can be written here: csv, or parquet with pyarrow installed."""
    if table_format not in TABLE_FORMATS:
        raise BadInputError(f"`table_format` {table_format!r}: choose {' or '.join(TABLE_FORMATS)}",
                            field="table_format")
    if table_format == "parquet":
        _pyarrow("`table_format` parquet: needs pyarrow", "table_format")
    return table_format


def check_figures(figures: str) -> str:
    """`figures` (`--figures`) when it is a way to write a report's figures: png, svg or none (SPEC S5)."""
    if figures not in FIGURE_FORMATS:
        raise BadInputError(f"`figures` {figures!r}: choose {', '.join(FIGURE_FORMATS[:-1])} or {FIGURE_FORMATS[-1]}",
                            field="figures")
    return figures


def _write_table_file(path: Path, table: pd.DataFrame) -> Path:
    """Write one table atomically as `path` (.csv or .parquet); a parquet file holds `as_csv_reads(table)`."""
    if path.suffix == ".parquet":
        normal = as_csv_reads(table)
        _atomic(path, lambda f: normal.to_parquet(f, engine="pyarrow", index=False))
    else:
        atomic_write(path, write_table(table))
    return path


def table_path(run_dir: str | Path, name: str, info: dict | None = None) -> Path:
    """The file of table `name` in a run directory: in the format run.json records (`info`, read when not
    given), else the csv or the parquet file, whichever exists (csv when neither does)."""
    run_dir = Path(run_dir)
    recorded = (read_run_info(run_dir) if info is None else info).get("table_format")
    formats = [recorded] if recorded in TABLE_FORMATS else []
    formats += [f for f in TABLE_FORMATS if f not in formats]
    paths = [run_dir / f"{name}.{f}" for f in formats]
    return next((p for p in paths if p.exists()), paths[0])


def canonical_hash(value: object) -> str:
    """sha256 of `value` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_sha256(path: Path, foreign: bool, state: Path | None = None) -> dict[str, str]:
    """sha256 of each file loading `path` reads: a state-dict file, or a checkpoint directory's manifest,
    weights and state (only the weights when `model` builds the model), and the per-unit state file `state` of a
    state dict or given with `state` (`checkpoint.state_file`), under `state_key`."""
    if path.is_file():
        found = {path.name: file_sha256(path)}
    else:
        names = (WEIGHTS,) if foreign else (MANIFEST, WEIGHTS, STATE)
        found = {name: file_sha256(path / name) for name in names if (path / name).is_file()}
    if state is not None:
        found[state_key(path, state)] = file_sha256(state)
    return found


def state_key(path: Path, state: Path) -> str:
    """The name a checkpoint's per-unit state file is hashed under: its file name, unless the weights have that
    name (a state file given with `state` from another folder), then "state " and its name."""
    weights = path.name if path.is_file() else WEIGHTS
    return state.name if state.name != weights else f"state {state.name}"


def write_run(out: str | Path, tables: Tables, info: dict, table_format: str = "csv") -> Path:
    """Write the tables (one file per name in TABLES, `<name>.csv` or with `table_format="parquet"`
    `<name>.parquet`) and run.json, which records the format (`table_format`), into `out`. A table file of the
    other format left by an earlier write is removed, so readers never see two versions of a table."""
    check_table_format(table_format)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        _write_table_file(out / f"{name}.{table_format}", tables[name])
        for other in TABLE_FORMATS:
            if other != table_format:
                (out / f"{name}.{other}").unlink(missing_ok=True)
    info = {**info, "table_format": table_format}
    atomic_write(out / RUN_JSON, json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
    return out


def convert_run(run_dir: str | Path, table_format: str) -> Path:
    """Rewrite a run directory's tables in `table_format` (csv or parquet), in place; returns `run_dir`."""
    check_table_format(table_format)
    return write_run(run_dir, read_run(run_dir), read_run_info(run_dir), table_format)


def read_run(run_dir: str | Path, names: tuple[str, ...] = TABLES) -> Tables:
    """The tables `names` of a run directory, csv or parquet (`table_path`); a missing, empty or unreadable one
    is a one-line error."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    tables = {}
    for name in names:
        path = table_path(run_dir, name, info)
        if not path.exists():
            raise BadInputError(f"{path}: missing; is {run_dir} the `out` of a `resetassay run`?")
        try:
            tables[name] = read_table(path)
        except (pd.errors.ParserError, UnicodeDecodeError, OSError) as err:
            raise BadInputError(f"{path}: unreadable table ({' '.join(str(err).split())}); rerun the assay") from err
        except Exception as err:  # pyarrow's errors (ArrowInvalid: not a parquet file) share no base with these
            if type(err).__module__.split(".")[0] != "pyarrow":
                raise
            raise BadInputError(f"{path}: unreadable table ({' '.join(str(err).split())}); rerun the assay") from err
        if tables[name].empty and not len(tables[name].columns):
            if name not in MAY_BE_EMPTY:
                raise BadInputError(f"{path}: empty table; rerun the assay")
            tables[name] = pd.DataFrame(columns=list(REQUIRED[name]))  # an empty file: the table with no rows
        _check_table(name, tables[name], path)
    if {"units", "summary"} <= set(tables):
        _check_summary_covers(tables["units"], tables["summary"], info.get("config", {}),
                              table_path(run_dir, "summary", info))
    return tables


def _check_table(name: str, table: pd.DataFrame, path: Path) -> None:
    """A table read back from disk, checked at this boundary: a csv file ends with a newline (one cut short does
    not), holds its REQUIRED columns, and numbers where numbers belong (TEXT lists the others); a one-line error
    naming the file, the column and the first bad row otherwise."""
    if path.suffix == ".csv" and path.stat().st_size and not _ends_with_newline(path):
        raise BadInputError(f"{path}: cut short (its last line is incomplete); rerun the assay, or restore the file")
    if table.empty and not len(table.columns):
        return
    if missing := [c for c in REQUIRED.get(name, ()) if c not in table]:
        raise BadInputError(f"{path}: no column {', '.join(missing)}; is it the {name} table of a `resetassay run`?")
    if table.empty:  # a header alone: what a reader of that table refuses, it refuses in its own words
        return
    for column in REQUIRED.get(name, ()) if name in TEXT else ():  # the keys of a row: never empty
        if table[column].isna().any():
            line = int(table.index[table[column].isna()][0]) + 2
            raise BadInputError(f"{path}: column {column} is empty on line {line} (a row cut short?); rerun the "
                                "assay, or restore the file")
    if name == "units" and table["mature"].dtype != bool:
        raise BadInputError(f"{path}: column mature holds {_first_bad(table['mature'], bool)}, not True/False; "
                            "rerun the assay, or restore the file")
    if name in KEYS and (repeated := table.duplicated(list(KEYS[name]), keep="first")).any():
        line = int(table.index[repeated][0]) + 2
        raise BadInputError(f"{path}: line {line} repeats the {', '.join(KEYS[name])} of an earlier row; rerun the "
                            "assay, or restore the file")
    numbers = [c for c in table.columns if c not in TEXT[name]] if name in TEXT else [
        c for c in NUMBERS.get(name, ()) if c in table]
    for column in numbers:
        if not pd.api.types.is_numeric_dtype(table[column]):
            raise BadInputError(f"{path}: column {column} holds {_first_bad(table[column], float)}, not a number; "
                                "rerun the assay, or restore the file")


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _first_bad(column: pd.Series, kind: type) -> str:
    """The first value of `column` that is not of `kind`, with its row (the file's line numbers count the header)."""
    for row, value in column.items():
        if kind is bool and not isinstance(value, bool):
            return f"{value!r} (line {int(row) + 2})"
        try:
            kind(value)
        except (TypeError, ValueError):
            return f"{value!r} (line {int(row) + 2})"
    return "values of mixed types"


def _check_summary_covers(units: pd.DataFrame, summary: pd.DataFrame, config: dict, path: Path) -> None:
    """Every checkpoint of units.csv has, for every utility and metric of the run (run.json's config, and those of
    summary.csv), its ALL row in summary.csv: a summary cut at a line boundary lacks some."""
    if units.empty:
        return
    if summary.empty:
        raise BadInputError(f"{path}: no rows, while units.csv holds {units['checkpoint'].nunique()} checkpoints; the "
                            "table is incomplete — rerun the assay, or restore the file")
    pairs = set(zip(summary["utility"], summary["metric"], strict=True))
    if isinstance(config.get("utilities"), list) and isinstance(config.get("metrics"), list):
        pairs |= {(str(u), str(m)) for u in config["utilities"] for m in config["metrics"]}
    for checkpoint in dict.fromkeys(units["checkpoint"]):
        mine = summary[summary["checkpoint"] == checkpoint]
        have = set(zip(mine["utility"], mine["metric"], mine["scope"], strict=True))
        lacking = [f"{u} {m} {ALL}" for u, m in sorted(pairs) if (u, m, ALL) not in have]
        if lacking:
            raise BadInputError(f"{path}: no {lacking[0]} row for checkpoint {checkpoint} (of {len(lacking)} "
                                "missing); the table is incomplete — rerun the assay, or restore the file")


def _item_sha256(tensors: dict, meta: str) -> str:
    """sha256 of a work item's content: its tensors as safetensors serialises them (names, dtypes, shapes and bytes,
    in a fixed order) and its meta."""
    from safetensors.torch import save

    return hashlib.sha256(save(tensors) + meta.encode()).hexdigest()


def read_run_info(run_dir: str | Path) -> dict:
    """run.json of a run directory (config, versions, device); {} when absent."""
    path = Path(run_dir) / RUN_JSON
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


class StageClock:
    """Wall-clock seconds per stage of one assay or one render (timings.json; never in run.json, which reruns
    reproduce), added into `seconds` when given (the calibration pass times its passes into the caller's dict)."""

    def __init__(self, seconds: dict[str, float] | None = None) -> None:
        self.seconds: dict[str, float] = {} if seconds is None else seconds

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        """Time the block inside, adding its seconds to `seconds[stage]`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.perf_counter() - start, 4)


def read_timings(run_dir: str | Path) -> dict[str, dict[str, float]]:
    """Seconds per stage of each checkpoint the run's last launch assayed (timings.json); {} when absent or
    unreadable (timings are a report's side note, never its numbers)."""
    checkpoints = (_read_json(Path(run_dir) / TIMINGS) or {}).get("checkpoints")
    return checkpoints if isinstance(checkpoints, dict) else {}


def read_report_timings(run_dir: str | Path) -> dict[str, float]:
    """Seconds per stage of the run's last render (timings.json's `report`); {} when it failed or none is recorded."""
    report = (_read_json(Path(run_dir) / TIMINGS) or {}).get("report")
    return report if isinstance(report, dict) else {}


def write_timings(out: str | Path, timings: dict) -> None:
    """timings.json: wall-clock seconds per stage of each checkpoint this launch assayed (`checkpoints`), and of the
    last render (`report`, `write_report_timings`). Kept out of run.json, so that run.json stays byte-identical
    across reruns."""
    atomic_write(Path(out) / TIMINGS, json.dumps(timings, indent=2, sort_keys=True) + "\n")


def write_report_timings(run_dir: str | Path, seconds: dict[str, float] | None) -> None:
    """Record a render's seconds per stage as timings.json's `report`, keeping the checkpoints' stages; None (the
    render failed) removes it."""
    timings = {k: v for k, v in (_read_json(Path(run_dir) / TIMINGS) or {}).items() if k != "report"}
    write_timings(run_dir, timings | ({"report": seconds} if seconds is not None else {}))


def write_failures(out: str | Path, failures: pd.DataFrame) -> None:
    """failures.csv of a run directory when checkpoints failed; a stale one from an earlier run is removed."""
    path = Path(out) / FAILURES
    if len(failures):
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write(path, write_table(failures.reindex(columns=FAILURE_COLUMNS)))
    else:
        path.unlink(missing_ok=True)


def failure_exit_code(failures: pd.DataFrame) -> int:
    """0 when no checkpoint failed, 2 when one was bad input, else 1 (a failure during the assay)."""
    if not len(failures):
        return 0
    return 2 if (failures["kind"] == "bad input").any() else 1


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _differences(old: dict | None, new: dict) -> str:
    """What changed between two run identities (sections config, inputs, versions), e.g. "seed 0 -> 1"."""
    if old is None:
        return f"its {PARTS}/{IDENTITY} is missing or unreadable"
    sections = [(name, section) for identity in (old, new) for name, section in identity.items()
                if isinstance(section, dict)]
    homes: dict[str, set[str]] = {}
    for name, section in sections:
        for k in section:
            homes.setdefault(k, set()).add(name)

    def flat(identity: dict) -> dict:  # a key two sections share (config and versions: utilities) says its section
        return {(k if len(homes[k]) == 1 else f"{name}.{k}"): v for name, section in identity.items()
                if isinstance(section, dict) for k, v in section.items()}

    flat_old, flat_new = flat(old), flat(new)
    changed = [f"{k} {flat_old.get(k)!r} -> {flat_new.get(k)!r}" for k in sorted(flat_old.keys() | flat_new.keys())
               if flat_old.get(k) != flat_new.get(k)]
    return "; ".join(changed) or "another config"


@contextmanager
def interrupt_held() -> Iterator[None]:
    """Hold Ctrl-C until the block ends (milliseconds), so a file is written (and a part read back) whole:
    pandas' csv reader turns an interrupt inside it into a ParserError."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[tuple] = []
    previous = signal.signal(signal.SIGINT, lambda *args: caught.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught and callable(previous):
            previous(*caught[0])


def _own_lock(out: Path) -> int:
    """Take OUT's lock for this process (released by the OS when it exits, even when killed); refuse when
    another launch holds it."""
    path = out / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise BadInputError(f"`out` {out}: cannot write there ({err.strerror}); name a folder you can write",
                            field="out") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = Path(path).read_text(encoding="utf-8", errors="replace").strip() or "another process"
        os.close(fd)
        raise BadInputError(f"`out` {out}: in use by another resetassay run ({holder}); wait for it to finish "
                            "or use another `out`", field="out") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"host {socket.gethostname()}, pid {os.getpid()}, since {time.strftime('%H:%M:%S')}\n".encode())
    return fd


class RunParts:
    """The finished checkpoints of one run directory (OUT/parts), for one run identity (config, inputs,
    device, versions), owned by this process while open (an OS lock on OUT/.resetassay.lock).

    Opening refuses a directory whose finished checkpoints were assayed with another identity, unless
    `overwrite`, which discards them first (only the files resetassay wrote there). `close()` releases the
    lock; so does the end of the process. The other ranks of a torchrun launch open it with `owner=False`: they
    share rank 0's lock and checks, and only read parts and write work items.
    """

    def __init__(self, out: str | Path, identity: dict, overwrite: bool = False, owner: bool = True) -> None:
        self.out = Path(out)
        self.parts = self.out / PARTS
        self.identity = {**identity, "hash": canonical_hash(identity)}
        self._lock = None
        if not owner:
            return
        try:
            self.parts.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise BadInputError(f"`out` {self.out}: cannot create the run directory ({err.strerror}); name a "
                                "folder you can write", field="out") from err
        self._lock = _own_lock(self.out)
        for temporary in [*self.parts.glob(f".*{TEMPORARY}"), *self.parts.glob(f"*/.*{TEMPORARY}")]:
            if temporary.is_file() and not temporary.is_symlink():  # left by a write that was killed
                temporary.unlink()
        if overwrite:
            for part in self.finished():
                part.unlink()
            for items in self.parts.iterdir():
                if ITEMS_NAME.match(items.name) and items.is_dir() and not items.is_symlink():
                    shutil.rmtree(items)
            (self.parts / IDENTITY).unlink(missing_ok=True)
        stored = _read_json(self.parts / IDENTITY)
        if self.count() and (stored or {}).get("hash") != self.hash:
            self.close()
            raise BadInputError(
                f"`out` {self.out}: holds {self.count()} checkpoints assayed with another config "
                f"({_differences(stored, self.identity)}); use another `out`, or `overwrite` to discard them",
                field="out")
        atomic_write(self.parts / IDENTITY, json.dumps(self.identity, indent=2, sort_keys=True, default=str) + "\n")

    def close(self) -> None:
        """Release OUT's lock."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def __enter__(self) -> RunParts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def hash(self) -> str:
        """The identity's hash."""
        return self.identity["hash"]

    def finished(self) -> list[Path]:
        """The part files on disk (of any checkpoint set run with this directory): only files named as
        resetassay names parts, never a link's target or a user's file."""
        return sorted(p for p in self.parts.iterdir() if PART_NAME.match(p.name) and p.is_file()
                      and not p.is_symlink())

    def count(self) -> int:
        """Finished checkpoints on disk."""
        return len(self.finished())

    def key(self, name: str, path: Path, sha256: dict[str, str]) -> str:
        """The part name of checkpoint `name` at `path` with files `sha256`, under this run's identity."""
        return canonical_hash({"run": self.hash, "checkpoint": name, "path": str(path), "files": sha256})

    def has(self, key: str) -> bool:
        """Whether the part `key` is on disk (complete, as every part under its final name)."""
        return (self.parts / f"{key}.json").exists()

    def load(self, key: str) -> Tables | None:
        """The tables of a finished checkpoint; None when it is not finished, or when its part is unreadable or
        was edited (its tables no longer match their sha256): that checkpoint is then assayed again."""
        path = self.parts / f"{key}.json"
        if not path.exists():
            return None
        part = _read_json(path) or {}
        tables = part.get("tables") if isinstance(part.get("tables"), dict) else {}
        whole = (part.get("format") == PART_FORMAT and part.get("key") == key and set(TABLES) <= set(tables)
                 and all(isinstance(tables[name], str) for name in TABLES))
        if not whole or part.get("sha256") != canonical_hash({name: tables[name] for name in TABLES}):
            why = "unreadable part" if not whole else "part edited since it was written (its checksum does not match)"
            warn_user(f"{path}: {why}; its checkpoint is assayed again")
            path.unlink()
            return None
        with interrupt_held():
            return {name: read_table(tables[name]) for name in TABLES}

    def save(self, key: str, tables: Tables) -> Tables:
        """Write one finished checkpoint's tables atomically, with their sha256; returns them as a later `load`
        reads them."""
        text = {name: write_table(tables[name]) for name in TABLES}
        part = {"format": PART_FORMAT, "key": key, "sha256": canonical_hash(text), "tables": text}
        with interrupt_held():
            atomic_write(self.parts / f"{key}.json", json.dumps(part, indent=1) + "\n")
            return {name: read_table(text[name]) for name in TABLES}

    def has_item(self, key: str, item: str) -> bool:
        """Whether work item `item` of the checkpoint `key` is on disk (complete, as every file under its name)."""
        return (self.parts / key / f"{item}.safetensors").exists()

    def save_item(self, key: str, item: str, tensors: dict, meta: dict) -> None:
        """Write one finished work item atomically: `tensors` (name -> torch.Tensor) and JSON `meta`, with the
        sha256 of both (`load_item` checks it)."""
        from safetensors.torch import save

        (self.parts / key).mkdir(exist_ok=True)
        tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        text = json.dumps(meta)
        data = save(tensors, metadata={"meta": text, "sha256": _item_sha256(tensors, text)})
        with interrupt_held():
            atomic_write(self.parts / key / f"{item}.safetensors", data)

    def load_item(self, key: str, item: str) -> tuple[dict, dict] | None:
        """The tensors and meta of a finished work item; None when absent or unreadable (then deleted, so that it
        is done again)."""
        from safetensors import SafetensorError, safe_open

        path = self.parts / key / f"{item}.safetensors"
        if not path.exists():
            return None
        try:
            with safe_open(path, framework="pt") as f:
                tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not a dict)
                text, recorded = f.metadata()["meta"], f.metadata().get("sha256")
                meta = json.loads(text)
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
            warn_user(f"{path}: unreadable work item ({err}); it is done again")
            path.unlink(missing_ok=True)
            return None
        if recorded != _item_sha256(tensors, text):
            warn_user(f"{path}: its content does not match its sha256 (edited, or written by an older "
                      "version); it is done again")
            path.unlink(missing_ok=True)
            return None
        return tensors, meta

    def drop_items(self, key: str) -> None:
        """Remove the work items of a checkpoint whose part is written."""
        shutil.rmtree(self.parts / key, ignore_errors=True)
