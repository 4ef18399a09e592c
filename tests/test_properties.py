"""Properties over random small MLPs (hypothesis): engines agree, the oracle is the floor (SPEC S4, S5)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.engines import assert_fast_equals_plain
from hypothesis import given, settings
from hypothesis import strategies as st

from resetassay.discovery.units import unit_layers
from resetassay.models import create_model
from resetassay.stats.summary import checkpoint_summary

METRICS = ["l1", "kl"]


@st.composite
def assays(draw):
    seed = draw(st.integers(0, 2**16))
    layer_norm = draw(st.booleans())
    # LayerNorm over 2 features is a sign (±1 by which is larger): discontinuous, so float rounding of either engine
    # can flip it; from 3 features on it is smooth
    widths = draw(st.lists(st.integers(3 if layer_norm else 2, 12), min_size=1, max_size=3))
    activation = draw(st.sampled_from(["relu", "silu", "tanh", "leaky_relu"]))
    n_probe = draw(st.integers(2, 20))
    max_k = draw(st.one_of(st.none(), st.integers(1, 5)))
    return seed, widths, activation, layer_norm, n_probe, max_k


@pytest.mark.slow
@settings(max_examples=15, deadline=None)
@given(assays())
def test_fast_and_plain_engines_agree_on_random_mlps_and_references(case) -> None:
    seed, widths, activation, layer_norm, n_probe, max_k = case
    torch.manual_seed(seed)
    model = create_model("mlp", in_features=6, widths=widths, n_classes=4, activation=activation,
                         layer_norm=layer_norm).eval()
    x = torch.randn(n_probe, 6)
    layers = unit_layers(model, x[:2])
    refs = {layer.name: torch.randn(layer.n_units) for layer in layers}
    with torch.no_grad():
        z = model(x)
    # float32 cannot resolve a logit change below a few ulp of |z|: that floor, else 1e-5 of the shock scale
    floor = 4 * torch.finfo(torch.float32).eps * float(z.abs().max()) * z.shape[1]
    assert_fast_equals_plain(model, layers, refs, x, METRICS, floor=floor, max_k=max_k)


@st.composite
def unit_tables(draw):
    n_layers = draw(st.integers(1, 3))
    rows = []
    for layer in range(n_layers):
        n = draw(st.integers(2, 15))
        for unit in range(n):
            rows.append({
                "checkpoint": "c", "layer": f"l{layer}", "unit": unit,
                "mature": draw(st.booleans()) or unit < 2, "age": math.nan, "reference": 0.0,
                "u1": draw(st.floats(0, 10)), "u2": draw(st.integers(0, 3)) * 1.0,
                "shock_l1": draw(st.floats(0, 5)), "shock_kl": draw(st.floats(0, 1)),
            })
    q = draw(st.sampled_from([0.05, 0.2, 0.5, 1.0]))
    return pd.DataFrame(rows), q


@settings(max_examples=40, deadline=None)
@given(unit_tables())
def test_oracle_shock_at_q_is_a_floor_and_its_spearman_is_one(table) -> None:
    units, q = table
    summary = checkpoint_summary(units, ["u1", "u2", "oracle"], METRICS, q)
    pooled = summary[summary["scope"] == "ALL"].set_index(["utility", "metric"])
    for m in METRICS:
        oracle = pooled.loc[("oracle", m)]
        for u in ("u1", "u2"):
            assert oracle["shock_at_q"] <= pooled.loc[(u, m), "shock_at_q"] + 1e-12
            assert pooled.loc[(u, m), "gap"] >= -1e-12
        shocks = units.loc[units["mature"], f"shock_{m}"].to_numpy()
        if np.all(shocks == shocks[0]):
            assert math.isnan(oracle["spearman"])
        else:
            assert oracle["spearman"] == 1.0
