"""The fast lesion engine (DESIGN "The lesion engine"; SPEC S4).

Same numbers as the plain engine (plain.py), computed with less work:
1. upstream once per probe chunk, downstream only (`graph_split.split_at`);
2. K lesions per forward: the batch grows to K*P rows, block k clamping unit k; K and the probe
   chunk follow a memory budget and halve on out-of-memory;
3. the consumer shortcut where it is exact (Linear: rank-1 update, per position for tokens;
   Conv2d: one-input-channel convolution; never for attention heads, a group of its inputs);
4. every shock metric from the same perturbed logits, on the model's device.
Models torch.fx cannot split fall back, with a logged reason, to the expanded-input path
(whole model on K*P rows, hooks clamping block k), which also runs joint lesions (sets of units,
possibly across layers). A `LesionEngine` (engine.py) by its module functions `unit_shocks` and `joint_shocks`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from resetassay.discovery.hooks import capture, forward_hooks
from resetassay.discovery.units import UnitLayer, per_unit
from resetassay.errors import BadInputError
from resetassay.lesion.engine import LesionRequest
from resetassay.lesion.graph_split import SHORTCUT_TYPES, Split, SplitError, split_at, trace
from resetassay.lesion.shocks import ShockSums, lesioned_units, probe_chunk
from resetassay.shapes import Lesion, Refs, SetShocks, Shocks

log = logging.getLogger(__name__)
DEFAULT_CPU_BUDGET = 1 << 30  # bytes of activations per lesion chunk
# K*P rows per forward, by device and unit-layer kind (measured, benchmarks/lesion_speed.py): on CPU,
# cache-sized chunks suit GEMMs, while convolutions on small maps gain from larger batches.
# A token layer's row is a whole sequence.
TARGET_ROWS = {("cpu", "linear"): 1024, ("cpu", "conv"): 8192, ("cpu", "token"): 128, ("cpu", "head"): 128}
GPU_TARGET_ROWS = 1 << 16


def _memory_budget(device: torch.device, max_memory: int | None) -> int:
    """Bytes one lesion chunk may use: the user's cap, else 1 GiB (CPU) or half the free GPU memory."""
    if max_memory is not None:
        return max_memory
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return DEFAULT_CPU_BUDGET


