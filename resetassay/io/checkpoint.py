"""Checkpoint directories (DESIGN "Checkpoint format"): save, find and load them safely.

A checkpoint directory holds `manifest.json`, `model.safetensors` and optionally
`state.safetensors` (per-unit "<layer>.age", "<layer>.reference", "<layer>.utility"; SPEC S1).
Loading never runs code from the files: tensors come from safetensors or `torch.load(...,
weights_only=True)`, and a manifest may only name a factory of the resetassay zoo. Other
factories run only when the user names them with `--model`: `package.module:factory`, or a model of an
optional library by name (`torchvision:resnet18`, `timm:resnet18`), always built without pretrained weights.

A `--model` state dict may be saved as people save them: keys under a DDP/DataParallel `module.` or a
LightningModule attribute (`model.`, `net.`) are stripped to the model's, a Lightning `.ckpt` is read for its
`state_dict`, and float16/bfloat16 weights are cast to a float32/float64 model's dtype (each with a warning).

Per-unit state beside a state dict (CBP run elsewhere, e.g. converted by `io/gnt.py`) is state, never a checkpoint
(`state_file`): `<weights stem>.state.safetensors` beside the weights file is its state, and `state.safetensors`
is the state of the only weights file in its folder; `state` names a state file for a single checkpoint instead.
Such files are never taken for weights (`find_checkpoints`), and a weights file whose keys are all
`<layer>.age|reference|utility` is refused with that advice.

Loading reads every file once and keeps the sha256 of the bytes it loaded (`Checkpoint.sha256`), so a
file replaced meanwhile can never be filed under another file's hash. Saving writes a whole directory
beside the target and renames it into place, so a reader or a crash never sees old and new files mixed.

The manifest is checked against `MANIFEST_SCHEMA`, a small table of fields and tests written here rather
than a pydantic model: a dozen fields do not need a dependency, and each error line reads as
docs/guide/troubleshooting.md promises (`C/manifest.json: step.task must be an integer >= 0, got -1; regenerate the
checkpoint`). The
fields of "data" are checked by `DataSpec` itself, so a spec built from the command line is checked too.

Over 500 lines: one format and every route into it (zoo manifests, state dicts with `model`, Lightning,
torchvision/timm/transformers, state beside the weights) share the safety checks of loading; the model sources are
the next to move out (io/model_sources.py).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import io
import json
import os
import re
import reprlib
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from glob import escape
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from resetassay.data import PERMUTED, DataSpec
from resetassay.errors import BadInputError, one_line, warn_user
from resetassay.io.imports import import_named_module
from resetassay.io.rundir import state_key
from resetassay.models import MODELS, model_family
from resetassay.names import MANIFEST, STATE, WEIGHTS

__all__ = [
    "load_checkpoint", "save_checkpoint", "find_checkpoints", "Checkpoint", "CheckpointInfo", "import_factory",
    "family_name", "check_family", "read_tensors", "FORMAT", "is_state_file", "state_file", "build_model",
]

FORMAT = "resetassay.checkpoint/1"
ZOO_MODULE = "resetassay.models"
STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt")  # .ckpt: PyTorch Lightning
# --model torchvision:NAME, timm:NAME, transformers:MODEL_TYPE (a causal LM from its config); extras of the same names
LIBRARIES = ("torchvision", "timm", "transformers")
HALF_DTYPES = (torch.float16, torch.bfloat16)  # cast up to a float32/float64 model, losing nothing
STATE_KINDS = ("age", "reference", "utility")  # state.safetensors keys: "<layer>.<kind>" (SPEC S1, S2)
STATE_SUFFIX = ".state.safetensors"  # beside a state dict W.pt: W.state.safetensors is its per-unit state
JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
              type(None): "null"}  # what json.loads can return besides an object
FAMILY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@-]*")  # a family name: no spaces, ':' (floors) or globs
PAPER_DATA = "mnist"  # the paper's data (SPEC S6): the one a family name does not mention
REAL_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
               torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class Field:
    """One manifest field: what its value must be (for the error line), the test, and an object's own fields."""

    must: str
    ok: Callable[[object], bool]
    required: bool = False
    fields: dict[str, Field] | None = None  # checked when the value passes `ok`
    closed: bool = False                    # no keys but `fields`


def _count(value: object) -> bool:
    return type(value) is int and value >= 0  # bool is an int subclass, and not a count


OBJECT = ("an object", lambda v: isinstance(v, dict))
COUNT = Field("an integer >= 0", _count)
# The fields of manifest.json; "format" is checked first, with its own message (another version has another schema).
MANIFEST_SCHEMA: dict[str, Field] = {
    "format": Field(repr(FORMAT), lambda v: v == FORMAT, required=True),
    "model": Field(*OBJECT, required=True, closed=True, fields={
        "factory": Field("a string", lambda v: isinstance(v, str), required=True),
        "kwargs": Field(*OBJECT),
    }),
    "step": Field(*OBJECT, closed=True, fields={"task": COUNT, "epoch": COUNT, "step": COUNT}),
    "data": Field("an object or null", lambda v: v is None or isinstance(v, dict)),  # fields: DataSpec.from_dict
    "unit_layers": Field("a list of strings", lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v)),
    "meta": Field(*OBJECT, fields={  # free-form; these are read by the assay
        "family": Field("a string", lambda v: isinstance(v, str)),
        "maturity": COUNT,
        "seed": Field("an integer", lambda v: type(v) is int),
    }),
}


