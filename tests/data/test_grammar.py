"""Permuted-grammar tasks (resetassay/data/grammar.py, SPEC S9): one synthetic language relabelled per task, a
built-in data source recorded like the permuted image tasks.
"""

from __future__ import annotations

import pytest
import torch

from resetassay.data.grammar import LENGTH, VOCAB, grammar_sequences, rule_table, vocabulary_permutation
from resetassay.discovery.sequences import IGNORE


def test_grammar_tasks_relabel_one_language():
    x0, y0 = grammar_sequences(0, 3, "train", 64)
    x1, _ = grammar_sequences(1, 3, "train", 64)
    assert x0.shape == (64, LENGTH) and x0.dtype == torch.int64 and int(x0.max()) < VOCAB
    assert torch.equal(x0[:, :LENGTH // 2], x0[:, LENGTH // 2:])  # the second half repeats the first
    assert torch.equal(y0[:, :-1], x0[:, 1:]) and (y0[:, -1] == IGNORE).all()
    # undo each task's relabelling: both follow the same rule table most of the time
    rule = torch.from_numpy(rule_table(3))
    for task, x in ((0, x0), (1, x1)):
        inverse = torch.from_numpy(vocabulary_permutation(task, 3)).argsort()
        raw = inverse[x]
        follows = (rule[raw[:, :6], raw[:, 1:7]] == raw[:, 2:8]).double().mean()
        assert follows > 0.75
    assert not torch.equal(x0, x1)
    assert torch.equal(grammar_sequences(0, 3, "train", 64)[0], x0)
    assert not torch.equal(grammar_sequences(0, 3, "holdout", 64)[0], x0)


def test_grammar_is_a_built_in_data_source_recorded_like_permuted_tasks():
    from resetassay.data import DataSpec, assay_data, data_spec
    from resetassay.errors import BadInputError

    spec = data_spec("grammar", task=2, permutation_seed=5)
    assert spec.to_dict() == {**DataSpec().to_dict(), "source": "grammar", "task": 2, "permutation_seed": 5}
    assert DataSpec.from_dict(spec.to_dict()) == spec
    with pytest.warns(UserWarning, match="grammar task 2 has 512 held-out examples"):
        split = assay_data(spec)
    x, y = grammar_sequences(2, 5, "holdout")
    assert split.calib_x.shape == (256, LENGTH) and split.calib_x.dtype == torch.int64
    pick = {tuple(row) for row in x.tolist()}
    assert all(tuple(row) in pick for row in split.probe_x.tolist())
    assert torch.equal(split.probe_y[:, :-1], split.probe_x[:, 1:])
    with pytest.raises(BadInputError, match="layout must be 'flat' for source 'grammar'"):
        DataSpec(source="grammar", layout="image")