def _is_oom(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate" in text


def _clamped(layer: UnitLayer, h: torch.Tensor, idx: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """`(K*P, ...)`: K copies of the layer's output h `(P, ...)`, block k with unit idx[k] clamped to r[idx[k]]."""
    k, p = len(idx), h.shape[0]
    out = h.unsqueeze(0).repeat(k, *([1] * h.dim()))
    u = layer.view(out.view(k * p, *h.shape[1:])).unflatten(0, (k, p))  # (K, P, n, ...), writing into out
    u[torch.arange(k, device=h.device), :, idx] = per_unit(r[idx].to(h.dtype), u)  # (K, 1, ...) over (K, P, ...)
    return out.view(k * p, *h.shape[1:])


def _corrected(consumer: nn.Linear | nn.Conv2d, c: torch.Tensor, h: torch.Tensor, idx: torch.Tensor,
               r: torch.Tensor) -> torch.Tensor:
    """`(K*P, ...)`: the consumer output c `(P, ...)` plus, in block k, the term of clamping unit idx[k] of h
    (`(P, n)` or tokens `(P, T, n)` read by a Linear, `(P, n, H, W)` by a Conv2d)."""
    k, p, w = len(idx), h.shape[0], consumer.weight.to(c.dtype)  # under autocast, as the consumer itself reads it
    if isinstance(consumer, nn.Linear):
        delta = (r[idx].to(h.dtype) - h[..., idx]).movedim(-1, 0).unsqueeze(-1)   # (K, P, [T,] 1)
        out = c.new_empty(k, *c.shape)
        torch.addcmul(c.unsqueeze(0), delta, w[:, idx].T.view(k, *[1] * (h.dim() - 1), -1), out=out)
        return out.view(k * p, *c.shape[1:])
    delta = r[idx].to(h.dtype).view(1, k, 1, 1) - h[:, idx]          # (P, K, H, W)
    kernel = w[:, idx].transpose(0, 1).reshape(k * w.shape[0], 1, *w.shape[2:])
    d = F.conv2d(delta, kernel, None, consumer.stride, consumer.padding, consumer.dilation, groups=k)
    d = d.view(p, k, w.shape[0], *d.shape[2:]).transpose(0, 1)
    return (c.unsqueeze(0) + d).reshape(k * p, *c.shape[1:])


def _downstream_inputs(split: Split, layer: UnitLayer, h: torch.Tensor, values: list[torch.Tensor],
                       idx: torch.Tensor, r: torch.Tensor) -> list[torch.Tensor]:
    """Inputs of the downstream graph for K lesions: start values, then the expanded frontier."""
    n_starts = len(split.starts)
    starts = [_clamped(layer, h, idx, r) if m is None else _corrected(m, v, h, idx, r)
              for m, v in zip(split.starts, values[:n_starts], strict=True)]
    return starts + [_expand(f, len(idx)) for f in values[n_starts:]]


def _expand(t: torch.Tensor, k: int) -> torch.Tensor:
    """`(P, ...)` -> `(K*P, ...)`, block k a copy of t (a tensor read where lesions join)."""
    return t.unsqueeze(0).expand(k, *t.shape).reshape(k * t.shape[0], *t.shape[1:])


def _with_backoff(rows: int, work: Callable[[int], None]) -> None:
    """Run `work(rows)`, halving rows on out-of-memory until one row fails."""
    while True:
        try:
            work(rows)
            return
        except (RuntimeError, torch.OutOfMemoryError) as err:
            if not _is_oom(err) or rows == 1:
                if _is_oom(err):
                    raise BadInputError("out of memory with a single lesion row; use `device` cpu or a "
                                        "smaller `max_memory`/`probe_size`") from err
                raise
            rows //= 2
            log.warning("out of memory: retrying with %d rows per lesion chunk", rows)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _upstream(split: Split, layer: UnitLayer, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """`h` and the downstream inputs (start values, frontier) of a probe chunk, all batch-first."""
    h, *values = split.upstream(x)
    if any(not isinstance(v, torch.Tensor) or v.shape[:1] != h.shape[:1] for v in values):
        raise SplitError(f"{layer.name}: a value read downstream is not a batch-first tensor")
    return h, values


def _split_layer_shocks(split: Split, layer: UnitLayer, chosen: torch.Tensor, request: LesionRequest,
                        rows: int) -> SetShocks:
    """Shocks `(len(chosen),)` of the units `chosen` of one layer through its split (steps 1-4 of the module
    docstring), at most `rows` lesion rows per forward."""
    r = request
    device = r.base.device
    chosen = chosen.to(device)
    n = len(chosen)
    sums = ShockSums(n, r.metrics, device, r.groups)

    def work(rows: int) -> None:
        sums.reset()
        target = TARGET_ROWS.get((device.type, layer.kind), GPU_TARGET_ROWS)
        p_chunk = max(1, min(len(r.probe_x), rows, target))
        k_max = max(1, min(n, rows // p_chunk, target // p_chunk, r.max_k or n))
        for p0 in range(0, len(r.probe_x), p_chunk):
            with torch.inference_mode():
                x = r.probe_x[p0:p0 + p_chunk].to(device)
                h, values = _upstream(split, layer, x)
                z = probe_chunk(r.base, r.targets, x, p0, r.groups)
                for u0 in range(0, n, k_max):
                    idx = chosen[u0:u0 + k_max]
                    zl = split.downstream(*_downstream_inputs(split, layer, h, values, idx, r.refs[layer.name]))
                    sums.add(u0, z, zl.view(len(idx), *z.z.shape))
                    if r.advance and p0 + p_chunk >= len(r.probe_x):
                        r.advance(len(idx))

    _with_backoff(rows, work)
    return sums.means(len(r.probe_x))


def _bytes_per_row(model: nn.Module, x1: torch.Tensor) -> int:
    """Bytes of every module output for one example: the activation memory of one row (an upper
    bound for any downstream part, which also holds its inputs)."""
    leaves = {name: m for name, m in model.named_modules() if not list(m.children())}
    with capture(model, leaves, keep=_nbytes, every_call=True) as outputs, torch.inference_mode():
        model(x1)
    return _nbytes(x1) + sum(size for _, size in outputs.calls)


def _nbytes(out: object) -> int:
    return out.numel() * out.element_size() if isinstance(out, torch.Tensor) else 0


@contextmanager
def _block_clamps(lesions: list[Lesion], layers: dict[str, UnitLayer], refs: Refs, p: int) -> Iterator[None]:
    """Hooks for the expanded-input path: block k of the K*P rows gets lesion k's clamps."""
    def hook_for(name: str):
        def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor:
            out = out.clone()
            blocks = layers[name].view(out).unflatten(0, (len(lesions), p))  # (K, P, n, ...), writing into out
            for k, lesion in enumerate(lesions):
                idx = lesion.get(name)
                if idx is not None and len(idx):
                    blocks[k][:, idx] = per_unit(refs[name][idx].to(out.dtype), blocks[k])
            return out
        return hook

    names = {name for lesion in lesions for name in lesion}
    with forward_hooks({layers[name].module: hook_for(name) for name in names}):
        yield


def _rows(model: nn.Module, probe_x: torch.Tensor, max_memory: int | None) -> int:
    """Rows (lesions x probe examples) of one forward that fit the memory budget."""
    device = next(model.parameters()).device
    return max(1, _memory_budget(device, max_memory) // _bytes_per_row(model, probe_x[:1].to(device)))


def joint_shocks(request: LesionRequest, lesions: list[Lesion]) -> SetShocks:
    """Shock `(n_lesions,)` per metric of each lesion (a set of units clamped at once): the
    expanded-input path, whole model on K*P rows."""
    r = request
    device = next(r.model.parameters()).device
    by_name = {layer.name: layer for layer in r.layers}
    lesions = [{k: v.to(device) for k, v in lesion.items()} for lesion in lesions]
    sums = ShockSums(len(lesions), r.metrics, device, r.groups)

    def work(rows: int) -> None:
        sums.reset()
        p_chunk = max(1, min(len(r.probe_x), rows))
        k_max = max(1, min(len(lesions), rows // p_chunk))
        for p0 in range(0, len(r.probe_x), p_chunk):
            x = r.probe_x[p0:p0 + p_chunk].to(device)
            for l0 in range(0, len(lesions), k_max):
                chunk = lesions[l0:l0 + k_max]
                with torch.inference_mode(), _block_clamps(chunk, by_name, r.refs, len(x)):
                    zl = r.model(_expand(x, len(chunk)))
                sums.add(l0, probe_chunk(r.base, r.targets, x, p0, r.groups),
                         zl.view(len(chunk), len(x), *r.base.shape[1:]))
                if r.advance and p0 + p_chunk >= len(r.probe_x):
                    r.advance(len(chunk))

    _with_backoff(_rows(r.model, r.probe_x, r.max_memory), work)
    return sums.means(len(r.probe_x))


def shortcut_types(layer: UnitLayer, device: torch.device, shortcut: bool | None) -> tuple[type[nn.Module], ...]:
    """The readers of `layer` whose output the engine corrects instead of recomputing (step 3): none for attention
    heads; else Linear and Conv2d (`shortcut` True), none (False), or where it pays (None: Linear readers, and
    Conv2d readers on GPU only; on CPU a grouped one-channel convolution measured 2-3x slower than recomputing the
    dense consumer)."""
    if layer.kind == "head" or shortcut is False:
        return ()
    return SHORTCUT_TYPES if shortcut or device.type == "cuda" else (nn.Linear,)


def unit_shocks(request: LesionRequest) -> Shocks:
    """`Shocks[metric][layer]` `(n_units,)` (or one per index of `request.units[layer]`), equal to the plain engine's
    (SPEC S4), faster.

    `request.max_k` caps the lesions per forward (tests sweep it); `request.shortcut` True/False forces the consumer
    shortcut on/off for every Linear/Conv2d reader; None (default) uses it where it pays (`shortcut_types`).
    """
    r = request
    device = next(r.model.parameters()).device
    rows = _rows(r.model, r.probe_x, r.max_memory)
    try:
        gm = trace(r.model)
    except SplitError as why:
        log.warning("%s; using the expanded-input path", why)
        gm = None
    shocks: Shocks = {m: {} for m in r.metrics}
    for layer in r.layers:
        chosen = lesioned_units(layer, r.units)
        per_metric = None
        if gm is not None:
            try:
                split = split_at(gm, layer.name, shortcut_types(layer, device, r.shortcut))
                per_metric = _split_layer_shocks(split, layer, chosen, r, rows)
            except SplitError as why:
                log.warning("%s; using the expanded-input path for %s", why, layer.name)
        if per_metric is None:
            per_metric = joint_shocks(r, [{layer.name: chosen[i:i + 1]} for i in range(len(chosen))])
        for m in r.metrics:
            shocks[m][layer.name] = per_metric[m]
    return shocks