def family_name(model: str, kwargs: dict, data: DataSpec | None = None, cbp_utility: str | None = None) -> str:
    """The report family of a checkpoint: its model and its training (docs/guide/training.md "Families"), e.g.
    `mlp-relu` (plain backprop on permuted MNIST), `mlp-silu-ln+cbp-gxd`, `cnn-relu-bn@fashion-mnist`: the model's label
    (`models.model_family`), `+cbp-<utility>` when trained with CBP, `@<data source>` unless permuted MNIST; a
    plain built-in dataset (`data` mnist, not permuted-mnist) is `@<source>-unpermuted`, e.g.
    `mlp-relu@mnist-unpermuted`."""
    cbp = f"+cbp-{cbp_utility}" if cbp_utility else ""
    if data is None:
        where = ""
    elif data.source in PERMUTED and not data.permuted:
        where = f"@{data.source}-unpermuted"
    else:
        where = f"@{data.source}" if data.source != PAPER_DATA else ""
    return f"{model_family(model, kwargs)}{cbp}{where}"


def check_family(name: str) -> str:
    """A family name given with --family, or a one-line error: it names groups in reports and `check` floors."""
    if not isinstance(name, str) or not FAMILY.fullmatch(name):
        raise BadInputError(f"`family` {name!r}: use letters, digits and . _ + @ - (no spaces, ':' or '*'), "
                            "e.g. mlp-relu+cbp-gxd", field="family")
    return name


