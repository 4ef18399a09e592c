"""`--data FILE` (resetassay/data/tensor_files.py, SPEC S1, S9): a tensor file of inputs and labels, or of token
ids, gives the same seeded split as the built-in data; a bad file is a one-line error naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.data import numbered_examples as _xy
from helpers.data import one_line_error as _one_line_error
from helpers.data import save_examples as _save

from resetassay.data import DataSpec, assay_data, data_spec, example_inputs, split_calibration_probe, task_arrays
from resetassay.data.grammar import LENGTH, grammar_sequences
from resetassay.discovery.sequences import PAD, next_token_targets
from resetassay.errors import BadInputError


@pytest.mark.parametrize("name, xkey, ykey", [("d.safetensors", "x", "y"), ("d.npz", "inputs", "labels"),
                                              ("d.pt", "features", "targets")])
def test_a_tensor_file_gives_a_seeded_disjoint_split(tmp_path, name, xkey, ykey):
    x, y = _xy()
    spec = data_spec(str(_save(tmp_path / name, x, y, xkey, ykey)))
    assert spec.source == "file" and Path(spec.path).is_absolute() and len(spec.sha256) == 64
    got = assay_data(spec, 10, 12, seed=3)
    ids_c, ids_p = got.calib_x[:, 0].long(), got.probe_x[:, 0].long()
    assert len(ids_c) == 10 and len(ids_p) == 12 and not set(ids_c.tolist()) & set(ids_p.tolist())
    assert torch.equal(got.calib_y, ids_c % 3) and torch.equal(got.probe_y, ids_p % 3)
    assert got.calib_x.dtype == torch.float32 and got.calib_y.dtype == torch.int64
    same = split_calibration_probe(x, y, 10, 12, seed=3)  # the same split as the built-in data
    assert torch.equal(same.calib_x, got.calib_x) and torch.equal(same.probe_y, got.probe_y)
    assert got.provenance["split_seed"] == 3 and got.provenance["available"] == 40
    hx, hy = task_arrays(spec, "holdout")  # all of it, never permuted
    assert torch.equal(hx, x) and torch.equal(hy, y)
    assert torch.equal(example_inputs(spec, 2), x[:2])
    assert DataSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec  # a manifest can record it


def test_a_probe_file_holds_the_probe_set(tmp_path):
    x, y = _xy()
    spec = data_spec(str(_save(tmp_path / "c.npz", x[:20], y[:20])), probe=str(_save(tmp_path / "p.pt", x[20:],
                                                                                       y[20:])))
    got = assay_data(spec, 8, 5, seed=1)
    assert set(got.calib_x[:, 0].long().tolist()) <= set(range(20))
    assert set(got.probe_x[:, 0].long().tolist()) <= set(range(20, 40))
    assert (len(got.calib_y), len(got.probe_y)) == (8, 5)
    assert torch.equal(assay_data(spec, 8, 5, seed=1).probe_x, got.probe_x)
    with pytest.warns(UserWarning, match="shrinks to 20"):
        assert len(assay_data(spec).calib_y) == 20
    with pytest.raises(BadInputError, match="`probe_size` 21 exceeds the 20"):
        assay_data(spec, 5, 21)


@pytest.mark.parametrize("x, y, needle", [
    (torch.zeros(4, 2), torch.zeros(3, dtype=torch.int64), "4 inputs but 3 labels"),
    (torch.zeros(4, 2), torch.zeros(4), "labels must be integers"),
    (torch.zeros(4, 2), torch.tensor([0, 1, -1, 2]), "labels must be >= 0"),
    (torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64), "no examples"),
    (torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), torch.tensor([0, 1]), "NaN or Inf (example 0)"),
    # finite float64 beyond float32: was called "NaN or Inf" (issue 24)
    (torch.tensor([[0.0, 1.0], [1e300, 2.0]], dtype=torch.float64), torch.tensor([0, 1]),
     "inputs overflow float32 (example 1 holds 1e+300"),
])
def test_bad_tensor_files_are_one_line_errors_naming_the_file(tmp_path, x, y, needle):
    path = _save(tmp_path / "bad.npz", x, y)
    err = _one_line_error(lambda: data_spec(str(path)), str(path), needle)
    assert err.field == "data"


def test_tensor_file_keys_not_found_are_listed(tmp_path):
    path = _save(tmp_path / "k.safetensors", torch.zeros(3, 2), torch.zeros(3, dtype=torch.int64), "pixels", "y")
    _one_line_error(lambda: data_spec(str(path)), "no inputs", "x, inputs, images, data, features",
                    "it has keys pixels, y")


def test_unreadable_and_unsafe_tensor_files_are_refused(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    _one_line_error(lambda: data_spec(str(tmp_path / "junk.pt")), "junk.pt", "cannot read")
    torch.save({"x": torch.zeros(2, 2), "y": torch.zeros(2, dtype=torch.int64), "f": Path("x")},
               tmp_path / "obj.pt")  # an object: weights_only refuses to unpickle it
    _one_line_error(lambda: data_spec(str(tmp_path / "obj.pt")), "obj.pt", "cannot read")
    (tmp_path / "notes.txt").write_text("x")
    _one_line_error(lambda: data_spec(str(tmp_path / "notes.txt")), "`data`", "notes.txt: not a tensor file (",
                    "an image folder")  # what it is not, and what `data` may be
    _one_line_error(lambda: data_spec(str(tmp_path / "missing.npz")), "`data`", "no such file or folder; use digits")
    spec = DataSpec(source="file", path=str(tmp_path))
    _one_line_error(lambda: task_arrays(spec, "holdout"), str(tmp_path), "not a file")


def test_a_changed_file_is_caught_by_its_recorded_sha256(tmp_path):
    x, y = _xy()
    path = _save(tmp_path / "d.npz", x, y)
    spec = data_spec(str(path))
    _save(path, x + 1, y)
    _one_line_error(lambda: task_arrays(spec, "holdout"), "content changed")


def test_a_tensor_file_of_input_ids_is_token_data_with_next_token_targets(tmp_path):
    from safetensors.torch import save_file

    from resetassay.data import assay_data, data_spec
    from resetassay.errors import BadInputError

    ids, _ = grammar_sequences(0, 0, "holdout", 40)
    save_file({"input_ids": ids.to(torch.int32), "attention_mask": torch.ones_like(ids)},
              tmp_path / "tokens.safetensors")
    split = assay_data(data_spec(str(tmp_path / "tokens.safetensors")), calib_size=20, probe_size=20)
    assert split.calib_x.dtype == torch.int64 and split.calib_x.shape == (20, LENGTH)
    assert torch.equal(split.calib_y, next_token_targets(split.calib_x))
    labels = torch.arange(40) % 3
    save_file({"input_ids": ids, "labels": labels}, tmp_path / "classify.safetensors")
    split = assay_data(data_spec(str(tmp_path / "classify.safetensors")), calib_size=20, probe_size=20)
    assert split.probe_y.shape == (20,) and set(split.probe_y.tolist()) <= {0, 1, 2}
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0
    save_file({"input_ids": ids, "attention_mask": mask}, tmp_path / "padded.safetensors")
    split = assay_data(data_spec(str(tmp_path / "padded.safetensors")), calib_size=39, probe_size=1)
    first = split.calib_x[0] if len(split.calib_x) and split.calib_x[0, -1] < 0 else split.probe_x[0]
    assert first[-3:].tolist() == [PAD] * 3 and (first[:-3] >= 0).all()
    save_file({"input_ids": ids.float()}, tmp_path / "floats.safetensors")
    with pytest.raises(BadInputError, match="input_ids must be whole numbers"):
        data_spec(str(tmp_path / "floats.safetensors"))
