"""The calibration pass (SPEC S3): one pass over the calibration set gathers the per-unit ingredients
(`LayerStats`) that the utilities of `registry.py` read. Gradients at the
unit layers come from captum's `LayerGradientXActivation(multiply_by_inputs=False)` over all
unit layers at once (one forward + one backward per batch and target), so that
GXD = GXI - r * gradient (DESIGN "Known traps"). gxd_all needs every logit's gradient: one forward
and backward passes batched over classes (`_class_gradients`), not one captum call per class; it is not
applicable, with the reason, where the model has more than `max_classes` outputs (SPEC S9).
A language model's target logit is summed over positions (`sequences.target_logits`, SPEC S9).
gxd_ig and gxd2 go beyond first order (`higher_order.py`); they cost tens of passes per batch, so they
run only when named (OPT_IN).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from resetassay.discovery.hooks import as_is, capture, differentiable
from resetassay.discovery.sequences import example_losses, is_sequence, padding_mask, target_logits
from resetassay.discovery.units import UnitLayer, per_unit, position_mask, positions, sum_positions
from resetassay.errors import BadInputError
from resetassay.io.rundir import StageClock
from resetassay.scoring.higher_order import batched_vjp, path_attributions, second_order_changes
from resetassay.scoring.registry import TARGET_GRADIENT, Ingredient, LayerStats, Needs, needs_of
from resetassay.shapes import Refs


def example_ingredients(
    h: torch.Tensor,
    dev: torch.Tensor,
    needs: Needs,
    loss_grad: torch.Tensor | None = None,
    target_grad: torch.Tensor | None = None,
    real: torch.Tensor | None = None,
) -> dict[Ingredient, torch.Tensor]:
    """Per-example SPEC S3 ingredients `(B, n)` of one layer (all but gxd_all, which needs every class).

    Args: h and dev = h - r, unit views (`units.unit_view`: `(B, n, ...)`); loss_grad dL/dh and target_grad dz_y/dh,
    shaped like h. Local statistics average over a unit's values in an example (H, W; positions; a head's
    features); gradient terms sum over them before the absolute value (SPEC S3, S9). `real`: padded token data's
    real positions (`units.position_mask`), the only ones counted.
    """
    if real is not None:  # padding left out (SPEC S9): averages over each example's real positions
        h, dev = h * real, dev * real
        loss_grad = loss_grad * real if loss_grad is not None else None
        target_grad = target_grad * real if target_grad is not None else None
        per_pos = sum_positions(real.expand(-1, 1, *h.shape[2:])).clamp(min=1)  # (B, 1)
    else:
        per_pos = positions(h)
    formulas = {  # each ingredient of one example; padded positions (h * real = 0) do not fire
        Ingredient.ABS_ACT: lambda: sum_positions(h.abs()) / per_pos,
        Ingredient.ABS_DEV: lambda: sum_positions(dev.abs()) / per_pos,
        Ingredient.FIRE: lambda: sum_positions((h > 0).to(h.dtype)) / per_pos,
        Ingredient.LOSS_GRAD: lambda: sum_positions(loss_grad).abs(),
        Ingredient.GXI: lambda: sum_positions(h * target_grad).abs(),
        Ingredient.GXD: lambda: sum_positions(dev * target_grad).abs(),
        Ingredient.GXI_SIGNED: lambda: sum_positions(h * target_grad),
        Ingredient.GXD_SIGNED: lambda: sum_positions(dev * target_grad),
    }
    return {ingredient: formula() for ingredient, formula in formulas.items() if ingredient in needs}


def calibration_stats(  # noqa: C901, PLR0913 — the calibration pass: every ingredient in one loop; split would obscure it
    model: nn.Module,
    layers: list[UnitLayer],
    x: torch.Tensor,
    y: torch.Tensor,
    refs: Refs,
    needs: Needs | set[str],
    batch_size: int = 256,
    seed: int = 0,
    advance: Callable[[int], None] | None = None,
    max_classes: int = 100,
    seconds: dict[str, float] | None = None,
) -> dict[str, LayerStats]:
    """One pass over the calibration set `x (N, ...)`, `y (N,)` (a language model: next-token targets `(N, T)`,
    SPEC S9): the ingredients in `needs`; `advance` is called with the number of examples done after each batch.
    gxd_all is skipped, with the reason, when the model has more than `max_classes` outputs. `seconds`, when
    given, gathers the wall-clock seconds of each pass (PASS_OF: a forward, the target logit's and the loss's
    gradients, the class gradients, gxd_ig, gxd2), what `utility_seconds` prices each utility by."""
    if len(x) == 0:
        raise BadInputError("the calibration set is empty; raise `calib_size`")
    needs = needs_of(needs)
    device = next(model.parameters()).device
    modules = [layer.module for layer in layers]

    def loss_per_example(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return example_losses(model(inputs), targets)

    def target_per_example(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return target_logits(model(inputs), targets)

    from captum.attr import LayerGradientXActivation  # here: importing captum costs ~0.6 s (it loads pyplot)

    with torch.no_grad():
        z1 = model(x[:1].to(device))
    n_classes, sequence = z1.shape[-1], is_sequence(z1)
    skipped = {}
    if Ingredient.GXD_ALL in needs and n_classes > max_classes:
        skipped[Ingredient.GXD_ALL] = (f"{n_classes} outputs: averaging over all of them costs {n_classes} backward "
                                       f"passes (limit {max_classes}; raise it with `max_classes`)")
        needs = needs - {Ingredient.GXD_ALL}
    # a classifier's target logit is captum's own target selection; a language model's sums over positions
    target_grads = LayerGradientXActivation(target_per_example if sequence else model, modules,
                                            multiply_by_inputs=False)
    loss_grads = LayerGradientXActivation(loss_per_example, modules, multiply_by_inputs=False)
    sums = {layer.name: {k: 0.0 for k in needs} for layer in layers}
    clock = StageClock(seconds)  # into a dict of its own when the caller wants no seconds
    with capture(model, layers) as acts:
        for xb, yb in zip(torch.split(x, batch_size), torch.split(y, batch_size), strict=True):
            xb, yb = xb.to(device), yb.to(device)
            padding = padding_mask(xb)
            if seconds is not None or not needs & TARGET_GRADIENT:  # timed: what forward-only utilities cost
                with clock("forward"), torch.no_grad():
                    model(xb)
            if needs & TARGET_GRADIENT:
                with clock("target gradient"):
                    grads = (target_grads.attribute(xb, additional_forward_args=(yb,)) if sequence
                             else target_grads.attribute(xb, target=yb))
            # unit views of this forward's outputs (later captum calls re-run the forward; the values are the same)
            outs = dict(acts)
            h = {layer.name: layer.view(outs[layer.name]) for layer in layers}
            dev = {layer.name: h[layer.name] - per_unit(refs[layer.name], h[layer.name]) for layer in layers}
            if Ingredient.LOSS_GRAD in needs:
                with clock("loss gradient"):
                    lgrads = loss_grads.attribute(xb, additional_forward_args=(yb,))
            higher = _higher_order_ingredients(model, layers, xb, yb, outs, refs, padding, needs, clock)
            dev_all = {layer.name: 0.0 for layer in layers}
            real = {layer.name: position_mask(layer, h[layer.name], padding) for layer in layers}
            every_class = Ingredient.GXD_ALL in needs
            with clock("class gradients"):
                for cgrads in _class_gradients(model, layers, xb, n_classes, padding) if every_class else ():
                    for layer, g in zip(layers, cgrads, strict=True):
                        term = dev[layer.name] * layer.view(g)
                        term = term * real[layer.name] if real[layer.name] is not None else term
                        dev_all[layer.name] += sum_positions(term).abs() / n_classes
            for k, layer in enumerate(layers):
                acc = sums[layer.name]
                per_example = example_ingredients(
                    h[layer.name], dev[layer.name], needs,
                    loss_grad=layer.view(lgrads[k]) if Ingredient.LOSS_GRAD in needs else None,
                    target_grad=layer.view(grads[k]) if needs & TARGET_GRADIENT else None,
                    real=real[layer.name],
                ) | higher[layer.name]
                for key, value in per_example.items():
                    acc[key] += value.sum(0).double()
                if Ingredient.GXD_ALL in needs:
                    acc[Ingredient.GXD_ALL] += dev_all[layer.name].sum(0).double()
            acts.clear()
            if advance:
                advance(len(xb))
    return {
        name: LayerStats(**{k: (v / len(x)).float() for k, v in acc.items()}, seed=seed, skipped=skipped)
        for name, acc in sums.items()
    }


def _higher_order_ingredients(model: nn.Module, layers: list[UnitLayer], x: torch.Tensor, y: torch.Tensor,
                             outputs: dict[str, torch.Tensor], refs: Refs, padding: torch.Tensor | None,
                             needs: Needs, clock: StageClock) -> dict[str, dict[Ingredient, torch.Tensor]]:
    """Per layer, the per-example gxd_ig and gxd2 that `needs` asks for, `(B, n)` after the absolute value
    (SPEC S3; `higher_order`); `outputs`: each layer's output on `x`; `clock` times each."""
    found: dict[str, dict[Ingredient, torch.Tensor]] = {layer.name: {} for layer in layers}
    if Ingredient.GXD_IG in needs:
        with clock("gxd_ig"):
            for layer in layers:
                found[layer.name][Ingredient.GXD_IG] = path_attributions(
                    model, layer, x, y, outputs[layer.name], refs[layer.name], padding).abs()
    if Ingredient.GXD2 in needs:
        with clock("gxd2"):
            for name, change in second_order_changes(model, layers, x, y, refs, padding).items():
                found[name][Ingredient.GXD2] = change.abs()
    return found


