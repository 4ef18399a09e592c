"""Many checkpoints in one run (DESIGN "Runs are resumable"): find, load, assay, resume, failures, provenance.

`run_assay` assays every checkpoint under its paths with `assay.assay_checkpoint`. With `out` the
run is resumable: each checkpoint's tables are saved into OUT/parts as it finishes (`rundir.RunParts`)
under a key made of the run's identity (`run_identity`: what decides the numbers) and the
checkpoint's files, so a rerun skips finished checkpoints and never mixes two configs; the checkpoint
in progress keeps its calibration and lesion chunks as work items (`shard.assay_with_items`), so a
rerun resumes it from them. Under torchrun
(a process group of two or more ranks) the ranks share the work item by item (shard.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from resetassay.data import DataChoice, DataSpec, factories_called_once
from resetassay.errors import BadInputError, warn_user
from resetassay.io.checkpoint import Checkpoint, find_checkpoints, import_factory, load_checkpoint, state_file
from resetassay.io.rundir import (
    RunInterrupted,
    RunParts,
    Tables,
    canonical_hash,
    check_figures,
    check_table_format,
    checkpoint_sha256,
    file_sha256,
    write_failures,
)
from resetassay.names import FAILURE_COLUMNS
from resetassay.pipeline.assay import (
    AssayConfig,
    AssayResult,
    CheckpointInputs,
    assay_checkpoint,
    checkpoint_inputs,
    config_with,
    resolve_device,
    versions,
)
from resetassay.pipeline.shard import World, assay_sharded, assay_with_items, current_world
from resetassay.progress import Progress, rich_progress

__all__ = ["run_assay", "CheckpointFailure", "DataReplaced", "run_identity", "source_digest"]


class CheckpointFailure(UserWarning):
    """One checkpoint could not be assayed (a bad file, NaN/Inf logits); the run goes on without it."""


class DataReplaced(UserWarning):
    """A field asked for other data than a checkpoint records (`DataChoice.resolve`): it is assayed on that."""


def source_digest(root: Path = Path(__file__).parent) -> str:
    """sha256 (12 hex digits) of resetassay's own source under `root`, subpackages included: a development
    install changes numbers without changing its version."""
    return canonical_hash({p.relative_to(root).as_posix(): file_sha256(p) for p in sorted(root.rglob("*.py"))})[:12]


def run_identity(config: AssayConfig, inputs: dict) -> dict:
    """What decides a run's numbers besides the checkpoints: the config with the device it resolves to, the
    `inputs` (--model, --model-kwargs, --data), the package versions and a digest of resetassay's source."""
    return {"config": {**asdict(config), "device": resolve_device(config.device).type}, "inputs": inputs,
            "versions": {**versions(), "source": source_digest()}}


def _failure_row(name: str, path: Path, error: Exception) -> dict:
    """One row of failures.csv: bad input (exit code 2) or a failure during the assay (exit code 1)."""
    kind = "bad input" if isinstance(error, BadInputError) else "failure"
    return {"checkpoint": name, "path": str(path), "kind": kind, "error": str(error)}


def _seeds(config: AssayConfig, parts: dict[str, Tables]) -> dict:
    """Every seed behind a run's numbers (run.json): the config's, and each checkpoint's training and data seeds."""
    def seed(row: pd.Series, column: str) -> int | None:
        value = row.get(column)
        return None if value is None or pd.isna(value) else int(value)

    rows = {name: tables["checkpoints"].iloc[0] for name, tables in parts.items() if len(tables["checkpoints"])}
    return {
        "calibration_probe_split": config.seed, "random_utility": config.seed,
        "checkpoints": {name: {"training": seed(row, "train_seed"), "data_split": seed(row, "data_split_seed"),
                               "permutation": seed(row, "data_permutation_seed")} for name, row in rows.items()},
    }


def _distinct_paths(paths: list[Path], say: Callable[[str], None]) -> list[Path]:
    """`paths` without repeats: a path given twice, or inside a directory also given, is assayed once."""
    kept: list[Path] = []
    for path in paths:
        resolved = path.resolve()
        outer = next((k for k in kept if k.resolve() == resolved
                      or (k.is_dir() and resolved.is_relative_to(k.resolve()))), None)
        if outer is None:
            kept.append(path)
        elif outer.resolve() == resolved:
            say(f"{path}: given twice; assayed once")
        else:
            say(f"{path}: already under {outer}; assayed once")
    return kept


