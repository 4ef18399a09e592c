"""Resumable run directories (DESIGN "Runs are resumable"): each checkpoint's tables saved as it finishes.

Layout of a run directory OUT (the tables of SPEC S5 and the report are written by report.py):

    OUT/parts/config.json   the run's identity: assay config, inputs, device, versions, and its hash
    OUT/parts/<key>.json    one finished checkpoint: its UnitTable, SummaryTable, notes and checkpoint row (csv)
    OUT/failures.csv        checkpoints that failed (a bad file, NaN/Inf logits) with the reason; only if any did

`key` is the sha256 of (the identity's hash, the checkpoint's name and path, the sha256 of every file its
loading reads), so a changed checkpoint file or config is never mistaken for a finished one. Every file is
written to a temporary `.<name>.*` and renamed (`report.atomic_write`): a killed run leaves finished parts and
at most a temporary file, which the next run deletes; a part that does not parse is recomputed.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import signal
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from resetassay.checkpoint import MANIFEST, STATE, WEIGHTS
from resetassay.errors import BadInputError
from resetassay.report import TABLES, atomic_write

PARTS = "parts"
IDENTITY = "config.json"
FAILURES = "failures.csv"
PART_FORMAT = "resetassay.part/1"
FAILURE_COLUMNS = ["checkpoint", "path", "kind", "error"]
# pandas < 3 parses floats exactly only when asked; pandas 3 always does and deprecates the argument.
EXACT_FLOATS = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a resumable run; the checkpoints finished before it are saved."""


class CheckpointFailure(UserWarning):
    """One checkpoint could not be assayed (a bad file, NaN/Inf logits); the run goes on without it."""


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


def source_digest() -> str:
    """sha256 (12 hex digits) of resetassay's own source: a development install changes numbers without
    changing its version."""
    return canonical_hash({p.name: file_sha256(p) for p in sorted(Path(__file__).parent.glob("*.py"))})[:12]


def checkpoint_sha256(path: Path, foreign: bool) -> dict[str, str]:
    """sha256 of each file loading `path` reads: a state-dict file, or a checkpoint directory's manifest,
    weights and state (only the weights when `--model` builds the model)."""
    if path.is_file():
        return {path.name: file_sha256(path)}
    names = (WEIGHTS,) if foreign else (MANIFEST, WEIGHTS, STATE)
    return {name: file_sha256(path / name) for name in names if (path / name).is_file()}


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
    flat_old, flat_new = ({k: v for section in identity.values() if isinstance(section, dict)
                           for k, v in section.items()} for identity in (old, new))
    changed = [f"{k} {flat_old.get(k)!r} -> {flat_new.get(k)!r}" for k in sorted(flat_old.keys() | flat_new.keys())
               if flat_old.get(k) != flat_new.get(k)]
    return "; ".join(changed) or "another config"


@contextmanager
def _interrupt_held() -> Iterator[None]:
    """Hold Ctrl-C until the block ends (milliseconds), so a part is written and read back whole: pandas' csv
    reader turns an interrupt inside it into a ParserError."""
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


def _read_table(text: str) -> pd.DataFrame:
    """A table written by `DataFrame.to_csv`, read back to the same values (only empty cells are missing)."""
    try:
        return pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""], **EXACT_FLOATS)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


class RunStore:
    """The finished checkpoints of one run directory, for one run identity (config, inputs, device, version).

    Opening refuses a directory whose finished checkpoints were assayed with another identity, unless
    `overwrite`, which discards them first.
    """

    def __init__(self, out: str | Path, identity: dict, overwrite: bool = False) -> None:
        self.out = Path(out)
        self.parts = self.out / PARTS
        self.identity = {**identity, "hash": canonical_hash(identity)}
        if overwrite and self.parts.exists():
            shutil.rmtree(self.parts)
        self.parts.mkdir(parents=True, exist_ok=True)
        for temporary in self.parts.glob(".*"):  # left by a write that was killed
            temporary.unlink()
        stored = _read_json(self.parts / IDENTITY)
        if self.count() and (stored or {}).get("hash") != self.hash:
            raise BadInputError(
                f"--out {self.out}: holds {self.count()} checkpoints assayed with another config "
                f"({_differences(stored, self.identity)}); use another --out, or --overwrite to discard them"
            )
        atomic_write(self.parts / IDENTITY, json.dumps(self.identity, indent=2, sort_keys=True, default=str) + "\n")

    @property
    def hash(self) -> str:
        return self.identity["hash"]

    def count(self) -> int:
        """Finished checkpoints on disk (of any checkpoint set run with this directory)."""
        return sum(1 for p in self.parts.glob("*.json") if p.name != IDENTITY)

    def key(self, name: str, path: Path, sha256: dict[str, str]) -> str:
        """The part name of checkpoint `name` at `path` with files `sha256`, under this run's identity."""
        return canonical_hash({"run": self.hash, "checkpoint": name, "path": str(path), "files": sha256})

    def has(self, key: str) -> bool:
        """Whether the part `key` is on disk (complete, as every part under its final name)."""
        return (self.parts / f"{key}.json").exists()

    def load(self, key: str) -> dict[str, pd.DataFrame] | None:
        """The tables of a finished checkpoint; None when it is not finished (or its part is unreadable)."""
        path = self.parts / f"{key}.json"
        if not path.exists():
            return None
        part = _read_json(path) or {}
        tables = part.get("tables") if isinstance(part.get("tables"), dict) else {}
        if part.get("format") != PART_FORMAT or part.get("key") != key or not set(TABLES) <= set(tables):
            warnings.warn(f"{path}: unreadable part; its checkpoint is assayed again", stacklevel=2)
            path.unlink()
            return None
        with _interrupt_held():
            return {name: _read_table(tables[name]) for name in TABLES}

    def save(self, key: str, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        """Write one finished checkpoint's tables atomically; returns them as a later `load` reads them."""
        text = {name: tables[name].to_csv(index=False) for name in TABLES}
        with _interrupt_held():
            atomic_write(self.parts / f"{key}.json",
                         json.dumps({"format": PART_FORMAT, "key": key, "tables": text}, indent=1) + "\n")
            return {name: _read_table(text[name]) for name in TABLES}


def failure_row(name: str, path: Path, error: Exception) -> dict:
    """One row of failures.csv: bad input (exit code 2) or a failure during the assay (exit code 1)."""
    kind = "bad input" if isinstance(error, BadInputError) else "failure"
    return {"checkpoint": name, "path": str(path), "kind": kind, "error": str(error)}


def write_failures(out: str | Path, failures: pd.DataFrame) -> None:
    """failures.csv of a run directory when checkpoints failed; a stale one from an earlier run is removed."""
    path = Path(out) / FAILURES
    if len(failures):
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write(path, failures.reindex(columns=FAILURE_COLUMNS).to_csv(index=False))
    else:
        path.unlink(missing_ok=True)


def failure_exit_code(failures: pd.DataFrame) -> int:
    """0 when no checkpoint failed, 2 when one was bad input, else 1 (a failure during the assay)."""
    if not len(failures):
        return 0
    return 2 if (failures["kind"] == "bad input").any() else 1
