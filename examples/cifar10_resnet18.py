"""The worked example of docs/guide/checkpoints.md: train examples/resnet18.py briefly on CIFAR-10 JPEGs, then
assay it from Python.

    python examples/cifar10_resnet18.py ARCHIVE [--epochs 1] [--out runs/cifar10-resnet18]

ARCHIVE is a .tar.gz holding `*/train/<class>/*.jpg` and `*/test/<class>/*.jpg` (the CIFAR-10 JPEG tree).
Training reads the train images (plain SGD with momentum, one-cycle learning rate, random crops and flips);
the assay reads the test images through resetassay's own image-archive data (`--data ARCHIVE`), so the
calibration and probe sets never overlap the training set. It writes OUT/resnet18.safetensors (a plain
state dict, as people save them) and the run directory OUT/assay, and prints the wall time of each part.
The same assay from the command line:

    resetassay run OUT/resnet18.safetensors --model examples.resnet18:resnet18 --data ARCHIVE \\
        --normalize cifar10 --units-per-layer 32 --out OUT/assay
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `examples` importable when run as a script

import resetassay as ra  # noqa: E402
from examples.resnet18 import resnet18  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # resetassay's --normalize cifar10


def train_images(archive: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Every `*/train/<class>/*.jpg` of the archive as normalised (N, 3, 32, 32) floats and labels."""
    from PIL import Image

    images, labels = [], []
    with tarfile.open(archive) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and "/train/" in m.name
                          and m.name.endswith(".jpg")), key=lambda m: m.name)
        classes = sorted({m.name.split("/")[-2] for m in members})
        for m in members:
            images.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")))
            labels.append(classes.index(m.name.split("/")[-2]))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return x, torch.tensor(labels)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random 4-pixel-padded crops and horizontal flips."""
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    i, j = torch.randint(0, 9, (2,), generator=g).tolist()
    out = padded[:, :, i:i + 32, j:j + 32]
    return out.flip(3) if torch.rand(1, generator=g).item() < 0.5 else out


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, batch: int = 128) -> float:
    """SGD (momentum 0.9, weight decay 5e-4) with a one-cycle learning rate peaking at 0.1; returns the last
    epoch's training accuracy."""
    g = torch.Generator().manual_seed(0)
    steps = epochs * (len(x) // batch)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order, correct = torch.randperm(len(x), generator=g), 0
        for k in range(len(x) // batch):
            idx = order[k * batch:(k + 1) * batch]
            logits = model(augment(x[idx], g))
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            correct += int((logits.argmax(1) == y[idx]).sum())
    return correct / (len(x) // batch * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/cifar10-resnet18"))
    parser.add_argument("--units-per-layer", type=int, default=32)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / "resnet18.safetensors"
    start = time.perf_counter()
    x, y = train_images(args.archive)
    print(f"decoded {len(x)} training images in {time.perf_counter() - start:.0f} s")
    model = resnet18(num_classes=10)
    start = time.perf_counter()
    accuracy = train(model, x, y, args.epochs)
    print(f"trained {args.epochs} epoch(s) in {time.perf_counter() - start:.0f} s, training accuracy {accuracy:.1%}")
    save_file(model.state_dict(), weights)
    start = time.perf_counter()
    result = ra.run_assay([weights], model="examples.resnet18:resnet18", out=args.out / "assay",
                          data=ra.data_spec(str(args.archive), normalize="cifar10"),
                          units_per_layer=args.units_per_layer)
    print(f"assayed {result.units['layer'].nunique()} unit layers, {len(result.units)} units in "
          f"{time.perf_counter() - start:.0f} s; report: {args.out / 'assay' / 'report.md'}")


if __name__ == "__main__":
    main()