def _out_dir(out: str | Path) -> Path:
    """The run directory `--out`, refused when it cannot be one."""
    if not str(out).strip():
        raise BadInputError("`out` '': name a folder for the run, e.g. `out` reports/run", field="out")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"`out` {out}: is a file, not a folder; name a folder for the run", field="out")
    return out


def run_assay(  # noqa: PLR0913 — the public entry point: its keywords are the run's options
    paths: Iterable[str | Path],
    config: AssayConfig | None = None,
    *,
    model: str | None = None,
    model_kwargs: dict | None = None,
    data: DataSpec | DataChoice | None = None,
    state: str | Path | None = None,
    progress: bool | Progress = True,
    out: str | Path | None = None,
    overwrite: bool = False,
    note: Callable[[str], None] | None = None,
    on_failure: Callable[[str], None] | None = None,
    table_format: str = "csv",
    figures: str = "png",
    **overrides: object,
) -> AssayResult:
    """Find, load and assay every checkpoint under `paths` (DESIGN "Python API", "Runs are resumable").

    Args:
        paths: checkpoint directories (searched recursively for manifest.json) or state-dict files; a path
            given twice, or inside another given directory, is assayed once.
        config: the assay settings; `overrides` (any AssayConfig field, e.g. `utilities=["gxd"]`) replace
            its fields, or those of the default `AssayConfig()`.
        model, model_kwargs: `package.module:factory` and its kwargs, to build the model of plain state dicts.
        data: the data of checkpoints that record none; a checkpoint's own record wins except for what `data`
            asks for that differs from it (a `DataSpec` asks for its source, layout, data_dir, task and permutation
            seed; a `DataChoice`, what the command line gave), with a `DataReplaced` warning per checkpoint.
        state: a per-unit state file (`<layer>.age`, `.reference`, `.utility`) for the one checkpoint found, e.g.
            CBP's state of a model trained elsewhere (`io/gnt.py`); a state file beside a state dict
            (`<weights stem>.state.safetensors`, or `state.safetensors` beside one weights file) is read without it
            (`checkpoint.state_file`). `reference` stored, the `tracked` utility and `maturity` then use it.
        progress: True for a rich bar, False for none, or a callback `progress(task, done, total)`.
        out: a run directory: makes the run resumable and writes the tables, run.json and the report there;
            one launch at a time (a second is refused while the first runs).
        overwrite: discard the checkpoints finished earlier in `out` (another config is refused otherwise).
        note: called with one-line notes (finished checkpoints skipped, repeated paths, ...).
        on_failure: called with the one-line error of each checkpoint left out; default: a
            `CheckpointFailure` warning.
        table_format: "csv" or "parquet" (needs `resetassay[parquet]`): how `out` stores the tables; run.json
            records it and every reader reads either.
        figures: how the report in `out` draws its figures: png, svg or none (`report.render`).

    Returns:
        An `AssayResult`: the tables of every finished checkpoint, in the order found; `failures` lists
        the checkpoints left out, `provenance` the inputs, seeds and files' sha256.

    Raises:
        BadInputError: about the command (a path, the device, `model`, a field such as `--layers`, `out`);
            finished checkpoints stay saved in `out`. A checkpoint that fails alone (a bad file, NaN/Inf
            logits) does not raise: it is listed in `failures`.
        RunInterrupted: Ctrl-C, after saving what is finished (with `out`).
        TypeError: a keyword that is neither an argument nor an AssayConfig field (the message names it).

    Example::

        >>> import resetassay as ra
        >>> result = ra.run_assay(["fixtures/relu_mlp"], utilities=["gxd", "activation"], metrics=["l1"],
        ...                       progress=False)
        >>> result
        AssayResult(2 checkpoints, 384 units, 20 summary rows, 0 failed)
    """
    config = config_with(config, overrides, "run_assay")
    say = note or (lambda _text: None)
    fail = on_failure or (lambda text: warn_user(text, CheckpointFailure))
    resolve_device(config.device)  # CUDA asked for but absent: refused before any work
    check_table_format(table_format)  # likewise parquet without pyarrow
    check_figures(figures)  # and --figures jpg
    if model is not None:
        import_factory(model, model_kwargs or {})  # likewise a --model that does not import or would download
    paths = _distinct_paths([Path(p) for p in paths], say)
    found = find_checkpoints(paths, foreign_ok=model is not None)
    if state is not None and len(found) != 1:
        raise BadInputError(f"`state` {state}: a state file for one checkpoint, but {len(found)} were found; put each "
                            f"checkpoint's state beside its weights (<weights stem>.state.safetensors, or "
                            f"state.safetensors in its own folder) instead", field="state")
    states = {name: state_file(path, model is not None, state) for path, name in found}  # a bad layout: refused now
    choice = DataChoice.replacing(data) if isinstance(data, DataSpec) else data or DataChoice()
    inputs = {"model": model, "model_kwargs": model_kwargs, "data": choice.to_dict()}
    if state is not None:  # absent otherwise: the identity of runs without it stays what it was
        inputs["state"] = str(Path(state).resolve())
    identity = run_identity(config, inputs)
    world = current_world()
    if world is not None and out is None:
        raise BadInputError("`out`: a torchrun launch needs a run directory, which its ranks share (on a shared "
                            "filesystem across nodes); pass `out`", field="out")
    store = _open_store(world, out, identity, overwrite)
    opener = _Opener(config, model, model_kwargs, choice, states)
    try:
        with factories_called_once():
            return _assay_all(found, config, identity, inputs, paths, opener, progress, store, say, fail,
                              table_format, figures, world)
    finally:
        if store is not None:
            store.close()