@dataclass
class CheckpointInfo:
    """What a checkpoint is: where it lives and what its manifest says."""

    path: Path
    name: str
    factory: str
    kwargs: dict = field(default_factory=dict)
    step: dict = field(default_factory=dict)
    data: DataSpec | None = None
    meta: dict = field(default_factory=dict)

    @property
    def family(self) -> str:
        """The model family: `meta["family"]`, else the factory's function name."""
        return self.meta.get("family") or self.factory.rsplit(":", 1)[-1]


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model in eval mode, its info, its per-unit state, and the sha256 of the bytes
    it was loaded from, per file name (the names `rundir.checkpoint_sha256` gives)."""

    model: nn.Module
    info: CheckpointInfo
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    factory: str,
    kwargs: dict,
    *,
    step: dict | None = None,
    data: DataSpec | None = None,
    meta: dict | None = None,
    state: dict[str, torch.Tensor] | None = None,
    unit_layers: list[str] | None = None,
) -> Path:
    """Write a checkpoint directory whole (`_replace_directory`); byte-identical for identical inputs. Its family is
    `meta["family"]`, else `family_name` of the model and `data` (DESIGN "Checkpoint format").

    Args:
        directory: the checkpoint directory, replaced whole if it exists (a reader never sees old and new files mixed).
        model: the model whose `state_dict()` is saved (model.safetensors).
        factory: the zoo factory that builds it, `resetassay.models:mlp` (`:cnn`, `:resnet`, `:transformer`):
            the only factories a manifest may name.
        kwargs: the factory's keyword arguments (JSON).
        step: how far training went, e.g. `{"task": 2}` or `{"epoch": 5}`.
        data: the data it was trained on (`data_spec`), which `run_assay` probes on its held-out split.
        meta: anything else for the manifest (its `family`, the training settings).
        state: per-unit state, `<layer>.age`, `.reference`, `.utility` tensors (state.safetensors).
        unit_layers: the unit-layer names, recorded in the manifest.

    Returns:
        The checkpoint directory.

    Raises:
        OSError: the directory cannot be written.

    Example::

        >>> import tempfile, torch, resetassay as ra
        >>> from resetassay.models import mlp
        >>> net = mlp(widths=(16,))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = ra.save_checkpoint(f"{tmp}/ckpt", net, "resetassay.models:mlp", {"widths": [16]},
        ...                               step={"task": 1}, data=ra.data_spec("permuted-digits", task=1))
        ...     sorted(p.name for p in path.iterdir()), ra.load_checkpoint(path).info.family
        (['manifest.json', 'model.safetensors'], 'mlp-relu@digits')
    """
    directory = Path(directory)
    name = factory.rsplit(":", 1)[-1]
    manifest = {
        "format": FORMAT,
        "model": {"factory": factory, "kwargs": kwargs},
        "step": step or {},
        "data": data.to_dict() if data else None,
        "unit_layers": unit_layers or [],
        "meta": {"family": family_name(name, kwargs, data), **(meta or {})},
    }
    files = {
        MANIFEST: (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode(),
        WEIGHTS: save_safetensors({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}),
    }
    if state:
        files[STATE] = save_safetensors({k: v.detach().cpu().contiguous() for k, v in state.items()})
    _replace_directory(directory, files)
    return directory


def _replace_directory(directory: Path, files: dict[str, bytes]) -> None:
    """Make `directory` hold exactly `files`, all or nothing.

    They are written into a temporary sibling `.<name>.tmp-*` and flushed to disk; an existing checkpoint is
    renamed aside to `.<name>.old-*`, the new one renamed into place and the old one deleted. A crash leaves
    the old checkpoint or the new one (or, between the two renames, neither), never a mix, plus hidden
    leftovers that `find_checkpoints` skips and the next save under this name deletes. A directory holding
    anything but checkpoint files is never replaced.
    """
    target = Path(os.path.realpath(directory))
    if target.exists() and not target.is_dir():
        raise BadInputError(f"{directory}: is a file, not a checkpoint directory; save the checkpoint elsewhere")
    foreign = sorted(p.name for p in target.iterdir() if p.name not in (MANIFEST, WEIGHTS, STATE)) \
        if target.is_dir() else []
    if foreign:
        raise BadInputError(f"{directory}: holds {', '.join(map(_shown, foreign[:5]))}, not only a checkpoint; "
                            "save the checkpoint elsewhere")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        for name, raw in files.items():
            with open(tmp / name, "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
        _fsync_directory(tmp)
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
            os.rename(target, old)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)  # if this fails, the next save deletes it
        else:
            os.rename(tmp, target)
        _fsync_directory(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for kind in ("tmp", "old"):  # left by an interrupted save
        for leftover in target.parent.glob(f".{escape(target.name)}.{kind}-*"):
            shutil.rmtree(leftover, ignore_errors=True)


def _fsync_directory(path: Path) -> None:
    """Flush a directory's entries (new names, renames) to disk; POSIX only (Windows cannot open a folder)."""
    if os.name == "posix":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _natural_key(path: Path) -> tuple:
    """Sort key reading runs of digits as numbers: task5 before task10, seed2 before seed10."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", path.as_posix()) if part)


def find_checkpoints(paths: list[str | Path], foreign_ok: bool = False) -> list[tuple[Path, str]]:
    """Checkpoints under `paths` (searched recursively) as (path, display name), in natural order (task5 before
    task10).

    A directory with a manifest is a checkpoint; with `foreign_ok` (a `model` was given),
    plain state-dict files count too, but never a per-unit state file (`is_state_file`: it is the state of the
    weights beside it, `state_file`). Hidden files and directories below a path (".*", such as the
    leftovers of an interrupted `save_checkpoint`) are skipped.
    """
    found: list[tuple[Path, str]] = []
    for raw in paths:
        root = Path(raw)
        if not root.exists():
            raise BadInputError(f"{root}: no such file or directory")
        base = root.parent
        if root.is_file():
            if is_state_file(root):
                raise BadInputError(f"{root}: a per-unit state file (<layer>.age, .reference, .utility), not a "
                                    f"checkpoint: give the weights beside it (it is read as their state), or pass it "
                                    "as `state` with the weights")
            if not foreign_ok:
                raise BadInputError(f"{root}: a plain state dict needs `model` package.module:factory "
                                    "(or torchvision:NAME, timm:NAME)")
            found.append((root, str(root.relative_to(base))))
            continue
        hits = [m.parent for m in root.rglob(MANIFEST) if _visible(m, root)]
        if foreign_ok:
            hits += [p for p in root.rglob("*") if p.suffix in STATE_DICT_SUFFIXES and _visible(p, root)
                     and not (p.parent / MANIFEST).exists() and not is_state_file(p)]
        if not hits:
            raise BadInputError(f"{root}: no checkpoint found (no {MANIFEST} below it)")
        found += [(p, str(p.relative_to(base))) for p in sorted(hits, key=_natural_key)]
    names = [name for _, name in found]
    if len(set(names)) < len(names):  # the same name under two arguments: use full paths
        found = [(p, str(p.resolve())) for p, _ in found]
    return found


def is_state_file(path: Path) -> bool:
    """Whether `path` is named as per-unit state (`state.safetensors`, `<weights stem>.state.safetensors`): the
    state of the weights beside it, never a checkpoint of its own."""
    return path.name == STATE or path.name.endswith(STATE_SUFFIX)


def state_file(path: str | Path, foreign: bool, state: str | Path | None = None) -> Path | None:
    """The per-unit state file of the checkpoint at `path` (None: it has none): `state` when given; else its own,
    a checkpoint directory's state.safetensors, or beside a state dict (`foreign`, a file or a folder holding
    model.safetensors) `<weights stem>.state.safetensors`, else `state.safetensors` when the folder holds no other
    weights file. A checkpoint directory (with its manifest) loaded with `model` reads only its weights, as it always
    did. A checkpoint with its own state file and `state` too is an error naming both, as is a state.safetensors
    shared by several weights files (name each `<stem>.state.safetensors`)."""
    path = Path(path)
    weights = (path / WEIGHTS if path.is_dir() else path) if foreign else None
    own = None
    if foreign and (path / MANIFEST).is_file():
        pass  # `model` builds the model of a checkpoint directory from its weights alone
    elif weights is None:
        own = path / STATE if (path / STATE).is_file() else None
    elif weights.with_name(weights.stem + STATE_SUFFIX).is_file():
        own = weights.with_name(weights.stem + STATE_SUFFIX)
    elif (weights.parent / STATE).is_file():
        others = sorted(p.name for p in weights.parent.iterdir() if p.suffix in STATE_DICT_SUFFIXES
                        and p.is_file() and not is_state_file(p) and p.name != weights.name)
        if others:
            raise BadInputError(f"{weights.parent / STATE}: beside several weights files ({weights.name}, "
                                f"{_few(others, 3)}) it is the state of none; name it "
                                f"{weights.stem + STATE_SUFFIX} for {weights.name}, or pass it as `state`",
                                field="state")
        own = weights.parent / STATE
    if state is None:
        return own
    state = Path(state)
    if not state.is_file():
        raise BadInputError(f"`state` {state}: no such file", field="state")
    if own is not None and own.resolve() != state.resolve():
        raise BadInputError(f"`state` {state}: {path} has its own state file {own}; drop `state` or that file",
                            field="state")
    return state


def _visible(path: Path, root: Path) -> bool:
    """No file or folder from `root` down to `path` is hidden (".*")."""
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _shown(name: str) -> str:
    """A key for an error line: as it is, or quoted when it holds line breaks or other unprintable characters."""
    return name if name.isprintable() else repr(name)


def _read(path: Path, missing: str = "no such file") -> bytes:
    """The bytes of a file, read once; any failure is a one-line error naming it."""
    try:
        return path.read_bytes()
    except FileNotFoundError as err:
        raise BadInputError(f"{path}: {missing}") from err
    except IsADirectoryError as err:
        raise BadInputError(f"{path}: is a directory, not a file") from err
    except OSError as err:
        raise BadInputError(f"{path}: cannot read it ({err.strerror or err})") from err


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _check_fields(value: dict, schema: dict[str, Field], closed: bool, prefix: str, path: Path) -> None:
    """Check an object against `schema` (recursively); the first bad field is a one-line error naming it."""
    for key in value:
        if closed and key not in schema:
            raise BadInputError(f"{path}: unknown field {_shown(prefix + key)} (expected "
                                f"{', '.join(prefix + k for k in schema)}); regenerate the checkpoint")
    for key, spec in schema.items():
        if key not in value:
            if spec.required:
                raise BadInputError(f"{path}: {prefix}{key} is missing; regenerate the checkpoint")
            continue
        if not spec.ok(value[key]):
            raise BadInputError(f"{path}: {prefix}{key} must be {spec.must}, got {reprlib.repr(value[key])}; "
                                "regenerate the checkpoint")
        if spec.fields is not None:
            _check_fields(value[key], spec.fields, spec.closed, f"{prefix}{key}.", path)


def _parse_manifest(raw: bytes, path: Path) -> tuple[dict, DataSpec | None]:
    """The manifest in `raw`, checked field by field (`MANIFEST_SCHEMA`), and the data spec it records."""
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise BadInputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); "
                            "regenerate the checkpoint") from err
    except RecursionError as err:
        raise BadInputError(f"{path}: malformed JSON (nested too deeply); regenerate the checkpoint") from err
    except ValueError as err:  # JSONDecodeError, or an integer of more digits than Python converts
        raise BadInputError(f"{path}: malformed JSON ({one_line(err)}); regenerate the checkpoint") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = reprlib.repr(manifest.get("format")) if isinstance(manifest, dict) else \
            f"None (the file holds {JSON_KINDS[type(manifest)]}, not an object)"
        raise BadInputError(f"{path}: format {got} is not {FORMAT!r}; regenerate the checkpoint")
    _check_fields(manifest, MANIFEST_SCHEMA, closed=True, prefix="", path=path)
    try:
        data = DataSpec.from_dict(manifest["data"]) if manifest.get("data") is not None else None
    except BadInputError as err:
        raise BadInputError(f"{path}: {err}; regenerate the checkpoint") from err
    return manifest, data


def _zoo_factory(spec: str, path: Path) -> Callable[..., nn.Module]:
    module, _, attr = spec.partition(":")
    if module != ZOO_MODULE or attr not in MODELS:
        raise BadInputError(
            f"{path}: factory {spec!r} is not in the resetassay zoo; manifests may not run other "
            "code — load its weights with `model` package.module:factory"
        )
    return MODELS[attr]


def import_factory(spec: str, kwargs: dict | None = None):
    """Import `package.module:factory`, named by the user with --model, or make the factory of a library model
    (`torchvision:NAME`, `timm:NAME`). With `kwargs` (--model-kwargs), those that would download pretrained
    weights are refused here, before any work; the factory refuses them too."""
    module_name, _, attr = spec.partition(":")
    if module_name in LIBRARIES:
        if kwargs is not None:  # before importing the library: refused whether or not it is installed
            _refuse_downloads(kwargs)
        return _library_factory(spec, module_name, attr)
    if not module_name or not attr:
        raise BadInputError(f"`model` {spec!r}: expected package.module:factory", field="model")
    module = import_named_module(module_name, f"`model` {spec!r}", "model")
    if not hasattr(module, attr):
        raise BadInputError(f"`model` {spec!r}: {module_name} has no attribute {attr!r}", field="model")
    return getattr(module, attr)


def _downloads(key: str) -> bool:
    """A kwarg of torchvision or timm that loads pretrained weights (from a hub, a cache or a file)."""
    return "pretrained" in key or key.startswith("weights") or key in ("checkpoint_path", "cache_dir")


def _refuse_downloads(kwargs: dict) -> None:
    refused = sorted(k for k in kwargs if _downloads(k))
    if refused:
        them = "it" if len(refused) == 1 else "them"
        raise BadInputError(f"`model_kwargs` {reprlib.repr(kwargs)}: {', '.join(refused)} would load pretrained "
                            f"weights; resetassay never downloads weights — drop {them} and pass your weights as "
                            "the checkpoint", field="model_kwargs")


def _import_library(lib: str, spec: str):
    """`torchvision` or `timm`, or a one-line error naming the extra to install."""
    extra = f"pip install 'resetassay[{lib}]'"
    try:
        return importlib.import_module(lib)
    except ModuleNotFoundError as err:
        missing = (err.name or lib).split(".")[0]
        what = f"{lib} is not installed" if missing == lib else f"{lib} needs {missing}, which is not installed"
        raise BadInputError(f"`model` {spec!r}: {what}; {extra}", field="model") from err
    except Exception as err:  # a build for another torch: "RuntimeError: operator torchvision::nms does not exist"
        raise BadInputError(f"`model` {spec!r}: {lib} does not import beside torch {torch.__version__} "
                            f"({one_line(err)}); install the {lib} built for this torch: {extra}",
                            field="model") from err


def _library_factory(spec: str, lib: str, name: str) -> Callable[..., nn.Module]:
    """The factory of the model `name` of torchvision (`get_model(name, weights=None)`), timm
    (`create_model(name, pretrained=False)`) or transformers (the causal language model of the model type `name`,
    `gpt2`, `llama`, ..., built from its config with the kwargs as config fields); an unknown name is a one-line
    error listing close matches."""
    if not name or ":" in name or "/" in name:  # timm's hf-hub:ORG/NAME and local-dir:PATH load configs
        raise BadInputError(f"`model` {spec!r}: expected {lib}:NAME, the name of one of its architectures "
                            "(resetassay never downloads models or weights)", field="model")
    module = _import_library(lib, spec)
    if lib == "transformers" and _transformers_class(module, name) is not None:
        return _transformers_class_factory(spec, module, name)
    if lib == "transformers":
        names = list(module.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    else:
        names = list(module.models.list_models() if lib == "torchvision" else module.list_models())
    arch = name.split(".", 1)[0] if lib == "timm" else name  # timm: resnet18.a1_in1k names a pretrained tag
    if arch not in names:
        lower = {n.lower(): n for n in names}
        close = sorted(n for n in names if n.lower().startswith(arch.lower()))[:3]  # vit_tiny: vit_tiny_patch16_224
        close += [lower[n] for n in difflib.get_close_matches(arch.lower(), lower, n=5, cutoff=0.6)
                  if lower[n] not in close][:5 - len(close)]
        lister = ("transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES lists them (model types "
                  "such as gpt2, llama), or name a model class (BertForSequenceClassification)"
                  ) if lib == "transformers" else (
            f"{'torchvision.models' if lib == 'torchvision' else lib}.list_models() lists them")
        hint = f"close matches: {', '.join(close)}" if close else lister
        raise BadInputError(f"`model` {spec!r}: {lib} has no model {arch!r}; {hint}", field="model")

    def build(**kwargs) -> nn.Module:
        _refuse_downloads(kwargs)
        if lib == "transformers":  # the model type's config, with kwargs: random weights, nothing downloaded
            return module.AutoModelForCausalLM.from_config(module.AutoConfig.for_model(name, **kwargs))
        if lib == "timm":
            return module.create_model(name, pretrained=False, **kwargs)
        fixed = {"weights": None}
        builder = getattr(module.models, "get_model_builder", None)
        if builder is not None and "weights_backbone" in inspect.signature(builder(name)).parameters:
            fixed["weights_backbone"] = None  # detection models download an ImageNet backbone by default
        return module.models.get_model(name, **fixed, **kwargs)

    build.__qualname__ = build.__name__ = spec
    return build


def _transformers_class(module, name: str):
    """The transformers model class `name` (`BertForSequenceClassification`, `ViTForImageClassification`), or None."""
    if not name[:1].isupper():
        return None
    try:
        cls = getattr(module, name, None)
    except Exception:  # transformers' lazy module: a class whose backend is missing
        return None
    return cls if isinstance(cls, type) and issubclass(cls, nn.Module) and hasattr(cls, "config_class") else None


def _transformers_class_factory(spec: str, module, name: str) -> Callable[..., nn.Module]:
    """The factory of a transformers model class named by the user: its own config class with the kwargs as config
    fields, random weights, nothing downloaded."""
    cls = _transformers_class(module, name)

    def build(**kwargs) -> nn.Module:
        _refuse_downloads(kwargs)
        return cls(cls.config_class(**kwargs))

    build.__qualname__ = build.__name__ = spec
    return build


def _transformers_folder(path: Path, spec: str, kwargs: dict) -> nn.Module | None:
    """The model of a Hugging Face `save_pretrained` folder (config.json beside model.safetensors) named with
    `model` transformers:TYPE or transformers:Class: built from its config.json (the kwargs override its fields),
    as the class named, else the config's `architectures`, else the causal language model of its type."""
    config_file = (path if path.is_dir() else path.parent) / "config.json"  # the folder, or its weights file
    lib, _, name = spec.partition(":")
    if lib != "transformers" or not config_file.is_file():
        return None
    try:
        fields = json.loads(_read(config_file))
    except ValueError as err:
        raise BadInputError(f"{config_file}: not JSON ({one_line(err)})") from err
    if not isinstance(fields, dict) or "model_type" not in fields:
        raise BadInputError(f"{config_file}: no model_type; save the model with save_pretrained")
    module = _import_library(lib, spec)
    _refuse_downloads(kwargs)
    fields = {**fields, **kwargs}
    try:
        config = module.AutoConfig.for_model(**fields)
        cls = _transformers_class(module, name) or next(
            (c for a in fields.get("architectures") or [] if (c := _transformers_class(module, a)) is not None), None)
        return cls(config) if cls is not None else module.AutoModelForCausalLM.from_config(config)
    except BadInputError:
        raise
    except Exception as err:
        raise BadInputError(f"{config_file}: does not build a {spec} model ({one_line(err)}); check `model` and "
                            "`model_kwargs`", field="model") from err


