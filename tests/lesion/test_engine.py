"""Grouped probe examples (`LesionRequest.groups`, SPEC S4b): one pass of a request whose probe examples are grouped
gives, per lesion, the mean shock over each group's examples, equal to a separate request per group, in every
engine and on every fixture architecture (the transformer's sequences too).

Tolerance: per metric and layer, max error <= 1e-5 x (largest shock) (float32 models: a group's examples are
batched with other groups' in one pass, which rounds its matmuls differently).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers.engines import assert_shocks_close
from helpers.paths import FIXTURES

from resetassay.data import assay_data
from resetassay.discovery.units import unit_layers
from resetassay.io.checkpoint import load_checkpoint
from resetassay.lesion import LesionRequest, joint_shocks_of, unit_shocks_of
from resetassay.lesion.shocks import probe_logits
from resetassay.scoring.reference import unit_references

METRICS = ["l1", "kl"]


def _request(fixture: str, probe: int = 30) -> LesionRequest:
    ckpt = load_checkpoint(FIXTURES / fixture / "task4")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = assay_data(ckpt.info.data, calib_size=64, probe_size=probe, seed=1)
    layers = unit_layers(ckpt.model, data.calib_x[:2])[:2]
    refs = unit_references(ckpt.model, layers, data.calib_x)
    return LesionRequest(ckpt.model, layers, refs, data.probe_x, METRICS, base=probe_logits(ckpt.model, data.probe_x),
                         units={layer.name: torch.arange(min(4, layer.n_units)) for layer in layers})


def _per_group(request: LesionRequest, groups: torch.Tensor, measure) -> dict:
    """`measure` of a separate request per group, stacked as the grouped request's `(..., G)`."""
    parts = []
    for g in range(int(groups.max()) + 1):
        idx = (groups == g).nonzero().flatten()
        parts.append(measure(LesionRequest(request.model, request.layers, request.refs, request.probe_x[idx],
                                           request.metrics, base=request.base[idx], units=request.units,
                                           engine=request.engine)))
    first = parts[0]
    if isinstance(next(iter(first.values())), dict):
        return {m: {name: torch.stack([p[m][name] for p in parts], -1) for name in first[m]} for m in first}
    return {m: torch.stack([p[m] for p in parts], -1) for m in first}


@pytest.fixture(scope="module", params=["relu_mlp", "layernorm_mlp", *(pytest.param(f, marks=pytest.mark.slow)
                                                                      for f in ("cnn", "resnet", "transformer"))])
def grouped(request):
    return _request(request.param)


@pytest.mark.parametrize("engine", ["fast", "plain"])
def test_grouped_unit_shocks_equal_one_request_per_group(grouped, engine):
    groups = torch.arange(len(grouped.probe_x)) % 3  # interleaved: every probe chunk holds every group
    r = LesionRequest(**{**grouped.__dict__, "engine": engine, "groups": groups})
    got = unit_shocks_of(r)
    want = _per_group(r, groups, unit_shocks_of)
    assert all(v.shape == (4, 3) for per_layer in got.values() for v in per_layer.values())
    assert_shocks_close(want, got)


def test_grouped_shocks_across_probe_chunks_and_joint_lesions(grouped):
    """A memory budget of a few rows cuts the probe set into chunks that split the groups; joint lesions too."""
    groups = torch.repeat_interleave(torch.arange(3), torch.tensor([7, 13, len(grouped.probe_x) - 20]))
    r = LesionRequest(**{**grouped.__dict__, "groups": groups, "max_memory": 60_000})
    assert_shocks_close(_per_group(r, groups, unit_shocks_of), unit_shocks_of(r))
    layer = r.layers[0].name
    lesions = [{layer: torch.tensor([0, 1])}, {layer: torch.tensor([2])}]
    want = _per_group(r, groups, lambda sub: joint_shocks_of(sub, lesions))
    got = joint_shocks_of(r, lesions)
    assert got["l1"].shape == (2, 3)
    assert_shocks_close({"x": want}, {"x": got})


@pytest.mark.parametrize(("groups", "needle"), [
    (torch.zeros(5, dtype=torch.long), r"\(30,\) int64"),
    (torch.arange(30).double(), "int64"),
    (torch.arange(30) - 1, ">= 0"),
    (torch.arange(30) * 2, "at least one example"),
])
def test_bad_groups_are_refused(groups, needle):
    r = _request("relu_mlp")
    with pytest.raises(ValueError, match=needle):
        LesionRequest(**{**r.__dict__, "groups": groups})