CLASS_CHUNK = 16  # logits whose gradients one batched backward computes (memory: CLASS_CHUNK x the activations)


def _class_gradients(model: nn.Module, layers: list[UnitLayer], x: torch.Tensor, n_classes: int,
                     padding: torch.Tensor | None = None) -> Iterator[list[torch.Tensor]]:
    """dz_c/dh at every unit layer's output, for c = 0..C-1 in order: one forward, then backward passes batched
    over CLASS_CHUNK classes (`higher_order.batched_vjp`). Yields per class the list of gradients `(B, n, ...)`,
    one per layer (gxd_all, SPEC S3); a language model's z_c sums logit c over the real positions
    `padding (B, T)` (all without padding, SPEC S9)."""
    with torch.enable_grad(), capture(model, layers, keep=as_is, replace=differentiable) as outputs:
        z = model(x)
    tensors = [outputs[layer.name] for layer in layers]
    eye = torch.eye(n_classes, dtype=z.dtype, device=z.device)
    for c0 in range(0, n_classes, CLASS_CHUNK):
        chunk = eye[c0:c0 + CLASS_CHUNK]  # (k, C, ...): logit c0 + j in row j, at every position of a sequence
        rows = chunk.view(len(chunk), *[1] * (z.dim() - 1), n_classes).expand(-1, *z.shape)
        if padding is not None and z.dim() == 3:
            rows = rows * padding.to(z.dtype).unsqueeze(-1)
        batched = batched_vjp(z, tensors, rows)
        for j in range(len(rows)):
            yield [g[j] for g in batched]
