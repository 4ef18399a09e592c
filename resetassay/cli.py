"""The `resetassay` command: parse, call one library function, print (DESIGN "cli.py")."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from resetassay.assay import AssayConfig, checkpoint_layers, run_assay
from resetassay.data import DataSpec, data_spec
from resetassay.errors import BadInputError
from resetassay.report import render
from resetassay.units import layer_table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Measure what resetting a neuron costs, and which utility predicts it.")
err = Console(stderr=True)
out = Console()


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _fail(message: str, code: int) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _show_warning(message: Warning | str, *_args: object, **_kwargs: object) -> None:
    """Warnings as one line each, each distinct message once."""
    text = str(message)
    if text not in _shown:
        _shown.add(text)
        err.print(f"[yellow]warning:[/] {text}", highlight=False, soft_wrap=True)


_shown: set[str] = set()


def _model_kwargs(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInputError(f"--model-kwargs is not valid JSON ({e.msg}); e.g. '{{\"width\": 64}}'") from e
    if not isinstance(value, dict):
        raise BadInputError("--model-kwargs must be a JSON object, e.g. '{\"width\": 64}'")
    return value


def _data(name: str | None, task: int, permutation_seed: int, data_dir: Path | None) -> DataSpec | None:
    if name is None:
        return None
    return data_spec(name, task, permutation_seed, str(data_dir) if data_dir else None)


Data = Annotated[str | None, typer.Option(help="Data for checkpoints that record none: digits, "
                                          "digits-image, mnist, mnist-image.")]
DataDir = Annotated[Path | None, typer.Option(help="Folder of MNIST IDX files (*-ubyte.gz).")]
Task = Annotated[int, typer.Option(help="With --data: the permutation task to probe.")]
PermSeed = Annotated[int, typer.Option(help="With --data: the permutation seed.")]
Model = Annotated[str | None, typer.Option(help="package.module:factory that builds the model of a "
                                           "plain state dict (.safetensors or .pt).")]
ModelKwargs = Annotated[str | None, typer.Option(help="JSON object of keyword arguments for --model.")]
Layers = Annotated[str | None, typer.Option(help="Comma-separated globs over unit-layer names.")]


@app.command()
def run(
    checkpoints: Annotated[list[Path], typer.Argument(help="Checkpoint directories (searched recursively) "
                                                      "or state-dict files.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory for tables, report and figures.")]
    = Path("reports/run"),
    utilities: Annotated[str | None, typer.Option(help="Comma-separated utilities (default: all).")] = None,
    metrics: Annotated[str, typer.Option(help="Comma-separated shock metrics.")] = "l1,kl",
    layers: Layers = None,
    reference: Annotated[str, typer.Option(help="calibration-mean, stored or zero (SPEC S2).")]
    = "calibration-mean",
    calib_size: Annotated[int | None, typer.Option(help="Calibration examples (default 2048).")] = None,
    probe_size: Annotated[int | None, typer.Option(help="Probe examples (default 2048).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the data split and the random utility.")] = 0,
    q: Annotated[float, typer.Option(help="Fraction of units reset for Shock@q.")] = 0.05,
    maturity: Annotated[int | None, typer.Option(help="Units with age <= this are not ranked.")] = None,
    batch_size: Annotated[int, typer.Option(help="Examples per forward.")] = 512,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    joint: Annotated[bool, typer.Option(help="Also measure joint Shock@q.")] = True,
    model: Model = None,
    model_kwargs: ModelKwargs = None,
    data: Data = None,
    data_dir: DataDir = None,
    task: Task = 0,
    permutation_seed: PermSeed = 0,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Assay checkpoints: score every unit, lesion each one, write tables and a report."""
    try:
        config = AssayConfig(
            **({"utilities": _split(utilities)} if utilities else {}),
            metrics=_split(metrics) or [], layers=_split(layers), reference=reference,
            calib_size=calib_size, probe_size=probe_size, seed=seed, q=q, maturity=maturity,
            batch_size=batch_size, device=device, joint=joint,
        )
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            result = run_assay(checkpoints, config, model=model, model_kwargs=_model_kwargs(model_kwargs),
                               data=_data(data, task, permutation_seed, data_dir), progress=not quiet)
        report = result.save(out_dir)
    except BadInputError as e:
        _fail(str(e), 2)
    except FloatingPointError as e:
        _fail(str(e), 1)
    pooled = result.summary[(result.summary["scope"] == "ALL") & (result.summary["metric"] == config.metrics[0])]
    table = Table(title=f"pooled Spearman ρ ({config.metrics[0]}), mean over checkpoints")
    table.add_column("utility")
    table.add_column("ρ", justify="right")
    for utility, g in pooled.groupby("utility", sort=False):
        table.add_row(utility, f"{g['spearman'].mean():.3f}")
    out.print(table)
    out.print(f"wrote {report.parent}/ (units.csv, summary.csv, report.md, figures/)")


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A directory written by `resetassay run`.")]) -> None:
    """Re-render report.md and figures from a run's tables, without running a model."""
    try:
        path = render(run_dir)
    except BadInputError as e:
        _fail(str(e), 2)
    out.print(f"wrote {path}")


@app.command()
def inspect(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint directory or state-dict file.")],
    layers: Layers = None,
    model: Model = None,
    model_kwargs: ModelKwargs = None,
    data: Data = None,
    data_dir: DataDir = None,
) -> None:
    """List the unit layers of a checkpoint: kind, unit count, producer and consumer."""
    try:
        found = checkpoint_layers(checkpoint, _split(layers), model, _model_kwargs(model_kwargs),
                                  _data(data, 0, 0, data_dir))
    except BadInputError as e:
        _fail(str(e), 2)
    rows = layer_table(found)
    table = Table(title=str(checkpoint))
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    out.print(table)


def main() -> None:  # pragma: no cover - `python -m resetassay.cli`
    app(sys.argv[1:])


if __name__ == "__main__":
    main()
