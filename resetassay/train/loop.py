"""Continual training on permuted tasks, or plain training on an image folder or a plain built-in dataset, that
writes checkpoints (SPEC S6 protocol, S7 CBP).

The continual study trains on `data` permuted-digits, permuted-mnist, permuted-fashion-mnist (each also -image) or
grammar: task k is the dataset with its pixels permuted by the seeded permutation of k. `data` digits, mnist or
fashion-mnist (each also -image) is the dataset as published, one task, trained for `epochs_per_task` epochs and
checkpointed by epoch, as an image folder is (docs/data.md).

Plain SGD (backprop, the default) or continual backprop (`resetassay.train.cbp`). An image folder or archive
(`data.training_images`) is one task, the dataset itself: the run trains on its `train` root for `epochs_per_task`
epochs (optionally augmented, `augment`), checkpoints count epochs (`epoch<k>`), and each checkpoint records the
folder, so the assay probes its held-out root (test, val, ...), as SPEC S6's ResNet-18 checkpoints along one CIFAR
run.

The learning rate (`schedule`): "constant"; "cosine", annealed to 0 over all SGD steps (`CosineAnnealingLR`);
"step", SPEC S6's Table 3 schedule, multiplied by 0.2 after 30 %, 60 % and 80 % of the run (the paper's epochs
60, 120, 160 of 200) by `MultiStepLR`, which is stepped once per SGD step with its milestones at the equivalent
step counts, round(fraction x all steps): when a fraction of the epochs is whole (200 or 10 epochs: 60/120/160,
3/6/8) that is exactly the first step of that epoch, as an epoch-stepped schedule would have it, and a short run
(2 epochs) still gets the three decays, inside epochs. The epochs are all of the run's (`tasks` x
`epochs_per_task`).

Augmentation of an image folder (`augment`): "none"; "crop-flip", a random crop of the image's own size from it
zero-padded by 4 pixels and a left-right flip with probability 1/2 (`crop_and_flip`, on the uint8 images); or
"crop-flip-rotate", that and then a rotation by an angle drawn uniformly from [0°, 15°] per image
(`random_rotation`). SPEC S6 writes "rotation 0–15°", and the code the protocol comes from (the loss-of-plasticity
incremental CIFAR experiment, `RandomRotator(degrees=(0, 15))`) draws from [0, 15], not [-15, 15]: so one
direction, counterclockwise, 0 to 15 degrees. The rotation is done with torch (`affine_grid`/`grid_sample`,
bilinear, per batch with one angle per image) after normalisation, so the corners it uncovers are 0, the dataset's
mean colour, as in that code (which rotates normalised tensors with fill 0). A train.json or manifest written when
`augment` was a switch reads as before: true is "crop-flip", false "none".

`examples_per_task` trains on a seeded sample of each task; `examples_per_class` on a seeded, class-balanced one
(SPEC S6: 450 training images per class; the paper's 50 validation images per class are never trained on, and a
run that takes 450 of a class leaves the rest out likewise).

`checkpoint_at` counts completed tasks (or global epochs): 0 is the untrained network, saved before the first SGD
step, and k the network after the k-th task, saved as `task<k>` (SPEC S6's checkpoints {0, 5, 10, 20, 30} are
`--tasks 30 --checkpoint-at 0,5,10,20,30`). Its manifest records the family (`checkpoint.family_name`: the model
and its training, or `--family`) and the data of the task trained last (task 0 for the untrained one). A CBP
checkpoint carries the per-unit state (age, stored reference r̂, tracked utility) and its maturity, so `resetassay
run --reference stored` reads it and leaves immature units out of the ranking (SPEC S1, S2). `accuracy.csv` beside
the checkpoints holds the held-out accuracy after every task (its `task` k: after the k-th) and the online
accuracy (the mean over the task's training stream of each batch's accuracy before its SGD step, the paper's
loss-of-plasticity curve). Deterministic for a given seed on CPU: data order, initialisation, permutations,
augmentation and resets are seeded.

The output folder OUT, written only by `train`:

    OUT/train.json            the training config and its hash (`RECORD`): what a rerun must match
    OUT/task<k>/, epoch<k>/   the checkpoints, each renamed into place whole (`checkpoint.save_checkpoint`)
    OUT/accuracy.csv          held-out and online accuracy of every task (written whole, `rundir.atomic_write`)

A non-empty OUT is refused unless it holds the train.json of the same config: then the run resumes. It
keeps the checkpoints on disk and, when one is missing, trains again from the start (no optimizer or CBP
state is saved, and a run is bit-identical for a seed on CPU), checking that it reproduces the kept ones
and writing only the missing ones. `overwrite` first deletes what a training run wrote there (checkpoint
folders, accuracy.csv, train.json), never other files. A NaN/Inf loss or weight stops the run
(`TrainingFailed`), Ctrl-C too (`RunInterrupted`); the checkpoints saved before stay, and none is written
from a diverged model or half.

Over 500 lines: TrainConfig and its one validation, the checkpoint schedule, resuming and the loop; the config is
the next to move out (train/config.py), so that the command line can build its flags from it without torch.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import re
import shutil
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from safetensors.torch import load as load_safetensors
from torch import nn

from resetassay.data import (
    IMAGE_SIDE,
    PERMUTED,
    DataSpec,
    data_name,
    image_classes,
    image_tensor,
    task_arrays,
    training_images,
)
from resetassay.data.grammar import LENGTH, VOCAB
from resetassay.discovery import sequences
from resetassay.errors import BadInputError
from resetassay.io.checkpoint import FORMAT, check_family, family_name, save_checkpoint
from resetassay.io.rundir import RunInterrupted, atomic_write, canonical_hash, interrupt_held
from resetassay.models import ACTIVATIONS, DEFAULT_INIT, INITS, MODELS, RESNET_WIDTHS, create_model
from resetassay.names import MANIFEST, STATE, WEIGHTS
from resetassay.train.cbp import CBPConfig, ContinualBackprop

SCHEDULE_UNITS = ("tasks", "epochs")
LR_SCHEDULES = ("constant", "cosine", "step")  # cosine: annealed to 0 over all steps; step: SPEC S6's Table 3
STEP_FRACTIONS = (0.3, 0.6, 0.8)  # step: the lr x STEP_GAMMA after these fractions of the run (60/120/160 of 200)
STEP_GAMMA = 0.2
AUGMENTATIONS = ("none", "crop-flip", "crop-flip-rotate")
OLD_AUGMENT = {True: "crop-flip", False: "none"}  # `augment` was a switch: train.json and manifests of then
ROTATION_DEGREES = (0.0, 15.0)  # crop-flip-rotate: an angle drawn uniformly from [0°, 15°], counterclockwise
TRAINABLE_OWN_DATA = "images"  # of the user's own sources, image folders and archives train (one task)
CROP_PADDING = 4  # augment: crops of the image's own size from it padded by 4 zero pixels, as usual on CIFAR
OPTIMIZERS = ("sgd", "adam")  # SGD (with --momentum) is the paper's (SPEC S6); Adam suits the transformer
PAPER_MLP_WIDTHS = (256, 256, 256, 256)  # SPEC S6: 784 -> [256] x 4 -> 10
RECORD = "train.json"
RECORD_FORMAT = "resetassay.train/2"
OLD_RECORDS = ("resetassay.train/1",)  # --checkpoint-at counted from 0 after the first task
ACCURACY = "accuracy.csv"
CHECKPOINT_DIR = re.compile(r"^(task|epoch)\d+$")
# Left by a killed write: save_checkpoint's `.task3.tmp-*`/`.task3.old-*`, atomic_write's `.accuracy.csv.*`.
LEFTOVER_DIR = re.compile(r"^\.(task|epoch)\d+\.(tmp|old)-[0-9a-f]+$")
LEFTOVER_FILE = re.compile(r"^\.(accuracy\.csv|train\.json)\..+$")
MAX_SEED = 2**64  # torch.manual_seed takes [0, 2**64)
MAX_LR = float(torch.finfo(torch.float32).max)  # SGD multiplies float32 gradients by it


class TrainingFailed(RuntimeError):
    """Training stopped: the loss or the weights became NaN/Inf, or a rerun does not reproduce a kept checkpoint.
    The CLI exits with code 1; the checkpoints saved before stay on disk."""


def _integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _finite(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class TrainConfig:
    """A continual-training run over `tasks` permutations of one data source (SPEC S6, S7).

    `cbp` None trains with plain backprop; `checkpoint_at` counts completed tasks, or global epochs when
    `checkpoint_in` is "epochs": 0 before training, k after the k-th (kept sorted, without repeats). `family`
    names the run's report family (default: `family_name` of the model and its training); it is resolved
    here, so train.json and every manifest record it. Every field is checked here: a bad value is a
    `BadInputError` naming its field.
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
    family: str | None = None
    optimizer: str = "sgd"
    examples_per_task: int | None = None
    weight_decay: float = 0.0
    schedule: str = "constant"
    augment: str = "none"
    examples_per_class: int | None = None

    def __post_init__(self) -> None:  # noqa: C901 — one flat check per field, in the order of the fields
        for name, value in (("tasks", self.tasks), ("epochs_per_task", self.epochs_per_task),
                            ("batch_size", self.batch_size)):
            if not _integer(value) or value < 1:
                raise BadInputError(f"`{name}` {value}: must be a whole number >= 1", field=name)
        if not _finite(self.lr) or not 0 < self.lr <= MAX_LR:
            raise BadInputError(f"`lr` {self.lr}: must be a number > 0 and finite in float32 (<= {MAX_LR:.3g}), "
                                "e.g. 0.01", field="lr")
        for name, value in (("examples_per_task", self.examples_per_task),
                            ("examples_per_class", self.examples_per_class)):
            if value is not None and (not _integer(value) or value < 1):
                raise BadInputError(f"`{name}` {value}: must be a whole number >= 1", field=name)
        if self.examples_per_task is not None and self.examples_per_class is not None:
            raise BadInputError("`examples_per_class`: give it or `examples_per_task`, not both",
                                field="examples_per_class")
        if self.optimizer not in OPTIMIZERS:
            raise BadInputError(f"`optimizer` {self.optimizer!r}: choose {' or '.join(OPTIMIZERS)}", field="optimizer")
        if not _finite(self.momentum) or not 0 <= self.momentum < 1:
            raise BadInputError(f"`momentum` {self.momentum}: must be a number in [0, 1)", field="momentum")
        if self.momentum and self.optimizer != "sgd":
            raise BadInputError(f"`momentum` applies to `optimizer` sgd, not {self.optimizer}", field="momentum")
        if not _finite(self.weight_decay) or self.weight_decay < 0:
            raise BadInputError(f"`weight_decay` {self.weight_decay}: must be a number >= 0", field="weight_decay")
        if self.schedule not in LR_SCHEDULES:
            raise BadInputError(f"`schedule` {self.schedule!r}: choose {', '.join(LR_SCHEDULES[:-1])} or "
                                f"{LR_SCHEDULES[-1]}", field="schedule")
        if isinstance(self.augment, bool):  # the switch it was: True crops and flips
            self.augment = OLD_AUGMENT[self.augment]
        if self.augment not in AUGMENTATIONS:
            hint = (" (it takes a value now: crop-flip is what `augment` alone did)"
                    if isinstance(self.augment, str) and self.augment.startswith("-") else "")
            raise BadInputError(f"`augment` {self.augment!r}: choose {', '.join(AUGMENTATIONS[:-1])} or "
                                f"{AUGMENTATIONS[-1]}{hint}", field="augment")
        self._check_own_data()
        if not _integer(self.seed) or not 0 <= self.seed < MAX_SEED:
            raise BadInputError(f"`seed` {self.seed}: must be a whole number in [0, 2**64)", field="seed")
        if not _integer(self.data.permutation_seed) or self.data.permutation_seed < 0:
            raise BadInputError(f"`permutation_seed` {self.data.permutation_seed}: must be a whole number >= 0",
                                field="permutation_seed")
        if self.checkpoint_in not in SCHEDULE_UNITS:
            raise BadInputError(f"`checkpoint_in` {self.checkpoint_in!r}: choose tasks or epochs",
                                field="checkpoint_in")
        odd = [t for t in self.checkpoint_at if not _integer(t)]
        if odd:
            raise BadInputError(f"`checkpoint_at` {odd[0]!r}: give whole numbers, e.g. 0,5,10", field="checkpoint_at")
        last = last_checkpoint(self.tasks, self.epochs_per_task, self.checkpoint_in)
        beyond = [t for t in self.checkpoint_at if not 0 <= t <= last]
        if beyond:
            raise BadInputError(
                f"`checkpoint_at` {beyond[0]}: counts completed {self.checkpoint_in}, from 0 (before training) to "
                f"{last} (after the last of this run); raise `tasks` to reach it", field="checkpoint_at",
            )
        self.checkpoint_at = tuple(sorted({int(t) for t in self.checkpoint_at}))
        self.family = check_family(self.family) if self.family is not None else family_name(
            self.model, self.model_kwargs, self.data, self.cbp.utility if self.cbp is not None else None)

    def _check_own_data(self) -> None:
        """An image folder, or a plain built-in dataset (`data` mnist, not permuted-mnist), trains as one task,
        checkpointed by epoch; `augment` applies to an image folder only."""
        plain = self.data.source in PERMUTED and not self.data.permuted
        own = self.data.source not in PERMUTED
        if own and self.data.source != TRAINABLE_OWN_DATA:
            raise BadInputError(f"`data` {self.data.describe()}: your own data trains only as an image folder or "
                                f"archive; use it with resetassay run", field="data")
        what = (f"`data` {data_name(self.data)} is the plain dataset, one task (the continual study's tasks are "
                f"`data` permuted-{data_name(self.data)})" if plain else "an image folder is one task")
        if (own or plain) and self.tasks != 1:
            raise BadInputError(f"`tasks` {self.tasks}: {what}, trained for `epochs`", field="tasks")
        if (own or plain) and self.checkpoint_in != "epochs":
            raise BadInputError(f"`checkpoint_in` tasks: {what}; its checkpoints count epochs", field="checkpoint_in")
        if self.augment != "none" and not own:
            raise BadInputError(f"`augment` {self.augment} augments the images of an image folder, not `data` "
                                f"{data_name(self.data)}", field="augment")

    def to_dict(self) -> dict:
        """The config as JSON values: what `train.json` records and hashes."""
        return json.loads(json.dumps(asdict(self)))

    def checkpoints(self) -> dict[str, dict]:
        """The checkpoints of the schedule, by folder name (`task3`, `epoch7`), with their manifest step."""
        unit = self.checkpoint_in[:-1]
        return {f"{unit}{k}": {unit: k} for k in self.checkpoint_at}


