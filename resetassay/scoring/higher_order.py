"""Beyond first order: two estimates of what a reset does to the target logit z_y (SPEC S3: gxd_ig, gxd2).

GXD is the first-order change of z_y when unit i moves from h_i to its reference r_i. These go further:

- `gxd_ig`, integrated gradients on the *joint* path: the whole unit layer moves on the straight line
  h(a) = r + a (h - r), a from 0 to 1, and unit i gets sum_s (h_i(s) - r_i) * int_0^1 dz_y/dh_i(s)(h(a)) da
  (captum's IntegratedGradients over a forward whose unit layer takes the path's values; IG_STEPS
  Gauss-Legendre nodes; one layer at a time, every other layer following its inputs).
- `gxd2`, second order on the lesion's own direction: d_i = r_i - h_i on every position of unit i alone,
  g . d_i + 1/2 d_i' H d_i, with g and H the gradient and Hessian of z_y in the layer's output; the
  Hessian-vector products by double backward, batched over UNIT_CHUNK units at once.

Both are per example `(B, n)` and signed: the caller takes |.| and the calibration mean, as for gxd.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import nn

from resetassay.discovery.hooks import as_is, capture, differentiable
from resetassay.discovery.sequences import target_logits
from resetassay.discovery.units import UnitLayer, per_unit, position_mask, sum_positions

IG_STEPS = 16  # Gauss-Legendre nodes of gxd_ig's path integral (exact for polynomials of degree < 32 in a)
UNIT_CHUNK = 16  # units whose Hessian-vector products one batched double backward computes


def batched_vjp(output: torch.Tensor, inputs: list[torch.Tensor], rows: torch.Tensor) -> list[torch.Tensor | None]:
    """Vector-Jacobian products of `output` with each of `rows (k, *output.shape)`, per input `(k, *input.shape)`
    (None where `output` does not depend on the input): one backward batched over the rows (`is_grads_batched`),
    or one per row where an op has no batching rule."""
    if not output.requires_grad:  # a constant: depends on nothing
        return [None] * len(inputs)
    try:
        return list(torch.autograd.grad(output, inputs, rows, retain_graph=True, is_grads_batched=True,
                                        allow_unused=True))
    except RuntimeError:
        per_row = [torch.autograd.grad(output, inputs, row, retain_graph=True, allow_unused=True) for row in rows]
        return [None if g[0] is None else torch.stack(g) for g in zip(*per_row, strict=True)]


def path_attributions(model: nn.Module, layer: UnitLayer, x: torch.Tensor, y: torch.Tensor, h: torch.Tensor,
                      ref: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
    """`(B, n)`: per example, unit i's integrated gradient of z_y on the joint path from the reference to `h`
    (the layer's output on `x (B, ...)`), summed over its positions (and a head's features) (gxd_ig, SPEC S3).

    `y`: targets `(B,)`, or a language model's `(B, T)` (z_y summed over positions, SPEC S9); padded positions
    `padding (B, T)` stay at h (they carry no attribution)."""
    from captum.attr import IntegratedGradients  # here: importing captum costs ~0.6 s

    hu = layer.view(h)
    real = position_mask(layer, hu, padding)
    move = per_unit(ref.to(h.dtype), hu) - hu
    start = h.clone()
    layer.view(start).add_(move if real is None else move * real)

    def on_path(values: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with capture(model, [layer], keep=None, replace=lambda _name, _out: values.clone()):
            return target_logits(model(inputs), targets)

    attr = IntegratedGradients(on_path).attribute(h, baselines=start, additional_forward_args=(x, y),
                                                  n_steps=IG_STEPS, method="gausslegendre",
                                                  internal_batch_size=len(x))
    return sum_positions(layer.view(attr.detach()))


@contextmanager
def _twice_differentiable() -> Iterator[None]:
    """Scaled dot-product attention on its math kernel, the one with a double backward (the fused kernels have
    none); nothing to do before torch 2.3, which has no `torch.nn.attention`."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        context: AbstractContextManager[None] = nullcontext()
    else:
        context = sdpa_kernel([SDPBackend.MATH])
    with context:
        yield


def second_order_changes(model: nn.Module, layers: list[UnitLayer], x: torch.Tensor, y: torch.Tensor,
                         refs: dict[str, torch.Tensor], padding: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per layer `(B, n)`: g . d_i + 1/2 d_i' H d_i, the second-order change of z_y when unit i alone moves to
    r_i at every position (d_i = r_i - h_i; a head's features together; not at padded positions) (gxd2, SPEC S3).

    One forward for all layers, one backward with its graph kept, then per layer double backwards batched over
    UNIT_CHUNK units. `y` as in `path_attributions`."""
    changes = {}
    with torch.enable_grad(), _twice_differentiable():
        with capture(model, layers, keep=as_is, replace=differentiable) as outputs:
            z = model(x)
        hs = [outputs[layer.name] for layer in layers]
        grads = torch.autograd.grad(target_logits(z, y).sum(), hs, create_graph=True)
        for layer, h, g in zip(layers, hs, grads, strict=True):
            u = layer.view(h.detach())
            delta = per_unit(refs[layer.name].to(u.dtype), u) - u
            real = position_mask(layer, u, padding)
            delta = delta if real is None else delta * real
            curvature = torch.cat([_quadratic_forms(layer, g, h, delta, idx)
                                   for idx in torch.arange(layer.n_units, device=h.device).split(UNIT_CHUNK)], dim=1)
            changes[layer.name] = sum_positions(delta * layer.view(g.detach())) + curvature / 2
    return changes


def _quadratic_forms(layer: UnitLayer, g: torch.Tensor, h: torch.Tensor, delta: torch.Tensor,
                     idx: torch.Tensor) -> torch.Tensor:
    """`(B, k)`: d_i' H d_i for the units `idx (k,)`, d_i = `delta (B, n, ...)` (a unit view) on unit i only, H the
    Hessian of z_y in the layer's output `h`, whose gradient `g` keeps its graph."""
    k, b = len(idx), h.shape[0]
    rows = h.new_zeros(k * b, *h.shape[1:])
    directions = layer.view(rows).unflatten(0, (k, b))  # (k, B, n, ...), writing into rows
    directions[torch.arange(k), :, idx] = delta[:, idx].movedim(1, 0)
    (hv,) = batched_vjp(g, [h], rows.view(k, *h.shape))
    if hv is None:  # z_y is linear in h (a Linear head reads it): no curvature
        return delta.new_zeros(b, k)
    hu = layer.view(hv.detach().flatten(0, 1)).unflatten(0, (k, b))
    return sum_positions(hu[torch.arange(k), :, idx] * delta[:, idx].movedim(1, 0)).T
