"""The unit utilities (SPEC S3): higher = more useful = costlier to reset. Their registry and the built-ins.

Every utility is a `Utility` (a Protocol): a small function `(LayerStats, UnitLayer) -> (n_units,)` with the
ingredients it reads, registered by name in `UTILITIES` (a `plugins.Registry`: `utility`, `register_utility`, or
a package's entry point in the group `resetassay.utilities`); `LayerStats` holds the per-unit calibration means
that the one calibration pass (`calibration.py`) gathers, and `unit_scores` applies the requested utilities to
them. GXD = GXI - r * gradient (DESIGN "Known traps"). gxd_ig and gxd2 go beyond first order (`higher_order.py`);
they cost tens of passes per batch, so they run only when named (OPT_IN). `utility_seconds` prices each utility by
the calibration passes its ingredients need (PASS_OF, SPEC S5b).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import torch
from torch import nn

from resetassay.discovery.units import UnitLayer, dense_weight
from resetassay.errors import BadInputError, did_you_mean
from resetassay.names import GXD_GREEDY, ORACLE, SET_SELECTORS
from resetassay.plugins import Registry, installed, source_of, summary
from resetassay.shapes import Scores

__all__ = [  # the built-in utilities themselves are reached through UTILITIES, by name
    "register_utility", "list_utilities", "NotApplicable", "LayerStats", "Utility", "FunctionUtility", "Ingredient",
    "Needs", "UTILITIES", "INGREDIENTS", "utility_names", "default_utilities", "check_utilities", "unit_scores",
    "needed_ingredients", "utility_seconds", "TARGET_GRADIENT",
]

class Ingredient(StrEnum):
    """A per-unit calibration mean a utility can read (SPEC S3), named as its field of `LayerStats`."""

    ABS_ACT = "abs_act"
    ABS_DEV = "abs_dev"
    FIRE = "fire"
    LOSS_GRAD = "loss_grad"
    GXI = "gxi"
    GXD = "gxd"
    GXI_SIGNED = "gxi_signed"
    GXD_SIGNED = "gxd_signed"
    GXD_ALL = "gxd_all"
    GXD_IG = "gxd_ig"
    GXD2 = "gxd2"


Needs = frozenset[Ingredient]  # what a utility reads
INGREDIENTS = tuple(i.value for i in Ingredient)
# ingredients of the target logit's layer gradient
TARGET_GRADIENT = frozenset({Ingredient.GXI, Ingredient.GXD, Ingredient.GXI_SIGNED, Ingredient.GXD_SIGNED})
# The calibration pass that computes each ingredient; a utility costs the seconds of the passes it needs (SPEC S5b).
PASS_OF = {Ingredient.ABS_ACT: "forward", Ingredient.ABS_DEV: "forward", Ingredient.FIRE: "forward",
           Ingredient.LOSS_GRAD: "loss gradient", **dict.fromkeys(TARGET_GRADIENT, "target gradient"),
           Ingredient.GXD_ALL: "class gradients", Ingredient.GXD_IG: "gxd_ig", Ingredient.GXD2: "gxd2"}


def needs_of(names: Iterable[str]) -> Needs:
    """The ingredients named `names` (each of INGREDIENTS)."""
    return frozenset(Ingredient(name) for name in names)


class NotApplicable(Exception):
    """A utility does not apply to a layer; the message says why (SPEC S3).

    Raise it from a utility (`register_utility`): the layer gets no score from it and notes.csv (`AssayResult.notes`)
    records the reason.

    Example::

        >>> import resetassay as ra
        >>> def producer_norm(stats, layer):
        ...     if layer.producer is None:
        ...         raise ra.NotApplicable(layer.producer_note or "no Linear/Conv producer")
        ...     return layer.producer.weight.detach().abs().flatten(1).sum(dim=1)
    """


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


class Utility(Protocol):
    """What a utility provides (SPEC S3): the calibration ingredients it reads (`needs`) and its
    scores of one layer's units, `utility(stats, layer) -> (n_units,)`, higher = more useful. Raise
    `NotApplicable(reason)` where it does not apply. `register_utility(name, fn, needs)` makes one of a function."""

    @property
    def needs(self) -> Needs:
        """The ingredients the utility reads."""

    def __call__(self, stats: LayerStats, layer: UnitLayer) -> torch.Tensor:
        """The utility of each unit of `layer`, `(n_units,)`, from the calibration statistics."""


@dataclass(frozen=True)
class FunctionUtility:
    """A utility function `fn(stats, layer)` and the ingredients it reads: a `Utility`."""

    fn: Callable[[LayerStats, UnitLayer], torch.Tensor]
    needs: Needs = field(default_factory=frozenset)

    def __call__(self, stats: LayerStats, layer: UnitLayer) -> torch.Tensor:
        """`fn(stats, layer)`."""
        return self.fn(stats, layer)


ENTRY_POINTS = "resetassay.utilities"  # the entry-point group of utilities other packages provide


def _from_entry_point(name: str, fn: Callable[[LayerStats, UnitLayer], torch.Tensor], source: str) -> None:
    """Register the utility `name` an installed package provides in the `resetassay.utilities` entry-point group
    (loaded only when named); its `needs` attribute lists the ingredients it reads."""
    register_utility(name, fn, tuple(getattr(fn, "needs", ())), source)


# The registered utilities, built-ins first; the oracle (names.ORACLE) is the measured shock, filled in from the
# lesions. `UTILITIES.sources`: where each of the user's comes from (package and version), for run.json.
UTILITIES: Registry[Utility] = Registry("utility", "utilities", ENTRY_POINTS, _from_entry_point)


def utility(name: str, *needs: Ingredient):
    """Register a utility function under `name`, reading the ingredients `needs`."""
    def register(fn: Callable[[LayerStats, UnitLayer], torch.Tensor]):
        UTILITIES.register(name, FunctionUtility(fn, frozenset(needs)))
        return fn
    return register


def register_utility(name: str, fn: Callable[[LayerStats, UnitLayer], torch.Tensor],
                     needs: tuple[str, ...] | frozenset[str] = (), source: str | None = None) -> None:
    """Register your own utility `fn(stats, layer) -> (n_units,)` under `name` (docs/guide/extending.md "Your own
    utility").

    `stats` holds the calibration means `needs` asks for (`INGREDIENTS`: abs_act E|h|, abs_dev E|h - r|, fire
    P(h > 0), loss_grad, gxi, gxd, gxd_all, gxd_ig, gxd2; SPEC S3; gxi_signed and gxd_signed, the per-example
    sums of gxi and gxd before their absolute value, so that |E[...]| can be tried), `layer` the unit layer (its
    module, producer and consumer weights, stored state). Raise `NotApplicable(reason)` where it does not apply. A
    built-in name is refused. `source` (default: the function's module and name) is recorded in run.json with the
    versions. The first paragraph of `fn`'s docstring is its description in `list_utilities()`.

    Args:
        name: the utility's name in `AssayConfig.utilities` (`--utilities`) and its UnitTable column.
        fn: `fn(stats: LayerStats, layer: UnitLayer) -> (n_units,)`, higher = costlier to reset.
        needs: the calibration ingredients `fn` reads (`INGREDIENTS`); the pass computes only what is needed.
        source: where it comes from, for run.json.

    Raises:
        BadInputError: a built-in name, or an ingredient the calibration pass does not compute.

    Example::

        >>> import resetassay as ra
        >>> def squared_deviation(stats, layer):
        ...     "E|h - r| squared."
        ...     return stats.abs_dev ** 2
        >>> ra.register_utility("squared_deviation", squared_deviation, needs=("abs_dev",))
        >>> ra.list_utilities()["squared_deviation"]
        'E|h - r| squared.'
        >>> result = ra.run_assay(["fixtures/silu_mlp/task2"], utilities=["squared_deviation", "oracle"],
        ...                       metrics=["l1"], calib_size=200, probe_size=200, progress=False)
        >>> "squared_deviation" in result.units
        True
    """
    if name in BUILTIN or name == ORACLE:
        raise BadInputError(f"utility {name!r} is built in; register yours under another name", field="utilities")
    unknown = sorted(set(needs) - set(INGREDIENTS))
    if unknown:
        raise BadInputError(f"utility {name!r} needs {', '.join(unknown)}, which the calibration pass does not "
                            f"compute; choose from {', '.join(INGREDIENTS)}", field="utilities")
    UTILITIES.register(name, FunctionUtility(fn, needs_of(needs)), source or source_of(fn))


def utility_names() -> list[str]:
    """Every built-in utility, oracle included."""
    return [*BUILTIN, ORACLE]


def list_utilities() -> dict[str, str]:
    """Every utility `AssayConfig.utilities` (`--utilities`) accepts, with a one-line description (SPEC S3).

    Returns:
        name -> description: the built-in utilities in registry order, the oracle and the set selector gxd_greedy,
        then those registered with `register_utility`, then those installed packages provide by entry point (not
        loaded until a run names them). Opt-in utilities (not in the default list) say so.

    Example::

        >>> import resetassay as ra
        >>> utilities = ra.list_utilities()
        >>> utilities["gxd"]
        'E|sum_s (h_i - r_i) dz_y/dh_i| (GXD, target logit, paper eq. 8).'
        >>> [name for name in utilities if "Opt-in" in utilities[name]]
        ['gxd_ig', 'gxd2', 'gxd_greedy']
    """
    def described(name: str) -> str:
        utility = UTILITIES.get(name, None)
        fn = getattr(utility, "fn", utility)
        text = DESCRIPTIONS.get(name) or summary(fn) or f"registered from {UTILITIES.sources.get(name)}"
        return text + (" Opt-in: not in the default utilities." if name in (*OPT_IN, *SET_SELECTORS) else "")

    names = [*BUILTIN, ORACLE, *SET_SELECTORS, *(n for n in UTILITIES if n not in BUILTIN)]
    return {**{n: described(n) for n in names}, **{n: d for n, d in installed(ENTRY_POINTS).items() if n not in names}}


def default_utilities() -> list[str]:
    """The default of `--utilities`: the built-in utilities but the costly OPT_IN ones, oracle included."""
    return [n for n in utility_names() if n not in OPT_IN]


def check_utilities(names: list[str]) -> list[str]:
    """Validate `--utilities` (loading a package's utility the first time it is named); the message lists the
    valid names."""
    unknown = [n for n in names if n != ORACLE and not UTILITIES.find(n)]
    if unknown:
        raise BadInputError(
            f"`utilities`: unknown {', '.join(unknown)}{did_you_mean(unknown, [*UTILITIES, ORACLE])}; choose from "
            f"{', '.join(utility_names())}", field="utilities")
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


@utility("activation", Ingredient.ABS_ACT)
def activation(s: LayerStats, layer: UnitLayer) -> torch.Tensor:
    """E|h_i| (ReDo-style activation magnitude)."""
    return s.abs_act


@utility("contribution", Ingredient.ABS_ACT)
def contribution(s: LayerStats, layer: UnitLayer) -> torch.Tensor:
    """E|h_i| * sum_k |w_out[k, i]| (CBP, paper eq. 11)."""
    return s.abs_act * consumer_weight_mass(layer).to(s.abs_act)


@utility("mc_contribution", Ingredient.ABS_DEV)
def mc_contribution(s: LayerStats, layer: UnitLayer) -> torch.Tensor:
    """E|h_i - r_i| * sum_k |w_out[k, i]| (mean-corrected contribution)."""
    return s.abs_dev * consumer_weight_mass(layer).to(s.abs_dev)


@utility("mc_adaptable", Ingredient.ABS_DEV)
def mc_adaptable(s: LayerStats, layer: UnitLayer) -> torch.Tensor:
    """E|h_i - r_i| * sum_k |w_out[k, i]| / sum_j |w_in[i, j]| (CBP 2023, paper eq. 12)."""
    return mc_contribution(s, layer) / producer_weight_mass(layer).to(s.abs_dev)


@utility("loss_gradient", Ingredient.LOSS_GRAD)
def loss_gradient(s: LayerStats, layer: UnitLayer) -> torch.Tensor:
    """E|sum_s dL/dh_i(x, s)| (gradient activity)."""
    return s.loss_grad


@utility("gxi", Ingredient.GXI)
def gxi(s: LayerStats, layer: UnitLayer) -> torch.Tensor:
    """E|sum_s h_i dz_y/dh_i| (gradient x input, paper App. B)."""
    return s.gxi


@utility("gxd", Ingredient.GXD)
def gxd(s: LayerStats, layer: UnitLayer) -> torch.Tensor:
    """E|sum_s (h_i - r_i) dz_y/dh_i| (GXD, target logit, paper eq. 8)."""
    return s.gxd


@utility("gxd_all", Ingredient.GXD_ALL)
def gxd_all(s: LayerStats, layer: UnitLayer) -> torch.Tensor:
    """E (1/C) sum_c |sum_s (h_i - r_i) dz_c/dh_i| (GXD all-logit, paper eq. 6)."""
    if "gxd_all" in s.skipped:
        raise NotApplicable(s.skipped["gxd_all"])
    return s.gxd_all


@utility("gxd_ig", Ingredient.GXD_IG)
def gxd_ig(s: LayerStats, layer: UnitLayer) -> torch.Tensor:
    """E|sum_s IG_i(x, s)|: integrated gradients of z_y on the straight path of the whole layer from its
    reference to h (the joint path; higher_order.py)."""
    return s.gxd_ig


@utility("gxd2", Ingredient.GXD2)
def gxd2(s: LayerStats, layer: UnitLayer) -> torch.Tensor:
    """E|g . d_i + 1/2 d_i' H d_i|, d_i = r_i - h_i on unit i alone: GXD's first-order change of z_y plus the
    second-order term along the same direction (higher_order.py)."""
    return s.gxd2


@utility("dormancy", Ingredient.ABS_ACT)
def dormancy(s: LayerStats, layer: UnitLayer) -> torch.Tensor:
    """E|h_i| / mean_j E|h_j| over the layer's units (ReDo's normalised dormancy score, SPEC S8)."""
    return s.abs_act / s.abs_act.mean().clamp(min=torch.finfo(s.abs_act.dtype).tiny)


@utility("deviation", Ingredient.ABS_DEV)
def deviation(s: LayerStats, layer: UnitLayer) -> torch.Tensor:
    """E|h_i - r_i|, the forward activity around the reference (SPEC S8's growth diagnostic, beside
    loss_gradient, the backward signal)."""
    return s.abs_dev


@utility("firing_rate", Ingredient.FIRE)
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
DESCRIPTIONS = {  # the utilities with no function of their own here (`list_utilities`)
    ORACLE: "The measured shock itself (the lesion's): the ceiling every utility is compared to (SPEC S3).",
    GXD_GREEDY: "Set-aware selection: GXD recomputed with the units picked so far clamped; judged by its joint "
                "Shock@q (SPEC S5, scoring/greedy.py).",
}


def utility_seconds(names: list[str], seconds: dict[str, float]) -> dict[str, float]:
    """The calibration seconds each utility needs (SPEC S5b), from the passes `calibration_stats` timed: the
    forward, plus the other passes of its ingredients (PASS_OF); 0 for a utility that reads no ingredient (its
    score needs no pass). Counting the forward for every utility keeps a gradient utility at least as costly as a
    forward-only one when the first pass of a batch pays a warm-up the others do not."""
    def cost(name: str) -> float:
        passes = {PASS_OF[i] for i in UTILITIES[name].needs}
        return sum(seconds.get(p, 0.0) for p in passes | {"forward"}) if passes else 0.0

    return {name: round(cost(name), 4) for name in names if name in UTILITIES}


def unit_scores(
    names: list[str],
    layers: list[UnitLayer],
    stats: dict[str, LayerStats],
) -> tuple[Scores, dict[tuple[str, str], str]]:
    """`Scores[utility][layer]` `(n_units,)` and the reasons for utilities that do not apply."""
    scores: dict[str, dict[str, torch.Tensor]] = {}
    notes: dict[tuple[str, str], str] = {}
    for name in names:
        if name == ORACLE:
            continue
        scores[name] = {}
        for layer in layers:
            try:
                scores[name][layer.name] = checked_scores(name, UTILITIES[name](stats[layer.name], layer), layer)
            except NotApplicable as why:
                notes[(name, layer.name)] = str(why)
    return scores, notes


def checked_scores(name: str, scores: object, layer: UnitLayer) -> torch.Tensor:
    """A utility's scores of one layer, on the CPU, or a one-line error naming the utility and the layer: a tensor
    of shape `(n_units,)` (one score per unit) holding finite numbers (a NaN would leave the utility "not
    applicable" everywhere without a word; raise NotApplicable(reason) where it does not apply) (SPEC S3)."""
    where = f"`utilities` {name}: on layer {layer.name} ({layer.n_units} units) the utility"
    if not isinstance(scores, torch.Tensor):
        raise BadInputError(f"{where} returned {type(scores).__name__}; return a tensor of shape "
                            f"({layer.n_units},), one score per unit", field="utilities")
    if tuple(scores.shape) != (layer.n_units,):
        raise BadInputError(f"{where} returned shape {tuple(scores.shape)}; return one score per unit, shape "
                            f"({layer.n_units},)", field="utilities")
    finite = torch.isfinite(scores)
    if not bool(finite.all()):
        raise BadInputError(f"{where} returned NaN or Inf for {int((~finite).sum())} of its {layer.n_units} units; "
                            "return finite scores, or raise NotApplicable(reason) where it does not apply",
                            field="utilities")
    return scores.detach().cpu()


def needed_ingredients(names: list[str]) -> Needs:
    """The union of what the requested utilities read."""
    return frozenset().union(*(UTILITIES[n].needs for n in names if n in UTILITIES))
