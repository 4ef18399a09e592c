"""Continual training on permuted tasks that writes checkpoints (SPEC S6 protocol, S7 CBP).

Plain SGD (backprop) or continual backprop (`resetassay.cbp`). Checkpoints are written after
the tasks (or global epochs) listed in `checkpoint_at`, counted from 0: `checkpoint_at=(0,)`
is the network after its first task. A CBP checkpoint carries the per-unit state (age, stored
reference r̂, tracked utility) and its maturity, so `resetassay run --reference stored` reads
it and leaves immature units out of the ranking (SPEC S1, S2). `accuracy.csv` beside the
checkpoints holds the held-out accuracy after every task, the loss-of-plasticity curve.
Deterministic for a given seed on CPU: data order, initialisation, permutations and resets
are seeded.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from resetassay.cbp import CBPConfig, ContinualBackprop
from resetassay.checkpoint import save_checkpoint
from resetassay.data import IMAGE_SIDE, DataSpec, task_arrays
from resetassay.errors import BadInputError
from resetassay.models import ACTIVATIONS, MODELS, create_model

SCHEDULE_UNITS = ("tasks", "epochs")
PAPER_MLP_WIDTHS = (256, 256, 256, 256)  # SPEC S6: 784 -> [256] x 4 -> 10


@dataclass
class TrainConfig:
    """A continual-training run over `tasks` permutations of one data source (SPEC S6, S7).

    `cbp` None trains with plain backprop; `checkpoint_at` counts tasks, or global epochs when
    `checkpoint_in` is "epochs", from 0.
    """

    model: str = "mlp"
    model_kwargs: dict = field(default_factory=dict)
    data: DataSpec = field(default_factory=DataSpec)
    tasks: int = 1
    epochs_per_task: int = 1
    lr: float = 0.01
    batch_size: int = 64
    seed: int = 0
    checkpoint_at: tuple[int, ...] = ()
    checkpoint_in: str = "tasks"
    cbp: CBPConfig | None = None
    momentum: float = 0.0

    def __post_init__(self) -> None:
        for flag, value in (("--tasks", self.tasks), ("--epochs-per-task", self.epochs_per_task),
                            ("--batch-size", self.batch_size)):
            if value < 1:
                raise BadInputError(f"{flag} {value}: must be at least 1", flag=flag)
        if self.lr <= 0 or not 0 <= self.momentum < 1:
            raise BadInputError(f"--lr {self.lr} / --momentum {self.momentum}: need lr > 0 and 0 <= momentum < 1",
                                flag="--lr")
        if self.checkpoint_in not in SCHEDULE_UNITS:
            raise BadInputError(f"--checkpoint-in {self.checkpoint_in!r}: choose tasks or epochs",
                                flag="--checkpoint-in")
        last = last_checkpoint(self.tasks, self.epochs_per_task, self.checkpoint_in)
        beyond = [t for t in self.checkpoint_at if not 0 <= t <= last]
        if beyond:
            raise BadInputError(
                f"--checkpoint-at {beyond[0]}: {self.checkpoint_in} count from 0 and this run's last is {last}; "
                f"a checkpoint is written after its {self.checkpoint_in[:-1]} (raise --tasks to reach it)",
                flag="--checkpoint-at",
            )


def last_checkpoint(tasks: int, epochs_per_task: int, checkpoint_in: str) -> int:
    """Index of the run's last task, or last global epoch, counted from 0."""
    return tasks - 1 if checkpoint_in == "tasks" else tasks * epochs_per_task - 1


