"""`--data pkg.mod:factory` (resetassay/data/factories.py, SPEC S1): tensors, a dataset, a loader or a dict from
the user's function, split as the built-in data is; bad factories are one-line errors.
"""

from __future__ import annotations

import pytest
import torch
from helpers.data import one_line_error as _one_line_error

from resetassay.data import assay_data, data_spec, split_calibration_probe, task_arrays
from resetassay.errors import BadInputError

FACTORY = '''
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

X = torch.arange(30.0).reshape(30, 1).repeat(1, 4)
Y = torch.arange(30) % 5
CALLS = []

def tensors(scale=1.0):
    return X * scale, Y

class Items(Dataset):
    def __len__(self):
        return 30
    def __getitem__(self, i):
        CALLS.append(i)
        return X[i], int(Y[i])

def dataset():
    return Items()

def loader(shuffle=False):
    return DataLoader(TensorDataset(X, Y), batch_size=7, shuffle=shuffle)

def nothing():
    return 3

class DictItems(Dataset):
    def __len__(self):
        return 30
    def __getitem__(self, i):
        return {"pixel_values": X[i], "labels": int(Y[i])}

def dict_dataset():
    return DictItems()

def dict_loader():
    return DataLoader(DictItems(), batch_size=7)

def bad_dicts():
    return DataLoader([{"img_embed": X[i], "cls": Y[i]} for i in range(30)], batch_size=7)

def endless():
    while True:
        yield X[:5], Y[:5]

def as_dict():
    return {"pixel_values": X, "labels": Y}

def dict_of_other_names():
    return {"a": X, "b": Y}
'''


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    import importlib
    import sys

    name = f"user_data_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module(name)
    sys.modules.pop(name, None)


@pytest.mark.parametrize("kind", ["tensors", "dataset", "loader", "dict_dataset", "dict_loader"])
def test_a_factory_returning_tensors_a_dataset_or_a_loader(factory_module, kind):
    name = f"{factory_module.__name__}:{kind}"
    spec = data_spec(name)
    got = assay_data(spec, 6, 7, seed=5)
    ids_c, ids_p = got.calib_x[:, 0].long(), got.probe_x[:, 0].long()
    assert not set(ids_c.tolist()) & set(ids_p.tolist()) and torch.equal(got.probe_y, ids_p % 5)
    ref = split_calibration_probe(factory_module.X, factory_module.Y, 6, 7, seed=5)
    assert torch.equal(ref.calib_x, got.calib_x) and torch.equal(ref.probe_y, got.probe_y)
    if kind == "dataset":  # fetched by index: only the chosen items
        assert len(factory_module.CALLS) == 13
    assert spec.to_dict() == {"source": "factory", "factory": name, "factory_kwargs": None}


def test_factory_kwargs_and_bad_factories(factory_module):
    mod = factory_module.__name__
    x, _ = task_arrays(data_spec(f"{mod}:tensors", kwargs={"scale": 2.0}), "holdout")
    assert torch.equal(x, factory_module.X * 2)
    _one_line_error(lambda: data_spec(f"{mod}:loader", kwargs={"shuffle": True}), "shuffles")
    assert _one_line_error(lambda: data_spec(f"{mod}:nothing"), "got int").field == "data"
    _one_line_error(lambda: data_spec(f"{mod}:missing"), "no attribute")
    _one_line_error(lambda: data_spec("no_such_module_xyz:make"), "cannot import")
    _one_line_error(lambda: data_spec(f"{mod}:tensors", kwargs={"bad": 1}), "the factory failed")
    _one_line_error(lambda: data_spec(f"{mod}:tensors", image_size=3), "`image_size`")


def test_dict_batches_without_known_keys_are_a_one_line_error(factory_module):
    with pytest.raises(BadInputError, match=r"a batch dict needs inputs \(pixel_values.*it has img_embed, cls$") as err:
        data_spec(f"{factory_module.__name__}:bad_dicts")
    assert err.value.field == "data"  # the whole command is at fault, not one checkpoint


def test_a_factory_is_called_again_on_every_use_outside_one_run(factory_module):
    """A notebook that changes what its factory returns gets the new data (the factory's result was cached by name
    and kwargs across calls); within one run (`factories_called_once`) it is called once for all checkpoints."""
    spec = data_spec(f"{factory_module.__name__}:tensors")
    before, _ = task_arrays(spec, "holdout")
    factory_module.X = factory_module.X + 100
    after, _ = task_arrays(spec, "holdout")
    assert torch.equal(after, before + 100)
    from resetassay.data import factories_called_once

    with factories_called_once():
        first, _ = task_arrays(spec, "holdout")
        factory_module.X = factory_module.X + 100
        again, _ = task_arrays(spec, "holdout")
    assert torch.equal(first, again) and torch.equal(first, after)


def test_a_factory_returning_a_dict_or_an_endless_generator_is_read_or_refused(factory_module, monkeypatch):
    """A dict was iterated by its keys and an endless generator hung forever (issue 24): a dict of inputs and labels
    is one batch, another dict a one-line error, an endless generator refused once past the cap."""
    import resetassay.data.factories as data

    mod = factory_module.__name__
    x, y = task_arrays(data_spec(f"{mod}:as_dict"), "holdout")
    assert torch.equal(x, factory_module.X) and torch.equal(y, factory_module.Y)
    _one_line_error(lambda: data_spec(f"{mod}:dict_of_other_names"), "a batch dict needs inputs")
    monkeypatch.setattr(data, "MAX_ITERATED_EXAMPLES", 1000)
    _one_line_error(lambda: data_spec(f"{mod}:endless"), "yielded more than 1,000 examples without ending")
