"""Checkpoint directories (DESIGN "Checkpoint format"): save, find and load them safely.

A checkpoint directory holds `manifest.json`, `model.safetensors` and optionally
`state.safetensors` (per-unit "<layer>.age", "<layer>.reference", "<layer>.utility"; SPEC S1).
Loading never runs code from the files: tensors come from safetensors or `torch.load(...,
weights_only=True)`, and a manifest may only name a factory of the resetassay zoo. Other
factories run only when the user names them with `--model`.
"""

from __future__ import annotations

import importlib
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from resetassay.data import DataSpec
from resetassay.errors import BadInputError
from resetassay.models import MODELS, model_family
from resetassay.names import MANIFEST, STATE, WEIGHTS

FORMAT = "resetassay.checkpoint/1"
ZOO_MODULE = "resetassay.models"
STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth")


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
        return self.meta.get("family") or self.factory.rsplit(":", 1)[-1]


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model in eval mode, its info and its per-unit state."""

    model: nn.Module
    info: CheckpointInfo
    state: dict[str, torch.Tensor] = field(default_factory=dict)


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
    """Write a checkpoint directory; byte-identical for identical inputs."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = factory.rsplit(":", 1)[-1]
    manifest = {
        "format": FORMAT,
        "model": {"factory": factory, "kwargs": kwargs},
        "step": step or {},
        "data": data.to_dict() if data else None,
        "unit_layers": unit_layers or [],
        "meta": {"family": model_family(name, kwargs), **(meta or {})},
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, directory / WEIGHTS)
    if state:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, directory / STATE)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return directory


def find_checkpoints(paths: list[str | Path], foreign_ok: bool = False) -> list[tuple[Path, str]]:
    """Checkpoints under `paths` (searched recursively) as (path, display name), sorted.

    A directory with a manifest is a checkpoint; with `foreign_ok` (a `--model` was given),
    plain state-dict files count too.
    """
    found: list[tuple[Path, str]] = []
    for raw in paths:
        root = Path(raw)
        if not root.exists():
            raise BadInputError(f"{root}: no such file or directory")
        base = root.parent
        if root.is_file():
            if not foreign_ok:
                raise BadInputError(f"{root}: a plain state dict needs --model package.module:factory")
            found.append((root, str(root.relative_to(base))))
            continue
        hits = [m.parent for m in root.rglob(MANIFEST)]
        if foreign_ok:
            hits += [p for p in root.rglob("*") if p.suffix in STATE_DICT_SUFFIXES
                     and not (p.parent / MANIFEST).exists()]
        if not hits:
            raise BadInputError(f"{root}: no checkpoint found (no {MANIFEST} below it)")
        found += [(p, str(p.relative_to(base))) for p in sorted(hits)]
    names = [name for _, name in found]
    if len(set(names)) < len(names):  # the same name under two arguments: use full paths
        found = [(p, str(p.resolve())) for p, _ in found]
    return found


def _read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    if not path.exists():
        raise BadInputError(f"{path}: missing; a checkpoint directory needs a manifest")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadInputError(f"{path}: malformed JSON ({err}); regenerate the checkpoint") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise BadInputError(f"{path}: format {got!r} is not {FORMAT!r}; regenerate the checkpoint")
    return manifest


def _zoo_factory(spec: str, path: Path):
    module, _, attr = spec.partition(":")
    if module != ZOO_MODULE or attr not in MODELS:
        raise BadInputError(
            f"{path}: factory {spec!r} is not in the resetassay zoo; manifests may not run other "
            "code — load its weights with --model package.module:factory"
        )
    return MODELS[attr]


def import_factory(spec: str):
    """Import `package.module:factory`, named by the user with --model."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise BadInputError(f"--model {spec!r}: expected package.module:factory", flag="--model")
    cwd = str(Path.cwd())
    searched = cwd in sys.path or "" in sys.path  # `python -m` searches the working folder, the script not
    if not searched:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise BadInputError(f"--model {spec!r}: cannot import {module_name} ({err}); run from the folder "
                            "that holds it or add that folder to PYTHONPATH", flag="--model") from err
    finally:
        if not searched:
            sys.path.remove(cwd)
    if not hasattr(module, attr):
        raise BadInputError(f"--model {spec!r}: {module_name} has no attribute {attr!r}", flag="--model")
    return getattr(module, attr)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors or `.pt` file, never executing code from it."""
    if not path.exists():
        raise BadInputError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as err:
            raise BadInputError(f"{path}: unreadable safetensors file ({err}); re-save it") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the unpickler raises several types; all mean "refused"
        raise BadInputError(
            f"{path}: refused — not a plain tensor state dict (weights_only=True loads no "
            "pickled objects, so no code runs); save model.state_dict() or use safetensors"
        ) from err
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BadInputError(f"{path}: does not hold a dict of tensors; save model.state_dict()")
    return obj


def _load_weights(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path, strict: bool) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing:
        raise BadInputError(f"{path}: missing weights for the model: {', '.join(missing[:5])}")
    if extra:
        if strict:
            raise BadInputError(f"{path}: weights the model lacks: {', '.join(extra[:5])}")
        warnings.warn(f"{path}: ignoring keys the model lacks: {', '.join(extra)}", stacklevel=3)
    for key, ref in expected.items():
        got = tensors[key]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise BadInputError(
                f"{path}: {key} is {got.dtype} {tuple(got.shape)}, the model wants "
                f"{ref.dtype} {tuple(ref.shape)}; check --model/--model-kwargs"
            )
    model.load_state_dict({k: tensors[k] for k in expected})


def load_checkpoint(
    path: str | Path,
    name: str | None = None,
    model: str | None = None,
    model_kwargs: dict | None = None,
) -> Checkpoint:
    """Load a checkpoint directory, or a plain state dict built by the `model` factory."""
    path = Path(path)
    name = name or path.name
    if model is not None:
        kwargs = model_kwargs or {}
        net = import_factory(model)(**kwargs)
        weights = path / WEIGHTS if path.is_dir() else path
        _load_weights(net, read_tensors(weights), weights, strict=False)
        info = CheckpointInfo(path, name, model, kwargs, meta={"family": model.rsplit(":", 1)[-1]})
        return Checkpoint(net.eval(), info)
    if not path.is_dir():
        raise BadInputError(f"{path}: not a checkpoint directory; for a state dict pass --model")
    manifest = _read_manifest(path)
    spec = manifest.get("model") or {}
    factory = _zoo_factory(str(spec.get("factory")), path / MANIFEST)
    kwargs = spec.get("kwargs") or {}
    try:
        net = factory(**kwargs)
    except TypeError as err:
        raise BadInputError(f"{path / MANIFEST}: bad model kwargs ({err})") from err
    _load_weights(net, read_tensors(path / WEIGHTS), path / WEIGHTS, strict=True)
    state = read_tensors(path / STATE) if (path / STATE).exists() else {}
    data = DataSpec.from_dict(manifest["data"]) if manifest.get("data") else None
    info = CheckpointInfo(path, name, spec["factory"], kwargs, manifest.get("step") or {},
                          data, manifest.get("meta") or {})
    return Checkpoint(net.eval(), info, state)
