"""The assay of one model or many checkpoints: references, utilities, lesions, tables.

`assay_model` works on an in-memory model and data; `run_assay` finds, loads and assays
checkpoints. Both return an `AssayResult` holding the UnitTable and SummaryTable of DESIGN.md.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from resetassay.checkpoint import Checkpoint, find_checkpoints, import_factory, load_checkpoint
from resetassay.data import AssayData, DataSpec, split_calibration_probe, task_arrays
from resetassay.engine import set_shocks, unit_shocks_fast
from resetassay.errors import BadInputError
from resetassay.lesion import check_metrics, probe_logits, unit_shocks
from resetassay.metrics import checkpoint_summary, selections, utility_column
from resetassay.reference import unit_references
from resetassay.report import TABLES, render, write_run
from resetassay.runstore import (
    FAILURE_COLUMNS,
    CheckpointFailure,
    RunInterrupted,
    RunStore,
    canonical_hash,
    checkpoint_sha256,
    failure_row,
    source_digest,
    write_failures,
)
from resetassay.tracing import tap_unit_layers
from resetassay.units import UnitLayer, unit_layers
from resetassay.utilities import (
    ORACLE,
    calibration_stats,
    check_utilities,
    needed_ingredients,
    unit_scores,
    utility_names,
)

ENGINES = ("fast", "plain")


@dataclass
class AssayConfig:
    """Everything that decides an assay's numbers (recorded in run.json)."""

    utilities: list[str] = field(default_factory=utility_names)
    metrics: list[str] = field(default_factory=lambda: ["l1", "kl"])
    layers: list[str] | None = None
    reference: str = "calibration-mean"
    calib_size: int | None = None
    probe_size: int | None = None
    seed: int = 0
    q: float = 0.05
    maturity: int | None = None
    batch_size: int = 512
    device: str = "auto"
    joint: bool = True
    engine: str = "fast"
    max_memory: int | None = None

    def __post_init__(self) -> None:
        check_utilities(self.utilities)
        check_metrics(self.metrics)
        if self.engine not in ENGINES:
            raise BadInputError(f"--engine {self.engine!r}: choose from {', '.join(ENGINES)}")
        if not 0 < self.q <= 1:
            raise BadInputError(f"--q {self.q}: must be in (0, 1]")


@dataclass
class AssayResult:
    """UnitTable, SummaryTable, not-applicable notes and checkpoint info of one run; the checkpoints that
    failed (`failures`: checkpoint, path, kind, error) and what else run.json records (`provenance`)."""

    units: pd.DataFrame
    summary: pd.DataFrame
    notes: pd.DataFrame
    checkpoints: pd.DataFrame
    config: AssayConfig
    failures: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FAILURE_COLUMNS))
    provenance: dict = field(default_factory=dict)

    def tables(self) -> dict[str, pd.DataFrame]:
        """The tables a run directory holds, by name (report.TABLES)."""
        return {name: getattr(self, name) for name in TABLES}

    def save(self, out: str | Path) -> Path:
        """Write the tables, run.json and failures.csv (if any failed) into `out`, then render report.md and
        figures."""
        info = {**run_info(self.config), **self.provenance, "failures": self.failures.to_dict("records")}
        write_run(out, self.tables(), info)
        write_failures(out, self.failures)
        return render(out)

    @staticmethod
    def concat(parts: list[dict[str, pd.DataFrame]], config: AssayConfig) -> AssayResult:
        """One result from the tables of several checkpoints, in their order."""
        def cat(name: str) -> pd.DataFrame:
            frames = [part[name] for part in parts]
            return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        return AssayResult(**{name: cat(name) for name in TABLES}, config=config)


def run_info(config: AssayConfig) -> dict:
    """What run.json records: the config, the package versions and the device."""
    import platform

    import captum

    from resetassay import __version__

    return {
        "config": asdict(config),
        "device": str(resolve_device(config.device)),
        "versions": {"resetassay": __version__, "torch": torch.__version__,
                     "captum": captum.__version__, "python": platform.python_version()},
    }


