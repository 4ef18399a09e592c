"""Shock metrics (SPEC S4): the registry, per-example shocks, running sums over probe chunks, probe logits.

The shock of a lesion is the mean over the probe set of how far the logits move: L1 of the
logit difference, or KL(softmax(z) || softmax(z_lesioned)); of a language model's logits
`(P, T, V)`, the mean over each example's positions of the per-position shock (SPEC S9). Both
engines compute them here, from the same perturbed logits, in float64. Other metrics (a loss
increase, an accuracy drop) are `ShockMetric`s (a Protocol) registered by name in `SHOCK_METRICS` (a
`plugins.Registry`: `register_metric`, or a package's `resetassay.metrics` entry point, loaded only when named);
one that reads the probe targets says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from resetassay.discovery.sequences import IGNORE, padding_mask
from resetassay.discovery.units import UnitLayer
from resetassay.errors import BadInputError, did_you_mean
from resetassay.names import METRICS
from resetassay.plugins import Registry, installed, source_of, summary
from resetassay.shapes import UnitChoice

__all__ = [
    "register_metric", "list_metrics", "ShockMetric", "Metric", "SHOCK_METRICS", "check_metrics", "check_targets",
    "lesioned_units", "probe_logits", "probe_chunk", "mean_shocks", "ShockSums", "BaseLogits", "group_shape",
    "check_groups",
]


class ShockMetric(Protocol):
    """What a shock metric provides (SPEC S4): `metric(z, z_lesioned, y)`, one shock per example `(...)` of the intact
    and lesioned logits `z`, `z_lesioned`, float64, of one shape `(..., C)` (a language model's `(..., T, V)`), `y`
    the probe targets `(...)` where it reads them (`targets`), else None. `register_metric(name, fn, targets)`
    registers one; a package's entry point says `targets` as an attribute of its function (default False)."""

    def __call__(self, z: torch.Tensor, z_lesioned: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The shocks of `z_lesioned` against the intact logits `z`, one per example."""


@dataclass(frozen=True)
class Metric:
    """A registered shock metric: `shocks(base, z_lesioned)`, the shock `(..., P)` or a sequence's `(..., P, T)` of
    lesioned logits `(..., P, C)` or `(..., P, T, V)` against one probe chunk's `BaseLogits` (its float64 logits,
    their softmax and log-sum-exp, the targets); `targets`: whether it reads the targets (SPEC S4)."""

    name: str
    shocks: Callable[[BaseLogits, torch.Tensor], torch.Tensor]
    targets: bool = False


def l1(base: BaseLogits, z_lesioned: torch.Tensor) -> torch.Tensor:
    """Sum_c |z_c - z'_c| (SPEC S4)."""
    return (z_lesioned - base.z).abs().sum(dim=-1)


def kl(base: BaseLogits, z_lesioned: torch.Tensor) -> torch.Tensor:
    """KL(softmax z || softmax z') = lse(z') - lse(z) - sum_c p_c (z'_c - z_c), p = softmax z (SPEC S4)."""
    return torch.logsumexp(z_lesioned, dim=-1) - base.lse - ((z_lesioned - base.z) * base.p).sum(dim=-1)


def _of_logits(name: str, fn: ShockMetric, targets: bool) -> Callable[[BaseLogits, torch.Tensor], torch.Tensor]:
    """A registered `fn(z, z_lesioned, y)` as a Metric's `shocks`: z expanded to z_lesioned's shape, y (where
    it reads targets) to its leading shape, 0 where a position has no target (it then does not count); what it
    returns is checked at this boundary (`checked_shocks`)."""
    def shocks(base: BaseLogits, z_lesioned: torch.Tensor) -> torch.Tensor:
        y = base.targets.clamp(min=0).expand(z_lesioned.shape[:-1]) if targets else None
        return checked_shocks(name, fn(base.z.expand_as(z_lesioned), z_lesioned, y), z_lesioned.shape[:-1])
    shocks.__doc__ = fn.__doc__  # its description (`list_metrics`)
    return shocks


def checked_shocks(name: str, shocks: object, shape: torch.Size) -> torch.Tensor:
    """A registered metric's return value as float64 shocks, or a one-line error naming the metric: a tensor of
    exactly `shape` (one shock per example, or per position of a sequence; never broadcast, so a scalar is not
    copied to every example) and finite (a NaN would make every mean over the probe set NaN)."""
    where = f"`metrics` {name}: the registered metric"
    if not isinstance(shocks, torch.Tensor):
        raise BadInputError(f"{where} returned {type(shocks).__name__}; return a tensor of shape {tuple(shape)}, "
                            "one shock per example", field="metrics")
    if shocks.shape != shape:
        raise BadInputError(f"{where} returned shape {tuple(shocks.shape)} for logits of shape {tuple(shape)} + "
                            f"(classes,); return one shock per example, shape {tuple(shape)} (do not reduce over "
                            "the examples: resetassay averages them)", field="metrics")
    finite = torch.isfinite(shocks)
    if not bool(finite.all()):
        raise BadInputError(f"{where} returned NaN or Inf in {int((~finite).sum())} of its {finite.numel()} shocks "
                            "(lesions x examples); return finite shocks (e.g. clamp probabilities before a log)",
                            field="metrics")
    return shocks.double()


ENTRY_POINTS = "resetassay.metrics"  # the entry-point group of shock metrics other packages provide


def _from_entry_point(name: str, fn: ShockMetric, source: str) -> None:
    """Register the metric `name` an installed package provides in the `resetassay.metrics` entry-point group
    (loaded only when named); its `targets` attribute says whether it reads the probe targets."""
    register_metric(name, fn, bool(getattr(fn, "targets", False)), source)


# The registered metrics, the built-in ones (names.METRICS) first; `SHOCK_METRICS.sources`: where each of the
# user's comes from (package and version), for run.json.
SHOCK_METRICS: Registry[Metric] = Registry("metric", "metrics", ENTRY_POINTS, _from_entry_point)
SHOCK_METRICS.register("l1", Metric("l1", l1))
SHOCK_METRICS.register("kl", Metric("kl", kl))


def register_metric(name: str, fn: ShockMetric, targets: bool = False, source: str | None = None) -> None:
    """Register your own shock metric `fn(z, z_lesioned, y) -> (...)` under `name` (docs/guide/extending.md "Your
    own metric").

    `z`, `z_lesioned`: the intact and lesioned logits, float64, one shape `(..., C)` (a language model's
    `(..., T, V)`); `y`: with `targets=True`, the probe targets `(...)` (labels; a language model's next tokens,
    0 where a position has none, which then does not count), else None. Return one shock per example (per
    position); resetassay averages them over the probe set (a sequence's positions first, SPEC S4, S9). A
    built-in name is refused. `source` (default: the function's module and name) is recorded in run.json. The first
    paragraph of `fn`'s docstring is its description in `list_metrics()`.

    Args:
        name: the metric's name in `AssayConfig.metrics` (`--metrics`); its UnitTable column is `shock_<name>`.
        fn: `fn(z, z_lesioned, y) -> (...)`, one shock per example (per position), higher = more damage.
        targets: whether `fn` reads the probe targets `y`.
        source: where it comes from, for run.json.

    Raises:
        BadInputError: a built-in name.

    Example::

        >>> import resetassay as ra
        >>> def linf(z, z_lesioned, y):
        ...     "max_c |z_c - z'_c|."
        ...     return (z_lesioned - z).abs().amax(dim=-1)
        >>> ra.register_metric("linf", linf)
        >>> ra.list_metrics()["linf"]
        "max_c |z_c - z'_c|."
        >>> result = ra.run_assay(["fixtures/silu_mlp/task2"], utilities=["gxd", "oracle"], metrics=["l1", "linf"],
        ...                       calib_size=200, probe_size=200, progress=False)
        >>> result.units.filter(like="shock_").columns.tolist()
        ['shock_l1', 'shock_linf']
    """
    if name in METRICS:
        raise BadInputError(f"metric {name!r} is built in; register yours under another name", field="metrics")
    SHOCK_METRICS.register(name, Metric(name, _of_logits(name, fn, targets), bool(targets)),
                           source or source_of(fn))


def lesioned_units(layer: UnitLayer, units: UnitChoice | None) -> torch.Tensor:
    """The unit indices of `layer` to lesion one by one: `units[layer.name]` when given, else all of them."""
    if units is not None and layer.name in units:
        return torch.as_tensor(units[layer.name], dtype=torch.long).cpu()
    return torch.arange(layer.n_units)


def check_metrics(names: list[str]) -> list[str]:
    """Validate `--metrics` (loading a package's metric the first time it is named); the message lists the valid
    names."""
    unknown = SHOCK_METRICS.unknown(names)
    if unknown:
        raise BadInputError(f"`metrics`: unknown {', '.join(unknown)}{did_you_mean(unknown, list(SHOCK_METRICS))}; "
                            f"choose from {', '.join(SHOCK_METRICS)}", field="metrics")
    return names


def list_metrics() -> dict[str, str]:
    """Every shock metric `AssayConfig.metrics` (`--metrics`) accepts, with a one-line description (SPEC S4).

    Returns:
        name -> description: the built-in l1 and kl, then those registered with `register_metric` (a metric that
        reads the probe labels says so), then those installed packages provide by entry point (not loaded until a
        run names them).

    Example::

        >>> import resetassay as ra
        >>> metrics = ra.list_metrics()
        >>> list(metrics), metrics["l1"]
        (['l1', 'kl'], "Sum_c |z_c - z'_c| (SPEC S4).")
    """
    def described(metric: Metric) -> str:
        text = summary(metric.shocks) or f"registered from {SHOCK_METRICS.sources.get(metric.name)}"
        return text + (" Reads the probe labels." if metric.targets else "")

    listed = {name: described(SHOCK_METRICS[name]) for name in SHOCK_METRICS}
    return {**listed, **{n: d for n, d in installed(ENTRY_POINTS).items() if n not in listed}}


def check_targets(metrics: list[str], targets: torch.Tensor | None) -> None:
    """Refuse a metric that reads the probe targets where there are none (no labels, or unlabelled data: -1)."""
    needing = [m for m in metrics if SHOCK_METRICS[m].targets]
    if needing and (targets is None or (targets.dim() == 1 and bool((targets < 0).any()))):
        raise BadInputError(f"`metrics` {', '.join(needing)}: reads the probe labels, and this probe set has "
                            "none; choose metrics of the logits alone (l1, kl)", field="metrics")


def position_weights(real: torch.Tensor) -> torch.Tensor:
    """`(P, T)` float64: 1 / (counted positions of the example) at its counted positions `real (P, T)`, else 0
    (SPEC S9)."""
    real = real.double()
    return real / real.sum(dim=1, keepdim=True).clamp(min=1)


class BaseLogits:
    """Unlesioned logits of one probe chunk, `(P, C)` or `(P, T, V)`, in float64, with their log-sum-exp and softmax
    (reused by every lesion) and the probe targets `(P,)` or `(P, T)` where given; a sequence's position weights:
    its real positions `padding (P, T)` (all without), and for metrics that read targets, its positions that have
    one (SPEC S9); the examples' probe groups `(P,)` where the request groups them (SPEC S4b)."""

    def __init__(self, z: torch.Tensor, padding: torch.Tensor | None = None, targets: torch.Tensor | None = None,
                 groups: torch.Tensor | None = None):
        self.groups = None if groups is None else groups.to(z.device)  # each example's probe group (SPEC S4b)
        self.z = z.double()
        self.lse = torch.logsumexp(self.z, dim=-1)
        self.p = (self.z - self.lse.unsqueeze(-1)).exp()
        sequence = z.dim() == 3
        self.weights = position_weights(padding.to(z.device)) if padding is not None and sequence else None
        self.targets = targets.to(z.device) if targets is not None else None
        self.target_weights = (position_weights(self.targets != IGNORE)
                               if self.targets is not None and sequence else None)

    def shocks(self, z_lesioned: torch.Tensor, metric: str) -> torch.Tensor:
        """Per-example shocks `(..., P)` of lesioned logits `(..., P, C)` or `(..., P, T, V)` (SPEC S4, S9)."""
        if metric not in SHOCK_METRICS:
            raise BadInputError(f"unknown shock metric {metric!r}; choose from {', '.join(SHOCK_METRICS)}",
                                field="metrics")
        m = SHOCK_METRICS[metric]
        shock = m.shocks(self, z_lesioned.double())
        if self.z.dim() != 3:
            return shock
        w = self.target_weights if m.targets else self.weights
        return shock.mean(dim=-1) if w is None else (shock * w).sum(dim=-1)


def example_shocks(z: torch.Tensor, z_lesioned: torch.Tensor, metric: str, padding: torch.Tensor | None = None,
                   targets: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example shock `(P,)` float64 between logits `z` and `z_lesioned`, both `(P, C)` (SPEC S4), or both
    `(P, T, V)`: the mean over positions, over the real ones `padding (P, T)` of padded token data (SPEC S9)."""
    return BaseLogits(z, padding, targets).shocks(z_lesioned, metric)


def probe_chunk(base: torch.Tensor, targets: torch.Tensor | None, x: torch.Tensor, first: int,
                groups: torch.Tensor | None = None) -> BaseLogits:
    """The BaseLogits of the probe chunk `x`, examples `first..first+len(x)` of the unlesioned logits `base`, the
    targets and the probe groups (SPEC S4, S4b)."""
    rows = slice(first, first + len(x))
    return BaseLogits(base[rows], padding_mask(x), None if targets is None else targets[rows],
                      None if groups is None else groups[rows])


def group_shape(groups: torch.Tensor | None) -> tuple[int, ...]:
    """The shape a lesion's shock takes per metric: `()` over the whole probe set, `(G,)` per probe group (S4b)."""
    return () if groups is None else (int(groups.max()) + 1,)


def check_groups(groups: torch.Tensor | None, n_probe: int) -> None:
    """A request's probe groups (SPEC S4b): `(P,)` integers numbering every group 0..G-1 with at least one example.

    Raises:
        ValueError: another shape or dtype, a negative number, or an empty group.
    """
    if groups is None:
        return
    if groups.shape != (n_probe,) or groups.dtype != torch.long or bool((groups < 0).any()):
        raise ValueError(f"probe groups must be ({n_probe},) int64 >= 0, not {tuple(groups.shape)} {groups.dtype}")
    if bool((torch.bincount(groups.cpu()) == 0).any()):
        raise ValueError("probe groups must number every group 0..G-1 with at least one example")


def mean_shocks(z: torch.Tensor, z_lesioned: torch.Tensor, metrics: list[str], padding: torch.Tensor | None = None,
                targets: torch.Tensor | None = None, groups: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Shock per metric of one lesion: the mean over the probe set `()`, or over each probe group `(G,)`, float64
    (SPEC S4, S4b)."""
    sums = ShockSums(1, metrics, z.device, groups)
    sums.add(0, BaseLogits(z, padding, targets, groups), z_lesioned.unsqueeze(0))
    return {m: value[0] for m, value in sums.means(len(z)).items()}


def probe_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits `(P, C)` of the probe set, computed in batches on the model's device."""
    if len(x) == 0:
        raise BadInputError("the probe set is empty; raise `probe_size`")
    device = next(model.parameters()).device
    with torch.no_grad():
        return torch.cat([model(xb.to(device)) for xb in torch.split(x, batch_size)])


class ShockSums:
    """Running sums of per-example shocks per metric, float64: `(n_lesions,)`, or `(n_lesions, G)` per probe group
    when the request groups its examples (SPEC S4, S4b)."""

    def __init__(self, n: int, metrics: list[str], device: torch.device, groups: torch.Tensor | None = None):
        self.counts = None if groups is None else torch.bincount(groups.cpu()).double()  # examples per group
        self.sums = {m: torch.zeros(n, *group_shape(groups), dtype=torch.float64, device=device) for m in metrics}

    def reset(self) -> None:
        """Zero the sums."""
        for s in self.sums.values():
            s.zero_()

    def add(self, first: int, base: BaseLogits, z_lesioned: torch.Tensor) -> None:
        """Add lesions `first..first+K` of one probe chunk, `z_lesioned (K, P, C)` or `(K, P, T, V)` (a sequence's
        shock is its mean over positions, SPEC S9)."""
        for m, s in self.sums.items():
            rows, per_example = s[first:first + len(z_lesioned)], base.shocks(z_lesioned, m)
            if base.groups is None:
                rows += per_example.sum(dim=-1)
            else:
                rows.index_add_(-1, base.groups, per_example)

    def means(self, n_probe: int) -> dict[str, torch.Tensor]:
        """The mean shock per lesion and metric over `n_probe` examples (or over each group's), on the CPU."""
        counts = n_probe if self.counts is None else self.counts
        return {m: s.cpu() / counts for m, s in self.sums.items()}
