"""A run shared by the ranks of a torchrun launch (DESIGN "Beyond one machine").

    torchrun --nproc-per-node 2 -m resetassay run fixtures --out reports/fixtures

A run's work is cut into items that never depend on the number of ranks: each checkpoint's calibration
(references and utility scores, SPEC S2-S3) and its lesion chunks (at most `assay.LESION_CHUNK` units of one
layer, SPEC S4). Three phases, each closed by a collective that also carries errors and failed checkpoints:

1. calibration: the owner of each checkpoint writes OUT/parts/<key>/calibration.safetensors;
2. lesions: the chunks of every calibrated checkpoint, balanced over the ranks by their estimated cost
   (units x the FLOPs downstream of the layer, `downstream_flops`), each written as lesions-<i>.safetensors;
3. merge, on rank 0: the UnitTable from the items, joint lesions and statistics (SPEC S5), the checkpoint's
   finished part; then `run.py` writes the run's tables and report.

Each item is written atomically when it finishes (rundir.RunParts), so a rerun with any number of ranks finds
what is done and does the rest: a rank that dies loses only the item in flight. The ranks share the run
directory (a shared filesystem across nodes) and talk through a gloo group, whatever the backend of the
default group (gloo on CPU, nccl on CUDA). The chunks and every number computed on them are the same for
any number of ranks, so the tables equal the single-process run's.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from resetassay.discovery.hooks import capture
from resetassay.discovery.units import UnitLayer
from resetassay.errors import BadInputError
from resetassay.io.rundir import RunParts, Tables
from resetassay.names import CBP_RESET
from resetassay.pipeline.assay import (
    AssayResult,
    Calibration,
    CheckpointInputs,
    LesionChunk,
    Prepared,
    calibrate,
    finish,
    lesion_chunk,
    progress_counter,
    warn_if_at_chance,
)
from resetassay.progress import Progress

CALIBRATION = "calibration"
Open = Callable[[Path, str, bool], CheckpointInputs]  # (path, name, first time) -> the checkpoint and its data


@dataclass(frozen=True)
class World:
    """This process's place in a torchrun launch: its rank among `size`, and the gloo group of the messages."""

    rank: int
    size: int
    group: object | None = None

    def gather(self, value: object) -> list:
        """Every rank's `value`, in rank order, on every rank."""
        out: list = [None] * self.size
        dist.all_gather_object(out, value, group=self.group)
        return out


def launch_from_env() -> int:
    """Join the process group when started by torchrun (WORLD_SIZE > 1): nccl with CUDA, each rank on the GPU
    LOCAL_RANK; else gloo, each rank on its share of the CPU cores. Returns this process's rank (0 alone)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return 0
    if dist.is_initialized():
        return dist.get_rank()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    _share_cores()
    return dist.get_rank()


def _share_cores() -> None:
    """Give this rank its share of the machine's cores (LOCAL_WORLD_SIZE ranks on one node)."""
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))


