"""Log a run directory to an experiment tracker, on this machine: MLflow, Weights & Biases or TensorBoard.

    from resetassay.report.tracking import log_run
    log_run("reports/run", "mlflow")      # or "wandb", "tensorboard"; `resetassay report RUN --log mlflow`

What is logged, read from the run directory's files alone (no model is run), names as `metric_name` makes
them (characters a tracker refuses become `_`, so `mlp-relu@digits` is `mlp-relu_digits`):
- series, one per model family and statistic, whose x axis is the training step (checkpoints.csv's `step`):
  `<family>/<scope>/<metric>/<utility>/<stat>` for the pooled S5 statistics spearman, shock_at_q and
  gap_ratio on the scopes ALL and common (summary.csv), and `<family>/<kind>/<metric>/<utility>/<stat>` for
  the regret and layer-balanced ρ of each unit kind's common scope (neurons, channels, heads; SPEC S5b,
  `checkpoint_verdict_stats` at the run's q). A point per training step: the mean over the family's
  checkpoints at that step (several seeds of one step are one point; NaN values left out, NaN where none
  has one); a checkpoint without a step is at step 0. No name holds a checkpoint;
- the verdict (verdict.csv, SPEC S5b, as the report's last render wrote it, at its headline q: the run's q
  unless `report --q` chose another), one value each: `verdict/<family>/<kind>/<metric>/<utility>/<stat>`
  for regret and balanced_rho, and four tags per family, kind and metric,
  `verdict/<family>/<kind>/<metric>/<mark>` for best, indistinguishable, cheapest and fails, each the
  utilities so marked, comma-separated in verdict.csv's order ("" for none). Without verdict.csv (no
  report drawn) there are none;
- config: run.json's `config`, its `config_hash` and `table_format`;
- files: report.md, report.html, run.json, the summary table, aggregate.csv and sweep.csv, and figures/.

What each tracker shows:
- mlflow: the series as metrics logged at `step=` their training steps (the metric's chart and history),
  the verdict values at step 0, the config as params (strings as they are, other values as JSON), the
  verdict's marks as tags, the files as artifacts.
- tensorboard: the series as scalars at `global_step` = training step, the verdict values as scalars at step
  0; the config as HParams (numbers as numbers, the rest as MLflow's params) with the verdict values as the
  HParams metrics, written into the same event file; the marks and the config as text tables (`verdict`,
  `config`), report.md as text, the figures as images.
- wandb: the series in the history with their own x axis `training_step` (`define_metric`, one history row
  per training step), the figures in a row of their own, the verdict values and marks in the run summary
  (the runs table's columns; W&B run tags are short labels), the config as W&B config, the files saved
  into the run.

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
(the `log` field, flag `--log`) with the pip command. Nothing here imports torch but the tensorboard backend
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

import pandas as pd

from resetassay.errors import BadInputError
from resetassay.io.rundir import read_run, read_run_info, read_table, run_q, table_path
from resetassay.names import POOLED_SCOPES
from resetassay.stats.summary import checkpoint_stats
from resetassay.stats.verdict import MARKS, VERDICT_COLUMNS, checkpoint_verdict_stats

BACKENDS = ("mlflow", "wandb", "tensorboard")
LOGGED_STATS = ("spearman", "shock_at_q", "gap_ratio")  # the pooled S5 series, on ALL and common
KIND_STATS = ("regret", "balanced_rho")  # the S5b series per unit kind, and the verdict's values
SERIES_KEYS = ["family", "scope", "metric", "utility"]  # a series' name, then its stat; `scope` is a kind for S5b
NO_STEP = 0  # the training step of a checkpoint that records none
STEP_METRIC = "training_step"  # W&B's x axis of the series
VERDICT = "verdict"  # the first part of the verdict's names
OPTIONS = {"mlflow": ("tracking_uri", "experiment", "run_name"), "wandb": ("project", "run_name"),
           "tensorboard": ("log_dir",)}
MLFLOW_BATCH = {"params": 100, "tags": 100, "metrics": 1000}  # MLflow's limits per log_batch
REPORT_FILES = ("report.md", "report.html", "run.json", "aggregate.csv", "sweep.csv")
FIGURES = ("*.png", "*.svg")
EXPERIMENT = "resetassay"  # the MLflow experiment and W&B project, unless given
TB_EVENTS = "events.out.tfevents.*"
UNSAFE = re.compile(r"[^\w.\- /]")  # what MLflow allows in a metric or param name (colons aside)


@dataclass
class Tracked:
    """What a tracker gets from a run directory (module docstring): the config, the per-family series by name
    (step -> value, steps ascending), the verdict's values and its marks as tags."""

    config: dict
    series: dict[str, dict[int, float]]
    verdict: dict[str, float]
    tags: dict[str, str]

    @property
    def steps(self) -> list[int]:
        """Every training step of any series, ascending."""
        return sorted({step for points in self.series.values() for step in points})


