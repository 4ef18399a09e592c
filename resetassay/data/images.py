"""`--data FOLDER|ARCHIVE` of images (SPEC S1, S6): class folders (ImageFolder) or a tar archive, its held-out
root, decoded on demand and normalised; also the training images of `resetassay train`.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from resetassay.data.examples import Examples, _cached, _digest, _stamp
from resetassay.data.spec import IMAGE_SUFFIXES, DataSpec
from resetassay.errors import BadInputError, one_line, warn_user

HELD_OUT_NAMES = ("test", "val", "valid", "validation", "holdout")  # preferred image roots and splits, in order


@dataclass(frozen=True)
class ImageListing:
    """What a folder or a .tar/.tar.gz archive holds: every .jpg/.jpeg/.png as (relative parts, member), every
    folder's relative parts (class folders without an image among them), and how many archive members were skipped
    because their path leaves the archive's folder (absolute, or through '..')."""

    files: list
    folders: list
    kind: str
    escaping: int = 0


def _visible(parts: tuple) -> bool:
    return not any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _image_listing(path: Path) -> ImageListing:
    """The images and folders of a folder or a .tar/.tar.gz archive (hidden ones left out)."""
    if path.is_dir():
        entries = [(p.relative_to(path).parts, p) for p in path.rglob("*")]
        files = [(parts, p) for parts, p in entries if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        folders = [parts for parts, p in entries if p.is_dir()]
        return ImageListing([f for f in files if _visible(f[0])], [d for d in folders if _visible(d)], "folder")
    try:
        with tarfile.open(path, "r:*") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise BadInputError(f"{path}: cannot read the archive ({one_line(err)})") from err
    inside = [m for m in members if not (m.name.startswith("/") or ".." in PurePosixPath(m.name).parts)]
    files = [(PurePosixPath(m.name).parts, m) for m in inside if m.isfile() and m.name.lower().endswith(IMAGE_SUFFIXES)]
    folders = [PurePosixPath(m.name).parts for m in inside if m.isdir()]
    return ImageListing([f for f in files if _visible(f[0])], [d for d in folders if _visible(d)], "archive",
                        len(members) - len(inside))


def _escaping(n: int) -> str:
    """Why `n` archive members were left out."""
    return (f"{n} archive members were skipped: their paths leave the archive's folder, absolute or through '..'"
            if n != 1 else "1 archive member was skipped: its path leaves the archive's folder, absolute or through "
            "'..'")


def _image_index(path: Path, split: str | None = None) -> tuple[list, list[str], str, str]:
    """(the (label, member) of each image, class names, the root holding the class folders, kind): the root is
    the grandparent of the images; of several, the one named test (then val, ...), or the one named `split`. An
    archive's listing is kept (a run opens it once per checkpoint, training for both roots); a folder's is cheap to
    list again, and its own timestamp does not change when a class folder does."""
    listing = _image_listing(path) if path.is_dir() else \
        _cached(("listing", *_stamp(path)), lambda: _image_listing(path))
    files, kind = listing.files, listing.kind
    if not files:
        skipped = f" ({_escaping(listing.escaping)})" if listing.escaping else ""
        raise BadInputError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}){skipped}; expected "
                            "ROOT/<class>/<image>")
    if listing.escaping:  # left out of the data: said, not silent
        warn_user(f"{path}: {_escaping(listing.escaping)}; the images inside it are used")
    roots = sorted({parts[:-2] for parts, _ in files if len(parts) >= 2})
    if not roots:
        raise BadInputError(f"{path}: images but no class folders; expected ROOT/<class>/<image>")
    if split is not None:
        named = [r for r in roots if r and r[-1].lower() == split]
        if len(named) != 1:
            raise BadInputError(f"{path}: {'no' if not named else 'more than one'} folder named {split} holding "
                                f"class folders; training on your own images needs ROOT/{split}/<class>/<image> "
                                f"beside a held-out ROOT/test/<class>/<image> (or {', '.join(HELD_OUT_NAMES[1:])})")
        roots = named
    elif len(roots) > 1:
        named = [r for name in HELD_OUT_NAMES for r in roots if r and r[-1].lower() == name]
        if not named:
            shown = ", ".join("/".join(r) or "." for r in roots[:4])
            raise BadInputError(f"{path}: class folders of images under several roots ({shown}); point `data` at "
                                "one folder holding only class folders")
        roots = named[:1]
    root = roots[0]
    chosen = sorted(((parts, m) for parts, m in files if len(parts) >= 2 and parts[:-2] == root), key=lambda f: f[0])
    classes = sorted({parts[-2] for parts, _ in chosen})
    empty = sorted({d[-1] for d in listing.folders if d[:-1] == root} - set(classes))
    if empty:  # left out, the classes after it would take its label (torchvision's ImageFolder refuses too)
        raise BadInputError(f"{path}: class folder {'/'.join((*root, empty[0]))} holds no image "
                            f"({', '.join(IMAGE_SUFFIXES)}), so the labels of the classes after it would shift; add "
                            "its images or remove the folder")
    label = {c: i for i, c in enumerate(classes)}
    return [(label[parts[-2]], m) for parts, m in chosen], classes, "/".join(root) or ".", kind


