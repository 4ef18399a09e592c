"""Which data (SPEC S1, S6): `DataSpec`, the record of a checkpoint's data and of what the flags ask for, and
`DataChoice`, which data a checkpoint is assayed on; the names of the built-in sources and layouts.

The built-in image sources go by two names each (`DATA_CHOICES`, docs/data.md): `mnist` is the dataset as
published (its pixels in their own order), `permuted-mnist` the continual study's task (its pixels permuted by the
seeded permutation of `task`); the same for `fashion-mnist` and `digits`, each also with `-image` (the layout
(B, 1, S, S)). A record says which by `permuted`: false for the plain dataset, true or absent for the permuted
task, so that every record written before the plain datasets had names (all of them permuted tasks, each with its
`task` and `permutation_seed`) means what it meant. `grammar` is always the permuted grammar (SPEC S9).
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from resetassay.errors import BadInputError

DEFAULT_SIZE = 2048
IMAGE_SIDE = {"digits": 8, "mnist": 28, "fashion-mnist": 28}  # the permuted image sources (SPEC S1, S6)
# The built-in sources: the continual tasks (permuted pixels; grammar: token sequences, data/grammar.py, SPEC S9),
# and for the image sources (IMAGE_SIDE) also the plain dataset (DataSpec.permuted False).
PERMUTED = (*IMAGE_SIDE, "grammar")
PERMUTED_PREFIX = "permuted-"  # `data` permuted-mnist: the continual task; `data` mnist: the plain dataset
IDX_SOURCES = ("mnist", "fashion-mnist")  # read from IDX files in `data_dir` (the same file names for both)
USER_SOURCES = ("file", "images", "hf", "factory")  # the user's own data (SPEC S1): never permuted
TENSOR_SUFFIXES = (".safetensors", ".npz", ".pt", ".pth")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
NORMALIZE = {  # per-channel (mean, std) of RGB images in [0, 1]
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


def _numbers(v: object) -> bool:
    return v is None or (isinstance(v, list | tuple) and len(v) > 0
                         and all(type(a) in (int, float) and a == a for a in v))


@dataclass(frozen=True)
class DataSpec:
    """Which data to assay on: a task a checkpoint was trained on last (stored in the manifest's "data" field), or
    the user's own data (SPEC S1).

    Every value is checked when a spec is made (from a manifest or the command line alike): a bad one is a one-line
    `BadInputError` naming the field, `data.<field>`. Sources: digits | mnist | fashion-mnist (the first seven fields;
    `permuted` True, the default, is the permuted task `task` of the continual study, False the plain dataset, whose
    record then holds `permuted` false and no task or permutation seed), grammar (permuted-grammar token sequences,
    `grammar.py`, SPEC S9; the same seven fields, its layout flat), file (a tensor file), images (an image folder or a
    .tar/.tar.gz of one), hf (a folder written by Hugging Face `datasets`' `save_to_disk`) and factory (a
    `module:factory`, from Python or the command line only: a manifest cannot record it, so loading a checkpoint never
    runs code). The user's own data is never permuted; task, permutation_seed, split_seed and holdout_fraction do not
    apply to it.
    """

    source: str = "digits"            # digits | mnist | fashion-mnist | grammar | file | images | hf | factory
    layout: str = "flat"              # flat (B, D) | image (B, 1, S, S); built-in sources only
    task: int = 0                     # index of the permutation trained last
    permutation_seed: int = 0
    split_seed: int = 0               # digits only: train / held-out split
    holdout_fraction: float = 0.5     # digits only
    data_dir: str | None = None       # mnist, fashion-mnist only: folder of *-ubyte(.gz) files
    permuted: bool = True             # digits, mnist, fashion-mnist: False is the plain dataset (task 0, seed 0 unused)
    path: str | None = None           # file, images: the tensor file, image folder or archive
    probe_path: str | None = None     # file, images: a second one holding the probe set (then `path` is calibration)
    image_size: int | None = None     # images: resize to image_size x image_size (default: the images' own size)
    mean: tuple[float, ...] | None = None  # images: per-channel normalisation (3 values: images are decoded as RGB)
    std: tuple[float, ...] | None = None
    sha256: str | None = None         # file, images: of `path` (a folder: of its listing, each image's path and size)
    probe_sha256: str | None = None   # the same of `probe_path`
    factory: str | None = None        # factory: "package.module:function"
    factory_kwargs: dict | None = None

    # field -> (what its value must be, the test); a class constant, not a field (it has no annotation).
    # Seeds are >= 0 because numpy's generators refuse negative ones.
    CHECKS = {
        "source": (" or ".join(map(repr, PERMUTED)),
                   lambda v: isinstance(v, str) and (v in PERMUTED or v in USER_SOURCES)),
        "layout": ("'flat' or 'image'", lambda v: v in ("flat", "image")),
        "task": ("an integer >= 0", lambda v: type(v) is int and v >= 0),
        "permutation_seed": ("an integer >= 0", lambda v: type(v) is int and v >= 0),
        "split_seed": ("an integer >= 0", lambda v: type(v) is int and v >= 0),
        "holdout_fraction": ("a number in (0, 1)", lambda v: type(v) in (int, float) and 0 < v < 1),
        "data_dir": ("a string or null", lambda v: v is None or isinstance(v, str)),
    }
    # optional in a manifest: absent (every record before plain data had names) is true, the permuted task
    PLAIN_CHECKS = {"permuted": ("true or false", lambda v: type(v) is bool)}
    PLAIN_KEYS = ("source", "layout", "permuted", "split_seed", "holdout_fraction", "data_dir")  # a plain record
    # the user's own data (sources file, images, factory): optional in a manifest, absent from digits/mnist records
    USER_CHECKS = {
        "path": ("a non-empty string or null", lambda v: v is None or (isinstance(v, str) and v != "")),
        "probe_path": ("a non-empty string or null", lambda v: v is None or (isinstance(v, str) and v != "")),
        "image_size": ("an integer >= 1 or null", lambda v: v is None or (type(v) is int and v >= 1)),
        "mean": ("a list of numbers or null", _numbers),
        "std": ("a list of positive numbers or null", lambda v: _numbers(v) and (v is None or min(v) > 0)),
        "sha256": ("64 hex digits or null", lambda v: v is None or (isinstance(v, str)
                                                                  and re.fullmatch("[0-9a-f]{64}", v) is not None)),
        "probe_sha256": ("64 hex digits or null", lambda v: v is None or (isinstance(v, str)
                                                                        and re.fullmatch("[0-9a-f]{64}", v)
                                                                        is not None)),
        "factory": ("'package.module:function' or null", lambda v: v is None or (isinstance(v, str)
                                                                                  and _FACTORY.fullmatch(v))),
        "factory_kwargs": ("an object or null", lambda v: v is None or isinstance(v, dict)),
    }
    NEEDS = {"path": ("file", "images", "hf"), "probe_path": ("file", "images", "hf"),
             "sha256": ("file", "images", "hf"), "probe_sha256": ("file", "images", "hf"),
             "image_size": ("images", "hf"), "mean": ("images", "hf"), "std": ("images", "hf"),
             "factory": ("factory",), "factory_kwargs": ("factory",)}

    def __post_init__(self) -> None:  # noqa: C901 — one check per field of the record, each a line (SPEC S1)
        for key, (must, ok) in {**self.CHECKS, **self.PLAIN_CHECKS, **self.USER_CHECKS}.items():
            value = getattr(self, key)
            if not ok(value):
                hint = " (your own data: 'file', 'images' or 'factory')" if key == "source" else ""
                raise BadInputError(f"data.{key} must be {must}, got {reprlib.repr(value)}{hint}")
        for key in ("mean", "std"):  # a manifest's lists become tuples of floats
            if getattr(self, key) is not None:
                object.__setattr__(self, key, tuple(float(a) for a in getattr(self, key)))
        for key, sources in self.NEEDS.items():
            if getattr(self, key) is not None and self.source not in sources:
                raise BadInputError(f"data.{key} applies only to source {' or '.join(map(repr, sources))}, "
                                    f"not {self.source!r}")
        if not self.permuted and self.source not in IMAGE_SIDE:
            raise BadInputError(f"data.permuted false applies only to source {' or '.join(map(repr, IMAGE_SIDE))} "
                                f"(their plain datasets), not {self.source!r}")
        if not self.permuted:
            for key in ("task", "permutation_seed"):
                if getattr(self, key) != 0:
                    raise BadInputError(f"data.{key} applies only to a permuted task, not the plain "
                                        f"{self.source} (permuted false); use {PERMUTED_PREFIX}{self.source}")
        if self.source == "grammar" and self.layout != "flat":
            raise BadInputError("data.layout must be 'flat' for source 'grammar' (token sequences)")
        if self.source in ("file", "images", "hf") and self.path is None:
            raise BadInputError(f"data.path is missing: source {self.source!r} needs the path of the data")
        if self.source == "factory" and self.factory is None:
            raise BadInputError("data.factory is missing: source 'factory' needs 'package.module:function'")
        if (self.mean is None) != (self.std is None):
            raise BadInputError("data.mean and data.std go together: give both or neither")
        if self.mean is not None and not len(self.mean) == len(self.std) == 3:
            raise BadInputError(f"data.mean and data.std must have 3 values each, one per channel (images are "
                                f"decoded as RGB), got {len(self.mean)} and {len(self.std)}")

    @classmethod
    def from_dict(cls, d: object) -> DataSpec:
        """The spec a manifest's "data" object records, each value checked: digits/mnist with every one of their
        fields and no others (a permuted task: the seven of `CHECKS`, with `permuted` true or, as in every record
        written before the plain datasets had names, absent; the plain dataset: `PLAIN_KEYS`, `permuted` false);
        file/images with at least source and path. A factory is refused: a manifest may name only built-in sources,
        paths and numbers, so that loading a checkpoint never runs code."""
        if not isinstance(d, dict):
            raise BadInputError(f"data must be an object or null, got {type(d).__name__}")
        for key in d:
            if key not in cls.CHECKS and key not in cls.PLAIN_CHECKS and key not in cls.USER_CHECKS:
                shown = key if key.isprintable() else repr(key)
                known = [*cls.CHECKS, *cls.PLAIN_CHECKS, *cls.USER_CHECKS]
                raise BadInputError(f"data.{shown} is not a data field ({', '.join(known)})")
        if d.get("source") == "factory" or "factory" in d or "factory_kwargs" in d:
            raise BadInputError("data.source 'factory' cannot be recorded in a manifest (loading a checkpoint never "
                                "runs code); pass `data` package.module:function instead")
        user = d.get("source") in USER_SOURCES
        if "permuted" in d and type(d["permuted"]) is not bool:  # which fields are required depends on it
            raise BadInputError(f"data.permuted must be true or false, got {reprlib.repr(d['permuted'])}")
        plain = d.get("permuted") is False
        for key in ("source", "path") if user else cls.PLAIN_KEYS if plain else cls.CHECKS:
            if key not in d:
                raise BadInputError(f"data.{key} is missing")
        for key in ("task", "permutation_seed") if plain else ():
            if key in d:
                raise BadInputError(f"data.{key} applies only to a permuted task, not the plain dataset (permuted "
                                    "false)")
        if "permuted" in d and user:
            raise BadInputError(f"data.permuted applies only to source {' or '.join(map(repr, IMAGE_SIDE))}, not "
                                f"{d['source']!r}")
        return cls(**d)

    def to_dict(self) -> dict:
        """The fields that apply to the source, JSON-ready (a permuted task: exactly the seven of a manifest, as
        before the plain datasets had names; the plain dataset: `PLAIN_KEYS`)."""
        if self.source in PERMUTED and not self.permuted:
            return {key: getattr(self, key) for key in self.PLAIN_KEYS}
        if self.source in PERMUTED:
            return {key: getattr(self, key) for key in self.CHECKS}
        if self.source == "factory":
            return {"source": self.source, "factory": self.factory, "factory_kwargs": self.factory_kwargs}
        keys = ["path", "probe_path", "sha256", "probe_sha256"]
        keys += ["image_size", "mean", "std"] if self.source in ("images", "hf") else []
        out = {"source": self.source, **{key: getattr(self, key) for key in keys}}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def describe(self) -> str:
        """A short name for messages and provenance: "digits task 3" (a permuted task), "mnist" (the plain
        dataset), "data.npz", "pkg.mod:make"."""
        if self.source in PERMUTED and not self.permuted:
            return self.source
        if self.source in PERMUTED:
            return f"{self.source} task {self.task}"
        return self.factory if self.source == "factory" else Path(self.path).name


# `data` names of the built-in sources: mnist (plain), permuted-mnist (the continual task), each also -image.
DATA_CHOICES = (*(f"{permuted}{source}{layout}" for source in IMAGE_SIDE for permuted in ("", PERMUTED_PREFIX)
                  for layout in ("", "-image")), "grammar")
_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


@dataclass(frozen=True)
class DataChoice:
    """What a command asks of each checkpoint's data (SPEC S1), resolved against its record by `resolve`.

    `spec` (`data`) is the data of checkpoints that record none; `data_dir` re-points a recorded
    MNIST/Fashion-MNIST record to where its files are now; `task` and `permutation_seed` are None unless given.
    A checkpoint's record wins for everything not asked for; what is asked for and differs from it (another
    source or layout, the plain dataset for a permuted task or the reverse, task or permutation seed, or your own
    data) replaces it, with a warning line. `task` and `permutation_seed` apply to permuted tasks only.
    """

    spec: DataSpec | None = None
    data_dir: str | None = None
    task: int | None = None
    permutation_seed: int | None = None

    def __post_init__(self) -> None:
        if self.spec is not None:
            self._permuted_flags(self.spec)

    def _permuted_flags(self, spec: DataSpec) -> None:
        """Refuse `task` and `permutation_seed` for `spec` when it is your own data or a plain dataset (never
        permuted)."""
        for field, value in (("task", self.task), ("permutation_seed", self.permutation_seed)):
            if value is None:
                continue
            if spec.source not in PERMUTED:
                raise BadInputError(f"`{field}` applies to permuted data ({', '.join(PERMUTED)}), not "
                                    f"{spec.describe()}; drop it", field=field)
            if not spec.permuted:
                raise BadInputError(f"`{field}` applies to a permuted task, not the plain dataset {data_name(spec)}; "
                                    f"drop it, or use `data` {PERMUTED_PREFIX}{data_name(spec)}", field=field)

    @classmethod
    def replacing(cls, spec: DataSpec) -> DataChoice:
        """A spec from Python: its source, layout, data_dir, task and permutation seed all asked for (the last two
        only of a permuted task)."""
        if spec.source not in PERMUTED or not spec.permuted:
            return cls(spec)
        return cls(spec, spec.data_dir, spec.task, spec.permutation_seed)

    def to_dict(self) -> dict | None:
        """What was asked, JSON-ready (a run's identity), or None when nothing was."""
        asked = {"spec": self.spec.to_dict() if self.spec else None, "data_dir": self.data_dir, "task": self.task,
                 "permutation_seed": self.permutation_seed}
        return asked if any(v is not None for v in asked.values()) else None

    def resolve(self, recorded: DataSpec | None) -> tuple[DataSpec | None, str]:
        """The data to assay a checkpoint that records `recorded` on (None: its record as it is), and one line
        saying what replaced part of the record ("" when nothing did)."""
        spec = self.spec
        if recorded is None or recorded.source not in PERMUTED or (spec is not None
                                                                   and spec.source not in PERMUTED):
            # nothing recorded, or your own data on either side: --data as given
            if recorded is not None and spec is None:
                self._permuted_flags(recorded)
            if recorded is None or spec is None or spec == recorded:
                return (spec if recorded is None else None), ""
            return spec, f"`data` {spec.describe()} replaces its recorded data ({recorded.describe()})"
        changes: dict = {}
        replaced = []
        if spec is not None and data_name(spec) != data_name(recorded):
            changes.update(source=spec.source, layout=spec.layout, permuted=spec.permuted, data_dir=None)
            if not spec.permuted:  # the plain dataset: no task, no permutation seed
                changes.update(task=0, permutation_seed=0)
            replaced.append(f"`data` {data_name(spec)} replaces its recorded {data_name(recorded)}")
        self._permuted_flags(replace(recorded, **changes))
        if self.data_dir is not None and changes.get("source", recorded.source) in IDX_SOURCES:
            changes["data_dir"] = self.data_dir
        for field, key in (("task", "task"), ("permutation_seed", "permutation_seed")):
            value, was = getattr(self, key), getattr(recorded, key)
            if value is not None and value != was:
                changes[key] = value
                replaced.append(f"`{field}` {value} replaces its recorded {key.replace('_', ' ')} {was}")
        resolved = replace(recorded, **changes)
        return (None if resolved == recorded else resolved), "; ".join(replaced)


def data_name(spec: DataSpec) -> str:
    """A built-in source as `data` names it (`DATA_CHOICES`): mnist, mnist-image (the plain dataset),
    permuted-mnist, permuted-mnist-image (the continual task), grammar."""
    if spec.source == "grammar":
        return spec.source
    prefix = PERMUTED_PREFIX if spec.permuted else ""
    return prefix + spec.source + ("-image" if spec.layout == "image" else "")


def parse_normalize(value: str | tuple | None) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """(mean, std) of `--normalize`: None or 'none' (no normalisation), a `NORMALIZE` name ('imagenet',
    'cifar10'), 'M,M,M/S,S,S' or a (mean, std) pair of sequences."""
    if value is None or value == "none":
        return None, None
    if isinstance(value, tuple | list):
        if len(value) != 2:
            raise BadInputError(f"`normalize` {value!r}: expected (mean, std)", field="normalize")
        return tuple(value[0]), tuple(value[1])
    if value in NORMALIZE:
        return NORMALIZE[value]
    try:
        mean, std = (tuple(float(a) for a in part.split(",")) for part in value.split("/"))
    except ValueError:
        raise BadInputError(f"`normalize` {value!r}: use {', '.join(NORMALIZE)}, none, or MEAN/STD such as "
                            "0.5,0.5,0.5/0.25,0.25,0.25", field="normalize") from None
    return mean, std


def _flagged(make: Callable, field: str):
    """`make()`, with a BadInputError it raises turned into one about `field` (the whole command is at fault)."""
    try:
        return make()
    except BadInputError as err:
        if err.field:
            raise
        raise BadInputError(str(err), field=field) from err