def run_identity(config: AssayConfig, inputs: dict) -> dict:
    """What decides a run's numbers besides the checkpoints (DESIGN "Runs are resumable"): the config with the
    device it resolves to, the `inputs` (--model, --model-kwargs, --data), the package versions and a digest of
    resetassay's source."""
    return {"config": {**asdict(config), "device": resolve_device(config.device).type}, "inputs": inputs,
            "versions": {**run_info(config)["versions"], "source": source_digest()}}


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInputError(f"--device {name}: CUDA is not available here; use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise BadInputError(f"--device {name!r}: choose auto, cpu or cuda")
    return torch.device(name)


def _loader_tensors(data: object) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) from a tuple of tensors or an iterable of (x, y) batches (a DataLoader)."""
    if isinstance(data, tuple | list) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return data[0], data[1]
    xs, ys = zip(*[(b[0], b[1]) for b in data], strict=True)
    return torch.cat(xs), torch.cat(ys)


def attach_state(layers: list[UnitLayer], state: dict[str, torch.Tensor]) -> None:
    """Give each layer its stored ages and reference from a checkpoint's state (SPEC S1, S2)."""
    for layer in layers:
        layer.ages = state.get(f"{layer.name}.age")
        layer.stored_reference = state.get(f"{layer.name}.reference")


def _unit_table(
    name: str, layers: list[UnitLayer], refs: dict, scores: dict, shocks: dict, maturity: int
) -> pd.DataFrame:
    frames = []
    for layer in layers:
        n = layer.n_units
        cols = {
            "checkpoint": [name] * n,
            "layer": [layer.name] * n,
            "unit": list(range(n)),
            "mature": layer.mature(maturity).tolist(),
            "age": layer.ages.tolist() if layer.ages is not None else [math.nan] * n,
            "reference": refs[layer.name].double().cpu().tolist(),
        }
        for utility, per_layer in scores.items():
            values = per_layer.get(layer.name)
            cols[utility] = values.double().tolist() if values is not None else [math.nan] * n
        for metric, per_layer in shocks.items():
            cols[f"shock_{metric}"] = per_layer[layer.name].tolist()
        frames.append(pd.DataFrame(cols))
    return pd.concat(frames, ignore_index=True)


def assay_model(
    model: nn.Module,
    calib: object,
    probe: object,
    layers: list[str] | None = None,
    config: AssayConfig | None = None,
    name: str = "model",
    state: dict[str, torch.Tensor] | None = None,
    progress: Progress | None = None,
) -> AssayResult:
    """Assay an in-memory model on calibration and probe data ((x, y) tensors or loaders)."""
    config = config or AssayConfig()
    if layers is not None:
        config = replace(config, layers=layers)
    device = resolve_device(config.device)
    calib_x, calib_y = _loader_tensors(calib)
    probe_x, _ = _loader_tensors(probe)
    model = tap_unit_layers(model.to(device).eval(), calib_x[:2].to(device))
    found = unit_layers(model, calib_x[:2].to(device), config.layers)
    attach_state(found, state or {})
    maturity = config.maturity if config.maturity is not None else 0

    base = probe_logits(model, probe_x, config.batch_size)
    if not torch.isfinite(base).all():
        raise FloatingPointError(f"{name}: the model gives NaN/Inf logits on the probe set; check its weights "
                                 "(a diverged training run?)")
    refs = unit_references(model, found, calib_x, config.reference, config.batch_size)
    stats = calibration_stats(model, found, calib_x, calib_y, refs,
                              needed_ingredients(config.utilities), config.batch_size, config.seed)
    scores, na = unit_scores(config.utilities, found, stats)

    task = None
    if progress is not None:
        task = progress.add_task(f"lesions {name}", total=sum(layer.n_units for layer in found))
    advance = (lambda k: progress.advance(task, k)) if task is not None else None
    if config.engine == "fast":
        shocks = unit_shocks_fast(model, found, refs, probe_x, config.metrics, config.max_memory, advance=advance,
                                  base=base)
    else:
        shocks = unit_shocks(model, found, refs, probe_x, config.metrics, config.batch_size, advance=advance)
    if task is not None:
        progress.remove_task(task)

    units = _unit_table(name, found, refs, scores, shocks, maturity)
    joint = _joint_shocks(model, found, refs, units, probe_x, base, config) if config.joint else {}
    notes = pd.DataFrame(
        [{"checkpoint": name, "utility": u, "layer": lay, "reason": why} for (u, lay), why in na.items()],
        columns=["checkpoint", "utility", "layer", "reason"],
    )
    summary = checkpoint_summary(units, config.utilities, config.metrics, config.q, joint)
    return AssayResult(units, summary, notes, pd.DataFrame(), config)


