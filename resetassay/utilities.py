"""Unit utilities (SPEC S3): higher = more useful = costlier to reset.

One calibration pass gathers the per-unit ingredients (`LayerStats`); every utility is then a
small function `(LayerStats, UnitLayer) -> (n_units,)`, registered by name. Gradients at the
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

import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from resetassay.errors import BadInputError, did_you_mean
from resetassay.higher_order import batched_vjp, path_attributions, second_order_changes
from resetassay.hooks import forward_hooks
from resetassay.names import ORACLE
from resetassay.plugins import entry_point, source_of
from resetassay.sequences import example_losses, is_sequence, padding_mask, target_logits
from resetassay.shapes import Refs, Scores
from resetassay.units import UnitLayer, dense_weight, per_unit, position_mask, positions, sum_positions

INGREDIENTS = ("abs_act", "abs_dev", "fire", "loss_grad", "gxi", "gxd", "gxi_signed", "gxd_signed", "gxd_all", "gxd_ig",
               "gxd2")
TARGET_GRADIENT = {"gxi", "gxd", "gxi_signed", "gxd_signed"}  # ingredients of the target logit's layer gradient
# The calibration pass that computes each ingredient; a utility costs the seconds of the passes it needs (SPEC S5b).
PASS_OF = {"abs_act": "forward", "abs_dev": "forward", "fire": "forward", "loss_grad": "loss gradient",
           **dict.fromkeys(TARGET_GRADIENT, "target gradient"), "gxd_all": "class gradients", "gxd_ig": "gxd_ig",
           "gxd2": "gxd2"}


class NotApplicable(Exception):
    """A utility does not apply to a layer; the message says why (SPEC S3)."""


@dataclass
class LayerStats:
    """Calibration means of the per-unit ingredients of SPEC S3, each `(n_units,)` or None."""

    abs_act: torch.Tensor | None = None    # E|h|            (over examples and H, W)
    abs_dev: torch.Tensor | None = None    # E|h - r|
    fire: torch.Tensor | None = None       # P(h > 0)         (over examples and H, W)
    loss_grad: torch.Tensor | None = None  # E|sum_s dL/dh|
    gxi: torch.Tensor | None = None        # E|sum_s h dz_y/dh|
    gxd: torch.Tensor | None = None        # E|sum_s (h - r) dz_y/dh|
    gxi_signed: torch.Tensor | None = None  # E sum_s h dz_y/dh (no built-in utility reads these two: for your own)
    gxd_signed: torch.Tensor | None = None  # E sum_s (h - r) dz_y/dh
    gxd_all: torch.Tensor | None = None    # E (1/C) sum_c |sum_s (h - r) dz_c/dh|
    gxd_ig: torch.Tensor | None = None     # E|sum_s IG(x, s)|, the joint path from r to h
    gxd2: torch.Tensor | None = None       # E|g . d + 1/2 d'H d|, d = r - h on the unit alone
    seed: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # ingredient -> why it was not computed


@dataclass(frozen=True)
class Utility:
    """A registered utility: its function and the ingredients it reads."""

    name: str
    fn: Callable[[LayerStats, UnitLayer], torch.Tensor]
    needs: frozenset[str] = field(default_factory=frozenset)


UTILITIES: dict[str, Utility] = {}  # the oracle (names.ORACLE) is the measured shock, filled in from the lesions


def utility(name: str, needs: tuple[str, ...] = ()):
    """Register a utility function under `name`."""
    def register(fn: Callable[[LayerStats, UnitLayer], torch.Tensor]):
        UTILITIES[name] = Utility(name, fn, frozenset(needs))
        return fn
    return register


ENTRY_POINTS = "resetassay.utilities"  # the entry-point group of utilities other packages provide
PLUGINS: dict[str, str] = {}  # utilities registered by the user: name -> where from (package and version)


def register_utility(name: str, fn: Callable[[LayerStats, UnitLayer], torch.Tensor],
                     needs: tuple[str, ...] | frozenset[str] = (), source: str | None = None) -> None:
    """Register your own utility `fn(stats, layer) -> (n_units,)` under `name` (README "Your own utility").

    `stats` holds the calibration means `needs` asks for (`INGREDIENTS`: abs_act E|h|, abs_dev E|h - r|, fire
    P(h > 0), loss_grad, gxi, gxd, gxd_all, gxd_ig, gxd2; SPEC S3; gxi_signed and gxd_signed, the per-example
    sums of gxi and gxd before their absolute value, so that |E[...]| can be tried), `layer` the unit layer (its
    module, producer and consumer weights, stored state). Raise `NotApplicable(reason)` where it does not apply. A
    built-in name is refused. `source` (default: the function's module and name) is recorded in run.json with the
    versions."""
    if name in BUILTIN or name == ORACLE:
        raise BadInputError(f"utility {name!r} is built in; register yours under another name", flag="--utilities")
    unknown = sorted(set(needs) - set(INGREDIENTS))
    if unknown:
        raise BadInputError(f"utility {name!r} needs {', '.join(unknown)}, which the calibration pass does not "
                            f"compute; choose from {', '.join(INGREDIENTS)}", flag="--utilities")
    UTILITIES[name] = Utility(name, fn, frozenset(needs))
    PLUGINS[name] = source or source_of(fn)


def _load_entry_point(name: str) -> bool:
    """Register the utility `name` an installed package provides in the `resetassay.utilities` entry-point group
    (loaded only when named); its `needs` attribute lists the ingredients it reads. False when none does."""
    found = entry_point(ENTRY_POINTS, name, "--utilities")
    if found is None:
        return False
    fn, source = found
    register_utility(name, fn, tuple(getattr(fn, "needs", ())), source)
    return True


def utility_names() -> list[str]:
    """Every built-in utility, oracle included."""
    return [*BUILTIN, ORACLE]


def default_utilities() -> list[str]:
    """The default of `--utilities`: the built-in utilities but the costly OPT_IN ones, oracle included."""
    return [n for n in utility_names() if n not in OPT_IN]


def check_utilities(names: list[str]) -> list[str]:
    """Validate `--utilities` (loading a package's utility the first time it is named); the message lists the
    valid names."""
    unknown = [n for n in names if n not in UTILITIES and n != ORACLE and not _load_entry_point(n)]
    if unknown:
        raise BadInputError(
            f"--utilities: unknown {', '.join(unknown)}{did_you_mean(unknown, [*UTILITIES, ORACLE])}; choose from "
            f"{', '.join(utility_names())}", flag="--utilities")
    return names


def consumer_weight_mass(layer: UnitLayer) -> torch.Tensor:
    """Sum_k |w_out[k, i]| over the single Linear/Conv consumer, `(n_units,)`; a head's: over its d_head columns
    (SPEC S3, S9). Hugging Face's Conv1D is read transposed."""
    m, n = layer.consumer, layer.n_units
    if m is None:
        raise NotApplicable(layer.consumer_note or "no single Linear/Conv consumer")
    w = dense_weight(m).detach().abs()
    if isinstance(m, nn.Conv2d) and m.groups == 1 and w.shape[1] == n:
        return w.sum(dim=(0, 2, 3))
    if w.dim() == 2 and w.shape[1] % n == 0:
        return w.reshape(w.shape[0], n, -1).sum(dim=(0, 2))  # (n), a head's columns, or channel-major maps
    raise NotApplicable(f"consumer {layer.spec.consumer if layer.spec else '?'} does not read "
                        f"{n} units channel by channel")


def producer_weight_mass(layer: UnitLayer) -> torch.Tensor:
    """Sum_j |w_in[i, j]| of the Linear/Conv producing each unit, `(n_units,)` (SPEC S3)."""
    m = layer.producer
    if m is None:
        raise NotApplicable(layer.producer_note or "no Linear/Conv producer")
    w = dense_weight(m).detach().abs()
    if w.shape[0] != layer.n_units:
        raise NotApplicable(f"producer has {w.shape[0]} outputs for {layer.n_units} units")
    return w.flatten(1).sum(dim=1)


@utility("activation", ("abs_act",))
def activation(s: LayerStats, layer: UnitLayer) -> torch.Tensor:
    """E|h_i| (ReDo-style activation magnitude)."""
    return s.abs_act


@utility("contribution", ("abs_act",))
def contribution(s: LayerStats, layer: UnitLayer) -> torch.Tensor:
    """E|h_i| * sum_k |w_out[k, i]| (CBP, paper eq. 11)."""
    return s.abs_act * consumer_weight_mass(layer).to(s.abs_act)


@utility("mc_contribution", ("abs_dev",))
def mc_contribution(s: LayerStats, layer: UnitLayer) -> torch.Tensor:
    """E|h_i - r_i| * sum_k |w_out[k, i]| (mean-corrected contribution)."""
    return s.abs_dev * consumer_weight_mass(layer).to(s.abs_dev)


@utility("mc_adaptable", ("abs_dev",))
def mc_adaptable(s: LayerStats, layer: UnitLayer) -> torch.Tensor:
    """E|h_i - r_i| * sum_k |w_out[k, i]| / sum_j |w_in[i, j]| (CBP 2023, paper eq. 12)."""
    return mc_contribution(s, layer) / producer_weight_mass(layer).to(s.abs_dev)


@utility("loss_gradient", ("loss_grad",))
def loss_gradient(s: LayerStats, layer: UnitLayer) -> torch.Tensor:
    """E|sum_s dL/dh_i(x, s)| (gradient activity)."""
    return s.loss_grad


@utility("gxi", ("gxi",))
def gxi(s: LayerStats, layer: UnitLayer) -> torch.Tensor:
    """E|sum_s h_i dz_y/dh_i| (gradient x input, paper App. B)."""
    return s.gxi


@utility("gxd", ("gxd",))
def gxd(s: LayerStats, layer: UnitLayer) -> torch.Tensor:
    """E|sum_s (h_i - r_i) dz_y/dh_i| (GXD, target logit, paper eq. 8)."""
    return s.gxd


@utility("gxd_all", ("gxd_all",))
def gxd_all(s: LayerStats, layer: UnitLayer) -> torch.Tensor:
    """E (1/C) sum_c |sum_s (h_i - r_i) dz_c/dh_i| (GXD all-logit, paper eq. 6)."""
    if "gxd_all" in s.skipped:
        raise NotApplicable(s.skipped["gxd_all"])
    return s.gxd_all


@utility("gxd_ig", ("gxd_ig",))
def gxd_ig(s: LayerStats, layer: UnitLayer) -> torch.Tensor:
    """E|sum_s IG_i(x, s)|: integrated gradients of z_y on the straight path of the whole layer from its
    reference to h (the joint path; higher_order.py)."""
    return s.gxd_ig


@utility("gxd2", ("gxd2",))
def gxd2(s: LayerStats, layer: UnitLayer) -> torch.Tensor:
    """E|g . d_i + 1/2 d_i' H d_i|, d_i = r_i - h_i on unit i alone: GXD's first-order change of z_y plus the
    second-order term along the same direction (higher_order.py)."""
    return s.gxd2


@utility("dormancy", ("abs_act",))
def dormancy(s: LayerStats, layer: UnitLayer) -> torch.Tensor:
    """E|h_i| / mean_j E|h_j| over the layer's units (ReDo's normalised dormancy score, SPEC S8)."""
    return s.abs_act / s.abs_act.mean().clamp(min=torch.finfo(s.abs_act.dtype).tiny)


@utility("deviation", ("abs_dev",))
def deviation(s: LayerStats, layer: UnitLayer) -> torch.Tensor:
    """E|h_i - r_i|, the forward activity around the reference (SPEC S8's growth diagnostic, beside
    loss_gradient, the backward signal)."""
    return s.abs_dev


@utility("firing_rate", ("fire",))
def firing_rate(s: LayerStats, layer: UnitLayer) -> torch.Tensor:
    """P(h_i > 0) over examples and positions (SNR's firing rate, SPEC S8)."""
    return s.fire


@utility("tracked")
def tracked(s: LayerStats, layer: UnitLayer) -> torch.Tensor:
    """The utility CBP tracked online while training (its bias-corrected EMA, `<layer>.utility` in the
    checkpoint's state, SPEC S7): what the reset itself ranked by; not applicable where none is stored."""
    if layer.stored_utility is None:
        raise NotApplicable("the checkpoint stores no tracked utility here (not trained with CBP resetting this "
                            "layer)")
    return layer.stored_utility.float()


@utility("random")
def random(s: LayerStats, layer: UnitLayer) -> torch.Tensor:
    """Seeded uniform noise, a floor; the seed mixes the run seed and the layer name."""
    g = torch.Generator().manual_seed(s.seed * 1_000_003 + zlib.crc32(layer.name.encode()))
    return torch.rand(layer.n_units, generator=g, dtype=torch.float64).float()


BUILTIN = tuple(UTILITIES)  # registered above; users' utilities come after them
OPT_IN = ("gxd_ig", "gxd2")  # built in, but run only when named: each costs many passes per calibration batch


def example_ingredients(
    h: torch.Tensor,
    dev: torch.Tensor,
    needs: set[str] | frozenset[str],
    loss_grad: torch.Tensor | None = None,
    target_grad: torch.Tensor | None = None,
    real: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
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
    out = {}
    if "abs_act" in needs:
        out["abs_act"] = sum_positions(h.abs()) / per_pos
    if "abs_dev" in needs:
        out["abs_dev"] = sum_positions(dev.abs()) / per_pos
    if "fire" in needs:  # padded positions (h * real = 0) do not fire
        out["fire"] = sum_positions((h > 0).to(h.dtype)) / per_pos
    if "loss_grad" in needs:
        out["loss_grad"] = sum_positions(loss_grad).abs()
    if "gxi" in needs:
        out["gxi"] = sum_positions(h * target_grad).abs()
    if "gxd" in needs:
        out["gxd"] = sum_positions(dev * target_grad).abs()
    if "gxi_signed" in needs:
        out["gxi_signed"] = sum_positions(h * target_grad)
    if "gxd_signed" in needs:
        out["gxd_signed"] = sum_positions(dev * target_grad)
    return out


def calibration_stats(
    model: nn.Module,
    layers: list[UnitLayer],
    x: torch.Tensor,
    y: torch.Tensor,
    refs: Refs,
    needs: set[str],
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
        raise BadInputError("the calibration set is empty; raise --calib-size")
    device = next(model.parameters()).device
    modules = [layer.module for layer in layers]
    acts: dict[str, torch.Tensor] = {}

    def capture(name: str):
        def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            acts[name] = out.detach().clone()
        return hook

    def loss_per_example(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return example_losses(model(inputs), targets)

    def target_per_example(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return target_logits(model(inputs), targets)

    from captum.attr import LayerGradientXActivation  # here: importing captum costs ~0.6 s (it loads pyplot)

    with torch.no_grad():
        z1 = model(x[:1].to(device))
    n_classes, sequence = z1.shape[-1], is_sequence(z1)
    skipped = {}
    if "gxd_all" in needs and n_classes > max_classes:
        skipped["gxd_all"] = (f"{n_classes} outputs: averaging over all of them costs {n_classes} backward passes "
                              f"(limit {max_classes}; raise it with --max-classes)")
        needs = needs - {"gxd_all"}
    # a classifier's target logit is captum's own target selection; a language model's sums over positions
    target_grads = LayerGradientXActivation(target_per_example if sequence else model, modules,
                                            multiply_by_inputs=False)
    loss_grads = LayerGradientXActivation(loss_per_example, modules, multiply_by_inputs=False)
    sums = {layer.name: {k: 0.0 for k in needs} for layer in layers}
    clock = _PassClock(seconds)
    with forward_hooks({layer.module: capture(layer.name) for layer in layers}):
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
            if "loss_grad" in needs:
                with clock("loss gradient"):
                    lgrads = loss_grads.attribute(xb, additional_forward_args=(yb,))
            higher = higher_order_ingredients(model, layers, xb, yb, outs, refs, padding, needs, clock)
            dev_all = {layer.name: 0.0 for layer in layers}
            real = {layer.name: position_mask(layer, h[layer.name], padding) for layer in layers}
            with clock("class gradients"):
                for cgrads in _class_gradients(model, modules, xb, n_classes, padding) if "gxd_all" in needs else ():
                    for layer, g in zip(layers, cgrads, strict=True):
                        term = dev[layer.name] * layer.view(g)
                        term = term * real[layer.name] if real[layer.name] is not None else term
                        dev_all[layer.name] += sum_positions(term).abs() / n_classes
            for k, layer in enumerate(layers):
                acc = sums[layer.name]
                per_example = example_ingredients(
                    h[layer.name], dev[layer.name], needs,
                    loss_grad=layer.view(lgrads[k]) if "loss_grad" in needs else None,
                    target_grad=layer.view(grads[k]) if needs & TARGET_GRADIENT else None,
                    real=real[layer.name],
                ) | higher[layer.name]
                for key, value in per_example.items():
                    acc[key] += value.sum(0).double()
                if "gxd_all" in needs:
                    acc["gxd_all"] += dev_all[layer.name].sum(0).double()
            acts.clear()
            if advance:
                advance(len(xb))
    return {
        name: LayerStats(**{k: (v / len(x)).float() for k, v in acc.items()}, seed=seed, skipped=skipped)
        for name, acc in sums.items()
    }


def higher_order_ingredients(model: nn.Module, layers: list[UnitLayer], x: torch.Tensor, y: torch.Tensor,
                             outputs: dict[str, torch.Tensor], refs: Refs, padding: torch.Tensor | None,
                             needs: set[str], clock: _PassClock) -> dict[str, dict[str, torch.Tensor]]:
    """Per layer, the per-example gxd_ig and gxd2 that `needs` asks for, `(B, n)` after the absolute value
    (SPEC S3; `higher_order`); `outputs`: each layer's output on `x`; `clock` times each."""
    found: dict[str, dict[str, torch.Tensor]] = {layer.name: {} for layer in layers}
    if "gxd_ig" in needs:
        with clock("gxd_ig"):
            for layer in layers:
                found[layer.name]["gxd_ig"] = path_attributions(model, layer, x, y, outputs[layer.name],
                                                                refs[layer.name], padding).abs()
    if "gxd2" in needs:
        with clock("gxd2"):
            for name, change in second_order_changes(model, layers, x, y, refs, padding).items():
                found[name]["gxd2"] = change.abs()
    return found


class _PassClock:
    """Adds the wall-clock seconds of each calibration pass into `seconds` (nothing when None)."""

    def __init__(self, seconds: dict[str, float] | None) -> None:
        self.seconds = seconds

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.seconds is not None:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def utility_seconds(names: list[str], seconds: dict[str, float]) -> dict[str, float]:
    """The calibration seconds each utility needs (SPEC S5b), from the passes `calibration_stats` timed: the
    forward, plus the other passes of its ingredients (PASS_OF); 0 for a utility that reads no ingredient (its
    score needs no pass). Counting the forward for every utility keeps a gradient utility at least as costly as a
    forward-only one when the first pass of a batch pays a warm-up the others do not."""
    def cost(name: str) -> float:
        passes = {PASS_OF[i] for i in UTILITIES[name].needs}
        return sum(seconds.get(p, 0.0) for p in passes | {"forward"}) if passes else 0.0

    return {name: round(cost(name), 4) for name in names if name in UTILITIES}


CLASS_CHUNK = 16  # logits whose gradients one batched backward computes (memory: CLASS_CHUNK x the activations)


def _class_gradients(model: nn.Module, modules: list[nn.Module], x: torch.Tensor, n_classes: int,
                     padding: torch.Tensor | None = None) -> Iterator[list[torch.Tensor]]:
    """dz_c/dh at every module's output, for c = 0..C-1 in order: one forward, then backward passes batched
    over CLASS_CHUNK classes (`higher_order.batched_vjp`). Yields per class the list of gradients `(B, n, ...)`,
    one per module (gxd_all, SPEC S3); a language model's z_c sums logit c over the real positions
    `padding (B, T)` (all without padding, SPEC S9)."""
    outputs: dict[nn.Module, torch.Tensor] = {}

    def keep(module: nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor:
        out = out if out.requires_grad else out.detach().requires_grad_()
        outputs[module] = out
        return out

    with torch.enable_grad(), forward_hooks(dict.fromkeys(modules, keep)):
        z = model(x)
    tensors = [outputs[m] for m in modules]
    eye = torch.eye(n_classes, dtype=z.dtype, device=z.device)
    for c0 in range(0, n_classes, CLASS_CHUNK):
        chunk = eye[c0:c0 + CLASS_CHUNK]  # (k, C, ...): logit c0 + j in row j, at every position of a sequence
        rows = chunk.view(len(chunk), *[1] * (z.dim() - 1), n_classes).expand(-1, *z.shape)
        if padding is not None and z.dim() == 3:
            rows = rows * padding.to(z.dtype).unsqueeze(-1)
        batched = batched_vjp(z, tensors, rows)
        for j in range(len(rows)):
            yield [g[j] for g in batched]


def unit_scores(
    names: list[str],
    layers: list[UnitLayer],
    stats: dict[str, LayerStats],
) -> tuple[Scores, dict[tuple[str, str], str]]:
    """Scores[utility][layer] `(n_units,)` and the reasons for utilities that do not apply."""
    scores: dict[str, dict[str, torch.Tensor]] = {}
    notes: dict[tuple[str, str], str] = {}
    for name in names:
        if name == ORACLE:
            continue
        scores[name] = {}
        for layer in layers:
            try:
                scores[name][layer.name] = checked_scores(name, UTILITIES[name].fn(stats[layer.name], layer), layer)
            except NotApplicable as why:
                notes[(name, layer.name)] = str(why)
    return scores, notes


def checked_scores(name: str, scores: object, layer: UnitLayer) -> torch.Tensor:
    """A utility's scores of one layer, on the CPU, or a one-line error naming the utility and the layer: a tensor
    of shape `(n_units,)` (one score per unit) holding finite numbers (a NaN would leave the utility "not
    applicable" everywhere without a word; raise NotApplicable(reason) where it does not apply) (SPEC S3)."""
    where = f"--utilities {name}: on layer {layer.name} ({layer.n_units} units) the utility"
    if not isinstance(scores, torch.Tensor):
        raise BadInputError(f"{where} returned {type(scores).__name__}; return a tensor of shape "
                            f"({layer.n_units},), one score per unit", flag="--utilities")
    if tuple(scores.shape) != (layer.n_units,):
        raise BadInputError(f"{where} returned shape {tuple(scores.shape)}; return one score per unit, shape "
                            f"({layer.n_units},)", flag="--utilities")
    finite = torch.isfinite(scores)
    if not bool(finite.all()):
        raise BadInputError(f"{where} returned NaN or Inf for {int((~finite).sum())} of its {layer.n_units} units; "
                            "return finite scores, or raise NotApplicable(reason) where it does not apply",
                            flag="--utilities")
    return scores.detach().cpu()


def needed_ingredients(names: list[str]) -> set[str]:
    """The union of what the requested utilities read."""
    return set().union(*(UTILITIES[n].needs for n in names if n in UTILITIES))
