"""Fuzzing `load_checkpoint` (README "What happens when..."): whatever a checkpoint's manifest and state file
hold, loading returns a checkpoint or raises a one-line `BadInputError` naming the file; never another
exception. Manifests get random JSON in any field (wrong types, random nesting, extra keys) or random bytes;
state files random keys, shapes and dtypes, or random bytes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import torch
from helpers.paths import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from resetassay.errors import BadInputError
from resetassay.io.checkpoint import load_checkpoint
from resetassay.names import MANIFEST, STATE, WEIGHTS

FIXTURE = FIXTURES / "relu_mlp" / "task2"
VALID = json.loads((FIXTURE / MANIFEST).read_text())
FIELDS = [(), ("model",), ("model", "kwargs"), ("step",), ("data",), ("meta",)]  # objects whose keys get fuzzed
KNOWN_KEYS = ["format", "model", "factory", "kwargs", "in_features", "widths", "n_classes", "activation",
              "layer_norm", "step", "task", "epoch", "data", "source", "layout", "permutation_seed", "split_seed",
              "holdout_fraction", "data_dir", "unit_layers", "meta", "family", "maturity", "seed"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int8,
          torch.uint8, torch.bool, torch.complex64, torch.float8_e4m3fn, torch.uint16]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-3, 70) | st.floats() | st.text(max_size=8)
    | st.sampled_from(["relu", "silu", "digits", "mnist", "image", "resetassay.models:mlp", "resetassay.checkpoint/1"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=5),
                                                                inner, max_size=4),
    max_leaves=12,
)


@st.composite
def manifests(draw: st.DrawFn) -> bytes:
    """The fixture's manifest as it is (the state file is then what gets tested), or with random fields replaced,
    added or removed; or random JSON; or deeply nested JSON; or random bytes."""
    kind = draw(st.sampled_from(["valid", "valid", "edited", "edited", "edited", "json", "deep", "bytes"]))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "deep":
        depth = draw(st.integers(1, 5000))
        return ('{"format": "resetassay.checkpoint/1", "meta": ' + "[" * depth + "]" * depth + "}").encode()
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    manifest = json.loads(json.dumps(VALID))
    for _ in range(draw(st.integers(1, 3)) if kind == "edited" else 0):
        at = manifest
        for key in draw(st.sampled_from(FIELDS)):
            at = at.get(key) if isinstance(at, dict) else None
        if not isinstance(at, dict):
            continue
        key = draw(st.sampled_from(sorted(at) or KNOWN_KEYS) | st.sampled_from(KNOWN_KEYS) | st.text(max_size=5))
        if draw(st.integers(0, 4)) == 0:
            at.pop(key, None)
        else:
            at[key] = draw(json_values)
    return json.dumps(manifest).encode()


@st.composite
def states(draw: st.DrawFn) -> bytes | None:
    """No state file; a safetensors file of random keys, shapes, dtypes and values; or random bytes."""
    kind = draw(st.sampled_from(["none", "tensors", "tensors", "bytes"]))
    if kind == "none":
        return None
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    layer = st.sampled_from(["layers.0.act", "layers.2.act", "head", ""]) | st.text(max_size=6)
    keys = st.builds(lambda a, b: f"{a}.{b}" if b else a, layer,
                     st.sampled_from(["age", "reference", "utility", ""]) | st.text(max_size=4))
    tensors = {}
    for key in draw(st.lists(keys, max_size=4, unique=True)):
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        n = torch.Size(shape).numel()
        values = draw(st.lists(st.floats(width=32) | st.integers(-2, 1000).map(float), min_size=n, max_size=n))
        tensors[key] = torch.tensor(values, dtype=torch.float64).reshape(shape).to(draw(st.sampled_from(DTYPES)))
    return save(tensors)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifest=manifests(), state=states())
def test_load_checkpoint_returns_or_raises_a_one_line_bad_input_error(manifest, state):
    with tempfile.TemporaryDirectory() as tmp:
        ck = Path(tmp) / "ck"
        shutil.copytree(FIXTURE, ck)
        (ck / MANIFEST).write_bytes(manifest)
        if state is not None:
            (ck / STATE).write_bytes(state)
        try:
            ckpt = load_checkpoint(ck)
        except BadInputError as err:
            message = str(err)
            assert "\n" not in message and err.field is None, message
            assert message.startswith((f"{ck / MANIFEST}: ", f"{ck / WEIGHTS}: ", f"{ck / STATE}: ")), message
        else:
            files = [MANIFEST, WEIGHTS] + ([STATE] if state is not None else [])
            assert ckpt.sha256 == {n: hashlib.sha256((ck / n).read_bytes()).hexdigest() for n in files}