def _joint_shocks(
    model: nn.Module, layers: list[UnitLayer], refs: dict, units: pd.DataFrame,
    probe_x: torch.Tensor, base: torch.Tensor, config: AssayConfig,
) -> dict[tuple[str, str], float]:
    """Joint Shock@q (SPEC S5): clamp each utility's whole selection at once, all in one batch."""
    keys, lesions = [], []
    for utility in config.utilities:
        for metric in config.metrics if utility == ORACLE else config.metrics[:1]:
            column = utility_column(utility, metric)
            chosen = selections(units, column, config.q) if column in units else {}
            if chosen:
                keys.append((utility, metric))
                lesions.append({name: torch.as_tensor(v) for name, v in chosen.items()})
    if not lesions:
        return {}
    values = set_shocks(model, layers, refs, lesions, probe_x, config.metrics, config.max_memory, base)
    out: dict[tuple[str, str], float] = {}
    for i, (utility, metric) in enumerate(keys):
        for m in [metric] if utility == ORACLE else config.metrics:
            out[(utility, m)] = float(values[m][i])
    return out


def assay_checkpoint(
    ckpt: Checkpoint,
    config: AssayConfig,
    data: DataSpec | None = None,
    progress: Progress | None = None,
) -> AssayResult:
    """Assay one loaded checkpoint on the held-out split of the task it was trained on last."""
    spec = data or ckpt.info.data
    if spec is None:
        raise BadInputError(f"{ckpt.info.path}: no data recorded for this checkpoint; pass --data")
    x, y = task_arrays(spec, "holdout")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split: AssayData = split_calibration_probe(
            x, y, config.calib_size, config.probe_size, config.seed, source=f"{spec.source} task {spec.task}"
        )
    for w in caught:
        warnings.warn(w.message, stacklevel=2)
    if config.maturity is None and "maturity" in ckpt.info.meta:
        config = replace(config, maturity=int(ckpt.info.meta["maturity"]))
    result = assay_model(ckpt.model, (split.calib_x, split.calib_y), (split.probe_x, split.probe_y),
                         config=config, name=ckpt.info.name, state=ckpt.state, progress=progress)
    info = {
        "checkpoint": ckpt.info.name, "path": str(ckpt.info.path), "family": ckpt.info.family,
        "factory": ckpt.info.factory, "step": _step_value(ckpt.info.step), "train_seed": ckpt.info.meta.get("seed"),
        **{f"data_{k}": v for k, v in spec.to_dict().items()},
        **{f"split_{k}": v for k, v in split.provenance.items()},
    }
    result.checkpoints = pd.DataFrame([info])
    return result


def checkpoint_layers(
    path: str | Path,
    patterns: list[str] | None = None,
    model: str | None = None,
    model_kwargs: dict | None = None,
    data: DataSpec | None = None,
) -> list[UnitLayer]:
    """The unit layers of one checkpoint, resolved on two of its held-out examples."""
    ckpt = load_checkpoint(path, model=model, model_kwargs=model_kwargs)
    spec = data or ckpt.info.data
    if spec is None:
        raise BadInputError(f"{path}: no data recorded for this checkpoint; pass --data")
    x, _ = task_arrays(spec, "holdout")
    return unit_layers(tap_unit_layers(ckpt.model, x[:2]), x[:2], patterns)


def _step_value(step: dict) -> float:
    """One number for "how far along training": the task, else the epoch, else the step."""
    for key in ("task", "epoch", "step"):
        if key in step:
            return float(step[key])
    return math.nan