def last_checkpoint(tasks: int, epochs_per_task: int, checkpoint_in: str) -> int:
    """The `checkpoint_at` of the trained network: all tasks, or all global epochs, completed."""
    return tasks if checkpoint_in == "tasks" else tasks * epochs_per_task


def zoo_kwargs(
    model: str, data: DataSpec, widths: tuple[int, ...] | None = None,
    activation: str = "relu", layer_norm: bool = False, blocks: int | None = None, init: str = DEFAULT_INIT,
) -> dict:
    """Keyword arguments of a zoo model sized for `data` (the MLP default is the paper's, SPEC S6); `blocks`: a
    ResNet's BasicBlocks per stage (default 1; SPEC S6's ResNet-18 has 2); `init`: `models.INITS`, recorded in the
    kwargs (so in every checkpoint's manifest and family) where it is not the default."""
    if init not in INITS:
        raise BadInputError(f"`init` {init!r}: choose from {', '.join(INITS)}", field="init")
    kwargs = _zoo_kwargs(model, data, widths, activation, layer_norm, blocks)
    return kwargs if init == DEFAULT_INIT else {**kwargs, "init": init}


def _zoo_kwargs(model: str, data: DataSpec, widths: tuple[int, ...] | None, activation: str, layer_norm: bool,  # noqa: C901 — one branch per zoo family's options
                blocks: int | None) -> dict:
    """`zoo_kwargs` but the init."""
    if model not in MODELS:
        raise BadInputError(f"`model` {model!r}: choose from {', '.join(sorted(MODELS))}", field="model")
    if activation not in ACTIVATIONS:
        raise BadInputError(f"`activation` {activation!r}: choose from {', '.join(ACTIVATIONS)}", field="activation")
    if widths is not None and (not widths or min(widths) < 1):
        raise BadInputError(f"`widths` {widths}: give positive layer widths, e.g. 256,256,256,256", field="widths")
    if blocks is not None and (model != "resnet" or not _integer(blocks) or blocks < 1):
        raise BadInputError(f"`blocks` {blocks}: a whole number >= 1 of BasicBlocks per stage of `model` resnet",
                            field="blocks")
    if (model == "transformer") != (data.source == "grammar"):
        raise BadInputError("`model` transformer trains on token sequences (`data` grammar), and `data` grammar "
                            f"trains `model` transformer; got `model` {model} `data` {data.source}", field="model")
    if model == "transformer":  # widths: the residual width of each block; its MLP is GELU (SPEC S9)
        if widths is not None and len(set(widths)) != 1:
            raise BadInputError(f"`widths` {widths}: a transformer's blocks share one width, e.g. 64,64",
                                field="widths")
        if layer_norm:
            raise BadInputError("`layer_norm`: the transformer has its LayerNorms already", field="layer_norm")
        return {"vocab": VOCAB, "max_len": LENGTH, "d_model": widths[0] if widths else 64,
                "n_layers": len(widths) if widths else 2}
    if model == "mlp" and data.source not in PERMUTED:
        raise BadInputError("`model` mlp trains on permuted data; an image folder trains `model` cnn or resnet",
                            field="model")
    if model == "mlp":
        return {"in_features": IMAGE_SIDE[data.source] ** 2, "widths": list(widths or PAPER_MLP_WIDTHS),
                "activation": activation, "layer_norm": layer_norm}
    if layer_norm:
        raise BadInputError(f"`layer_norm`: only `model` mlp has a LayerNorm variant, not {model}", field="layer_norm")
    own = data.source == TRAINABLE_OWN_DATA  # RGB images, as many outputs as class folders
    if data.layout != "image" and not own:
        image = data_name(DataSpec(**{**data.to_dict(), "layout": "image"}))
        raise BadInputError(f"`model` {model} needs image data: use `data` {image}", field="model")
    kwargs: dict = {"activation": activation}
    if own:
        kwargs.update(in_channels=3, n_classes=len(image_classes(data)))
    if widths:
        kwargs["widths"] = list(widths)
    if model == "resnet" and (widths or blocks):
        kwargs["widths"] = list(widths or RESNET_WIDTHS)
        kwargs["blocks"] = [blocks or 1] * len(kwargs["widths"])
    return kwargs


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Fraction of `x` classified as `y` (a language model: of next tokens predicted, SPEC S9), in eval mode."""
    model.eval()
    with torch.no_grad():
        return sequences.accuracy(torch.cat([model(xb) for xb in torch.split(x, batch_size)]), y)


Batch = Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # stored inputs of a batch -> the model's inputs


def crop_and_flip(x: torch.Tensor, generator: torch.Generator, padding: int = CROP_PADDING) -> torch.Tensor:
    """Images (N, C, H, W) cropped at random from their zero-padded copies, each flipped left-right with
    probability 1/2: the usual light augmentation of CIFAR training, drawn from `generator`."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy, dx = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)
    rows, cols = dy[:, None] + torch.arange(h), dx[:, None] + torch.arange(w)
    flip = torch.rand(n, generator=generator) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Float images (N, C, H, W), the n-th rotated counterclockwise by `degrees[n]` about its centre (bilinear;
    what leaves the image is lost, the corners it uncovers are 0), as torchvision's `rotate` turns them."""
    n, _, h, w = x.shape
    angle = torch.deg2rad(degrees.to(torch.float32))
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(cos)
    # where each output pixel reads in the input, in affine_grid's [-1, 1] coordinates (x right, y down), scaled
    # so that a non-square image turns as a picture does
    theta = torch.stack([torch.stack([cos, -sin * h / w, zero], 1), torch.stack([sin * w / h, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)


def random_rotation(x: torch.Tensor, generator: torch.Generator,
                    degrees: tuple[float, float] = ROTATION_DEGREES) -> torch.Tensor:
    """Float images (N, C, H, W), each rotated counterclockwise by an angle drawn uniformly from `degrees` (SPEC
    S6: [0°, 15°], module doc) from `generator`."""
    low, high = degrees
    return rotate(x, low + (high - low) * torch.rand(len(x), generator=generator))


def _training_set(config: TrainConfig, spec: DataSpec) -> tuple[torch.Tensor, torch.Tensor, Batch]:
    """The training inputs and labels of the task in `spec`, and how a batch of them becomes the model's input:
    a permuted task as stored; an image folder's uint8 images (decoded once, `training_images`) cropped and
    flipped with `augment`, made float and normalised, then rotated with "crop-flip-rotate"."""
    if spec.source in PERMUTED:
        x, y = _task_sample(task_arrays(spec, "train"), config, spec.task)
        return x, y, lambda xb, _generator: xb
    x, y = _task_sample(training_images(spec), config, spec.task)

    def batch(xb: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        images = image_tensor(crop_and_flip(xb, generator) if config.augment != "none" else xb, spec.mean, spec.std)
        return random_rotation(images, generator) if config.augment == "crop-flip-rotate" else images

    return x, y, batch


def _task_sample(arrays: tuple[torch.Tensor, torch.Tensor], config: TrainConfig,
                 task: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A task's training examples: all, or `examples_per_task` of them drawn without replacement, or
    `examples_per_class` of each class (all of a class that has fewer), seeded by the run's seed and the task
    (short tasks: many tasks on a small budget; SPEC S6's 450 images per class), in their stored order."""
    x, y = arrays
    n, per_class = config.examples_per_task, config.examples_per_class
    if (n is None or n >= len(x)) and per_class is None:
        return x, y
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(config.seed * 1_000_003 + task))
    if per_class is None:
        pick = order[:n]
    else:  # the first `per_class` of each class in the seeded order
        labels = y[order]
        pick = torch.cat([order[labels == c][:per_class] for c in torch.unique(labels)])
    pick = pick.sort().values
    return x[pick], y[pick]


def step_milestones(total_steps: int) -> list[int]:
    """The SGD steps after which the "step" schedule multiplies the lr by STEP_GAMMA: STEP_FRACTIONS of all
    `total_steps`, rounded (module doc)."""
    return [round(f * total_steps) for f in STEP_FRACTIONS]


def _scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer,
               total_steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The lr schedule of `config.schedule`, stepped once per SGD step over `total_steps` (None: constant)."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if config.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, step_milestones(total_steps), gamma=STEP_GAMMA)
    return None


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of a batch: over examples, or over the positions that have a next token (SPEC S9)."""
    if sequences.is_sequence(logits):
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=sequences.IGNORE)
    return F.cross_entropy(logits, y)


def _save(
    config: TrainConfig, model: nn.Module, cbp: ContinualBackprop | None, directory: Path,
    step: dict, spec: DataSpec, acc: float, resets: int,
) -> Path:
    """One checkpoint: weights, manifest (family, seed, step, data, accuracy, CBP settings) and unit state."""
    meta: dict[str, object] = {"family": config.family, "seed": config.seed, "holdout_accuracy": round(acc, 6),
                               "lr": config.lr, "epochs_per_task": config.epochs_per_task,
                               "batch_size": config.batch_size}
    for key, default in (("momentum", 0.0), ("weight_decay", 0.0), ("schedule", "constant"), ("augment", "none"),
                         ("examples_per_class", None)):
        if getattr(config, key) != default:
            meta[key] = getattr(config, key)
    if config.optimizer != "sgd":
        meta["optimizer"] = config.optimizer
    if cbp is not None:
        meta.update({"learner": "cbp", "maturity": cbp.config.maturity, "cbp": cbp.config.to_dict(),
                     "cbp_layers": cbp.reset_layers, "cbp_skipped": cbp.skipped_layers(), "resets": resets})
    return save_checkpoint(directory, model, f"resetassay.models:{config.model}", config.model_kwargs,
                           step=step, data=spec, meta=meta, state=cbp.state() if cbp is not None else None,
                           unit_layers=list(cbp.traces) if cbp is not None else None)


def _accuracy_csv(log: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(log[0]))
    writer.writeheader()
    writer.writerows(log)
    return buffer.getvalue()


def _ours(path: Path) -> bool:
    """Whether the entry `path` of OUT is something `train` writes: train.json, accuracy.csv, a checkpoint folder
    (`task<k>`, `epoch<k>`) holding only checkpoint files, or a leftover of a killed write. Never a link."""
    if path.is_symlink():
        return False
    if path.name in (RECORD, ACCURACY) or LEFTOVER_FILE.match(path.name):
        return path.is_file()
    if CHECKPOINT_DIR.match(path.name) or LEFTOVER_DIR.match(path.name):
        return path.is_dir() and all(p.name in (MANIFEST, WEIGHTS, STATE) and p.is_file() and not p.is_symlink()
                                     for p in path.iterdir())
    return False


def _whole(directory: Path, step: dict, cbp: bool) -> bool:
    """A finished checkpoint of this step on disk: its manifest, weights and (with CBP) state. `save_checkpoint`
    renames a directory into place only once complete, so a checkpoint under its name is whole."""
    if directory.is_symlink() or not directory.is_dir():
        return False
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(manifest, dict) and manifest.get("format") == FORMAT and manifest.get("step") == step
            and (directory / WEIGHTS).is_file() and (directory / STATE).is_file() == cbp)


def _read_record(path: Path) -> dict | None:
    """train.json (its "config" an object), or None when it is missing or unreadable."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(record, dict) and record.get("format") == RECORD_FORMAT and isinstance(record.get("config"), dict)
    return record if ok else None


def _unusable(path: Path) -> str:
    """Why a train.json that `_read_record` refuses cannot be resumed: missing, of an older train, or unreadable."""
    if not path.exists():
        return f"holds no {RECORD} of a training run"
    try:
        old = json.loads(path.read_text(encoding="utf-8")).get("format") in OLD_RECORDS
    except (OSError, ValueError, AttributeError):
        old = False
    return (f"its {RECORD} is of an older train, whose `checkpoint_at` counted tasks from 0 after the first one (0 "
            "is now the untrained network)" if old else f"its {RECORD} is unreadable")


def _environment() -> dict:
    """What else decides the bits of a CPU run: torch, the CPU's vector instructions and torch's thread count."""
    return {"torch": torch.__version__.split("+")[0], "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads()}


def _with_defaults(stored: dict) -> dict:
    """A recorded config with the fields added to TrainConfig since it was written, at their defaults, and the
    values of an older form in today's (`augment` true: "crop-flip"), so a run of the same command resumes after
    an upgrade that only added options."""
    if not isinstance(stored, dict):
        return stored
    added = {f.name: f.default for f in fields(TrainConfig) if f.name not in stored and f.default is not MISSING}
    upgraded = {"augment": OLD_AUGMENT[stored["augment"]]} if isinstance(stored.get("augment"), bool) else {}
    if isinstance(stored.get("data"), dict) and "permuted" not in stored["data"]:  # before the plain datasets
        upgraded["data"] = {**stored["data"], "permuted": True}
    return {**added, **stored, **upgraded}


def _changes(old: object, new: object, key: str = "") -> list[str]:
    """What differs between two recorded configs, e.g. ["lr 0.01 -> 0.1", "cbp on -> off"]."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [change for k in sorted(old.keys() | new.keys())
                for change in _changes(old.get(k), new.get(k), f"{key}.{k}" if key else k)]
    if old == new:
        return []
    if key == "cbp":
        return [f"cbp {'off' if old is None else 'on'} -> {'off' if new is None else 'on'}"]
    return [f"{key} {old!r} -> {new!r}"]


def _listed(paths: list[Path], most: int = 3) -> str:
    names = [p.name for p in paths]
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _prepare_out(config: TrainConfig, out: Path, overwrite: bool) -> dict | None:
    """Make `out` ready for `config`: the train.json of the run it resumes (same config), else None after
    recording `config` and the environment in a new train.json.

    Refused (`BadInputError` on --out), before anything is deleted or written: a checkpoint folder of the
    schedule holding other files; without `overwrite`, a non-empty folder without train.json, or whose
    train.json records another config (naming what changed). `overwrite` deletes what a training run wrote
    (`_ours`), train.json first: a deletion cut short is still refused without `overwrite`.
    """
    for name in config.checkpoints():
        path = out / name
        if (path.exists() or path.is_symlink()) and not _ours(path):
            raise BadInputError(f"`out` {out}: {name} is not a checkpoint folder written by train (it holds other "
                                "files, or is a link); move it away or use another `out`", field="out")
    entries = sorted(out.iterdir()) if out.is_dir() else []
    values = config.to_dict()
    record = _read_record(out / RECORD)
    stored = _with_defaults(record["config"]) if record else None
    same = stored is not None and canonical_hash(stored) == canonical_hash(values)
    if overwrite:
        for path in sorted((p for p in entries if _ours(p)), key=lambda p: p.name != RECORD):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        same = False
    elif entries and stored is None:
        why = _unusable(out / RECORD)
        raise BadInputError(f"`out` {out}: not empty ({_listed(entries)}) and {why}; use another `out`, or "
                            "`overwrite` to discard the checkpoints and accuracy.csv an earlier train wrote there "
                            "(other files are kept)", field="out")
    elif not same and (results := [p for p in entries if p.name == ACCURACY or CHECKPOINT_DIR.match(p.name)]):
        held = sum(1 for p in results if p.name != ACCURACY)
        what = f"{held} checkpoint{'s' if held != 1 else ''}" if held else f"the {ACCURACY} of a run"
        raise BadInputError(f"`out` {out}: holds {what} trained with another config "
                            f"({'; '.join(_changes(stored, values)) or 'another config'}); use another `out`, or "
                            "`overwrite` to discard them", field="out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadInputError(f"`out` {out}: cannot create the folder ({err.strerror}); name a folder you can write",
                            field="out") from err
    if same:
        return record
    fresh = {"format": RECORD_FORMAT, "config": values, "hash": canonical_hash(values), "environment": _environment()}
    with interrupt_held():
        atomic_write(out / RECORD, json.dumps(fresh, indent=2, sort_keys=True) + "\n")
    return None


def _resume(record: dict, out: Path, kept: int, total: int) -> str:
    """Set torch's thread count to the first run's (a CPU run's sums depend on how they are split; the caller
    restores it) and say, in one line, what the resumed run does."""
    first = record.get("environment") if isinstance(record.get("environment"), dict) else {}
    if _integer(first.get("threads")) and first["threads"] >= 1:
        torch.set_num_threads(first["threads"])
    now = _environment()
    moved = [f"{k} {first[k]} -> {now[k]}" for k in ("torch", "cpu_capability") if first.get(k, now[k]) != now[k]]
    todo = f"write the {total - kept} missing" if kept < total else f"finish {ACCURACY}"
    caveat = f"; {', '.join(moved)} since the first run: the kept ones may not be reproduced" if moved else ""
    threads = f"{now['threads']} thread{'s' if now['threads'] != 1 else ''}"
    return (f"resuming: {kept} of {total} checkpoints are already in {out}; training again from the start (no "
            f"optimizer state is saved; same seed and {threads} as the first run, so bit-identical) to {todo}{caveat}")


def _accuracy_complete(path: Path, tasks: int) -> bool:
    """accuracy.csv holds one row for every task."""
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    except (OSError, ValueError, csv.Error):
        return False
    return [row.get("task") for row in rows] == [str(t) for t in range(1, tasks + 1)]


def _reproduces(directory: Path, model: nn.Module) -> str | None:
    """None when the weights saved in `directory` equal the model's bit for bit, else why not."""
    try:
        stored = load_safetensors((directory / WEIGHTS).read_bytes())
    except Exception:  # OSError, SafetensorError: either way it cannot be kept
        return f"its {WEIGHTS} is unreadable"
    current = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    same = stored.keys() == current.keys() and all(
        stored[k].dtype == v.dtype and stored[k].shape == v.shape and torch.equal(stored[k], v)
        for k, v in current.items())
    return None if same else "its weights differ: another torch version or CPU?"


def _finite_weights(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in model.state_dict().values() if v.is_floating_point())


class _Run:
    """One call of `train`: the model, where it writes, what it kept and wrote, and the lines it ends with."""

    def __init__(self, config: TrainConfig, out: Path, model: nn.Module, cbp: ContinualBackprop | None) -> None:
        self.config, self.out, self.model, self.cbp = config, out, model, cbp
        self.schedule = config.checkpoints()
        self.kept: set[str] = set()
        self.written: list[Path] = []

    def on_disk(self) -> list[str]:
        """The checkpoints of the schedule on disk, whole."""
        return [name for name, step in self.schedule.items()
                if _whole(self.out / name, step, self.config.cbp is not None)]

    def saved_line(self) -> str:
        """Which checkpoints of the schedule are on disk, e.g. "kept 1 of 3 checkpoints in OUT (task0)"."""
        names = self.on_disk()
        if not names:
            return f"no checkpoint is in {self.out}"
        return f"kept {len(names)} of {len(self.schedule)} checkpoints in {self.out} ({', '.join(names)})"

    def diverged(self, what: str) -> TrainingFailed:
        return TrainingFailed(f"training diverged: {what}; {self.saved_line()}, none written from the diverged "
                              "model; try a lower `lr`")

    def checkpoint(self, name: str, spec: DataSpec, acc: float, resets: int, where: str) -> None:
        """Save checkpoint `name`, or check that a kept one is what this run trains."""
        if not _finite_weights(self.model):
            raise self.diverged(f"the weights became NaN/Inf by the end of {where}")
        directory = self.out / name
        if name in self.kept:
            why = _reproduces(directory, self.model)
            if why:
                raise TrainingFailed(f"`out` {self.out}: {name} on disk is not what this rerun of the same command "
                                     f"trains ({why}); stopped, {self.saved_line()}; use `overwrite` to train them "
                                     "all again")
            return
        with interrupt_held():
            self.written.append(_save(self.config, self.model, self.cbp, directory, self.schedule[name], spec,
                                      acc, resets))


def train(
    config: TrainConfig, out_dir: str | Path, progress: bool = False, *, overwrite: bool = False,
    note: Callable[[str], None] | None = None,
) -> list[Path]:
    """Train task after task; save the checkpoints of the schedule and `accuracy.csv` into `out_dir` (SPEC S6, S7).

    Args:
        config: the run.
        out_dir: OUT, empty or new, or holding a run of the same config, which this call resumes (module doc).
        progress: show a progress bar.
        overwrite: first discard what an earlier training run wrote in OUT (checkpoint folders, accuracy.csv,
            train.json); other files are kept.
        note: called with one-line notes (resuming, nothing to do).

    Returns:
        The checkpoints written by this call: [] when a rerun finds them all on disk.

    Raises:
        BadInputError: bad data or model, or an OUT that would mix runs (its field is `out`).
        TrainingFailed: the loss or the weights became NaN/Inf, or a kept checkpoint is not reproduced.
        RunInterrupted: Ctrl-C; its message says how many checkpoints are saved.
    """
    out = Path(out_dir)
    say = note or (lambda _text: None)
    if not str(out_dir).strip() or (out.exists() and not out.is_dir()):
        raise BadInputError(f"`out` {out_dir!r}: not a folder; name a folder for the checkpoints", field="out")
    cbp: ContinualBackprop | None = None
    run: _Run | None = None
    try:
        torch.manual_seed(config.seed)
        model = create_model(config.model, **config.model_kwargs)
        first, _, batch = _training_set(config, DataSpec(**{**config.data.to_dict(), "task": 0}))  # before OUT
        if config.cbp is not None:
            cbp = ContinualBackprop(model, config.cbp, batch(first[:2], torch.Generator()), seed=config.seed)
        resumed = _prepare_out(config, out, overwrite)
        run = _Run(config, out, model, cbp)
        run.kept = set(run.on_disk())
        total, kept = len(run.schedule), len(run.kept)
        if resumed and kept == total and _accuracy_complete(out / ACCURACY, config.tasks):
            say(f"nothing to do: all {total} checkpoints of this command are in {out} (`overwrite` trains again)")
            return []
        threads = torch.get_num_threads()
        if resumed:
            say(_resume(resumed, out, kept, total))
        try:
            _train(run, progress)
        finally:
            torch.set_num_threads(threads)
        return run.written
    except KeyboardInterrupt:
        if run is None:
            raise RunInterrupted(f"interrupted before training started; no checkpoint written in {out}") from None
        how = "the same command without `overwrite`" if overwrite else "the same command"
        raise RunInterrupted(f"interrupted: {len(run.on_disk())} of {len(run.schedule)} checkpoints saved in {out}; "
                             f"rerun {how} to resume") from None
    finally:
        if cbp is not None:
            cbp.close()


def _train(run: _Run, progress: bool) -> None:
    """The training loop of `train`, into a prepared OUT: checkpoint `<unit>0` before the first SGD step, `<unit>k`
    once k tasks (or global epochs) are complete."""
    config, model, cbp = run.config, run.model, run.cbp
    optimizer = (torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
                 if config.optimizer == "adam" else
                 torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                 weight_decay=config.weight_decay))
    scheduler = None
    order = torch.Generator().manual_seed(config.seed)
    unit = config.checkpoint_in[:-1]
    log, resets = [], 0
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress) as bar:
        steps = bar.add_task(f"task 0/{config.tasks}", total=None)
        for task in range(config.tasks):
            spec = DataSpec(**{**config.data.to_dict(), "task": task})
            x, y, batch = _training_set(config, spec)
            hx, hy = task_arrays(spec, "holdout")
            if task == 0:
                total = config.tasks * config.epochs_per_task * math.ceil(len(x) / config.batch_size)
                bar.update(steps, total=total)
                scheduler = _scheduler(config, optimizer, total)
                if 0 in config.checkpoint_at:
                    run.checkpoint(f"{unit}0", spec, accuracy(model, hx, hy), 0, "initialisation")
            task_resets, seen, correct = 0, 0, 0.0
            for epoch in range(config.epochs_per_task):
                model.train()
                batches = torch.randperm(len(x), generator=order).split(config.batch_size)
                for i, idx in enumerate(batches):
                    optimizer.zero_grad()
                    logits = model(batch(x[idx], order))
                    if cbp is not None:
                        cbp.observe(logits, y[idx])
                    loss = _loss(logits, y[idx])
                    if not bool(torch.isfinite(loss.detach())):
                        raise run.diverged(f"the loss became {loss.item()} at task {task}, epoch {epoch}, "
                                           f"step {i + 1} of {len(batches)}")
                    correct += sequences.accuracy(logits.detach(), y[idx]) * len(idx)  # before the step: online
                    seen += len(idx)
                    loss.backward()
                    optimizer.step()
                    if scheduler is not None:
                        scheduler.step()
                    if cbp is not None:
                        task_resets += cbp.step(optimizer)
                    bar.advance(steps)
                epochs_done = task * config.epochs_per_task + epoch + 1
                if config.checkpoint_in == "epochs" and epochs_done in config.checkpoint_at:
                    run.checkpoint(f"epoch{epochs_done}", spec, accuracy(model, hx, hy),
                                   resets + task_resets, f"task {task}, epoch {epoch}")
            resets += task_resets
            acc = accuracy(model, hx, hy)
            log.append({"task": task + 1, "holdout_accuracy": acc, "online_accuracy": correct / seen,
                        **({"resets": task_resets} if cbp is not None else {})})
            bar.update(steps, description=f"task {task + 1}/{config.tasks} · held-out accuracy {acc:.3f}")
            if config.checkpoint_in == "tasks" and task + 1 in config.checkpoint_at:
                run.checkpoint(f"task{task + 1}", spec, acc, resets, f"task {task}")
            with interrupt_held():
                atomic_write(run.out / ACCURACY, _accuracy_csv(log))
