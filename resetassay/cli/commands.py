"""The `resetassay` command: parse, call one library function, print (DESIGN "The command line").

Each command imports the library it calls when it runs, so `resetassay --help` loads no torch, pandas or
matplotlib (benchmarks/import_time.py measures it).

Over 500 lines: seven commands, each its options (typer declares them as parameters) and a few lines of glue.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from resetassay.cli.flags import as_flags, config_options
from resetassay.cli.flags import field_of as _field
from resetassay.config import AssayConfig
from resetassay.errors import BadInputError
from resetassay.names import CBP_UTILITIES, FAILURES, ORACLE, RANDOM

if TYPE_CHECKING:
    from resetassay.data import DataChoice, DataSpec
    from resetassay.pipeline.assay import AssayResult

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Measure what resetting a neuron costs, and which utility predicts it.")
# markup off: a message is printed as written ("pip install 'resetassay[parquet]'" keeps its brackets)
err = Console(stderr=True, markup=False)
out = Console(markup=False)
ERROR, WARNING, NOTE = Text("error:", style="bold red"), Text("warning:", style="yellow"), Text("note:", style="yellow")


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _ints(value: str | None, flag: str, example: str = "0,5,10") -> tuple[int, ...] | None:
    try:
        return tuple(int(v) for v in _split(value)) if value else None
    except ValueError as e:
        raise BadInputError(f"{flag} {value!r}: expected comma-separated integers, e.g. {example}",
                            field=_field(flag)) from e


def _say(*parts: Text | str) -> None:
    """One line on stderr, the library's backticked fields written as flags (cli/flags.py)."""
    err.print(*(as_flags(p) if isinstance(p, str) else p for p in parts), highlight=False, soft_wrap=True)


def _fail(message: str, code: int) -> None:
    _say(ERROR, message)
    raise typer.Exit(code)


def _show_warning(message: Warning | str, category: type[Warning], *_args: object, **_kwargs: object) -> None:
    """Warnings as one line each, each distinct message once (a failed checkpoint's error line is printed
    directly, so that PYTHONWARNINGS=ignore cannot hide it)."""
    text = str(message)
    if text not in _shown:
        _shown.add(text)
        _say(WARNING, text)


_shown: set[str] = set()


class _WarningLines(logging.Handler):
    """The library's logged warnings (e.g. the lesion engine falling back) printed as `warning:` lines, once each."""

    def emit(self, record: logging.LogRecord) -> None:
        _show_warning(record.getMessage(), UserWarning)


@contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Warnings and the library's logged warnings as one `warning:` line each while a command runs (each distinct
    message once per command, also when one process runs several, as tests and notebooks do)."""
    _shown.clear()
    library = logging.getLogger("resetassay")
    handler = _WarningLines(logging.WARNING)
    library.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            yield
    finally:
        library.removeHandler(handler)


def _json_object(text: str | None, flag: str) -> dict | None:
    """A flag's JSON object (--model-kwargs, --data-kwargs), or None when the flag is not given."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInputError(f"{flag} is not valid JSON ({e.msg}); e.g. '{{\"width\": 64}}'", field=_field(flag)) from e
    if not isinstance(value, dict):
        raise BadInputError(f"{flag} must be a JSON object, e.g. '{{\"width\": 64}}'", field=_field(flag))
    return value


def _model_kwargs(text: str | None) -> dict | None:
    return _json_object(text, "--model-kwargs")


def _data(name: str | None, task: int | None, permutation_seed: int | None, data_dir: Path | None,
          probe: Path | None = None, image_size: int | None = None, normalize: str | None = None,
          data_kwargs: str | None = None) -> DataSpec | None:
    """The `--data` spec with its options (task and permutation seed 0 unless given); the options without `--data`
    are an error."""
    from resetassay.data import data_spec

    if task is not None and task < 0:
        raise BadInputError(f"--task {task}: tasks count from 0", field="task")
    if permutation_seed is not None and permutation_seed < 0:
        raise BadInputError(f"--permutation-seed {permutation_seed}: must be >= 0", field="permutation_seed")
    if name is None:
        for flag, value in (("--probe-data", probe), ("--image-size", image_size), ("--normalize", normalize),
                            ("--data-kwargs", data_kwargs)):
            if value is not None:
                raise BadInputError(f"{flag} needs --data", field=_field(flag))
        return None
    return data_spec(name, task or 0, permutation_seed or 0, str(data_dir.resolve()) if data_dir else None,
                     probe=str(probe) if probe else None, image_size=image_size, normalize=normalize,
                     kwargs=_json_object(data_kwargs, "--data-kwargs"))


def _data_choice(name: str | None, task: int | None, permutation_seed: int | None, data_dir: Path | None,
                 **options: object) -> DataChoice:
    """What `run` asks of each checkpoint's data: `--data` for those that record none; `--data-dir`, `--task`,
    `--permutation-seed` and another `--data` than recorded replace what they name (`DataChoice.resolve`)."""
    from resetassay.data import DataChoice

    spec = _data(name, task, permutation_seed, data_dir, **options)
    return DataChoice(spec, str(data_dir.resolve()) if data_dir else None, task, permutation_seed)


Data = Annotated[str | None, typer.Option(help="Data for checkpoints that record none (another than a checkpoint "
                                          "records replaces its record, with a warning): digits, mnist, "
                                          "fashion-mnist (the datasets as published; permuted-digits, "
                                          "permuted-mnist, permuted-fashion-mnist: the continual study's permuted "
                                          "tasks; each also -image), a tensor file (.safetensors/.npz/.pt), "
                                          "an image folder or .tar/.tar.gz, or pkg.mod:factory.")]
ProbeData = Annotated[Path | None, typer.Option("--probe-data", help="With --data FILE|FOLDER: a second one "
                                                "holding the probe set (--data is then the calibration set).")]
ImageSize = Annotated[int | None, typer.Option(min=1, help="Images: resize to N x N (default: their own size).")]
Normalize = Annotated[str | None, typer.Option(help="Images: imagenet, cifar10, none, or MEAN/STD such as "
                                               "0.5,0.5,0.5/0.25,0.25,0.25.")]
DataKwargs = Annotated[str | None, typer.Option(help="With --data pkg.mod:factory: its keyword arguments, a JSON "
                                                "object.")]
DataDir = Annotated[Path | None, typer.Option(help="Folder of MNIST or Fashion-MNIST IDX files (*-ubyte.gz); "
                                              "alone, where the files a checkpoint records are now.")]
Task = Annotated[int | None, typer.Option(help="The permutation task to probe (default: the task each checkpoint "
                                          "records, else 0); replaces a recorded one, with a warning.")]
PermSeed = Annotated[int | None, typer.Option(help="The permutation seed (default: the one each checkpoint "
                                              "records, else 0); replaces a recorded one, with a warning.")]
Model = Annotated[str | None, typer.Option(help="package.module:factory that builds the model of a plain state dict "
                                           "(.safetensors, .pt, .pth or Lightning .ckpt), or torchvision:NAME / "
                                           "timm:NAME (built without pretrained weights; needs the extra "
                                           "resetassay[torchvision] / resetassay[timm]), or transformers:TYPE "
                                           "(its causal LM) / transformers:CLASS (e.g. BertForSequenceClassification;"
                                           " a save_pretrained folder is built from its config.json).")]
ModelKwargs = Annotated[str | None, typer.Option(help="JSON object of keyword arguments for --model.")]
Layers = Annotated[str | None, typer.Option(help="Comma-separated globs over unit-layer names.")]
Output = Annotated[str | None, typer.Option(help="Where the logits are in what the model returns: a dotted path of "
                                            "keys, attributes and indices (logits, 0, out.1); default: the output "
                                            "itself when a tensor, else its logits field or first tensor.")]
FIGURES_HELP = "The report's figures: png, svg (vector, for papers) or none (fastest; the report says so)."


@app.command()
@config_options(AssayConfig)
def run(
    checkpoints: Annotated[list[Path], typer.Argument(help="Checkpoint directories (searched recursively) "
                                                      "or state-dict files.")],
    out_dir: Annotated[str, typer.Option("--out", help="Run directory for tables, report and figures.")]
    = "reports/run",
    *,
    config_fields: dict,
    model: Model = None,
    model_kwargs: ModelKwargs = None,
    data: Data = None,
    data_dir: DataDir = None,
    probe: ProbeData = None,
    image_size: ImageSize = None,
    normalize: Normalize = None,
    data_kwargs: DataKwargs = None,
    task: Task = None,
    permutation_seed: PermSeed = None,
    state: Annotated[Path | None, typer.Option(help="A per-unit state file (<layer>.age/.reference/.utility, e.g. "
                                               "CBP's state of a model trained elsewhere; `resetassay gnt-state` "
                                               "converts loss-of-plasticity's GnT) for the one checkpoint given. "
                                               "Beside a state dict, W.state.safetensors (or state.safetensors "
                                               "beside one weights file) is read without it.")] = None,
    table_format: Annotated[str, typer.Option("--format", help="Tables as csv, or parquet (3x smaller for big unit "
                                              "tables; needs resetassay[parquet]).")] = "csv",
    figures: Annotated[str, typer.Option(help=FIGURES_HELP)] = "png",
    log: Annotated[str | None, typer.Option(help="After the report, log the config, per-family statistics at each "
                                            "training step, the verdict, report and figures to mlflow, wandb "
                                            "and/or tensorboard (comma-separated), in a "
                                            "store under --out (mlflow: $MLFLOW_TRACKING_URI when set; wandb "
                                            "offline); needs resetassay[mlflow] / [wandb] / [tensorboard].")]
    = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars or lines.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Discard the checkpoints finished earlier in --out (a rerun "
                                            "with the same config skips them; another config is refused).")]
    = False,
) -> None:
    """Assay checkpoints: score every unit, lesion each one, write tables and a report.

    Each finished checkpoint is saved in --out at once: rerunning an interrupted command resumes it. A report that
    fails to render is a warning line: the tables are written and the exit code is the assay's."""
    from resetassay.io.rundir import RunInterrupted, failure_exit_code
    from resetassay.pipeline.run import run_assay
    from resetassay.pipeline.shard import launch_from_env
    from resetassay.report.tracking import backend_names, log_run

    rank = launch_from_env()  # under torchrun: join the launch; rank 0 prints, merges and reports
    try:
        trackers = backend_names(log)  # a tracker that is not installed fails before any work
        config = AssayConfig(**config_fields)
        with _one_line_warnings():
            result = run_assay(checkpoints, config, model=model, model_kwargs=_model_kwargs(model_kwargs),
                               data=_data_choice(data, task, permutation_seed, data_dir, probe=probe,
                                                 image_size=image_size, normalize=normalize,
                                                 data_kwargs=data_kwargs), state=state, progress=not quiet,
                               out=out_dir, overwrite=overwrite, table_format=table_format, figures=figures,
                               note=_say,
                               on_failure=lambda text: _say(ERROR, text))
    except BadInputError as e:
        if rank != 0:  # every rank raises the same error (shard.py); rank 0 alone prints it
            raise typer.Exit(2) from None
        _fail(str(e), 2)
    except RunInterrupted as e:
        _say(str(e))
        raise typer.Exit(130) from None
    code = failure_exit_code(result.failures)
    if rank != 0:
        raise typer.Exit(code)
    if len(result.units):
        out.print(_verdict_table(result))
        written = [name for name in (f"units.{table_format}", f"summary.{table_format}", "report.md", "report.html",
                                     "figures/") if (Path(out_dir) / name).exists()]
        out.print(f"wrote {out_dir}/ ({', '.join(written)})", highlight=False, soft_wrap=True)
    for tracker in trackers if len(result.units) else []:
        try:
            out.print(str(log_run(out_dir, tracker)), highlight=False, soft_wrap=True)
        except BadInputError as e:
            _fail(str(e), 2)
    if code:
        err.print(f"{len(result.failures)} of {len(result.provenance['checkpoints'])} checkpoints failed (listed in "
                  f"{Path(out_dir) / FAILURES}); fix them and rerun the same command: finished ones are skipped",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(code)


RunDir = Annotated[Path, typer.Argument(help="A directory written by `resetassay run`.")]


@app.command()
def report(
    run_dir: RunDir,
    q: Annotated[str | None, typer.Option(help="Shock@q fraction(s) recomputed from units.csv, e.g. 0.1, or a "
                                          "sweep 0.01,0.05,0.1 (default: the run's q).")] = None,
    figures: Annotated[str | None, typer.Option(help=f"{FIGURES_HELP} Default png.")] = None,
    log: Annotated[str | None, typer.Option(help="Then log the config, per-family statistics at each training step, "
                                            "the verdict, report and figures to mlflow, wandb and/or tensorboard "
                                            "(comma-separated), in a store under "
                                            "RUN_DIR (mlflow: $MLFLOW_TRACKING_URI when set; wandb offline); "
                                            "needs resetassay[mlflow] / [wandb] / [tensorboard]. A current report "
                                            "(report.md newer than the tables, drawn without error) is logged as it "
                                            "is, unless --q or --figures ask for another.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress lines while the figures are drawn.")] = False,
) -> None:
    """Re-render report.md, report.html and figures from a run's tables, without running a model.

    Exit 0 when written, 1 when rendering failed (report.md says what failed), 2 on bad input."""
    from resetassay.progress import rich_progress
    from resetassay.report import render
    from resetassay.report.render import ReportFailed, is_current
    from resetassay.report.tracking import backend_names, log_run
    from resetassay.stats.summary import q_values

    start = time.perf_counter()
    try:
        trackers = backend_names(log)  # a tracker that is not installed fails before the report is drawn
        fractions = q_values(q) if q is not None else None
        if trackers and q is None and figures is None and is_current(run_dir):
            out.print(f"{run_dir / 'report.md'} is current: logged as it is (--figures or --q draws it again)",
                      highlight=False, soft_wrap=True)
        else:
            with rich_progress(not quiet) as progress:
                path = render(run_dir, fractions, figures or "png", progress)
            out.print(f"wrote {path} and {path.with_suffix('.html').name} in {time.perf_counter() - start:.1f} s")
    except BadInputError as e:
        _fail(str(e), 2)
    except ReportFailed as e:
        _fail(str(e), 1)
    for tracker in trackers:
        try:
            logged = log_run(run_dir, tracker)
        except BadInputError as e:
            _fail(str(e), 2)
        out.print(str(logged), highlight=False, soft_wrap=True)


def _verdict_table(result: AssayResult) -> Table:
    """The run at a glance (SPEC S5b, the report's rule): per family and unit kind at the first metric, the best
    utility by regret, those indistinguishable from it, the cheapest of them, and those that fail."""
    from resetassay.report.headline import number, seconds_text

    metric = result.config.metrics[0]
    verdict = result._analysis.verdict
    mine = verdict[(verdict["metric"] == metric) & ~verdict["utility"].isin([RANDOM, ORACLE])]
    table = Table(title=f"verdict ({metric}): regret 0 = oracle, 1 = random; ≈ indistinguishable from the best")
    for name in ("family · kind", "best (regret)", "≈", "cheapest", "fails"):
        table.add_column(name, overflow="fold")
    for (family, kind), g in mine.groupby(["family", "kind"], sort=True):
        top = g[g["best"]]
        best = f"{top['utility'].iloc[0]} ({number(top['regret'].iloc[0])})" if len(top) else "n/a"
        same = list(g[g["indistinguishable"] & ~g["best"]]["utility"])
        same = same if len(same) <= 3 else [*same[:3], f"+{len(same) - 3} more"]
        cheap = g[g["cheapest"]]
        table.add_row(f"{family} · {kind}", best, ", ".join(same) or "–",
                      f"{cheap['utility'].iloc[0]} ({seconds_text(cheap['seconds'].iloc[0])})" if len(cheap) else "–",
                      ", ".join(g[g["fails"]]["utility"]) or "–")
    return table


@app.command()
def check(
    run_dir: RunDir,
    baseline: Annotated[Path, typer.Option(help="Baseline JSON written by `resetassay baseline`.")],
    tolerance: Annotated[float, typer.Option(help="Largest allowed drop of pooled Spearman ρ.")] = 0.02,
    rel_tolerance: Annotated[float, typer.Option(help="Largest allowed rise of Shock@q, relative to the baseline "
                                                 "(the gap: relative to the baseline Shock@q).")] = 0.10,
    junit: Annotated[Path | None, typer.Option(help="Also write JUnit XML, one test case per comparison.")] = None,
    markdown: Annotated[Path | None, typer.Option(help="Also write the comparison as markdown for a pull-request "
                                                  "comment: verdict, failures, notes, what moved (folded).")]
    = None,
    show_all: Annotated[bool, typer.Option("--all", help="List unchanged comparisons too.")] = False,
) -> None:
    """Compare a run with a baseline: exit 0 on pass, 1 on a regression, 2 on bad input."""
    from resetassay.report.gate import check_run, diff_table

    try:
        comparisons, differences = check_run(run_dir, baseline, tolerance, rel_tolerance, junit, markdown,
                                             show_all)
    except BadInputError as e:
        _fail(str(e), 2)
    for line in differences:
        _say(NOTE, line)
    typer.echo(as_flags(diff_table(comparisons, show_all)))
    raise typer.Exit(0 if all(c.passed for c in comparisons) else 1)


@app.command("baseline")
def baseline_command(
    run_dir: RunDir,
    output: Annotated[Path, typer.Option("--output", "-o", help="Baseline JSON to write.")],
    floor: Annotated[list[str] | None, typer.Option(help="Absolute floor [FAMILY:]UTILITY:METRIC:STAT>=VALUE (or "
                                                    "<=), written for each family the run clears by --margin; "
                                                    "repeatable.")] = None,
    margin: Annotated[float, typer.Option(help="How far the run must clear a --floor for it to be written.")]
    = 0.02,
    utilities: Annotated[str | None, typer.Option(help="Comma-separated utilities to gate (default: all but "
                                                  "random).")] = None,
    force_floors: Annotated[bool, typer.Option(help="Write a --floor even where the run does not clear it (with a "
                                               "warning; the check fails until it does). Without it such a floor "
                                               "is an error (exit 2).")] = False,
) -> None:
    """Write a baseline for `resetassay check` from a run's summary and verdict."""
    from resetassay.report.gate import make_baseline, write_baseline

    try:
        written, unmet = make_baseline(run_dir, floor, margin, _split(utilities), force_floors)
        path = write_baseline(written, output)
    except BadInputError as e:
        _fail(str(e), 2)
    for line in unmet:
        _say(WARNING, line)
    out.print(f"wrote {path}: {len(written['rows'])} rows, {len(written['floors'])} floors")


@app.command()
def inspect(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint directory or state-dict file.")],
    layers: Layers = None,
    model: Model = None,
    model_kwargs: ModelKwargs = None,
    output: Output = None,
    input_shape: Annotated[str | None, typer.Option(help="Without data: the shape of one input, e.g. 3,32,32 "
                                                    "(two seeded random inputs are traced).")] = None,
    seq_len: Annotated[int | None, typer.Option(help="Without data, a token model: the length of two seeded random "
                                                "token sequences to trace (ids within its embedding).")] = None,
    data: Data = None,
    data_dir: DataDir = None,
    image_size: ImageSize = None,
    normalize: Normalize = None,
    data_kwargs: DataKwargs = None,
) -> None:
    """List the unit layers of a checkpoint: kind, unit count, producer and consumer."""
    from resetassay.discovery.units import layer_table
    from resetassay.pipeline.assay import checkpoint_layers

    try:
        shape = _ints(input_shape, "--input-shape", "3,32,32")
        if shape is not None and (not shape or min(shape) < 1):
            raise BadInputError(f"--input-shape {input_shape!r}: sizes must be >= 1, e.g. 3,32,32",
                                field="input_shape")
        if seq_len is not None and seq_len < 1:
            raise BadInputError(f"--seq-len {seq_len}: must be >= 1, e.g. 32", field="seq_len")
        with _one_line_warnings():
            found, route = checkpoint_layers(checkpoint, _split(layers), model, _model_kwargs(model_kwargs),
                                             _data(data, None, None, data_dir, None, image_size, normalize,
                                                   data_kwargs),
                                             output, shape, seq_len)
    except BadInputError as e:
        _fail(str(e), 2)
    rows = layer_table(found)
    out.print(f"{checkpoint} (unit layers found by: {route})", highlight=False, soft_wrap=True)  # never wrapped
    if not out.is_terminal:  # piped: plain aligned lines, never a name cut (they are what --layers takes)
        cells = [list(rows[0]), *([str(v) for v in row.values()] for row in rows)]
        widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
        for line in cells:
            out.print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip(), highlight=False,
                      soft_wrap=True)
        return
    table = Table()
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    out.print(table)