@dataclass
class Logged:
    """Where one `log_run` call put a run: the tracker, its store or folder, the tracker's run id, what went."""

    backend: str
    location: str
    tracked: Tracked
    run_id: str = ""
    files: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        run = f" run {self.run_id}" if self.run_id else ""
        t = self.tracked
        return (f"logged to {self.backend}{run}: {len(t.series)} series over {len(t.steps)} training steps, "
                f"{len(t.verdict)} verdict metrics, {len(t.tags)} verdict tags, {len(self.files)} files in "
                f"{self.location}")


def backend_names(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """The trackers of `--log` (comma-separated, or a list), each importable: an unknown name or a tracker that
    is not installed is a one-line BadInputError, raised before any work."""
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else list(value or [])
    names = [n for n in names if n]
    if len(set(names)) < len(names):
        raise BadInputError(f"`log` {','.join(names)}: name each tracker once", field="log")
    for name in names:
        _import(name)
    return names


def _import(backend: str) -> object:
    """The tracker's module (mlflow, wandb, torch.utils.tensorboard), imported with its telemetry off."""
    if backend not in BACKENDS:
        raise BadInputError(f"`log` {backend!r}: choose {', '.join(BACKENDS[:-1])} or {BACKENDS[-1]}", field="log")
    package = backend  # each tracker's pip package is also its module's name, and the extra's
    try:
        with _env(MLFLOW_DISABLE_TELEMETRY="true", WANDB_ERROR_REPORTING="false"):
            module = __import__(package)
            if backend == "tensorboard":  # the writer is torch's; it needs the tensorboard package beside torch
                from torch.utils import tensorboard as module
    except ImportError as err:
        missing = isinstance(err, ModuleNotFoundError) and err.name == package or sys.modules.get(package, 0) is None
        why = "is not installed" if missing else f"does not import ({' '.join(str(err).split())})"
        raise BadInputError(f"`log` {backend}: {package} {why}; pip install 'resetassay[{backend}]'",
                            field="log") from err
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


def _run_series(run_dir: str | Path) -> dict[str, dict[int, float]]:
    """The per-family series of a run (module docstring): name -> {training step: mean over the family's
    checkpoints at that step}, steps ascending (SPEC S5, S5b)."""
    run_dir = Path(run_dir)
    tables = read_run(run_dir, ("summary", "checkpoints", "units"))
    summary, checkpoints = tables["summary"], tables["checkpoints"]
    missing = [c for c in ("checkpoint", "utility", "metric", "scope") if c not in summary]
    if missing:
        raise BadInputError(f"{table_path(run_dir, 'summary')}: no column {', '.join(missing)}; is it the summary "
                            "table of a `resetassay run`?")
    pooled = [checkpoint_stats(summary, checkpoints, scope).assign(scope=scope) for scope in POOLED_SCOPES]
    kinds = checkpoint_verdict_stats(tables["units"], summary, checkpoints, run_q(summary, read_run_info(run_dir),
                                                                                   run_dir))
    points = pd.concat([_points(frame, LOGGED_STATS) for frame in pooled]
                       + [_points(kinds.rename(columns={"kind": "scope"}), KIND_STATS)], ignore_index=True)
    means = points.groupby([*SERIES_KEYS, "stat", "step"], sort=False)["value"].mean()
    series: dict[str, dict[int, float]] = {}
    for (*parts, step), value in means.items():
        series.setdefault(metric_name(*parts), {})[int(step)] = float(value)
    return {name: dict(sorted(steps.items())) for name, steps in series.items()}


def _points(stats: pd.DataFrame, names: tuple[str, ...]) -> pd.DataFrame:
    """Per-checkpoint statistics (SERIES_KEYS, step and `names`) as one row per statistic: SERIES_KEYS, stat, step
    (NO_STEP where none) and value."""
    long = stats.melt(id_vars=[*SERIES_KEYS, "step"], value_vars=list(names),
                      var_name="stat", value_name="value")
    return long.assign(step=long["step"].fillna(NO_STEP).astype(int))


def _read_verdict(run_dir: str | Path) -> pd.DataFrame:
    """verdict.csv of a run directory (SPEC S5b, written by the report); no rows when the report has not written
    it."""
    path = Path(run_dir) / "verdict.csv"
    return read_table(path) if path.exists() else pd.DataFrame(columns=VERDICT_COLUMNS)


def _verdict_metrics(verdict: pd.DataFrame) -> dict[str, float]:
    """The verdict's regret and layer-balanced ρ of every family, kind, metric and utility (SPEC S5b), named
    `verdict/<family>/<kind>/<metric>/<utility>/<stat>`."""
    return {metric_name(VERDICT, r["family"], r["kind"], r["metric"], r["utility"], stat): float(r[stat])
            for _, r in verdict.iterrows() for stat in KIND_STATS}


def _verdict_tags(verdict: pd.DataFrame) -> dict[str, str]:
    """Per family, kind and metric, the utilities the verdict marks best, indistinguishable, cheapest and fails
    (SPEC S5b), comma-separated in verdict.csv's order, named `verdict/<family>/<kind>/<metric>/<mark>`."""
    return {metric_name(VERDICT, *scope, mark): ",".join(rows.loc[rows[mark].astype(bool), "utility"].astype(str))
            for scope, rows in verdict.groupby(["family", "kind", "metric"], sort=False) for mark in MARKS}


def tracked(run_dir: str | Path) -> Tracked:
    """Everything a tracker gets from a run directory (module docstring)."""
    verdict = _read_verdict(run_dir)
    return Tracked(run_config(read_run_info(run_dir)), _run_series(run_dir), _verdict_metrics(verdict),
                   _verdict_tags(verdict))


def run_config(info: dict) -> dict:
    """What a tracker records as the run's config: run.json's `config`, `config_hash` and `table_format`."""
    config = info.get("config", {}) if isinstance(info.get("config"), dict) else {}
    return {**config, **{k: info[k] for k in ("config_hash", "table_format") if k in info}}


def run_params(config: dict, numbers: bool = False) -> dict[str, str | int | float]:
    """`run_config` as tracker params: strings as they are, other values as JSON (MLflow params); with `numbers`,
    ints and floats stay numbers (TensorBoard HParams, which sort and filter them as numbers)."""
    def param(value: object) -> str | int | float:
        if isinstance(value, str) or numbers and isinstance(value, int | float) and not isinstance(value, bool):
            return value
        return json.dumps(value, sort_keys=True, default=str)
    return {metric_name(k): param(v) for k, v in config.items()}


def _run_files(run_dir: str | Path) -> list[Path]:
    """The report files, run.json, the summary table and the figures present in a run directory."""
    run_dir = Path(run_dir)
    found = [run_dir / name for name in REPORT_FILES] + [table_path(run_dir, "summary")]
    found += sorted(p for pattern in FIGURES for p in (run_dir / "figures").glob(pattern))
    return [p for p in dict.fromkeys(found) if p.is_file()]


def log_run(run_dir: str | Path, backend: str, **options: str) -> Logged:
    """Log a run directory's config, per-step statistics, verdict, report and figures to `backend` (mlflow, wandb,
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
        raise BadInputError(f"{run_dir}: no such run directory; is it the `out` of a `resetassay run`?")
    run, files = tracked(run_dir), _run_files(run_dir)
    log = {"mlflow": _mlflow, "wandb": _wandb, "tensorboard": _tensorboard}[backend]
    try:
        location, run_id = log(module, run_dir, run, files, **options)
    except BadInputError:
        raise
    except Exception as err:  # a store that cannot be written or reached: one line, not a tracker's traceback
        why = " ".join(f"{type(err).__name__}: {err}".split())
        raise BadInputError(f"`log` {backend}: logging {run_dir} failed ({why[:500]})", field="log") from err
    logged = [p for p in files if backend != "tensorboard" or p.suffix in (".png", ".md")]  # TensorBoard: these
    return Logged(backend, location, run, run_id, [p.relative_to(run_dir).as_posix() for p in logged])


def _markdown_table(header: tuple[str, ...], rows: list[list[str]]) -> str:
    """A markdown table (TensorBoard's text plugin renders it), `|` in cells as `/`."""
    lines = [header, ("---",) * len(header), *rows]
    return "\n".join("| " + " | ".join(str(c).replace("|", "/") for c in line) + " |" for line in lines)


def _verdict_rows(tags: dict[str, str]) -> list[list[str]]:
    """The verdict tags as rows: `<family>/<kind>/<metric>`, then one cell per mark (MARKS)."""
    rows: dict[str, dict[str, str]] = {}
    for name, value in tags.items():
        scope, mark = name.removeprefix(f"{VERDICT}/").rsplit("/", 1)
        rows.setdefault(scope, {})[mark] = value
    return [[scope, *(marks.get(m, "") for m in MARKS)] for scope, marks in rows.items()]


def _mlflow(mlflow: object, run_dir: Path, run: Tracked, files: list[Path], tracking_uri: str | None = None,
            experiment: str = EXPERIMENT, run_name: str | None = None) -> tuple[str, str]:
    from mlflow.entities import Metric, Param, RunTag
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
        created = client.create_run(experiment_id, run_name=run_name or run_dir.resolve().name, tags=tags)
        run_id = created.info.run_id
        try:
            now = int(time.time() * 1000)
            entities = {
                "params": [Param(k, str(v)[:6000]) for k, v in run_params(run.config).items()],
                "tags": [RunTag(k, v) for k, v in run.tags.items()],
                "metrics": [Metric(name, value, now, step) for name, points in run.series.items()
                            for step, value in points.items()]
                           + [Metric(name, value, now, NO_STEP) for name, value in run.verdict.items()]}
            for kind, items in entities.items():
                size = MLFLOW_BATCH[kind]
                for start in range(0, len(items), size):
                    client.log_batch(run_id, **{kind: items[start:start + size]})
            for path in files:
                folder = path.parent.relative_to(run_dir).as_posix()
                client.log_artifact(run_id, str(path), None if folder == "." else folder)
        except BaseException:
            client.set_terminated(run_id, "FAILED")
            raise
        client.set_terminated(run_id, "FINISHED")
    return uri, run_id


def _wandb(wandb: object, run_dir: Path, run: Tracked, files: list[Path], project: str = EXPERIMENT,
           run_name: str | None = None) -> tuple[str, str]:
    settings = wandb.Settings(mode="offline", console="off", disable_git=True, save_code=False, silent=True,
                              x_disable_stats=True, x_disable_machine_info=True)
    with _env(WANDB_MODE="offline", WANDB_ERROR_REPORTING="false", WANDB_SILENT="true"):
        wb = wandb.init(project=project, name=run_name or run_dir.resolve().name, dir=str(run_dir.resolve()),
                        config=run.config, settings=settings, reinit="create_new")
        try:
            wb.define_metric(STEP_METRIC)
            for family in dict.fromkeys(name.split("/")[0] for name in run.series):
                wb.define_metric(f"{family}/*", step_metric=STEP_METRIC)
            for step in run.steps:  # one history row per training step
                wb.log({STEP_METRIC: step, **{n: p[step] for n, p in run.series.items() if step in p}})
            images = {metric_name("figures", p.stem): wandb.Image(str(p)) for p in files if p.suffix == ".png"}
            if images:
                wb.log(images)
            wb.summary.update({**run.verdict, **run.tags})
            saved = Path(wb.dir)
            for path in files:
                copy = saved / path.relative_to(run_dir)
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, copy)
                wb.save(str(copy), base_path=str(saved), policy="now")
        except BaseException:
            wb.finish(exit_code=1)
            raise
        wb.finish()
        wandb.teardown()  # finish returns before the offline run file is fully written; the service's exit flushes it
    return str(saved.parent), wb.id


def _tensorboard(tensorboard: object, run_dir: Path, run: Tracked, files: list[Path],
                 log_dir: str | Path | None = None) -> tuple[str, str]:
    import matplotlib.image
    from torch.utils.tensorboard.summary import hparams

    folder = Path(log_dir) if log_dir is not None else run_dir / "tensorboard"
    if log_dir is None and folder.is_dir():  # ours: a second log replaces the first
        for old in folder.glob(TB_EVENTS):
            if old.is_file() and not old.is_symlink():
                old.unlink()
    writer = tensorboard.SummaryWriter(log_dir=str(folder))
    try:
        for name, points in run.series.items():
            for step, value in points.items():
                writer.add_scalar(name, value, step)
        for name, value in run.verdict.items():
            writer.add_scalar(name, value, NO_STEP)
        # HParams in this event file, not add_hparams' subfolder: one run, its config beside its verdict values
        for summary in hparams(run_params(run.config, numbers=True), run.verdict):
            writer.file_writer.add_summary(summary)
        writer.add_text(VERDICT, _markdown_table(("family/kind/metric", *MARKS), _verdict_rows(run.tags)), NO_STEP)
        writer.add_text("config", _markdown_table(("param", "value"), [
            [k, str(v)] for k, v in run_params(run.config).items()]), NO_STEP)
        for path in files:
            if path.suffix == ".png":
                image = matplotlib.image.imread(path)
                if image.ndim == 3 and image.shape[2] == 4:  # RGBA over white
                    image = image[..., :3] * image[..., 3:] + (1 - image[..., 3:])
                writer.add_image(metric_name("figures", path.stem), image, NO_STEP, dataformats="HWC")
            elif path.suffix == ".md":
                writer.add_text(metric_name(path.stem), path.read_text(encoding="utf-8"), NO_STEP)
        writer.flush()
    finally:
        writer.close()
    return str(folder), ""
