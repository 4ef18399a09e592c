"""The data of one assay (resetassay/data/sources.py, SPEC S1): seeded disjoint calibration/probe sets and their
default sizes, `data_spec` from the command line and the flags that do not apply to a source.

Each source has its own file beside this one: test_permuted.py, test_tensor_files.py, test_images.py,
test_factories.py, test_hf_datasets.py and test_grammar.py; the record of which data, test_spec.py.
"""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from helpers.data import numbered_examples as _xy
from helpers.data import one_line_error as _one_line_error
from helpers.data import save_examples as _save

from resetassay.data import DataSpec, assay_data, data_spec, split_calibration_probe, task_arrays
from resetassay.data.sources import _own_size, split_indices
from resetassay.data.spec import DEFAULT_SIZE
from resetassay.errors import BadInputError


def _ids(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(n)
    return ids.float().unsqueeze(1), ids


def test_calibration_and_probe_are_disjoint_and_seeded():
    x, y = _ids(300)
    a = split_calibration_probe(x, y, calib_size=100, probe_size=120, seed=7)
    calib, probe = set(a.calib_y.tolist()), set(a.probe_y.tolist())
    assert len(calib) == 100 and len(probe) == 120 and not calib & probe
    assert torch.equal(a.calib_x.squeeze(1).long(), a.calib_y)  # x and y stay paired
    b = split_calibration_probe(x, y, calib_size=100, probe_size=120, seed=7)
    assert torch.equal(a.calib_y, b.calib_y) and torch.equal(a.probe_y, b.probe_y)
    c = split_calibration_probe(x, y, calib_size=100, probe_size=120, seed=8)
    assert not torch.equal(a.calib_y, c.calib_y)
    assert a.provenance["split_seed"] == 7
    assert (a.provenance["calib_size"], a.provenance["probe_size"]) == (100, 120)


def test_default_sizes_shrink_with_a_warning_when_data_is_small():
    x, y = _ids(101)
    with pytest.warns(UserWarning, match="101"):
        a = split_calibration_probe(x, y, seed=0)
    assert len(a.calib_y) == len(a.probe_y) == 50
    assert not set(a.calib_y.tolist()) & set(a.probe_y.tolist())


def test_default_sizes_on_digits_holdout_shrink_to_equal_shares():
    x, y = task_arrays(DataSpec(), "holdout")
    with pytest.warns(UserWarning, match="shrink"):
        a = split_calibration_probe(x, y)
    assert len(a.calib_x) == len(a.probe_x) == len(x) // 2
    assert a.provenance["available"] == len(x)


def test_default_sizes_are_2048_when_data_allows():
    x, y = _ids(4100)
    a = split_calibration_probe(x, y)
    assert len(a.calib_y) == len(a.probe_y) == 2048


def test_data_of_exactly_two_default_sets_splits_without_a_warning():
    x, y = _ids(2 * 2048)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = split_calibration_probe(x, y)
    assert len(a.calib_y) == len(a.probe_y) == 2048


def test_a_shrinking_split_warns_at_the_callers_line(tmp_path):
    x, y = _ids(101)
    with pytest.warns(UserWarning, match="shrink") as caught:
        split_calibration_probe(x, y)
    assert caught[0].filename == __file__
    with pytest.warns(UserWarning, match="shrink") as caught:
        assay_data(DataSpec())  # the digits' held-out part: 898 examples
    assert caught[0].filename == __file__
    with pytest.warns(UserWarning, match="shrink") as caught:
        split_indices(101)
    assert caught[0].filename == __file__
    with pytest.warns(UserWarning, match="shrink") as caught:
        assay_data(data_spec(str(_save(tmp_path / "d.npz", *_xy()))))  # a file of your own
    assert caught[0].filename == __file__


def test_seed_0_is_the_default_split():
    assert all(torch.equal(a, b) for a, b in zip(split_indices(300, 10, 20), split_indices(300, 10, 20, seed=0),
                                                 strict=True))


def test_the_default_split_is_seed_0_and_names_its_source_data():
    x, y = _ids(300)
    a, b = split_calibration_probe(x, y, 100, 120), split_calibration_probe(x, y, 100, 120, seed=0, source="data")
    assert torch.equal(a.calib_y, b.calib_y) and torch.equal(a.probe_y, b.probe_y)
    assert a.provenance == {"source": "data", "available": 300, "calib_size": 100, "probe_size": 120,
                            "split_seed": 0}


@pytest.mark.parametrize(("n", "size", "taken"), [(10, 1, 1), (10, 10, 10), (5000, None, DEFAULT_SIZE),
                                                  (DEFAULT_SIZE, None, DEFAULT_SIZE)])
def test_a_set_of_its_own_takes_its_size_else_the_default_without_a_warning(n, size, taken):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _own_size(n, size, "probe_size", "probes.pt") == taken


def test_a_set_of_its_own_smaller_than_the_default_is_taken_whole_with_a_warning():
    with pytest.warns(UserWarning, match=r"^probes.pt has 300 examples: its set shrinks to 300$"):
        assert _own_size(300, None, "probe_size", "probes.pt") == 300


@pytest.mark.parametrize(("size", "message"), [(0, "must be positive"), (-3, "must be positive"),
                                               (11, "11 exceeds the 10 examples of probes.pt; ask for at most 10")])
def test_a_size_a_set_of_its_own_cannot_supply_is_an_error_naming_the_flag(size, message):
    with pytest.raises(BadInputError, match=message) as caught:
        _own_size(10, size, "probe_size", "probes.pt")
    assert caught.value.field == "probe_size"


@pytest.mark.parametrize("calib, probe", [(60, 50), (200, 1), (101, 1)])
def test_explicit_size_the_data_cannot_supply_is_an_error(calib, probe):
    x, y = _ids(101)
    with pytest.raises(BadInputError, match="101"):
        split_calibration_probe(x, y, calib_size=calib, probe_size=probe)


@pytest.mark.parametrize("calib, probe, field", [(0, 5, "calib_size"), (5, -1, "probe_size"), (50, None, "calib_size"),
                                                 (None, 60, "probe_size")])
def test_sizes_that_are_not_positive_or_leave_nothing_are_an_error_naming_the_flag(calib, probe, field):
    x, y = _ids(50)
    with pytest.raises(BadInputError, match="positive|leaves none") as caught:
        split_calibration_probe(x, y, calib_size=calib, probe_size=probe)
    assert caught.value.field == field


def test_one_explicit_size_leaves_the_rest_to_the_other_set():
    """calib_size 60 of 101 examples: the probe set shrinks, with a warning, to the 41 left, disjoint."""
    x, y = _ids(101)
    with pytest.warns(UserWarning, match="shrink to 60 and 41"):
        a = split_calibration_probe(x, y, calib_size=60)
    assert (len(a.calib_y), len(a.probe_y)) == (60, 41) and not set(a.calib_y.tolist()) & set(a.probe_y.tolist())


def test_builtin_names_still_give_the_same_spec_and_dict():
    spec = data_spec("permuted-digits-image", 2, 5)
    assert spec == DataSpec(layout="image", task=2, permutation_seed=5)
    assert data_spec("permuted-digits") == DataSpec()  # task 0, flat, permuted: the defaults
    assert not data_spec("digits").permuted and data_spec("grammar").permuted  # grammar's tasks are its own
    assert list(spec.to_dict()) == ["source", "layout", "task", "permutation_seed", "split_seed",
                                    "holdout_fraction", "data_dir"]
    x, y = task_arrays(DataSpec(), "holdout")
    a, b = assay_data(DataSpec(), 30, 40, seed=2), split_calibration_probe(x, y, 30, 40, seed=2)
    assert torch.equal(a.calib_x, b.calib_x) and a.provenance == {**b.provenance, "source": "digits task 0"}


def test_flags_that_do_not_apply_are_refused(tmp_path):
    x, y = _xy()
    path = str(_save(tmp_path / "d.npz", x, y))
    for call, field in ((lambda: data_spec("digits", probe=path), "probe"),
                        (lambda: data_spec(path, image_size=4), "image_size"),
                        (lambda: data_spec(path, kwargs={}), "data_kwargs"),
                        (lambda: data_spec("digits", kwargs={}), "data_kwargs"),
                        (lambda: data_spec(path, probe=str(tmp_path)), "probe"),
                        (lambda: data_spec("nonsense"), "data")):
        assert _one_line_error(call, f"`{field}`").field == field
    _one_line_error(lambda: task_arrays(data_spec(path), "train"), "for the assay only")


def test_the_provenance_of_a_file_and_of_a_file_with_its_own_probe_set(tmp_path):
    x, y = _xy()
    data, probe = _save(tmp_path / "d.npz", x, y), _save(tmp_path / "p.npz", x[:30], y[:30])
    alone = assay_data(data_spec(str(data)), 20, 20).provenance
    assert alone["source"] == data_spec(str(data)).describe()
    assert not {"calib_available", "probe_available", "probe_source"} & set(alone)
    both = assay_data(data_spec(str(data), probe=str(probe)), 20, 20).provenance
    assert (both["calib_available"], both["probe_available"], both["available"]) == (len(x), 30, len(x) + 30)
    assert alone["split_seed"] == both["split_seed"] == 0  # the default seed, as split_indices'


def test_assay_data_splits_with_seed_0_unless_told(tmp_path):
    x, y = _xy()
    spec = data_spec(str(_save(tmp_path / "d.npz", x, y)), probe=str(_save(tmp_path / "p.npz", x[:30], y[:30])))
    default, zero, one = (assay_data(spec, 20, 20, **seed) for seed in ({}, {"seed": 0}, {"seed": 1}))
    assert torch.equal(default.calib_y, zero.calib_y) and torch.equal(default.probe_y, zero.probe_y)
    assert not torch.equal(default.probe_y, one.probe_y)


def test_an_unreadable_probe_file_is_an_error_about_the_probe_flag(tmp_path):
    x, y = _xy()
    data = _save(tmp_path / "d.npz", x, y)
    probe = tmp_path / "p.npz"
    probe.write_bytes(b"not an npz archive")
    assert _one_line_error(lambda: data_spec(str(data), probe=str(probe)), str(probe)).field == "probe"


def test_a_datasets_folder_without_the_datasets_package_says_how_to_install_it(tmp_path, monkeypatch):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "dataset_info.json").write_text("{}")
    (folder / "state.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(BadInputError, match=r"pip install 'resetassay\[datasets\]'") as caught:
        data_spec(str(folder))
    assert caught.value.field == "data" and "\n" not in str(caught.value)


def test_a_probe_file_is_checked_against_its_own_recorded_digest(tmp_path):
    """With `probe`, the data file and the probe file each carry their sha256: both read back as recorded, and a
    probe file changed since names the probe file."""
    x, y = _xy()
    data, probe = _save(tmp_path / "d.npz", x, y), _save(tmp_path / "p.npz", x + 100, y)
    spec = data_spec(str(data), probe=str(probe))
    got = assay_data(spec, 5, 6)
    assert (got.probe_x >= 100).all() and (got.calib_x < 100).all()
    again = assay_data(spec, 5, 6)  # both files' subsets drawn with the seed: the same examples every time
    assert torch.equal(got.calib_x, again.calib_x) and torch.equal(got.probe_x, again.probe_x)
    _save(probe, x + 200, y)
    _one_line_error(lambda: assay_data(spec, 5, 6), str(probe), "sha256 differs")


def test_sizes_of_files_with_their_own_probe_set_are_checked_against_each_file(tmp_path):
    x, y = _xy()
    spec = data_spec(str(_save(tmp_path / "d.npz", x, y)), probe=str(_save(tmp_path / "p.npz", x[:30], y[:30])))
    for sizes, field, named in (((41, 5), "calib_size", "41 exceeds the 40 examples of d.npz"),
                                ((5, 31), "probe_size", "31 exceeds the 30 examples of p.npz")):
        with pytest.raises(BadInputError, match=named) as caught:
            assay_data(spec, *sizes)
        assert caught.value.field == field
    with pytest.warns(UserWarning) as caught:
        assay_data(spec)
    assert [str(w.message) for w in caught] == ["d.npz has 40 examples: its set shrinks to 40",
                                                "p.npz has 30 examples: its set shrinks to 30"]


def test_a_shrinking_split_of_one_file_names_the_file(tmp_path):
    x, y = _xy()
    with pytest.warns(UserWarning, match="^d.npz has 40 held-out examples: calibration and probe sets shrink to 20"):
        assay_data(data_spec(str(_save(tmp_path / "d.npz", x, y))))
    with pytest.warns(UserWarning, match="^data has 10 held-out examples"):
        split_indices(10)  # the default name


@pytest.mark.parametrize(("n", "sizes", "warns"), [(3000, {"probe_size": 2048}, True),
                                                    (5000, {"calib_size": 100}, False),
                                                    (5000, {"probe_size": 100}, False)])
def test_an_explicit_size_warns_only_when_the_other_set_shrinks(n, sizes, warns):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split_indices(n, **sizes)
    assert [str(w.message) for w in caught] == (
        [f"data has {n} held-out examples: calibration and probe sets shrink to 952 and 2048"] if warns else [])