def _schedule(spec: DataSpec, tasks: int | None, epochs_per_task: int | None, epochs: int | None,
              checkpoint_in: str | None) -> tuple[int, int, str]:
    """(tasks, epochs per task, checkpoint unit) of `train`: permuted data takes --tasks (default 30) and
    --epochs-per-task (default 1); an image folder, or a plain dataset (--data mnist), is one task of --epochs
    epochs, checkpointed by epoch."""
    from resetassay.data import PERMUTED, data_name

    if spec.source in PERMUTED and spec.permuted:
        if epochs is not None:
            raise BadInputError("--epochs applies to an image folder or a plain dataset (--data mnist); permuted "
                                "tasks take --tasks and --epochs-per-task", field="epochs")
        return (30 if tasks is None else tasks), (1 if epochs_per_task is None else epochs_per_task), \
            checkpoint_in or "tasks"
    what = (f"--data {data_name(spec)} is the plain dataset, one task (--data permuted-{data_name(spec)} gives the "
            f"continual study's permuted tasks)" if spec.source in PERMUTED else "an image folder is one task")
    for flag, value in (("--tasks", tasks), ("--epochs-per-task", epochs_per_task)):
        if value is not None:
            raise BadInputError(f"{flag} applies to permuted tasks; {what}: give --epochs", field=_field(flag))
    return 1, (1 if epochs is None else epochs), checkpoint_in or "epochs"