def read_tensors(path: Path, raw: bytes) -> dict[str, torch.Tensor]:
    """Tensors from the bytes `raw` of the safetensors or `.pt` file `path`, never executing code from them."""
    if path.suffix == ".safetensors":
        try:
            return load_safetensors(raw)
        except Exception as err:  # SafetensorError, or KeyError for a dtype torch lacks: all mean "unreadable"
            raise BadInputError(f"{path}: unreadable safetensors file ({one_line(err)}); re-save it") from err
    try:
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as err:  # the unpickler raises several types: an object it refuses, or bytes it cannot read
        found = re.search(r"GLOBAL ([\w.]+)", str(err))  # "Unsupported global: GLOBAL argparse.Namespace ..."
        if found is None and "Unsupported global" not in str(err):
            reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(err))
            raise BadInputError(f"{path}: unreadable — not a file torch.save wrote ("
                                f"{reason[1] if reason else one_line(err)}); re-save it with "
                                "torch.save(model.state_dict(), ...) or use safetensors") from err
        raise BadInputError(
            f"{path}: refused — not a plain tensor state dict{f': it holds a {found[1]}' if found else ''} "
            "(weights_only=True loads no pickled objects, so no code runs); save model.state_dict() or use "
            "safetensors" + (f", e.g. where you trust the file: torch.save(torch.load({str(path)!r}, "
                             "weights_only=False)['state_dict'], 'weights.pt')" if path.suffix == ".ckpt" else "")
        ) from err
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BadInputError(f"{path}: does not hold a dict of tensors; save model.state_dict()")
    return obj


