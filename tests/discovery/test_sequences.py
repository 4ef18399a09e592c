"""Sequences (resetassay/discovery/sequences.py, SPEC S9): next-token targets, per-example losses, target logits
and accuracy of a language model's (B, T, V) logits, by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from resetassay.discovery.sequences import IGNORE, accuracy, example_losses, next_token_targets, target_logits


def test_next_token_targets_leave_out_the_last_position_and_padding():
    ids = torch.tensor([[5, 6, 7, 8], [1, 2, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert next_token_targets(ids).tolist() == [[6, 7, 8, IGNORE], [2, 0, 0, IGNORE]]
    assert next_token_targets(ids, mask).tolist() == [[6, 7, 8, IGNORE], [2, IGNORE, IGNORE, IGNORE]]


def test_sequence_losses_targets_and_accuracy_by_hand():
    z = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([[1, 4, IGNORE], [0, IGNORE, IGNORE]])
    assert target_logits(z, y).tolist() == pytest.approx([float(z[0, 0, 1] + z[0, 1, 4]), float(z[1, 0, 0])])
    ce = F.cross_entropy
    want = [float((ce(z[0, 0], y[0, 0]) + ce(z[0, 1], y[0, 1])) / 2), float(ce(z[1, 0], y[1, 0]))]
    assert example_losses(z, y).tolist() == pytest.approx(want, rel=1e-6)
    hits = [int(z[0, 0].argmax() == 1), int(z[0, 1].argmax() == 4), int(z[1, 0].argmax() == 0)]
    assert accuracy(z, y) == pytest.approx(sum(hits) / 3)
    assert math.isnan(accuracy(z, torch.full((2, 3), IGNORE)))
