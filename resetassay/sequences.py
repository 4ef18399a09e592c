"""Sequence outputs (SPEC S9): a language model's logits `(B, T, V)` against next-token targets `(B, T)`.

A classifier's logits are `(B, C)` with one label per example; a language model's are `(B, T, V)` with one
target per position, the next token, and `IGNORE` (-100, as PyTorch's cross-entropy and Hugging Face label it)
where there is none: the last position, and padding. Per example, the target logit is summed over the positions
that have a target, the loss is their mean cross-entropy, and the probe accuracy counts those positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


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