def _open_store(world: World | None, out: str | Path | None, identity: dict, overwrite: bool) -> RunParts | None:
    """The run directory's parts: opened (locked, checked) by this process, or under torchrun by rank 0, whose
    refusal every rank raises."""
    if out is None:
        return None
    if world is None:
        return RunParts(_out_dir(out), identity, overwrite)
    store, refused = None, None
    if world.rank == 0:
        try:
            store = RunParts(_out_dir(out), identity, overwrite)
        except BadInputError as err:
            refused = (str(err), err.field)
    first = world.gather(refused)[0]
    if first is not None:
        raise BadInputError(first[0], field=first[1])
    return store or RunParts(out, identity, owner=False)


class _Opener:
    """Loads one checkpoint and resolves the data it is assayed on (its own record, or what the flags ask)."""

    def __init__(self, config: AssayConfig, model: str | None, model_kwargs: dict | None, data: DataChoice,
                 states: dict[str, Path | None] | None = None):
        self.config, self.model, self.model_kwargs, self.data = config, model, model_kwargs, data
        self.states = states or {}  # each checkpoint's per-unit state file, by name (`checkpoint.state_file`)

    def load(self, path: Path, name: str, first: bool = True) -> tuple[Checkpoint, DataSpec | None]:
        """The checkpoint and its data; a `DataReplaced` warning when a field replaces its record (`first` time)."""
        ckpt = load_checkpoint(path, name, self.model, self.model_kwargs, self.states.get(name))
        spec, replaced = self.data.resolve(ckpt.info.data)
        if replaced and first:
            warn_user(f"{name}: {replaced}", DataReplaced)
        return ckpt, spec

    def __call__(self, path: Path, name: str, first: bool) -> CheckpointInputs:
        """The checkpoint with its data split (shard.py's `Open`)."""
        ckpt, spec = self.load(path, name, first)
        return checkpoint_inputs(ckpt, self.config, spec)