def _check_weights(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path, strict: bool,
                   spec: str | None = None) -> None:
    """The weights `model` wants are all in `tensors`, with its shapes and dtypes (extra ones: an error if
    `strict`, else a warning)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing and extra and all(k.rpartition(".")[2] in STATE_KINDS for k in tensors):
        raise BadInputError(f"{path}: holds per-unit state ({_few(sorted(tensors), 3)}), not the model's weights; "
                            f"name it {STATE} (or <weights stem>{STATE_SUFFIX}) beside the weights, or pass it as "
                            "`state`")
    if missing:  # name a few of each side: a prefix or another architecture shows at a glance
        raise BadInputError(f"{path}: missing weights for the model: {_few(missing)} ({len(missing)} of its "
                            f"{len(expected)} missing); " + (f"the file holds {_few(extra)} instead; " if extra else "")
                            + "check `model`/`model_kwargs`" + _language_model_hint(model, spec))
    if extra:
        if strict:
            raise BadInputError(f"{path}: weights the model lacks: {', '.join(map(_shown, extra[:5]))}")
        warn_user(f"{path}: ignoring keys the model lacks: {', '.join(map(_shown, extra))}")
    for key, ref in expected.items():
        got = tensors[key]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise BadInputError(
                f"{path}: {key} is {got.dtype} {tuple(got.shape)}, the model wants "
                f"{ref.dtype} {tuple(ref.shape)}; check `model`/`model_kwargs`"
            )


def _language_model_hint(model: nn.Module, spec: str | None) -> str:
    """For `transformers:TYPE`: that it builds the causal language model, and how to get another head."""
    lib, _, name = (spec or "").partition(":")
    if lib != "transformers" or name[:1].isupper():
        return ""
    cls = type(model).__name__
    return (f" (`model` {spec} builds the causal language model {cls}; for a classifier or another head name its "
            f"class, e.g. transformers:{cls.split('LMHead')[0].split('For')[0]}ForSequenceClassification)")


def _with_tied(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`tensors` with the keys of tied weights filled in: where several of the model's state-dict keys are one
    parameter (`lm_head.weight` = the token embedding), the file holds it once (safetensors' `save_model`,
    Hugging Face's `save_pretrained`), and the others are not missing."""
    groups: dict[int, list[str]] = {}
    for key, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(key)
    filled = dict(tensors)
    for keys in groups.values():
        held = next((k for k in keys if k in tensors), None)
        if held is not None:
            filled.update({k: tensors[held] for k in keys if k not in tensors})
    return filled