def _decode_image(raw: bytes, name: str, size: int | None) -> np.ndarray:
    """One image as an (H, W, 3) uint8 RGB array, resized (bilinear) to size x size when size is given."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as image:
            rgb = image.convert("RGB")
            if size is not None and rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except Exception as err:  # PIL raises UnidentifiedImageError, OSError, ValueError, ... on damaged files
        raise BadInputError(f"{name}: not a readable image ({one_line(err)}); remove it or fix it") from err


def image_tensor(x: torch.Tensor, mean: tuple | None, std: tuple | None) -> torch.Tensor:
    """uint8 RGB images (N, 3, H, W) as float32 in [0, 1], then (x - mean) / std per channel."""
    x = x.to(torch.float32).div_(255.0)
    if mean is not None:
        x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    return x.contiguous()


def _image_stack(arrays: list[np.ndarray], where: object) -> torch.Tensor:
    """Decoded (H, W, 3) uint8 images as one uint8 (N, 3, H, W) tensor; images of different sizes are an error."""
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        seen = sorted(f"{h}x{w}" for h, w, _ in shapes)
        raise BadInputError(f"{where}: images differ in size ({', '.join(seen[:3])}); set image_size "
                            "(`image_size` N) to resize them")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _decoded(path: Path, kind: str, picked: list, size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The `picked` (label, member) images of `path` as uint8 (N, 3, H, W) and their labels; an archive is read in
    member order, one pass through its compressed stream."""
    arrays: dict[int, np.ndarray] = {}
    if kind == "folder":
        for i, (_, file) in enumerate(picked):
            arrays[i] = _decode_image(file.read_bytes(), str(file), size)
    else:
        with tarfile.open(path, "r:*") as tar:
            for i in sorted(range(len(picked)), key=lambda j: picked[j][1].offset_data):
                member = picked[i][1]
                arrays[i] = _decode_image(tar.extractfile(member).read(), f"{path}:{member.name}", size)
    x = _image_stack([arrays[i] for i in range(len(picked))], path)
    return x, torch.tensor([label for label, _ in picked], dtype=torch.int64)


def _image_examples(path: Path, size: int | None, mean: tuple | None, std: tuple | None) -> Examples:
    """The images of a folder or archive in ImageFolder layout, labelled by sorted class name; `take` decodes
    only the images asked for, to RGB float32 (N, 3, H, W) in [0, 1], then (x - mean) / std per channel."""
    index, classes, root, kind = _image_index(path)

    def take(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = _decoded(path, kind, [index[i] for i in idx.tolist()], size)
        return image_tensor(x, mean, std), y

    return Examples(path.name, len(index), take, {"image_root": root, "classes": len(classes)})


def image_classes(spec: DataSpec) -> list[str]:
    """The class names of an image folder or archive's held-out root (sorted: label k is the k-th)."""
    return _image_index(Path(spec.path))[1]


def training_images(spec: DataSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images of an image folder or archive (`source` images): every image of its root named
    `train`, as uint8 RGB (N, 3, H, W) (resized to `image_size`) and labels by sorted class name; the held-out
    root (test, val, ...) stays the assay's (SPEC S1). Its classes must be the held-out root's, so that labels
    agree. Decoded once per process while the file is unchanged (`image_tensor` makes a batch float)."""
    path = Path(spec.path)
    if spec.sha256 is not None and _digest(path) != spec.sha256:
        raise BadInputError(f"{path}: its content changed since it was recorded (sha256 differs); restore it")
    index, classes, root, kind = _image_index(path, "train")
    _, held_classes, held_root, _ = _image_index(path)
    if held_root == root:
        raise BadInputError(f"{path}: no held-out folder (test, val, ...) beside {root}; training on your own images "
                            "needs ROOT/train/<class>/<image> and ROOT/test/<class>/<image>")
    if classes != held_classes:
        import reprlib

        raise BadInputError(f"{path}: {root} has classes {reprlib.repr(classes)} but {held_root} has "
                            f"{reprlib.repr(held_classes)}; both need the same class folders")
    key = ("training-images", *(_stamp(path) if path.is_file() else (_digest(path),)), spec.image_size)
    return _cached(key, lambda: _decoded(path, kind, index, spec.image_size))
