"""Sequences (SPEC S9): token inputs with padding, and a language model's logits `(B, T, V)` against next-token
targets `(B, T)`.

A classifier's logits are `(B, C)` with one label per example; a language model's are `(B, T, V)` with one
target per position, the next token, and `IGNORE` (-100, as PyTorch's cross-entropy and Hugging Face label it)
where there is none: the last position, and padding. Per example, the target logit is summed over the positions
that have a target, the loss is their mean cross-entropy, and the probe accuracy counts those positions.

Unlabelled data carries `NO_LABEL` (-1) as every example's label: gxd, gxi and loss_gradient then follow the
model's predicted class, and the probe accuracy is not measured.

Padding travels inside the token ids: a padded position holds `PAD` (-1), so one tensor carries both the ids
and the attention mask through batching and the lesion engines (`with_padding`, `padding_mask`). A model sees
real ids only (`padded_tokens`: pads become id 0, masked out by `attention_mask` where its forward takes one).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from resetassay.discovery.outputs import model_name, transformed, unwrapped
from resetassay.errors import BadInputError

IGNORE = -100
PAD = -1
NO_LABEL = -1  # every label of unlabelled data (a classifier's): its targets are the model's predicted classes


def unlabelled(y: torch.Tensor) -> bool:
    """Whether a classifier's labels `(N,)` are those of unlabelled data (every one NO_LABEL)."""
    return y.dim() == 1 and len(y) > 0 and bool((y == NO_LABEL).all())


def is_sequence(z: torch.Tensor) -> bool:
    """Whether logits are per position, `(B, T, V)`."""
    return z.dim() == 3


def next_token_targets(ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """`(B, T)`: the token at t + 1 for position t; IGNORE at the last position and where `mask` (the attention
    mask, 1 = a real token) is 0 at t or t + 1."""
    y = torch.full_like(ids, IGNORE)
    y[:, :-1] = ids[:, 1:]
    if mask is not None:
        y[:, :-1][(mask[:, :-1] == 0) | (mask[:, 1:] == 0)] = IGNORE
    return y


def target_logits(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`(B,)`: the target logit of each example, summed over its positions that have a target (SPEC S3, S9)."""
    if not is_sequence(z):
        return z.gather(1, y.unsqueeze(1)).squeeze(1)
    picked = z.gather(2, y.clamp(min=0).unsqueeze(2)).squeeze(2)
    return torch.where(y == IGNORE, torch.zeros_like(picked), picked).sum(dim=1)


def predicted_targets(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The model's own predictions as targets: the largest logit per example, or per position of a sequence where
    `y` has a target (IGNORE stays where it has none)."""
    predicted = z.argmax(dim=-1).to(y.device)
    return torch.where(y == IGNORE, y, predicted) if is_sequence(z) else predicted


def example_losses(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`(B,)`: the cross-entropy of each example; of a sequence, the mean over its positions with a target."""
    if not is_sequence(z):
        return F.cross_entropy(z, y, reduction="none")
    losses = F.cross_entropy(z.transpose(1, 2), y, ignore_index=IGNORE, reduction="none")
    return losses.sum(dim=1) / (y != IGNORE).sum(dim=1).clamp(min=1)


def accuracy(z: torch.Tensor, y: torch.Tensor) -> float:
    """The share of targets that are the largest logit: examples (a classifier), or positions with a target
    (a language model); NaN where any classifier label is negative (unlabelled data) or none is left."""
    y = y.to(z.device)
    if is_sequence(z):
        scored = y != IGNORE
        if y.shape != z.shape[:2] or not scored.any():
            return float("nan")
        return float((z.argmax(dim=2) == y)[scored].double().mean())
    if y.shape != z.shape[:1] or (y < 0).any():
        return float("nan")
    return float((z.argmax(dim=1) == y).double().mean())


def with_padding(ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Token ids `(B, T)` with `PAD` where the attention mask is 0 (the ids as they are without a mask)."""
    return ids if mask is None else ids.masked_fill(mask == 0, PAD)


def padding_mask(x: torch.Tensor) -> torch.Tensor | None:
    """`(B, T)` True at the real tokens of token ids carrying `PAD`; None for any other input (nothing padded)."""
    if x.dim() != 2 or x.dtype.is_floating_point or x.dtype == torch.bool or not bool((x < 0).any()):
        return None
    return x >= 0


def _takes_attention_mask(model: nn.Module) -> bool:
    """Whether the model's forward has an `attention_mask` parameter (Hugging Face models do)."""
    return "attention_mask" in inspect.signature(type(unwrapped(model)).forward).parameters


def padded_tokens(model: nn.Module, examples: list[torch.Tensor]) -> nn.Module:
    """The model reading token ids that carry `PAD`: the model (its modules, parameters and buffers, so names,
    state-dict keys and hooks are the model's) with an input transform that gives pads id 0 and, where the forward
    takes one, the attention mask (`outputs.transformed`). A model without an `attention_mask` parameter (a causal
    one) gets right padding only (pads after the tokens never reach them); other padding in `examples` (token ids)
    is a BadInputError."""
    masked = _takes_attention_mask(model)
    masks = [m for m in map(padding_mask, examples) if m is not None]
    if not masked and any(bool((m[:, 1:] > m[:, :-1]).any()) for m in masks):
        raise BadInputError(f"{model_name(model)} takes no attention_mask, so only right padding (pads after the "
                            "tokens) can be assayed; pad the sequences on the right")

    def real_ids(ids: torch.Tensor) -> tuple[tuple, dict]:
        return (ids.clamp(min=0),), ({"attention_mask": (ids >= 0).to(torch.long)} if masked else {})

    return transformed(model, input_transform=real_ids)
