"""Which data (resetassay/data/spec.py, SPEC S1, S6): `DataSpec` checks its fields wherever it is made (a
manifest, Python, the command line) and `DataChoice` decides between a checkpoint's data record and the flags.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.data import one_line_error as _one_line_error
from helpers.paths import FIXTURES

from resetassay.data import DataChoice, DataSpec, data_spec
from resetassay.errors import BadInputError

MNIST_5 = DataSpec(source="mnist", task=5, permutation_seed=1, data_dir="/old")


@pytest.mark.parametrize(("choice", "resolved", "warning"), [
    (DataChoice(), None, ""),  # the record as it is
    (DataChoice(data_dir="/new"), DataSpec(source="mnist", task=5, permutation_seed=1, data_dir="/new"), ""),
    (DataChoice(DataSpec(source="mnist", data_dir="/new"), "/new"),  # --data mnist --data-dir /new: record wins
     DataSpec(source="mnist", task=5, permutation_seed=1, data_dir="/new"), ""),
    (DataChoice(DataSpec(source="mnist", data_dir="/old"), "/old", task=5), None, ""),  # asks what it records
    (DataChoice(DataSpec(source="mnist", data_dir="/new"), "/new", task=0),
     DataSpec(source="mnist", task=0, permutation_seed=1, data_dir="/new"), "`task` 0 replaces its recorded task 5"),
    (DataChoice(permutation_seed=3), DataSpec(source="mnist", task=5, permutation_seed=3, data_dir="/old"),
     "`permutation_seed` 3 replaces its recorded permutation seed 1"),
    (DataChoice(DataSpec(source="fashion-mnist", data_dir="/f"), "/f"),
     DataSpec(source="fashion-mnist", task=5, permutation_seed=1, data_dir="/f"),
     "`data` permuted-fashion-mnist replaces its recorded permuted-mnist"),
    (DataChoice(DataSpec(layout="image"), task=2), DataSpec(layout="image", task=2, permutation_seed=1),
     "`data` permuted-digits-image replaces its recorded permuted-mnist; `task` 2 replaces its recorded task 5"),
])
def test_a_checkpoints_data_record_wins_except_for_what_is_asked(choice, resolved, warning):
    assert choice.resolve(MNIST_5) == (resolved, warning)


def test_own_data_replaces_a_record_with_a_warning_and_refuses_task_flags(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros((4, 2), dtype=np.float32), y=np.arange(4))
    own = data_spec(str(path))
    assert DataChoice(own).resolve(None) == (own, "")
    assert DataChoice(DataSpec(task=3)).resolve(None) == (DataSpec(task=3), "")  # records none: --data as given
    assert DataChoice(own).resolve(own) == (None, "")
    assert DataChoice(own).resolve(MNIST_5) == (own, "`data` data.npz replaces its recorded data (mnist task 5)")
    assert DataChoice.replacing(own) == DataChoice(own)
    with pytest.raises(BadInputError, match=r"^`task` applies to permuted data \(digits, mnist, fashion-mnist, "
                                            r"grammar\), not data.npz; drop it$"):
        DataChoice(own, task=1)
    with pytest.raises(BadInputError, match="^`permutation_seed` applies to permuted data"):
        DataChoice(permutation_seed=1).resolve(own)


def test_a_manifest_cannot_record_a_factory():
    _one_line_error(lambda: DataSpec.from_dict({"source": "factory", "factory": "os:getcwd"}), "never runs code")
    _one_line_error(lambda: DataSpec.from_dict({**DataSpec().to_dict(), "factory": "os:getcwd"}), "never runs code")


@pytest.mark.parametrize("kwargs, needle", [
    ({"source": "file"}, "data.path is missing"),
    ({"path": "x.npz"}, "data.path applies only to source 'file' or 'images'"),
    ({"source": "file", "path": "x.npz", "image_size": 3}, "data.image_size applies only to source 'images'"),
    ({"source": "images", "path": "d", "mean": (0.5, 0.5, 0.5)}, "give both or neither"),
    ({"source": "images", "path": "d", "mean": (0.5,), "std": (1.0,)}, "3 values"),
    ({"source": "images", "path": "d", "image_size": 0}, "data.image_size must be an integer >= 1"),
    ({"source": "images", "path": "d", "mean": (0, 0, 0), "std": (1, 0, 1)}, "data.std must be"),
    ({"source": "factory"}, "data.factory is missing"),
    ({"source": "cifar"}, "your own data: 'file', 'images' or 'factory'"),
])
def test_user_data_fields_are_checked(kwargs, needle):
    _one_line_error(lambda: DataSpec(**kwargs), needle)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"holdout_fraction": 5}, "data.holdout_fraction must be a number in (0, 1), got 5"),
    ({"task": 1.0}, "data.task must be an integer >= 0, got 1.0"),
    ({"source": "cifar"}, "data.source must be 'digits' or 'mnist' or 'fashion-mnist' or 'grammar', got 'cifar'"),
    ({"data_dir": Path("x")}, "data.data_dir must be a string or null"),
])
def test_a_data_spec_checks_its_values_wherever_it_is_made(kwargs, needle):
    with pytest.raises(BadInputError) as err:
        DataSpec(**kwargs)
    assert str(err.value).startswith(needle)


def test_a_bad_data_value_on_the_command_line_exits_2_naming_it(tmp_path):
    from typer.testing import CliRunner

    from resetassay.cli import app
    result = CliRunner().invoke(app, ["run", str(FIXTURES / "relu_mlp"), "--out", str(tmp_path), "--data", "digits",
                                      "--permutation-seed", "-1", "--quiet"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --permutation-seed -1: must be >= 0")