def _few(keys: list[str], n: int = 5) -> str:
    """The first `n` of `keys`, then `...` if there are more."""
    return ", ".join(map(_shown, keys[:n])) + (", ..." if len(keys) > n else "")


def _strip_prefix(expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor],
                  path: Path) -> dict[str, torch.Tensor]:
    """`tensors` with the keys the model wants, when they are found under one prefix: DDP/DataParallel's
    `module.`, or the attribute of a LightningModule (`model.`, `net.`); with a warning saying so. Keys
    outside the prefix stay as they are (the model lacks them: ignored with a warning). Several prefixes
    holding the whole model (`model.` and `ema_model.`) are refused: which one to assay is the user's call."""
    if not expected or all(k in tensors for k in expected):
        return tensors
    first = next(iter(expected))
    candidates = {k[:-len(first)] for k in tensors if k.endswith("." + first)}
    fits = sorted(p for p in candidates if all(p + k in tensors for k in expected))
    shaped = [p for p in fits if all(tensors[p + k].shape == v.shape for k, v in expected.items())]
    fits = shaped or fits
    if not fits:
        return tensors  # missing keys: _check_weights names them
    if len(fits) > 1:
        raise BadInputError(f"{path}: the model's weights are found under several prefixes "
                            f"({', '.join(map(_shown, fits))}); save the state dict of the one to assay")
    prefix = fits[0]
    warn_user(f"{path}: the model's weights are under the prefix {_shown(prefix)} (a DDP/DataParallel wrapper "
              "or a LightningModule attribute); stripped it to match the model's keys")
    stripped = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    return {**{k: v for k, v in tensors.items() if not k.startswith(prefix)}, **stripped}