def current_world() -> World | None:
    """The launch this process is a rank of, when a process group of two or more ranks is initialised."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    return World(dist.get_rank(), dist.get_world_size(), group)


def assign(costs: list[float], size: int) -> list[int]:
    """The rank of each item: the costliest first, each to the rank with the least work so far (ties: the first
    item, the lowest rank); the same on every rank."""
    load = [0.0] * size
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(size), key=lambda r: (load[r], r))
        owner[i] = rank
        load[rank] += costs[i]
    return owner


def _numel(out: object) -> int:
    return out.numel() if isinstance(out, torch.Tensor) else 0


def downstream_flops(model: nn.Module, layers: list[UnitLayer], x: torch.Tensor) -> dict[str, int]:
    """Per unit layer, the multiply-adds of one example's forward after the layer: the cost of one lesion
    (Linear and Conv count their weights' products, every other module its output size)."""
    modules = {name: m for name, m in model.named_modules() if not list(m.children())}
    for layer in layers:  # a unit layer's module need not be a leaf
        if all(m is not layer.module for m in modules.values()):
            modules[layer.name] = layer.module
    with capture(model, modules, keep=_numel, every_call=True) as seen, torch.inference_mode():
        model(x[:1])
    calls: list[tuple[nn.Module, int]] = []
    for name, size in seen.calls:
        module = modules[name]
        if isinstance(module, nn.Linear):
            size *= module.in_features
        elif isinstance(module, nn.Conv2d):
            size *= module.weight[0].numel()
        calls.append((module, size))
    first = {}
    for i, (module, _) in enumerate(calls):
        first.setdefault(module, i)
    return {layer.name: sum(size for _, size in calls[first.get(layer.module, len(calls)) + 1:]) + 1
            for layer in layers}


class Phase:
    """The work of one phase on this rank: failed checkpoints, seconds per stage, and the error that stops the
    run (a `BadInputError` about the command, or a crash), shared with every rank by `close`."""

    def __init__(self, world: World, fail: Callable[[str, Path, Exception], dict]):
        self.world, self.fail = world, fail
        self.failures: list[dict] = []
        self.timings: dict[str, dict[str, float]] = {}
        self.error: tuple[str, str, str | None] | None = None
        self._own: Exception | None = None

    def checkpoint(self, name: str, path: Path, work: Callable[[], Prepared]) -> None:
        """Run one checkpoint's work; a bad checkpoint (no field) or NaN/Inf logits is a failed checkpoint."""
        try:
            prepared = work()
        except (BadInputError, FloatingPointError) as err:
            if isinstance(err, BadInputError) and err.field:
                raise
            self.failures.append(self.fail(name, path, err))
        else:
            _add_seconds(self.timings, {name: prepared.clock.seconds})

    def run(self, body: Callable[[], None]) -> None:
        """Run the phase's body, keeping the error that stops the run for `close`."""
        try:
            body()
        except BadInputError as err:
            self.error = ("bad input", str(err), err.field)
        except Exception as err:  # a crash on one rank must stop them all, not leave them waiting
            self.error = ("crash", f"rank {self.world.rank}: {type(err).__name__}: {err}\n{traceback.format_exc()}",
                          None)
            self._own = err

    def close(self) -> tuple[list[dict], dict[str, dict[str, float]]]:
        """Wait for every rank; raise the first error of any rank; else every rank's failures and timings."""
        reports = self.world.gather((self.failures, self.timings, self.error))
        for _, _, error in reports:
            if error is not None:
                kind, message, field = error
                if kind == "bad input":
                    raise BadInputError(message, field=field)
                if self._own is not None:
                    raise self._own
                raise RuntimeError(f"another rank stopped the run: {message}")
        failures = [row for rank_failures, _, _ in reports for row in rank_failures]
        timings: dict[str, dict[str, float]] = {}
        for _, rank_timings, _ in reports:
            _add_seconds(timings, rank_timings)
        return failures, timings


def _add_seconds(total: dict[str, dict[str, float]], more: dict[str, dict[str, float]]) -> None:
    """Add `more`'s seconds per checkpoint and stage into `total` (stages of every rank and phase, summed)."""
    for name, stages in more.items():
        merged = total.setdefault(name, {})
        for stage, seconds in stages.items():
            merged[stage] = round(merged.get(stage, 0.0) + seconds, 4)


def _calibration_tensors(cal: Calibration) -> dict[str, torch.Tensor]:
    return {**{f"ref/{layer}": r for layer, r in cal.refs.items()},
            **{f"score/{u}/{layer}": s for u, per_layer in cal.scores.items() for layer, s in per_layer.items()}}


def _load_calibration(store: RunParts, key: str, p: Prepared) -> Calibration:
    """A checkpoint's Calibration as its calibration item holds it (utilities and notes in their order)."""
    item = store.load_item(key, CALIBRATION)
    if item is None:
        raise RuntimeError(f"{p.name}: its calibration item is gone from {store.parts / key}; rerun to redo it")
    tensors, meta = item
    device = p.base.device
    refs = {name.split("/", 1)[1]: t.to(device) for name, t in tensors.items() if name.startswith("ref/")}
    scores = {u: {} for u in meta["utilities"]}
    for name, t in tensors.items():
        if name.startswith("score/"):
            _, utility, layer = name.split("/", 2)
            scores[utility][layer] = t
    return Calibration(refs, scores, {(u, layer): why for u, layer, why in meta["not_applicable"]})


def assay_sharded(world: World, found: list[tuple[Path, str]], keys: dict[str, str], store: RunParts,  # noqa: C901 — the sharded run's phases in order, with their failure paths
                  open_checkpoint: Open, progress: Progress | None,
                  fail: Callable[[str, Path, Exception], dict]) -> tuple[dict[str, Tables], list[dict], dict]:
    """This rank's share of the checkpoints `found` not yet finished in `store` (module docstring): the tables of
    those finished now (on rank 0; {} elsewhere), the failed checkpoints and the seconds per stage (every rank's)."""
    pending = [(path, name) for path, name in found if not store.has(keys[name])]
    failures: list[dict] = []
    timings: dict[str, dict[str, float]] = {}

    def closed(phase: Phase) -> set[str]:
        more_failures, more_timings = phase.close()
        failures.extend(more_failures)
        _add_seconds(timings, more_timings)
        return {row["checkpoint"] for row in failures}

    # 1. calibration: each checkpoint on one rank, larger weight files first
    sizes = [float(sum(f.stat().st_size for f in ([p] if p.is_file() else p.iterdir()) if f.is_file()))
             for p, _ in pending]
    phase = Phase(world, fail)

    def calibrate_mine() -> None:
        for (path, name), owner in zip(pending, assign(sizes, world.size), strict=True):
            if owner == world.rank and not _intact_items(store, keys[name]):
                phase.checkpoint(name, path, lambda path=path, name=name: _calibrate(
                    open_checkpoint(path, name, True), store, keys[name], progress))

    phase.run(calibrate_mine)
    failed = closed(phase)

    # 2. lesions: every chunk of every calibrated checkpoint, balanced by cost
    todo: list[tuple[Path, str, int, float]] = []
    for path, name in pending:
        item = None if name in failed else store.load_item(keys[name], CALIBRATION)
        if item is not None:
            todo += [(path, name, i, cost) for i, cost in enumerate(item[1]["chunk_costs"])
                     if not store.has_item(keys[name], f"lesions-{i}")]
    owners = assign([cost for *_, cost in todo], world.size)
    mine = [(path, name, i) for (path, name, i, _), owner in zip(todo, owners, strict=True) if owner == world.rank]
    phase = Phase(world, fail)

    def lesion_mine() -> None:
        for path, name in dict.fromkeys((path, name) for path, name, _ in mine):
            chunks = [i for p, n, i in mine if n == name]
            phase.checkpoint(name, path, lambda path=path, name=name, chunks=chunks: _lesions(
                open_checkpoint(path, name, False), store, keys[name], chunks, progress))

    phase.run(lesion_mine)
    failed = closed(phase)

    # 3. merge on rank 0
    parts: dict[str, Tables] = {}
    phase = Phase(world, fail)

    def merge_all() -> None:
        for path, name in pending:
            if name not in failed:
                phase.checkpoint(name, path, lambda path=path, name=name: _merge(
                    open_checkpoint(path, name, False), store, keys[name], parts))

    if world.rank == 0:
        phase.run(merge_all)
    closed(phase)
    return parts, failures, timings


def _intact_items(store: RunParts, key: str) -> bool:
    """Whether checkpoint `key`'s calibration item is on disk and intact. Its owner reads every item of it left by
    an earlier launch, before any other rank reads one: an edited or unreadable item is removed with a warning
    (`RunParts.load_item` checks its sha256) and done again in this launch (later phases trust what is on disk;
    checked there, a removed item made the checkpoint fail, exit 1)."""
    for lesions in sorted((store.parts / key).glob("lesions-*.safetensors")):
        store.load_item(key, lesions.stem)
    return store.load_item(key, CALIBRATION) is not None


def _calibrate(inputs: CheckpointInputs, store: RunParts, key: str, progress: Progress | None) -> Prepared:
    """Phase 1 for one checkpoint: its calibration item, with its chunks' estimated costs."""
    p = inputs.prepare()
    _save_calibration(p, store, key, progress)
    return p


def _save_calibration(p: Prepared, store: RunParts, key: str, progress: Progress | None) -> Calibration:
    """Calibrate `p` and write its calibration item, with its chunks' estimated costs (for the lesion phase)."""
    cal = calibrate(p, progress)
    flops = downstream_flops(p.model, p.layers, p.probe_x.to(p.base.device))
    meta = {"utilities": list(cal.scores), "not_applicable": [[u, layer, why] for (u, layer), why
                                                               in cal.not_applicable.items()],
            "chunk_costs": [len(c.units) * flops[c.layer] for c in p.chunks()]}
    store.save_item(key, CALIBRATION, _calibration_tensors(cal), meta)
    return cal


def _lesions(inputs: CheckpointInputs, store: RunParts, key: str, chunks: list[int],
             progress: Progress | None) -> Prepared:
    """Phase 2 for one checkpoint: the lesion items `chunks` (indices into `Prepared.chunks`)."""
    p = inputs.prepare()
    _save_lesions(p, _load_calibration(store, key, p), store, key, chunks, progress)
    return p


def _save_lesions(p: Prepared, cal: Calibration, store: RunParts, key: str, chunks: list[int],
                  progress: Progress | None, done: int = 0) -> None:
    """Lesion the chunks `chunks` of `p` and write each as its item as it finishes; `done`: lesions finished
    earlier, counted into the progress."""
    every: list[LesionChunk] = p.chunks()
    per_unit = 2 if p.config.intervention == CBP_RESET else 1  # a reset run measures the clamp too
    advance = progress_counter(progress, f"lesions {p.name}",
                               done + sum(len(every[i].units) for i in chunks) * per_unit)
    if advance and done:
        advance(done)
    for i in chunks:
        shocks = lesion_chunk(p, cal, every[i], advance)
        store.save_item(key, f"lesions-{i}", {f"shock/{m}": s for m, s in shocks.items()}, {})


def _merge(inputs: CheckpointInputs, store: RunParts, key: str, parts: dict[str, Tables]) -> Prepared:
    """Phase 3 for one checkpoint: its tables from its items, its finished part, its items removed."""
    p = inputs.prepare()
    parts[p.name] = store.save(key, _merged(inputs, p, _load_calibration(store, key, p), store, key).tables())
    store.drop_items(key)
    return p


def _merged(inputs: CheckpointInputs, p: Prepared, cal: Calibration, store: RunParts, key: str) -> AssayResult:
    """The checkpoint's result from its calibration and its lesion items."""
    shocks = []
    for i in range(len(p.chunks())):
        item = store.load_item(key, f"lesions-{i}")
        if item is None:
            raise RuntimeError(f"{p.name}: lesion chunk {i} is missing after every rank finished; rerun to do it")
        shocks.append({name.split("/", 1)[1]: t for name, t in item[0].items()})
    result = finish(p, cal, shocks)
    result.checkpoints = inputs.row(result.checkpoints)
    warn_if_at_chance(result, inputs.ckpt.info.step)
    return result


def assay_with_items(inputs: CheckpointInputs, store: RunParts, key: str, progress: Progress | None
                     ) -> AssayResult:
    """One checkpoint in this process, as `assay_checkpoint` assays it, with its calibration and each lesion chunk
    written as a work item of `store` as it finishes: a run stopped mid-checkpoint resumes from its items (those
    an earlier launch left are checked as a torchrun launch checks them, `_intact_items`). The caller saves the
    checkpoint's part and drops its items."""
    p = inputs.prepare()
    cal = (_load_calibration(store, key, p) if _intact_items(store, key)
           else _save_calibration(p, store, key, progress))
    every = p.chunks()
    todo = [i for i in range(len(every)) if not store.has_item(key, f"lesions-{i}")]
    done = sum(len(every[i].units) for i in range(len(every)) if i not in todo)
    _save_lesions(p, cal, store, key, todo, progress, done * (2 if p.config.intervention == CBP_RESET else 1))
    return _merged(inputs, p, cal, store, key)
