"""What a report holds, whatever its format (resetassay/report/blocks.py, SPEC S5): best-per-column marks and the
cells of its tables.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from resetassay.report.blocks import best_cells, mean_se_text, stat_cell


def test_best_per_column_marks_only_a_unique_best_per_metric_ties_apart_and_never_the_oracle():
    utilities = np.array(["gxd", "activation", "gxi", "oracle", "gxd", "activation", "oracle"])
    metrics = np.array(["l1", "l1", "l1", "l1", "kl", "kl", "kl"])
    rho = np.array([0.9, 0.5, 0.9, 1.0, 0.4, 0.7, 1.0])
    shock = np.array([2.0, 1.0, 3.0, 0.5, np.nan, 4.0, 0.1])
    best, tied = best_cells(rho, metrics, utilities, "max")
    assert best.tolist() == [False, False, False, False, False, True, False]  # l1: gxd and gxi tie at 0.9
    assert tied.tolist() == [True, False, True, False, False, False, False]
    best, tied = best_cells(shock, metrics, utilities, "min")
    assert best.tolist() == [False, True, False, False, False, True, False] and not tied.any()
    assert not best_cells(rho, metrics, utilities, None)[0].any()


def test_cells_show_values_below_three_checkpoints_and_mean_se_from_three():
    assert stat_cell(np.array([0.5771, 0.805]), 2) == "0.577 / 0.805"
    assert stat_cell(np.array([0.5, np.nan]), 2) == "0.500 (n=1)"
    assert stat_cell(np.array([1.0, 2.0, 3.0]), 3) == "2.000 ± 0.577"
    assert stat_cell(np.array([np.nan]), 1) == "n/a"


@pytest.mark.parametrize(("args", "text"), [
    ((0.987, 0.0014, 2, 2), "0.987 ± 0.001"),
    ((0.00447, 0.0013, 2, 2), "(4.47 ± 1.30)e-03"),
    ((0.5, 0.0001, 2, 2), "0.500 ± <0.001"),
    ((0.5, math.nan, 1, 2), "0.500 (n=1)"),
    ((math.nan, math.nan, 0, 2), "n/a"),
])
def test_cells_show_mean_se_and_n_only_when_some_are_missing(args, text):
    assert mean_se_text(*args) == text
