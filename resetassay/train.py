"""Training on permuted tasks that writes checkpoints (SPEC S6 protocol, plain SGD).

Deterministic for a given seed on CPU: data order, initialisation and permutations are seeded.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from resetassay.checkpoint import save_checkpoint
from resetassay.data import DataSpec, task_arrays
from resetassay.models import create_model


@dataclass
class TrainConfig:
    """A continual-training run over `tasks` permutations of one data source."""

    model: str = "mlp"
    model_kwargs: dict = field(default_factory=dict)
    data: DataSpec = field(default_factory=DataSpec)
    tasks: int = 1
    epochs_per_task: int = 1
    lr: float = 0.01
    batch_size: int = 64
    seed: int = 0
    checkpoint_at: tuple[int, ...] = ()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Fraction of `x` classified as `y`, in eval mode."""
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(xb).argmax(1) == yb).sum())
                   for xb, yb in zip(torch.split(x, batch_size), torch.split(y, batch_size), strict=True))
    return hits / len(x)


def train(config: TrainConfig, out_dir: str | Path) -> list[Path]:
    """Train task after task; save a checkpoint after each task in `checkpoint_at`."""
    out_dir = Path(out_dir)
    torch.manual_seed(config.seed)
    model = create_model(config.model, **config.model_kwargs)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    order = torch.Generator().manual_seed(config.seed)
    saved, log = [], []
    for task in range(config.tasks):
        spec = DataSpec(**{**config.data.to_dict(), "task": task})
        x, y = task_arrays(spec, "train")
        model.train()
        for _ in range(config.epochs_per_task):
            for idx in torch.randperm(len(x), generator=order).split(config.batch_size):
                optimizer.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                optimizer.step()
        hx, hy = task_arrays(spec, "holdout")
        acc = accuracy(model, hx, hy)
        log.append({"task": task, "holdout_accuracy": acc})
        if task in config.checkpoint_at:
            saved.append(save_checkpoint(
                out_dir / f"task{task}", model, f"resetassay.models:{config.model}",
                config.model_kwargs, step={"task": task}, data=spec,
                meta={"seed": config.seed, "holdout_accuracy": round(acc, 6), "lr": config.lr,
                      "epochs_per_task": config.epochs_per_task, "batch_size": config.batch_size},
            ))
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "accuracy.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["task", "holdout_accuracy"])
        writer.writeheader()
        writer.writerows(log)
    return saved
