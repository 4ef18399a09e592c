"""Log a run directory to an experiment tracker, on this machine: MLflow, Weights & Biases or TensorBoard.

    from resetassay.report.tracking import log_run
    log_run("reports/run", "mlflow")      # or "wandb", "tensorboard"; `resetassay report RUN --log mlflow`

What is logged, read from the run directory's files alone (no model is run):
- config: run.json's `config`, its `config_hash` and `table_format` (MLflow params and TensorBoard
  text: strings, other values as JSON; W&B config: the values);
- metrics: for every checkpoint, utility and shock metric of summary.csv, the pooled statistics
  spearman, shock_at_q and gap_ratio (Shock@q / oracle Shock@q) on the scopes ALL and common, named
  `<checkpoint>/<scope>/<metric>/<utility>/<stat>`, e.g. `relu_mlp/task2/common/l1/gxd/spearman`
  (characters a tracker refuses become `_`); one value each, at step 0;
- files: report.md, report.html, run.json, the summary table, aggregate.csv and sweep.csv, and
  figures/ (TensorBoard: the figures as images, report.md and the config as text).

Where, by default under the run directory, so nothing leaves the machine:
- mlflow: a SQLite store `RUN/mlflow/mlflow.db` with artifacts in `RUN/mlflow/artifacts` (MLflow 3
  refuses new plain-file stores), experiment `resetassay`, one MLflow run per call named after the
  run directory; `MLFLOW_TRACKING_URI` (or `tracking_uri=`) names another store instead (an
  experiment resetassay creates in a SQLite store keeps its artifacts in `artifacts/` beside the
  database). View it with `mlflow ui --backend-store-uri sqlite:///RUN/mlflow/mlflow.db`. MLflow's
  telemetry is off.
- wandb: always offline (`RUN/wandb/offline-run-*`), error reporting off; upload later, if wanted,
  with `wandb sync RUN/wandb/offline-run-*`.
- tensorboard: an event file in `RUN/tensorboard` (`tensorboard --logdir RUN/tensorboard`); logging
  again replaces the event files resetassay wrote there.

Each tracker is imported only when used; one that is not installed is a one-line BadInputError
(flag `--log`) with the pip command. Nothing here imports torch but the tensorboard backend
(`torch.utils.tensorboard`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from resetassay.errors import BadInputError
from resetassay.io.rundir import read_run, read_run_info, table_path
from resetassay.names import POOLED_SCOPES

BACKENDS = ("mlflow", "wandb", "tensorboard")
LOGGED_STATS = ("spearman", "shock_at_q", "gap_ratio")
OPTIONS = {"mlflow": ("tracking_uri", "experiment", "run_name"), "wandb": ("project", "run_name"),
           "tensorboard": ("log_dir",)}
REPORT_FILES = ("report.md", "report.html", "run.json", "aggregate.csv", "sweep.csv")
FIGURES = ("*.png", "*.svg")
EXPERIMENT = "resetassay"  # the MLflow experiment and W&B project, unless given
TB_EVENTS = "events.out.tfevents.*"
UNSAFE = re.compile(r"[^\w.\- /]")  # what MLflow allows in a metric or param name (colons aside)


@dataclass
class Logged:
    """Where one `log_run` call put a run: the tracker, its store or folder, the tracker's run id."""

    backend: str
    location: str
    run_id: str = ""
    metrics: int = 0
    files: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        run = f" run {self.run_id}" if self.run_id else ""
        return f"logged to {self.backend}{run}: {self.metrics} metrics, {len(self.files)} files in {self.location}"