@app.command("train")
def train_command(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the checkpoints, accuracy.csv and train.json "
                                          "(empty, new, or of this same command, which then resumes).")]
    = Path("checkpoints"),
    model: Annotated[str, typer.Option(help="Zoo model: mlp, cnn or resnet (image data), transformer (--data "
                                       "grammar).")] = "mlp",
    widths: Annotated[str | None, typer.Option(help="Comma-separated hidden widths (mlp default "
                                               "256,256,256,256).")] = None,
    activation: Annotated[str, typer.Option(help="relu, silu, leaky_relu or tanh.")] = "relu",
    layer_norm: Annotated[bool, typer.Option(help="LayerNorm after each Linear (mlp).")] = False,
    init: Annotated[str, typer.Option(help="Initial weights: kaiming-relu (Kaiming uniform with the ReLU gain, zero "
                                      "biases), kaiming-normal (Kaiming normal, ReLU gain, fan_in, zero biases: "
                                      "the paper's ResNet-18) or torch-default (PyTorch's own layer init); recorded "
                                      "in the checkpoint and, if not the default, in its family.")] = "kaiming-relu",
    data: Annotated[str, typer.Option(help="permuted-digits, permuted-mnist or permuted-fashion-mnist (with "
                                      "--data-dir), each also -image: the continual study's permuted tasks; "
                                      "grammar (token sequences, --model transformer); digits, mnist or "
                                      "fashion-mnist (each also -image): the plain dataset, one task (--epochs); "
                                      "an image folder or .tar/.tar.gz with train/ and test/ class folders (one "
                                      "task, --epochs).")]
    = "permuted-digits",
    data_dir: DataDir = None,
    image_size: ImageSize = None,
    normalize: Normalize = None,
    permutation_seed: Annotated[int, typer.Option(help="Seed of the task permutations.")] = 0,
    tasks: Annotated[int | None, typer.Option(help="Permuted tasks, one after another (default 30).")] = None,
    epochs_per_task: Annotated[int | None, typer.Option(help="Epochs on each task (default 1).")] = None,
    epochs: Annotated[int | None, typer.Option(help="An image folder: epochs of plain training on its train/ "
                                               "images; checkpoints count epochs.")] = None,
    blocks: Annotated[int | None, typer.Option(help="resnet: BasicBlocks per stage (default 1; ResNet-18 has "
                                               "2).")] = None,
    examples_per_task: Annotated[int | None, typer.Option(help="Train on a seeded sample of this many examples "
                                                          "of each task (default: all): many short tasks.")] = None,
    examples_per_class: Annotated[int | None, typer.Option(help="Train on a seeded sample of this many examples "
                                                           "of each class of each task (the paper's ResNet: "
                                                           "450).")] = None,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 0.01,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = 0.0,
    weight_decay: Annotated[float, typer.Option(help="L2 weight decay of the optimizer.")] = 0.0,
    schedule: Annotated[str, typer.Option(help="Learning rate: constant; cosine (annealed to 0 over all steps); "
                                          "or step (x0.2 after 30%, 60% and 80% of the steps: the paper's epochs "
                                          "60/120/160 of 200).")] = "constant",
    augment: Annotated[str, typer.Option(help="An image folder: none; crop-flip (random crops of the 4-pixel "
                                         "zero-padded image and left-right flips); or crop-flip-rotate (and a "
                                         "rotation by 0-15 degrees).")] = "none",
    optimizer: Annotated[str, typer.Option(help="sgd (the paper's) or adam (suits --model transformer, e.g. with "
                                           "--lr 0.001).")] = "sgd",
    batch_size: Annotated[int, typer.Option(help="Examples per SGD step.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, data order and resets.")] = 0,
    cbp: Annotated[bool, typer.Option(help="Continual backprop (SPEC S7); default: plain backprop.")] = False,
    utility: Annotated[str | None, typer.Option(help=f"With --cbp: its utility, {', '.join(CBP_UTILITIES)} "
                                                "(default contribution).")] = None,
    replacement_rate: Annotated[float | None, typer.Option(help="With --cbp: replacement rate rho (default "
                                                           "1e-4).")] = None,
    decay: Annotated[float | None, typer.Option(help="With --cbp: decay eta of the running utility and mean "
                                                "(default 0.99).")] = None,
    maturity: Annotated[int | None, typer.Option(help="With --cbp: maturity m, units with age <= m are not reset "
                                                 "(default 100).")] = None,
    family: Annotated[str | None, typer.Option(help="Report family of the checkpoints (default: the model and its "
                                               "training, e.g. mlp-relu, mlp-relu+cbp-contribution, "
                                               "mlp-relu@fashion-mnist).")] = None,
    checkpoint_at: Annotated[str | None, typer.Option(help="Comma-separated counts of completed tasks (or epochs) "
                                                      "at which to save: 0 = the untrained network, k = after the "
                                                      "k-th (default: after the last).")] = None,
    checkpoint_in: Annotated[str | None, typer.Option(help="Unit of --checkpoint-at: tasks or epochs (default: "
                                                    "tasks; epochs for an image folder).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    overwrite: Annotated[bool, typer.Option(help="First discard what an earlier train wrote in --out (checkpoint "
                                            "folders, accuracy.csv, train.json); other files are kept.")] = False,
) -> None:
    """Train on permuted tasks, or on an image folder, with plain backprop or CBP; write checkpoints (with CBP,
    with per-unit state).

    Rerunning the same command resumes it (SPEC S6): checkpoints on disk are kept, missing ones written."""
    from resetassay.data import data_spec
    from resetassay.io.rundir import RunInterrupted
    from resetassay.train.cbp import CBPConfig
    from resetassay.train.loop import TrainConfig, TrainingFailed, last_checkpoint, train, zoo_kwargs

    try:
        if permutation_seed < 0:  # before DataSpec, whose message names its field, not the flag
            raise BadInputError(f"--permutation-seed {permutation_seed}: must be a whole number >= 0",
                                field="permutation_seed")
        spec = data_spec(data, 0, permutation_seed, str(data_dir.resolve()) if data_dir else None,
                         image_size=image_size, normalize=normalize)
        tasks, epochs_per_task, checkpoint_in = _schedule(spec, tasks, epochs_per_task, epochs, checkpoint_in)
        given = {"utility": utility, "replacement_rate": replacement_rate, "decay": decay, "maturity": maturity}
        if not cbp and (unused := [k for k, v in given.items() if v is not None]):
            flag = f"--{unused[0].replace('_', '-')}"
            raise BadInputError(f"{flag} applies only with --cbp (plain backprop is the default); add --cbp",
                                field=_field(flag))
        config = TrainConfig(
            model, zoo_kwargs(model, spec, _ints(widths, "--widths"), activation, layer_norm, blocks, init), spec,
            tasks=tasks, epochs_per_task=epochs_per_task, lr=lr, batch_size=batch_size, seed=seed,
            checkpoint_at=_ints(checkpoint_at, "--checkpoint-at")
            or (last_checkpoint(tasks, epochs_per_task, checkpoint_in),), checkpoint_in=checkpoint_in,
            cbp=CBPConfig(**{k: v for k, v in given.items() if v is not None}) if cbp else None, momentum=momentum,
            family=family, optimizer=optimizer, examples_per_task=examples_per_task, weight_decay=weight_decay,
            schedule=schedule, augment=augment, examples_per_class=examples_per_class,
        )
        saved = train(config, out_dir, progress=not quiet, overwrite=overwrite,
                      note=_say)
    except BadInputError as e:
        _fail(str(e), 2)
    except TrainingFailed as e:
        _fail(str(e), 1)
    except RunInterrupted as e:
        _say(str(e))
        raise typer.Exit(130) from None
    for path in saved:
        out.print(f"wrote {path}", highlight=False, soft_wrap=True)
    out.print(f"per-task held-out accuracy: {out_dir / 'accuracy.csv'}", highlight=False, soft_wrap=True)