def _names_a_flag(error: Exception) -> bool:
    """A bad-input message that starts with a flag (`--layers ...`, `--calib-size ...`) is about the command,
    not about one checkpoint: it would fail every checkpoint, so the run stops."""
    return isinstance(error, BadInputError) and str(error).startswith("--")


def _seeds(config: AssayConfig, parts: dict[str, dict[str, pd.DataFrame]]) -> dict:
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


def run_assay(
    paths: Iterable[str | Path],
    config: AssayConfig | None = None,
    *,
    model: str | None = None,
    model_kwargs: dict | None = None,
    data: DataSpec | None = None,
    progress: bool = True,
    out: str | Path | None = None,
    overwrite: bool = False,
    note: Callable[[str], None] | None = None,
    **overrides: object,
) -> AssayResult:
    """Find, load and assay every checkpoint under `paths` (DESIGN "Python API", "Runs are resumable").

    A checkpoint that fails (a bad file, NaN/Inf logits) is left out with a `CheckpointFailure` warning and
    listed in `result.failures`; the others go on. A bad flag stops the run: the device, `model` and `paths`
    are checked before any work, and an error naming a flag (`--layers`, `--calib-size`, ...) stops it where
    it occurs. With `out` the run is resumable: each checkpoint is saved into `out/parts/` as it finishes, a
    rerun skips the finished ones (`note` says so; a directory assayed with another config is refused unless
    `overwrite`), Ctrl-C raises `RunInterrupted` keeping what is finished, and the tables, run.json,
    failures.csv and report are written into `out` at the end.
    """
    config = config or AssayConfig(**overrides)
    paths = list(paths)
    resolve_device(config.device)  # CUDA asked for but absent: refused before any work
    if model is not None:
        import_factory(model)  # likewise a --model that does not import
    found = find_checkpoints(paths, foreign_ok=model is not None)
    inputs = {"model": model, "model_kwargs": model_kwargs, "data": data.to_dict() if data else None}
    identity = run_identity(config, inputs)
    store = RunStore(out, identity, overwrite) if out is not None else None
    sha256 = {name: checkpoint_sha256(path, model is not None) for path, name in found}
    keys = {name: store.key(name, path, sha256[name]) for path, name in found} if store else {}
    parts = {name: tables for name, key in keys.items() if (tables := store.load(key)) is not None}
    if parts and note is not None:
        note(f"skipping {len(parts)} of {len(found)} checkpoints finished earlier in {out} "
             "(--overwrite assays them again)")
    failures = []
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    try:
        with Progress(*columns, disable=not progress, transient=True) as bar:
            overall = bar.add_task("checkpoints", total=len(found), completed=len(parts))
            for path, name in (item for item in found if item[1] not in parts):
                try:
                    result = assay_checkpoint(load_checkpoint(path, name, model, model_kwargs), config, data, bar)
                except (BadInputError, FloatingPointError) as err:
                    if _names_a_flag(err):
                        kept = f"; the {len(parts)} finished are kept in {out}" if store and parts else ""
                        raise BadInputError(f"{err} (checkpoint {name}{kept})") from err
                    failures.append(failure_row(name, path, err))
                    warnings.warn(str(err), CheckpointFailure, stacklevel=2)
                else:
                    parts[name] = store.save(keys[name], result.tables()) if store else result.tables()
                bar.advance(overall)
        result = AssayResult.concat([parts[name] for _, name in found if name in parts], config)
        result.failures = pd.DataFrame(failures, columns=FAILURE_COLUMNS)
        result.provenance = {
            "inputs": {"paths": [str(p) for p in paths], **inputs}, "config_hash": canonical_hash(identity),
            "versions": identity["versions"], "seeds": _seeds(config, parts),
            "checkpoints": [{"checkpoint": name, "path": str(path), "sha256": sha256[name],
                             "finished": name in parts} for path, name in found],
        }
        if store is not None and parts:
            result.save(out)
        elif store is not None:
            write_failures(out, result.failures)
    except KeyboardInterrupt:
        if store is None:
            raise
        saved = sum(store.has(key) for key in keys.values())
        raise RunInterrupted(f"interrupted: {saved} of {len(found)} checkpoints saved in {out}; "
                             "rerun the same command to resume") from None
    return result