def backend_names(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """The trackers of `--log` (comma-separated, or a list), each importable: an unknown name or a tracker that
    is not installed is a one-line BadInputError, raised before any work."""
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else list(value or [])
    names = [n for n in names if n]
    if len(set(names)) < len(names):
        raise BadInputError(f"--log {','.join(names)}: name each tracker once", flag="--log")
    for name in names:
        _import(name)
    return names


def _import(backend: str) -> object:
    """The tracker's module (mlflow, wandb, torch.utils.tensorboard), imported with its telemetry off."""
    if backend not in BACKENDS:
        raise BadInputError(f"--log {backend!r}: choose {', '.join(BACKENDS[:-1])} or {BACKENDS[-1]}", flag="--log")
    package = backend  # each tracker's pip package is also its module's name, and the extra's
    try:
        with _env(MLFLOW_DISABLE_TELEMETRY="true", WANDB_ERROR_REPORTING="false"):
            module = __import__(package)
            if backend == "tensorboard":  # the writer is torch's; it needs the tensorboard package beside torch
                from torch.utils import tensorboard as module
    except ImportError as err:
        missing = isinstance(err, ModuleNotFoundError) and err.name == package or sys.modules.get(package, 0) is None
        why = "is not installed" if missing else f"does not import ({' '.join(str(err).split())})"
        raise BadInputError(f"--log {backend}: {package} {why}; pip install 'resetassay[{backend}]'",
                            flag="--log") from err
    return module


@contextmanager
def _env(**values: str) -> Iterator[None]:
    """Set environment variables for the block, then restore them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """Hold the INFO lines of a tracker's loggers (MLflow's database migration) for the block."""
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def metric_name(*parts: object) -> str:
    """A metric name trackers accept: the parts joined by `/`, characters outside [A-Za-z0-9_.- /] as `_`,
    and no empty, `.` or `..` segment."""
    segments = [UNSAFE.sub("_", s).strip() for p in parts for s in str(p).split("/")]
    return "/".join(s if s not in ("", ".", "..") else s.replace(".", "_") or "_" for s in segments)


def run_metrics(run_dir: str | Path) -> dict[str, float]:
    """The pooled statistics a tracker gets (module docstring), by metric name, in summary order; NaN kept."""
    summary = read_run(run_dir, ("summary",))["summary"]
    needed = ["checkpoint", "utility", "metric", "scope"]
    missing = [c for c in needed if c not in summary]
    if missing:
        raise BadInputError(f"{table_path(run_dir, 'summary')}: no column {', '.join(missing)}; is it the summary "
                            "table of a `resetassay run`?")
    pooled = summary[summary["scope"].isin(POOLED_SCOPES)]
    return {metric_name(r["checkpoint"], r["scope"], r["metric"], r["utility"], stat): float(r[stat])
            for _, r in pooled.iterrows() for stat in LOGGED_STATS if stat in pooled}


def run_config(info: dict) -> dict:
    """What a tracker records as the run's config: run.json's `config`, `config_hash` and `table_format`."""
    config = info.get("config", {}) if isinstance(info.get("config"), dict) else {}
    return {**config, **{k: info[k] for k in ("config_hash", "table_format") if k in info}}


def run_params(info: dict) -> dict[str, str]:
    """`run_config` as MLflow params (strings): strings as they are, other values as JSON."""
    return {metric_name(k): v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
            for k, v in run_config(info).items()}


def run_files(run_dir: str | Path) -> list[Path]:
    """The report files, run.json, the summary table and the figures present in a run directory."""
    run_dir = Path(run_dir)
    found = [run_dir / name for name in REPORT_FILES] + [table_path(run_dir, "summary")]
    found += sorted(p for pattern in FIGURES for p in (run_dir / "figures").glob(pattern))
    return [p for p in dict.fromkeys(found) if p.is_file()]


def log_run(run_dir: str | Path, backend: str, **options: str) -> Logged:
    """Log a run directory's config, pooled statistics, report and figures to `backend` (mlflow, wandb,
    tensorboard), in a store on this machine (module docstring).

    Options: mlflow `tracking_uri` (default $MLFLOW_TRACKING_URI, else sqlite:///RUN/mlflow/mlflow.db),
    `experiment` (default resetassay), `run_name` (default the run directory's name); wandb `project`,
    `run_name`; tensorboard `log_dir` (default RUN/tensorboard).
    """
    run_dir = Path(run_dir)
    module = _import(backend)
    unknown = sorted(set(options) - set(OPTIONS[backend]))
    if unknown:
        raise BadInputError(f"log_run: {backend} takes no option {', '.join(unknown)}; it takes "
                            f"{', '.join(OPTIONS[backend])}")
    if not run_dir.is_dir():
        raise BadInputError(f"{run_dir}: no such run directory; is it the --out of a `resetassay run`?")
    metrics, info, files = run_metrics(run_dir), read_run_info(run_dir), run_files(run_dir)
    log = {"mlflow": _mlflow, "wandb": _wandb, "tensorboard": _tensorboard}[backend]
    try:
        return log(module, run_dir, metrics, info, files, **options)
    except BadInputError:
        raise
    except Exception as err:  # a store that cannot be written or reached: one line, not a tracker's traceback
        why = " ".join(f"{type(err).__name__}: {err}".split())
        raise BadInputError(f"--log {backend}: logging {run_dir} failed ({why[:500]})", flag="--log") from err


def _relative(path: Path, run_dir: Path) -> str:
    return path.relative_to(run_dir).as_posix()


def _mlflow(mlflow: object, run_dir: Path, metrics: dict[str, float], info: dict, files: list[Path],
            tracking_uri: str | None = None, experiment: str = EXPERIMENT, run_name: str | None = None) -> Logged:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    default = f"sqlite:///{run_dir.resolve() / 'mlflow' / 'mlflow.db'}"
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default
    database = Path(uri.removeprefix("sqlite:///")).resolve() if uri.startswith("sqlite:///") else None
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    with _env(MLFLOW_DISABLE_TELEMETRY="true"), _quiet("mlflow", "alembic"):
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        # A local SQLite store keeps the artifacts of the experiments resetassay creates beside its database
        # (MLflow's default would be ./mlruns in the working folder); a server decides for itself.
        experiment_id = found.experiment_id if found else client.create_experiment(
            experiment, artifact_location=(database.parent / "artifacts").as_uri() if database else None)
        tags = {"resetassay.run_dir": str(run_dir.resolve())}
        run = client.create_run(experiment_id, run_name=run_name or run_dir.resolve().name, tags=tags)
        run_id = run.info.run_id
        try:
            now = int(time.time() * 1000)
            items = [Param(k, v[:6000]) for k, v in run_params(info).items()]
            for start in range(0, len(items), 100):
                client.log_batch(run_id, params=items[start:start + 100])
            entries = [Metric(k, v, now, 0) for k, v in metrics.items()]
            for start in range(0, len(entries), 1000):
                client.log_batch(run_id, metrics=entries[start:start + 1000])
            for path in files:
                folder = path.parent.relative_to(run_dir).as_posix()
                client.log_artifact(run_id, str(path), None if folder == "." else folder)
        except BaseException:
            client.set_terminated(run_id, "FAILED")
            raise
        client.set_terminated(run_id, "FINISHED")
    return Logged("mlflow", uri, run_id, len(metrics), [_relative(p, run_dir) for p in files])


def _wandb(wandb: object, run_dir: Path, metrics: dict[str, float], info: dict, files: list[Path],
           project: str = EXPERIMENT, run_name: str | None = None) -> Logged:
    settings = wandb.Settings(mode="offline", console="off", disable_git=True, save_code=False, silent=True,
                              x_disable_stats=True, x_disable_machine_info=True)
    with _env(WANDB_MODE="offline", WANDB_ERROR_REPORTING="false", WANDB_SILENT="true"):
        run = wandb.init(project=project, name=run_name or run_dir.resolve().name, dir=str(run_dir.resolve()),
                         config=run_config(info), settings=settings, reinit="create_new")
        try:
            images = {metric_name("figures", p.stem): wandb.Image(str(p)) for p in files if p.suffix == ".png"}
            run.log({**metrics, **images}, step=0)
            saved = Path(run.dir)
            for path in files:
                copy = saved / _relative(path, run_dir)
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, copy)
                run.save(str(copy), base_path=str(saved), policy="now")
        except BaseException:
            run.finish(exit_code=1)
            raise
        run.finish()
    return Logged("wandb", str(saved.parent), run.id, len(metrics), [_relative(p, run_dir) for p in files])


def _tensorboard(tensorboard: object, run_dir: Path, metrics: dict[str, float], info: dict, files: list[Path],
                 log_dir: str | Path | None = None) -> Logged:
    import matplotlib.image

    folder = Path(log_dir) if log_dir is not None else run_dir / "tensorboard"
    if log_dir is None and folder.is_dir():  # ours: a second log replaces the first
        for old in folder.glob(TB_EVENTS):
            if old.is_file() and not old.is_symlink():
                old.unlink()
    writer = tensorboard.SummaryWriter(log_dir=str(folder))
    try:
        for name, value in metrics.items():
            writer.add_scalar(name, value, 0)
        params = run_params(info)
        table = ["| param | value |", "|---|---|", *(f"| {k} | {v.replace('|', '/')} |" for k, v in params.items())]
        writer.add_text("config", "\n".join(table), 0)
        for path in files:
            if path.suffix == ".png":
                image = matplotlib.image.imread(path)
                if image.ndim == 3 and image.shape[2] == 4:  # RGBA over white
                    image = image[..., :3] * image[..., 3:] + (1 - image[..., 3:])
                writer.add_image(metric_name("figures", path.stem), image, 0, dataformats="HWC")
            elif path.suffix == ".md":
                writer.add_text(metric_name(path.stem), path.read_text(encoding="utf-8"), 0)
        writer.flush()
    finally:
        writer.close()
    logged = [_relative(p, run_dir) for p in files if p.suffix in (".png", ".md")]
    return Logged("tensorboard", str(folder), "", len(metrics), logged)