@app.command("gnt-state")
def gnt_state_command(
    gnt_file: Annotated[Path, typer.Argument(help="GnT's lists saved by torch.save (a dict: ages, mean_feature_act, "
                                             "bias_corrected_util[, util], each a list by hidden layer), or a "
                                             "safetensors/.pt of flat tensors ages.0, ages.1, ...")],
    model: Annotated[str, typer.Option(help="package.module:factory that builds the network GnT trained (only its "
                                       "architecture is read).")],
    model_kwargs: ModelKwargs = None,
    out_file: Annotated[Path, typer.Option("--out", help="The state file to write: state.safetensors (or "
                                           "W.state.safetensors) beside the weights W, so that `resetassay run "
                                           "W --model ...` reads it.")] = Path("state.safetensors"),
    input_shape: Annotated[str | None, typer.Option(help="The shape of one input, e.g. 784 (default: the input "
                                                    "width of the model's first Linear).")] = None,
    layers: Layers = None,
    decay: Annotated[float, typer.Option(help="GnT's decay_rate, for the bias-corrected mean and utility.")] = 0.99,
) -> None:
    """Convert the loss-of-plasticity GnT's CBP state into resetassay's per-unit state (state.safetensors): GnT's
    hidden layer i is the model's i-th unit layer (resetassay/io/gnt.py)."""
    from safetensors.torch import save_file

    from resetassay.io.checkpoint import build_model
    from resetassay.io.gnt import gnt_state, read_gnt

    try:
        shape = _ints(input_shape, "--input-shape", "784")
        if shape is not None and (not shape or min(shape) < 1):
            raise BadInputError(f"--input-shape {input_shape!r}: sizes must be >= 1, e.g. 784", field="input_shape")
        with _one_line_warnings():
            lists = read_gnt(gnt_file)
            state = gnt_state(lists, build_model(model, _model_kwargs(model_kwargs)), input_shape=shape,
                              layers=_split(layers), decay=decay)
    except BadInputError as e:
        _fail(str(e), 2)
    try:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(out_file))
    except OSError as e:
        _fail(f"--out {out_file}: cannot write it ({e.strerror or e})", 2)
    for i, name in enumerate(key.removesuffix(".age") for key in state if key.endswith(".age")):
        kinds = [kind for kind in ("age", "reference", "utility") if f"{name}.{kind}" in state]
        out.print(f"GnT layer {i} -> {name} ({len(state[f'{name}.age'])} units: {', '.join(kinds)})",
                  highlight=False, soft_wrap=True)
    out.print(f"wrote {out_file}", highlight=False, soft_wrap=True)


def main() -> None:  # pragma: no cover - `python -m resetassay.cli` (cli/__main__.py)
    """The console entry point: the app run on `sys.argv`."""
    app(sys.argv[1:])


if __name__ == "__main__":
    main()
