"""Permuted-grammar tasks: a continual sequence task made on the fly, the analogue of Permuted MNIST (SPEC S9).

A small synthetic language over `VOCAB` tokens, fixed by a seed: each sequence of `LENGTH` tokens starts with
two random tokens; every next token of its first half follows a second-order rule, `rule[a, b]` after `a, b`,
with probability `RULE_P` (else a random token); the second half repeats the first. Predicting it needs the
two previous tokens (attention to recent positions, then an MLP lookup) and, in the second half, a match
`LENGTH // 2` positions back (an induction head). Task k relabels every token by a permutation `pi_k`, the
same for inputs and targets: the structure stays, the vocabulary moves, as Permuted MNIST moves the pixels.
Targets are the next tokens (`sequences.next_token_targets`). Nothing is downloaded; a task's train and
held-out sequences are seeded by (seed, task, part).
"""

from __future__ import annotations

import numpy as np
import torch

from resetassay.discovery.sequences import next_token_targets

VOCAB = 32
LENGTH = 16
RULE_P = 0.8
TRAIN_SEQUENCES = 8192   # per task
HOLDOUT_SEQUENCES = 512  # per task: calibration and probe sets of 256 sequences each by default
PARTS = {"train": 0, "holdout": 1}


def rule_table(seed: int) -> np.ndarray:
    """`(VOCAB, VOCAB)`: the token that follows `a, b` under the grammar of `seed`."""
    return np.random.default_rng([seed, 1 << 20]).integers(0, VOCAB, size=(VOCAB, VOCAB))


def vocabulary_permutation(task: int, seed: int) -> np.ndarray:
    """The relabelling `pi_task` of the vocabulary (seeded by (seed, task))."""
    return np.random.default_rng([seed, task]).permutation(VOCAB)


def grammar_sequences(task: int, seed: int, part: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids `(n, LENGTH)` int64 of `task` and their next-token targets `(n, LENGTH)` (IGNORE at the last
    position); `part` "train" (default n: TRAIN_SEQUENCES) or "holdout" (HOLDOUT_SEQUENCES)."""
    n = n if n is not None else (TRAIN_SEQUENCES if part == "train" else HOLDOUT_SEQUENCES)
    rng = np.random.default_rng([seed, task, PARTS[part], 7])
    rule, half = rule_table(seed), LENGTH // 2
    first = np.empty((n, half), dtype=np.int64)
    first[:, :2] = rng.integers(0, VOCAB, size=(n, 2))
    follows = rng.random((n, half)) < RULE_P
    noise = rng.integers(0, VOCAB, size=(n, half))
    for t in range(2, half):
        first[:, t] = np.where(follows[:, t], rule[first[:, t - 2], first[:, t - 1]], noise[:, t])
    ids = vocabulary_permutation(task, seed)[np.concatenate([first, first], axis=1)]
    x = torch.from_numpy(np.ascontiguousarray(ids))
    return x, next_token_targets(x)