def _cast_half(expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor],
               path: Path) -> dict[str, torch.Tensor]:
    """`tensors` with float16/bfloat16 weights cast up to the float32/float64 the model wants, with one warning
    per file; integer buffers (BatchNorm's num_batches_tracked) and every other dtype stay as they are."""
    cast = {k: tensors[k].to(v.dtype) for k, v in expected.items()
            if k in tensors and tensors[k].dtype in HALF_DTYPES and v.dtype in (torch.float32, torch.float64)
            and tensors[k].shape == v.shape}  # another shape: _check_weights names the stored dtype and shape
    if cast:
        stored = sorted({str(tensors[k].dtype) for k in cast})
        wanted = sorted({str(v.dtype) for v in cast.values()})
        warn_user(f"{path}: weights stored as {', '.join(stored)}; cast to the model's {', '.join(wanted)}")
    return {**tensors, **cast}


def _check_state(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Per-unit state (SPEC S1, S2): keys `<layer>.age|reference|utility`, one-dimensional integer or float
    tensors, ages whole and >= 0, references finite. Whether their lengths match the model's unit layers is
    checked once the layers are known (`assay.attach_state`)."""
    for key, value in tensors.items():
        layer, _, kind = key.rpartition(".")
        if not layer or kind not in STATE_KINDS:
            problem = "is not <layer>.age, <layer>.reference or <layer>.utility"
        elif value.dtype not in REAL_DTYPES:
            problem = f"has dtype {value.dtype}; store integers or float32/float64"
        elif value.dim() != 1:
            problem = f"has shape {tuple(value.shape)}, not one value per unit"
        elif kind == "age" and not _whole(value):
            problem = "must hold whole numbers >= 0"
        elif kind == "reference" and not bool(value.double().isfinite().all()):
            problem = "holds NaN or Inf"
        else:
            continue
        raise BadInputError(f"{path}: {_shown(key)} {problem}; regenerate the checkpoint")
    return tensors


def _whole(values: torch.Tensor) -> bool:
    """All values are whole numbers >= 0."""
    v = values.double()
    return bool((v.isfinite() & (v >= 0) & (v == v.floor())).all())


def _build(factory: Callable[..., nn.Module], spec: str, kwargs: dict) -> nn.Module:
    """The user's `--model` factory called with `--model-kwargs`; a failure or a non-module is a field error."""
    try:
        net = factory(**kwargs)
    except BadInputError:  # a library model refusing download kwargs
        raise
    except Exception as err:  # whatever the factory raises on kwargs it cannot take
        raise BadInputError(f"`model_kwargs` {reprlib.repr(kwargs)}: {spec} cannot take them ({one_line(err)}); "
                            "pass keyword arguments it accepts", field="model_kwargs") from err
    if not isinstance(net, nn.Module):
        what = "None" if net is None else f"a {type(net).__module__}.{type(net).__qualname__}"
        raise BadInputError(f"`model` {spec!r}: returned {what}, not a torch.nn.Module; name a factory that "
                            "returns the model", field="model")
    return net


def build_model(spec: str, kwargs: dict | None = None) -> nn.Module:
    """The model `model` names (`import_factory`) built with `model_kwargs`, without weights: a one-line field error
    when it does not import, cannot take the kwargs or returns no `nn.Module`."""
    kwargs = kwargs or {}
    return _build(import_factory(spec, kwargs), spec, kwargs)


def _build_zoo(factory: Callable[..., nn.Module], spec: str, kwargs: dict, tensors: dict[str, torch.Tensor],
               manifest: Path, weights: Path) -> nn.Module:
    """The zoo model of a manifest, holding `tensors`. It is built on the meta device first and checked against
    the weights, so kwargs asking for a huge model fail before any memory is taken; any error of the factory
    is a one-line error naming model.kwargs. float16/bfloat16 weights are cast up to the model's dtype, as those of a
    plain state dict are (`_cast_half`)."""
    try:
        with torch.device("meta"):
            shape = factory(**kwargs)
        tensors = _cast_half(shape.state_dict(), tensors, weights)
        _check_weights(shape, tensors, weights, strict=True)
        net = factory(**kwargs)
    except BadInputError:
        raise
    except Exception as err:  # TypeError, ValueError, KeyError, RuntimeError...: the kwargs are bad
        raise BadInputError(f"{manifest}: model.kwargs do not build {spec} ({one_line(err)}); "
                            "regenerate the checkpoint") from err
    net.load_state_dict({k: tensors[k] for k in net.state_dict()})
    return net


def load_checkpoint(
    path: str | Path,
    name: str | None = None,
    model: str | None = None,
    model_kwargs: dict | None = None,
    state: str | Path | None = None,
) -> Checkpoint:
    """Load a checkpoint directory, or a plain state dict built by the `model` factory (DESIGN "Checkpoint format").

    Every file is read once; the result holds the sha256 of the bytes loaded: a directory's manifest, weights
    and state (only the weights with `model`), or the state-dict file, and its per-unit state file (`state_file`:
    `state`, or the one beside the weights). No code from the files runs: a manifest may only name a zoo factory,
    and a state dict is read as tensors alone.

    Args:
        path: a checkpoint directory (manifest.json, model.safetensors, optional state.safetensors), or with
            `model` a state-dict file (.safetensors, .pt, .pth, a Lightning .ckpt) or a directory holding
            model.safetensors.
        name: the checkpoint's name in the tables (default: the last part of `path`).
        model: `package.module:factory`, `torchvision:NAME`, `timm:NAME`, `transformers:TYPE` (its causal language
            model) or `transformers:Class` (`BertForSequenceClassification`), the model a state dict is loaded into
            (never with pretrained weights); a Hugging Face `save_pretrained` folder is built from its config.json.
        model_kwargs: the factory's keyword arguments.
        state: a per-unit state file (`<layer>.age`, `.reference`, `.utility`; safetensors or a `.pt` of tensors)
            for a checkpoint that has none of its own (CBP's state of a model trained elsewhere, `io/gnt.py`).

    Returns:
        A `Checkpoint`: `model` (in eval mode), `info` (path, name, factory, kwargs, step, data, meta, `family`),
        `state` (per-unit tensors) and `sha256` (per file).

    Raises:
        BadInputError: a missing or unreadable file, a manifest that fails its schema or names another factory,
            weights that do not fit the model, or a `model` that does not import.

    Example::

        >>> import resetassay as ra
        >>> ckpt = ra.load_checkpoint("fixtures/silu_mlp/task2")
        >>> ckpt.info.family, ckpt.info.step, ckpt.info.data.source, ckpt.model.training
        ('mlp-silu@digits', {'task': 2}, 'digits', False)
    """
    path = Path(path)
    name = name or path.name
    state_path = state_file(path, model is not None, state) if path.exists() else None
    if model is not None:
        kwargs = model_kwargs or {}
        net = _transformers_folder(path, model, kwargs) or _build(import_factory(model, kwargs), model, kwargs)
        weights = path / WEIGHTS if path.is_dir() else path
        raw = _read(weights)
        expected = net.state_dict()
        tensors = _cast_half(expected, _strip_prefix(expected, read_tensors(weights, raw), weights), weights)
        tensors = _with_tied(net, tensors)
        _check_weights(net, tensors, weights, strict=False, spec=model)
        net.load_state_dict({k: tensors[k] for k in net.state_dict()})
        info = CheckpointInfo(path, name, model, kwargs, meta={"family": model.rsplit(":", 1)[-1]})
        units, hashes = _read_state(path, state_path)
        return Checkpoint(net.eval(), info, units, {weights.name: _sha256(raw), **hashes})
    if not path.is_dir():
        raise BadInputError(f"{path}: not a checkpoint directory; for a state dict pass `model`")
    raw = {MANIFEST: _read(path / MANIFEST, missing="missing; a checkpoint directory needs a manifest")}
    manifest, data = _parse_manifest(raw[MANIFEST], path / MANIFEST)
    spec = manifest["model"]
    factory = _zoo_factory(spec["factory"], path / MANIFEST)
    kwargs = spec.get("kwargs", {})
    raw[WEIGHTS] = _read(path / WEIGHTS)
    net = _build_zoo(factory, spec["factory"], kwargs, read_tensors(path / WEIGHTS, raw[WEIGHTS]),
                     path / MANIFEST, path / WEIGHTS)
    units, hashes = _read_state(path, state_path)
    info = CheckpointInfo(path, name, spec["factory"], kwargs, manifest.get("step", {}), data,
                          manifest.get("meta", {}))
    return Checkpoint(net.eval(), info, units, {**{file: _sha256(content) for file, content in raw.items()}, **hashes})


def _read_state(path: Path, state: Path | None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The per-unit state in the file `state` (none: {}), checked, and its sha256 under `rundir.state_key`."""
    if state is None:
        return {}, {}
    raw = _read(state)
    return _check_state(read_tensors(state, raw), state), {state_key(path, state): _sha256(raw)}
