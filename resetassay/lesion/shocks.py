"""Shock metrics (SPEC S4): per-example shocks, running sums over probe chunks, probe logits.

The shock of a lesion is the mean over the probe set of how far the logits move: L1 of the
logit difference, or KL(softmax(z) || softmax(z_lesioned)); of a language model's logits
`(P, T, V)`, the mean over each example's positions of the per-position shock (SPEC S9). Both
engines compute them here, from the same perturbed logits, in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from resetassay.errors import BadInputError
from resetassay.names import METRICS
from resetassay.shapes import UnitChoice
from resetassay.units import UnitLayer


def lesioned_units(layer: UnitLayer, units: UnitChoice | None) -> torch.Tensor:
    """The unit indices of `layer` to lesion one by one: `units[layer.name]` when given, else all of them."""
    if units is not None and layer.name in units:
        return torch.as_tensor(units[layer.name], dtype=torch.long).cpu()
    return torch.arange(layer.n_units)


def check_metrics(names: list[str]) -> list[str]:
    """Validate `--metrics`; the message lists the valid names."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise BadInputError(f"--metrics: unknown {', '.join(unknown)}; choose from {', '.join(METRICS)}",
                            flag="--metrics")
    return names


def example_shocks(z: torch.Tensor, z_lesioned: torch.Tensor, metric: str,
                   padding: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example shock `(P,)` between logits `z` and `z_lesioned`, both `(P, C)` (SPEC S4), or both `(P, T, V)`:
    the mean over positions, over the real ones `padding (P, T)` of padded token data (SPEC S9)."""
    if metric == "l1":
        shock = (z - z_lesioned).abs().sum(dim=-1)
    elif metric == "kl":
        log_p, log_q = F.log_softmax(z.double(), dim=-1), F.log_softmax(z_lesioned.double(), dim=-1)
        shock = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    else:
        raise BadInputError(f"unknown shock metric {metric!r}; choose from {', '.join(METRICS)}")
    if z.dim() != 3:
        return shock
    return shock.mean(dim=1) if padding is None else (shock * position_weights(padding)).sum(dim=1)


def position_weights(padding: torch.Tensor) -> torch.Tensor:
    """`(P, T)` float64: 1 / (real positions of the example) at its real positions, 0 at pads (SPEC S9)."""
    real = padding.double()
    return real / real.sum(dim=1, keepdim=True).clamp(min=1)


def mean_shocks(z: torch.Tensor, z_lesioned: torch.Tensor, metrics: list[str],
                padding: torch.Tensor | None = None) -> dict[str, float]:
    """Shock per metric of one lesion: the mean over the probe set (SPEC S4)."""
    return {m: example_shocks(z, z_lesioned, m, padding).double().mean().item() for m in metrics}


def probe_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits `(P, C)` of the probe set, computed in batches on the model's device."""
    if len(x) == 0:
        raise BadInputError("the probe set is empty; raise --probe-size")
    device = next(model.parameters()).device
    with torch.no_grad():
        return torch.cat([model(xb.to(device)) for xb in torch.split(x, batch_size)])


class BaseLogits:
    """Unlesioned logits of one probe chunk, `(P, C)` or `(P, T, V)`, with what the shocks reuse, in float64; with
    `padding (P, T)`, the weights of each example's real positions (SPEC S9)."""

    def __init__(self, z: torch.Tensor, padding: torch.Tensor | None = None):
        self.z = z.double()
        self.lse = torch.logsumexp(self.z, dim=-1)
        self.p = (self.z - self.lse.unsqueeze(-1)).exp()
        self.weights = position_weights(padding.to(z.device)) if padding is not None and z.dim() == 3 else None


class ShockSums:
    """Running sums of per-example shocks, `(n_lesions,)` per metric, in float64 (SPEC S4)."""

    def __init__(self, n: int, metrics: list[str], device: torch.device):
        self.sums = {m: torch.zeros(n, dtype=torch.float64, device=device) for m in metrics}

    def reset(self) -> None:
        for s in self.sums.values():
            s.zero_()

    def add(self, first: int, base: BaseLogits, z_lesioned: torch.Tensor) -> None:
        """Add lesions `first..first+K` of one probe chunk, `z_lesioned (K, P, C)` or `(K, P, T, V)` (a sequence's
        shock is its mean over positions, SPEC S9)."""
        zl = z_lesioned.double()
        d = zl - base.z                                   # (K, P, C) or (K, P, T, V)
        k = len(zl)
        if "l1" in self.sums:
            l1 = d.abs().sum(dim=(1, 2)) if d.dim() == 3 else _over_positions(d.abs().sum(dim=3), base).sum(dim=1)
            self.sums["l1"][first:first + k] += l1
        if "kl" in self.sums:  # KL(p || q) = lse(z') - lse(z) - sum_c p_c (z'_c - z_c)
            kl = torch.logsumexp(zl, dim=-1) - base.lse - (d * base.p).sum(dim=-1)
            self.sums["kl"][first:first + k] += (_over_positions(kl, base) if kl.dim() == 3 else kl).sum(dim=1)

    def means(self, n_probe: int) -> dict[str, torch.Tensor]:
        return {m: (s / n_probe).cpu() for m, s in self.sums.items()}


def _over_positions(shock: torch.Tensor, base: BaseLogits) -> torch.Tensor:
    """`(K, P)`: per-position shocks `(K, P, T)` averaged over each example's (real) positions."""
    return shock.mean(dim=2) if base.weights is None else (shock * base.weights).sum(dim=2)