def _assay_all(found: list[tuple[Path, str]], config: AssayConfig, identity: dict, inputs: dict, paths: list[Path],  # noqa: PLR0913 — the run's state handed down from `run_assay`
               opener: _Opener, progress: bool | Progress, store: RunParts | None, say: Callable[[str], None],
               fail: Callable[[str], None], table_format: str, figures: str, world: World | None) -> AssayResult:
    """The body of `run_assay`, with the run directory (if any) open; the progress bar stays while the report is
    drawn."""
    lead = world is None or world.rank == 0  # the process that talks, merges and writes the report
    say = say if lead else (lambda _text: None)
    out = store.out if store else None
    sha256 = {name: checkpoint_sha256(path, opener.model is not None, opener.states.get(name)) for path, name in found}
    keys = {name: store.key(name, path, sha256[name]) for path, name in found} if store else {}
    parts = {name: tables for name, key in keys.items() if (tables := store.load(key)) is not None}
    if parts:
        say(f"skipping {len(parts)} of {len(found)} checkpoints finished earlier in {out} "
            "(`overwrite` assays them again)")
    failures = []
    timings: dict[str, dict[str, float]] = {}
    try:
        with rich_progress(progress is True and lead) as bar:
            report = bar if bar is not None else (progress if callable(progress) and lead else None)
            if world is not None:
                done, failures, timings = assay_sharded(world, found, keys, store, opener, report, _failure_row)
                parts.update(done)
                for row in failures if lead else []:
                    fail(row["error"])
                if not lead:  # rank 0 has written every finished part
                    parts = {name: tables for name, key in keys.items() if (tables := store.load(key)) is not None}
            else:
                _assay_each(found, parts, keys, sha256, config, opener, report, store, failures, timings, fail)
            result = AssayResult.concat([parts[name] for _, name in found if name in parts], config)
            result.failures = pd.DataFrame(failures, columns=FAILURE_COLUMNS)
            result.timings = timings
            result.provenance = {
                "inputs": {"paths": [str(p) for p in paths], **inputs}, "config_hash": canonical_hash(identity),
                "versions": identity["versions"], "seeds": _seeds(config, parts),
                "checkpoints": [{"checkpoint": name, "path": str(path), "sha256": sha256[name],
                                 "finished": name in parts} for path, name in found],
            }
            if store is not None and lead:
                others = store.count() - sum(store.has(key) for key in keys.values())
                if others > 0:
                    say(f"{out} also holds {others} checkpoint{'s' if others != 1 else ''} finished by earlier runs "
                        f"and not among the given paths; the tables cover only the {len(found)} given")
                if parts:
                    result.save(out, table_format, figures, report)
                else:
                    write_failures(out, result.failures)
    except KeyboardInterrupt:
        if store is None:
            raise
        saved = sum(store.has(key) for key in keys.values())
        raise RunInterrupted(f"interrupted: {saved} of {len(found)} checkpoints saved in {out}; "
                             "rerun the same command to resume") from None
    return result


def _assay_each(found: list[tuple[Path, str]], parts: dict[str, Tables], keys: dict[str, str],  # noqa: PLR0913 — the run's state handed down from `run_assay`
                sha256: dict[str, dict[str, str]], config: AssayConfig, opener: _Opener, report: Progress | None,
                store: RunParts | None, failures: list[dict], timings: dict[str, dict[str, float]],
                fail: Callable[[str], None]) -> None:
    """Assay the checkpoints not in `parts` one after another in this process, adding each to `parts` (and to
    `store`) as it finishes, or to `failures`."""
    out = store.out if store else None
    finished = len(parts)
    if report:
        report("checkpoints", finished, len(found))
    for path, name in (item for item in found if item[1] not in parts):
        try:
            start = time.perf_counter()
            ckpt, spec = opener.load(path, name)
            sha256[name] = ckpt.sha256  # the bytes actually assayed, which a replaced file may not be
            loaded = round(time.perf_counter() - start, 4)
            if store is None:
                result = assay_checkpoint(ckpt, config, spec, report)
            else:  # its calibration and lesion chunks kept as they finish: a stopped run resumes mid-checkpoint
                key = store.key(name, path, sha256[name])
                result = assay_with_items(checkpoint_inputs(ckpt, config, spec), store, key, report)
            timings[name] = {"load": loaded, **result.timings.get(name, {})}
        except (BadInputError, FloatingPointError) as err:
            if isinstance(err, BadInputError) and err.field:
                kept = f"; the {len(parts)} finished are kept in {out}" if store and parts else ""
                raise BadInputError(f"{err} (checkpoint {name}{kept})", field=err.field) from err
            failures.append(_failure_row(name, path, err))
            fail(str(err))
        else:
            if store:
                keys[name] = key
                parts[name] = store.save(key, result.tables())
                store.drop_items(key)
            else:
                parts[name] = result.tables()
            finished += 1  # a failed checkpoint is not counted done: progress never reads 100% over a failure
        if report:
            report("checkpoints", finished, len(found))
