"""Continual backprop (SPEC S7, paper Algorithm 1): online unit utilities and the reset step.

`ContinualBackprop` hooks the unit layers (SPEC S1) of a zoo model. After every SGD step it
ages every unit, updates its EMA reference `f` and, where a reset applies, its EMA utility
`u`; then it resets, at rate ρ, the eligible units (age > m) with the lowest bias-corrected
utility. The reset adds `w_out[:, r] · r̂_r` to the consumer's bias with the bias-corrected
running mean `r̂ = f / (1 - η^age)` (SPEC S2), read *before* `f` is cleared: the public
reference code clears it first, which makes its compensation a no-op (DESIGN "Known traps").

Where a reset applies (`models.reset.reset_site`, as each zoo model's unit-layer specs declare it): one
Linear/Conv producer and one Linear/Conv consumer.
- The producer may sit behind a per-unit norm: in the LayerNorm MLP it is the Linear before
  the norm, in a ConvBlock the conv before BatchNorm, in a BasicBlock `conv1` before `bn1`.
  A reset resamples the producer's row, zeroes its bias entry and resets the norm's per-unit
  parameters (and BatchNorm running statistics) to their init. LayerNorm normalises over all
  units of a layer, so there a new row also moves the other units: the compensation is exact
  only without LayerNorm.
- The consumer receives the compensation in its bias; a bias-free conv consumer followed by
  BatchNorm (CNN, BasicBlock `conv2`) receives it in that BatchNorm's running mean, which is
  the same shift in eval mode (train-mode BatchNorm removes a constant shift by itself). For a
  conv consumer it is exact away from the zero-padded border.
- ResNet `stem.act` and every `act2` are read by a residual skip or produced by a residual
  add: they are tracked (age, reference) but never reset. Only the `act1` layers are.
- In the zoo transformer the MLP neurons are reset (producer `fc_in`, consumer `fc_out`, the
  same update at every position, SPEC S9); attention heads are neither tracked nor reset.

Online utilities are those of SPEC S3 computed on the training batch from the forward that
the SGD step used (hooks, no extra forward): E becomes the batch mean, and the reference is
the current `r̂`. `loss_gradient` reads ∂L/∂h from the step's own backward; `gxi`/`gxd` need
∂z_y/∂h, one extra backward through the same graph. In train mode BatchNorm couples the
examples of a batch, and these gradients include that coupling.

`random` is the control: a fresh uniform draw per unit and step (not the assay's fixed seeded noise), so
every eligible unit is equally likely to be the one reset.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

import torch
from torch import nn

from resetassay.discovery.sequences import target_logits
from resetassay.discovery.units import UnitLayer, per_unit, unit_layers
from resetassay.errors import BadInputError
from resetassay.models.reset import ResetSite, reset_site, reset_weights
from resetassay.names import CBP_UTILITIES, RANDOM
from resetassay.scoring.calibration import example_ingredients
from resetassay.scoring.registry import UTILITIES, Ingredient, LayerStats, Needs, NotApplicable

GRADIENT_INGREDIENTS = frozenset({Ingredient.GXI, Ingredient.GXD})


@dataclass
class CBPConfig:
    """CBP hyper-parameters (SPEC S7; defaults of Dohare et al.)."""

    utility: str = "contribution"
    replacement_rate: float = 1e-4
    decay: float = 0.99
    maturity: int = 100

    def __post_init__(self) -> None:
        def _number(value: object) -> bool:  # finite: NaN and Inf pass no range check (SPEC S7)
            return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)

        if self.utility not in CBP_UTILITIES:
            raise BadInputError(f"`utility` {self.utility!r} cannot be tracked online; "
                                f"choose from {', '.join(CBP_UTILITIES)}", field="utility")
        if not _number(self.replacement_rate) or not 0 <= self.replacement_rate <= 1:
            raise BadInputError(f"`replacement_rate` {self.replacement_rate}: must be a number in [0, 1]",
                                field="replacement_rate")
        if not _number(self.decay) or not 0 <= self.decay < 1:
            raise BadInputError(f"`decay` {self.decay}: must be a number in [0, 1)", field="decay")
        if not isinstance(self.maturity, numbers.Integral) or isinstance(self.maturity, bool) or self.maturity < 0:
            raise BadInputError(f"`maturity` {self.maturity}: must be a whole number >= 0", field="maturity")

    def to_dict(self) -> dict:
        """The config as a plain dict."""
        return asdict(self)


@dataclass
class UnitTrace:
    """Online state of one unit layer: ages, EMA reference f, EMA utility u, reset accumulator c."""

    layer: UnitLayer
    site: ResetSite | None
    why_not: str
    age: torch.Tensor      # (n_units,) int64
    mean: torch.Tensor     # (n_units,) float64, f (SPEC S2)
    utility: torch.Tensor  # (n_units,) float64, u
    pending: float = 0.0   # c

    def corrected(self, ema: torch.Tensor, decay: float) -> torch.Tensor:
        """Bias-corrected EMA `ema / (1 - η^age)`, 0 for units not yet observed (age 0)."""
        seen = self.age > 0
        return torch.where(seen, ema / (1 - decay ** self.age.clamp(min=1).double()), torch.zeros_like(ema))


def _unit_mean(u: torch.Tensor) -> torch.Tensor:
    """Mean of a unit view over examples (and H, W for Conv, positions for tokens), `(n_units,)`."""
    return u.mean(dim=[d for d in range(u.dim()) if d != 1])


def _batch_stats(
    h: torch.Tensor,
    reference: torch.Tensor,
    needs: Needs,
    loss_grad: torch.Tensor | None = None,
    target_grad: torch.Tensor | None = None,
) -> LayerStats:
    """Batch means of the SPEC S3 ingredients in `needs` for one layer.

    Args: h, a unit view (`units.unit_view`); reference r̂ `(n,)`; loss_grad ∂L_x/∂h_x per example
    and target_grad ∂z_y(x)/∂h_x, both shaped like h.
    """
    dev = h - per_unit(reference.to(h.dtype), h)
    per_example = example_ingredients(h, dev, needs, loss_grad, target_grad)
    return LayerStats(**{key: value.mean(0) for key, value in per_example.items()})


class ContinualBackprop:
    """CBP over the unit layers of a zoo model (SPEC S7): call `observe` after the forward of
    each SGD step and `step` after `optimizer.step()`.

    Examples::

        cbp = ContinualBackprop(model, CBPConfig(), x[:2])
        logits = model(xb); cbp.observe(logits, yb)
        F.cross_entropy(logits, yb).backward(); optimizer.step(); cbp.step(optimizer)
    """

    def __init__(self, model: nn.Module, config: CBPConfig, example: torch.Tensor, seed: int = 0):
        self.model, self.config = model, config
        self.generator = torch.Generator().manual_seed(seed)
        self.needs = UTILITIES[config.utility].needs
        was_training = model.training
        layers = unit_layers(model.eval(), example)  # eval: resolving must not move BatchNorm statistics
        layers = [layer for layer in layers if layer.kind != "head"]
        model.train(was_training)
        self.traces: dict[str, UnitTrace] = {}
        for layer in layers:
            site, why = reset_site(model, layer)
            n = layer.n_units
            self.traces[layer.name] = UnitTrace(layer, site, why, torch.zeros(n, dtype=torch.long),
                                                torch.zeros(n, dtype=torch.float64),
                                                torch.zeros(n, dtype=torch.float64))
        if not self.reset_layers:
            raise BadInputError("`cbp`: no unit layer of this model has a single Linear/Conv producer and consumer",
                                field="cbp")
        for name in self.reset_layers:
            trace = self.traces[name]
            try:
                UTILITIES[config.utility](LayerStats(**{k: torch.zeros(trace.layer.n_units) for k in self.needs}),
                                             trace.layer)
            except NotApplicable as why:
                raise BadInputError(f"`utility` {config.utility} does not apply to {name} ({why}); "
                                    "choose contribution, mc_contribution, loss_gradient, gxi or gxd",
                                    field="utility") from why
        self._h: dict[str, torch.Tensor] = {}
        self._loss_grad: dict[str, torch.Tensor] = {}
        self._target_grad: dict[str, torch.Tensor] = {}
        self._handles = [t.layer.module.register_forward_hook(self._capture(name)) for name, t in self.traces.items()]

    @property
    def reset_layers(self) -> list[str]:
        """Names of the unit layers CBP resets (the others are only tracked)."""
        return [name for name, t in self.traces.items() if t.site is not None]

    def skipped_layers(self) -> dict[str, str]:
        """Unit layers CBP does not reset, with the reason."""
        return {name: t.why_not for name, t in self.traces.items() if t.site is None}

    def _capture(self, name: str):
        wants_loss_grad = Ingredient.LOSS_GRAD in self.needs and self.traces[name].site is not None

        def keep_grad(grad: torch.Tensor) -> None:
            # the training loss is the batch mean: B · ∂L̄/∂h_x = ∂L_x/∂h_x
            self._loss_grad[name] = grad.detach() * grad.shape[0]

        def hook(module: nn.Module, _inputs: object, out: torch.Tensor) -> None:
            if not module.training:
                return
            self._h[name] = out
            if wants_loss_grad and out.requires_grad:
                out.register_hook(keep_grad)
        return hook

    def observe(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Gradients of the target logits `(B,)` at the reset layers, when the utility needs them."""
        if not self.needs & GRADIENT_INGREDIENTS:
            return
        names = self.reset_layers
        outputs = [self._recorded(self._h, n, "a train-mode forward") for n in names]
        grads = torch.autograd.grad(target_logits(logits, y).sum(), outputs, retain_graph=True)
        self._target_grad.update({n: g.detach() for n, g in zip(names, grads, strict=True)})

    @staticmethod
    def _recorded(store: dict[str, torch.Tensor], name: str, source: str) -> torch.Tensor:
        if name not in store:
            raise RuntimeError(f"CBP needs {source} of this step at {name} before update")
        return store[name]

    def step(self, optimizer: torch.optim.Optimizer | None = None) -> int:
        """Update the online state from the last forward, then reset; returns how many units were reset."""
        self.update()
        return self.replace(optimizer)

    def update(self) -> None:
        """`ages += 1`; f ← η f + (1-η) h̄; u ← η u + (1-η) u_batch (SPEC S7), u_batch read with the new r̂."""
        decay = self.config.decay
        with torch.no_grad():
            for name, trace in self.traces.items():
                h = trace.layer.view(self._recorded(self._h, name, "a train-mode forward").detach())
                trace.age += 1
                trace.mean.mul_(decay).add_(_unit_mean(h).double(), alpha=1 - decay)
                if trace.site is None:
                    continue
                loss_grad = (trace.layer.view(self._recorded(self._loss_grad, name, "the step's backward"))
                             if Ingredient.LOSS_GRAD in self.needs else None)
                target_grad = (trace.layer.view(self._recorded(self._target_grad, name, "observe(logits, y)"))
                               if self.needs & GRADIENT_INGREDIENTS else None)
                stats = _batch_stats(h, trace.corrected(trace.mean, decay), self.needs, loss_grad, target_grad)
                now = (torch.rand(trace.layer.n_units, generator=self.generator, dtype=torch.float64)
                       if self.config.utility == RANDOM else UTILITIES[self.config.utility](stats, trace.layer))
                trace.utility.mul_(decay).add_(now.double(), alpha=1 - decay)
        self._h.clear()
        self._loss_grad.clear()
        self._target_grad.clear()

    def replace(self, optimizer: torch.optim.Optimizer | None = None) -> int:
        """`c += n_eligible` · ρ; while c ≥ 1: reset the eligible unit of lowest bias-corrected utility, c -= 1."""
        resets = 0
        for name in self.reset_layers:
            trace = self.traces[name]
            trace.pending += int((trace.age > self.config.maturity).sum()) * self.config.replacement_rate
            while trace.pending >= 1:
                eligible = trace.age > self.config.maturity
                if not eligible.any():  # cannot happen for ρ <= 1: c < n_eligible + 1
                    break
                scores = torch.where(eligible, trace.corrected(trace.utility, self.config.decay), torch.inf)
                self.reset_unit(name, int(scores.argmin()), optimizer)
                trace.pending -= 1
                resets += 1
        return resets

    def reset_unit(self, name: str, unit: int, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Reset one unit (SPEC S7): `reset_weights` with r̂ read before f is cleared, then clear its state."""
        trace = self.traces[name]
        site = trace.site
        if site is None:
            raise ValueError(f"{name} is not reset by CBP: {trace.why_not}")
        i = unit
        reset_weights(site, i, float(trace.corrected(trace.mean, self.config.decay)[i]), self.generator)
        trace.mean[i] = 0
        trace.utility[i] = 0
        trace.age[i] = 0
        if optimizer is not None:
            norm = site.producer_norm
            touched = [(site.producer.weight, (i,)), (site.producer.bias, (i,)),
                       (site.consumer.weight, (slice(None), i))]
            if norm is not None:
                touched += [(norm.weight, (i,)), (norm.bias, (i,))]
            _clear_optimizer_state(optimizer, touched)

    def state(self) -> dict[str, torch.Tensor]:
        """Per-unit checkpoint state (SPEC S1, S2): "<layer>.age", ".reference" (r̂), ".utility" (û, reset layers)."""
        decay, out = self.config.decay, {}
        for name, trace in self.traces.items():
            out[f"{name}.age"] = trace.age.clone()
            out[f"{name}.reference"] = trace.corrected(trace.mean, decay).float()
            if trace.site is not None:
                out[f"{name}.utility"] = trace.corrected(trace.utility, decay).float()
        return out

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _clear_optimizer_state(
    optimizer: torch.optim.Optimizer, touched: list[tuple[torch.Tensor | None, tuple]]
) -> None:
    """Zero the slices `index` of every per-parameter optimizer tensor (momentum, Adam moments)."""
    for param, index in touched:
        if param is None:
            continue
        for value in optimizer.state.get(param, {}).values():
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                value[index] = 0
