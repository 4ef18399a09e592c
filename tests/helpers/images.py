"""For the image-folder tests: `image_folder` writes ROOT/<split>/<class>/<i>.png, small noisy RGB PNGs whose colour
depends on the class (learnable)."""

from __future__ import annotations

from pathlib import Path

import torch

CLASSES = ("ant", "bee", "cow")
SIDE = 8


def image_folder(root: Path, per_class: dict[str, int], classes: tuple[str, ...] = CLASSES, seed: int = 3) -> Path:
    """`per_class[split]` images of each class under ROOT/<split>/<class>/ (channel `c % 3` of class c lit)."""
    from PIL import Image

    rng = torch.Generator().manual_seed(seed)
    for split, n in per_class.items():
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = (torch.rand(SIDE, SIDE, 3, generator=rng) * 60).to(torch.uint8)
                pixels[..., c % 3] += 150
                Image.fromarray(pixels.numpy()).save(root / split / name / f"{i}.png")
    return root