def zoo_kwargs(
    model: str, data: DataSpec, widths: tuple[int, ...] | None = None,
    activation: str = "relu", layer_norm: bool = False,
) -> dict:
    """Keyword arguments of a zoo model sized for `data` (the MLP default is the paper's, SPEC S6)."""
    if model not in MODELS:
        raise BadInputError(f"--model {model!r}: choose from {', '.join(sorted(MODELS))}", flag="--model")
    if activation not in ACTIVATIONS:
        raise BadInputError(f"--activation {activation!r}: choose from {', '.join(ACTIVATIONS)}", flag="--activation")
    if widths is not None and (not widths or min(widths) < 1):
        raise BadInputError(f"--widths {widths}: give positive layer widths, e.g. 256,256,256,256", flag="--widths")
    if model == "mlp":
        return {"in_features": IMAGE_SIDE[data.source] ** 2, "widths": list(widths or PAPER_MLP_WIDTHS),
                "activation": activation, "layer_norm": layer_norm}
    if layer_norm:
        raise BadInputError(f"--layer-norm: only --model mlp has a LayerNorm variant, not {model}", flag="--layer-norm")
    if data.layout != "image":
        raise BadInputError(f"--model {model} needs image data: use --data {data.source}-image", flag="--model")
    kwargs: dict = {"activation": activation}
    if widths:
        kwargs["widths"] = list(widths)
        if model == "resnet":
            kwargs["blocks"] = [1] * len(widths)
    return kwargs


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Fraction of `x` classified as `y`, in eval mode."""
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(xb).argmax(1) == yb).sum())
                   for xb, yb in zip(torch.split(x, batch_size), torch.split(y, batch_size), strict=True))
    return hits / len(x)


def _save(
    config: TrainConfig, model: nn.Module, cbp: ContinualBackprop | None, directory: Path,
    step: dict, spec: DataSpec, acc: float, resets: int,
) -> Path:
    """One checkpoint: weights, manifest (seed, step, data, accuracy, CBP settings) and unit state."""
    meta = {"seed": config.seed, "holdout_accuracy": round(acc, 6), "lr": config.lr,
            "epochs_per_task": config.epochs_per_task, "batch_size": config.batch_size}
    if config.momentum:
        meta["momentum"] = config.momentum
    if cbp is not None:
        meta.update({"learner": "cbp", "maturity": cbp.config.maturity, "cbp": cbp.config.to_dict(),
                     "cbp_layers": cbp.reset_layers, "cbp_skipped": cbp.skipped_layers(), "resets": resets})
    return save_checkpoint(directory, model, f"resetassay.models:{config.model}", config.model_kwargs,
                           step=step, data=spec, meta=meta, state=cbp.state() if cbp is not None else None,
                           unit_layers=list(cbp.traces) if cbp is not None else None)


def _write_accuracy(path: Path, log: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(log[0]))
        writer.writeheader()
        writer.writerows(log)


def train(config: TrainConfig, out_dir: str | Path, progress: bool = False) -> list[Path]:
    """Train task after task; save the checkpoints of the schedule and `accuracy.csv` into `out_dir`."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInputError(f"--out {out_dir}: exists and is not a directory; name a folder", flag="--out")
    torch.manual_seed(config.seed)
    model = create_model(config.model, **config.model_kwargs)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    order = torch.Generator().manual_seed(config.seed)
    cbp: ContinualBackprop | None = None
    saved, log, resets = [], [], 0
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress) as bar:
        steps = bar.add_task(f"task 0/{config.tasks}", total=None)
        for task in range(config.tasks):
            spec = DataSpec(**{**config.data.to_dict(), "task": task})
            x, y = task_arrays(spec, "train")
            hx, hy = task_arrays(spec, "holdout")
            if task == 0:
                per_epoch = math.ceil(len(x) / config.batch_size)
                bar.update(steps, total=config.tasks * config.epochs_per_task * per_epoch)
                if config.cbp is not None:
                    cbp = ContinualBackprop(model, config.cbp, x[:2], seed=config.seed)
            task_resets = 0
            for epoch in range(config.epochs_per_task):
                model.train()
                for idx in torch.randperm(len(x), generator=order).split(config.batch_size):
                    optimizer.zero_grad()
                    logits = model(x[idx])
                    if cbp is not None:
                        cbp.observe(logits, y[idx])
                    F.cross_entropy(logits, y[idx]).backward()
                    optimizer.step()
                    if cbp is not None:
                        task_resets += cbp.step(optimizer)
                    bar.advance(steps)
                global_epoch = task * config.epochs_per_task + epoch
                if config.checkpoint_in == "epochs" and global_epoch in config.checkpoint_at:
                    saved.append(_save(config, model, cbp, out_dir / f"epoch{global_epoch}", {"epoch": global_epoch},
                                       spec, accuracy(model, hx, hy), resets + task_resets))
            resets += task_resets
            acc = accuracy(model, hx, hy)
            log.append({"task": task, "holdout_accuracy": acc, **({"resets": task_resets} if cbp is not None else {})})
            bar.update(steps, description=f"task {task + 1}/{config.tasks} · held-out accuracy {acc:.3f}")
            if config.checkpoint_in == "tasks" and task in config.checkpoint_at:
                saved.append(_save(config, model, cbp, out_dir / f"task{task}", {"task": task}, spec, acc, resets))
            _write_accuracy(out_dir / "accuracy.csv", log)
    if cbp is not None:
        cbp.close()
    return saved
