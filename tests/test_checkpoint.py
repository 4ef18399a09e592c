"""Checkpoint directories: round trip, determinism, and refusal of unsafe or broken input."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from resetassay.checkpoint import (
    MANIFEST,
    STATE,
    WEIGHTS,
    find_checkpoints,
    import_factory,
    load_checkpoint,
    read_tensors,
    save_checkpoint,
)
from resetassay.data import DataSpec
from resetassay.errors import BadInputError
from resetassay.models import create_model

MLP_KWARGS = {"in_features": 6, "widths": [5, 4], "n_classes": 3}
CNN_KWARGS = {"in_channels": 1, "widths": [3, 4], "n_classes": 2}


def _save_mlp(directory: Path, **extra) -> tuple[torch.nn.Module, dict]:
    model = create_model("mlp", **MLP_KWARGS)
    state = {"layers.0.act.age": torch.arange(5, dtype=torch.int64),
             "layers.0.act.reference": torch.linspace(-1.0, 1.0, 5)}
    save_checkpoint(directory, model, "resetassay.models:mlp", MLP_KWARGS, state=state,
                    step={"task": 3}, data=DataSpec(task=3, permutation_seed=7), **extra)
    return model, state


def _rewrite_manifest(directory: Path, edit) -> None:
    path = directory / MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_save_load_round_trip_keeps_weights_state_and_info(tmp_path):
    model, state = _save_mlp(tmp_path / "ck")
    ckpt = load_checkpoint(tmp_path / "ck")
    assert not ckpt.model.training
    assert all(not m.training for m in ckpt.model.modules())
    want, got = model.state_dict(), ckpt.model.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    assert ckpt.state.keys() == state.keys()
    for k in state:
        assert ckpt.state[k].dtype == state[k].dtype and torch.equal(ckpt.state[k], state[k])
    assert ckpt.info.factory == "resetassay.models:mlp"
    assert ckpt.info.kwargs == MLP_KWARGS
    assert ckpt.info.step == {"task": 3}
    assert ckpt.info.data == DataSpec(task=3, permutation_seed=7)
    assert ckpt.info.family == "mlp-relu"
    x = torch.randn(2, 6)
    torch.testing.assert_close(ckpt.model(x), model.eval()(x), atol=0, rtol=0)


def test_round_trip_keeps_batchnorm_buffers_and_loads_in_eval_mode(tmp_path):
    model = create_model("cnn", **CNN_KWARGS).train()
    model(torch.randn(4, 1, 6, 6))  # move the running statistics off their init
    save_checkpoint(tmp_path / "ck", model, "resetassay.models:cnn", CNN_KWARGS)
    ckpt = load_checkpoint(tmp_path / "ck")
    assert not ckpt.model.training and ckpt.state == {}
    got = ckpt.model.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, got[k]), k
    assert int(got["blocks.0.bn.num_batches_tracked"]) == 1


def test_saving_twice_gives_byte_identical_files(tmp_path):
    model = create_model("mlp", **MLP_KWARGS)
    state = {"layers.1.act.age": torch.arange(4)}
    for d in ("one", "two"):
        save_checkpoint(tmp_path / d, model, "resetassay.models:mlp", MLP_KWARGS, state=state,
                        step={"task": 1}, meta={"seed": 0})
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted([MANIFEST, WEIGHTS, STATE])
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


@pytest.mark.parametrize("factory", ["os:system", "resetassay.models:create_model",
                                     "evil_zoo:factory", "resetassay.models"])
def test_manifest_naming_a_factory_outside_the_zoo_is_refused(tmp_path, monkeypatch, factory):
    called = []
    evil = types.ModuleType("evil_zoo")
    evil.factory = lambda **kw: called.append(kw) or create_model("mlp", **kw)
    monkeypatch.setitem(sys.modules, "evil_zoo", evil)
    _save_mlp(tmp_path / "ck")
    _rewrite_manifest(tmp_path / "ck", lambda m: m["model"].__setitem__("factory", factory))
    with pytest.raises(BadInputError) as err:
        load_checkpoint(tmp_path / "ck")
    assert str(tmp_path / "ck" / MANIFEST) in str(err.value)
    assert "not in the resetassay zoo" in str(err.value)
    assert called == []


def test_malformed_manifest_json_is_refused(tmp_path):
    _save_mlp(tmp_path / "ck")
    (tmp_path / "ck" / MANIFEST).write_text('{"format": "resetassay.checkpoint/1", ')
    with pytest.raises(BadInputError, match="malformed JSON"):
        load_checkpoint(tmp_path / "ck")


@pytest.mark.parametrize("fmt", ["resetassay.checkpoint/2", None, 1])
def test_unknown_format_version_is_refused(tmp_path, fmt):
    _save_mlp(tmp_path / "ck")
    _rewrite_manifest(tmp_path / "ck", lambda m: m.__setitem__("format", fmt))
    with pytest.raises(BadInputError, match="is not 'resetassay.checkpoint/1'"):
        load_checkpoint(tmp_path / "ck")


def test_manifest_that_is_not_an_object_is_refused(tmp_path):
    _save_mlp(tmp_path / "ck")
    (tmp_path / "ck" / MANIFEST).write_text("[1, 2]")
    with pytest.raises(BadInputError, match="format"):
        load_checkpoint(tmp_path / "ck")


def test_missing_manifest_is_refused(tmp_path):
    _save_mlp(tmp_path / "ck")
    (tmp_path / "ck" / MANIFEST).unlink()
    with pytest.raises(BadInputError, match="manifest"):
        load_checkpoint(tmp_path / "ck")


@pytest.mark.parametrize("keep", [0.5, 0.01])
def test_truncated_safetensors_is_refused(tmp_path, keep):
    _save_mlp(tmp_path / "ck")
    weights = tmp_path / "ck" / WEIGHTS
    raw = weights.read_bytes()
    weights.write_bytes(raw[: max(1, int(len(raw) * keep))])
    with pytest.raises(BadInputError, match="unreadable safetensors"):
        load_checkpoint(tmp_path / "ck")


def test_weights_of_the_wrong_shape_are_refused(tmp_path):
    _save_mlp(tmp_path / "ck")
    _rewrite_manifest(tmp_path / "ck", lambda m: m["model"]["kwargs"].__setitem__("widths", [7, 4]))
    with pytest.raises(BadInputError, match=r"layers\.0\.linear\.weight"):
        load_checkpoint(tmp_path / "ck")


def test_bad_factory_kwargs_are_refused(tmp_path):
    _save_mlp(tmp_path / "ck")
    _rewrite_manifest(tmp_path / "ck", lambda m: m["model"]["kwargs"].__setitem__("depth", 3))
    with pytest.raises(BadInputError, match="bad model kwargs"):
        load_checkpoint(tmp_path / "ck")


def test_extra_weights_in_a_checkpoint_directory_are_refused(tmp_path):
    model = create_model("mlp", **MLP_KWARGS)
    small = {"in_features": 6, "widths": [5], "n_classes": 3}
    save_checkpoint(tmp_path / "ck", model, "resetassay.models:mlp", MLP_KWARGS)
    _rewrite_manifest(tmp_path / "ck", lambda m: m["model"].__setitem__("kwargs", small))
    with pytest.raises(BadInputError, match=r"weights the model lacks: layers\.1\."):
        load_checkpoint(tmp_path / "ck")


# --- .pt files: no code may run -------------------------------------------------------------

SIDE_EFFECT = {"ran": False}


def _payload(path: str) -> None:
    SIDE_EFFECT["ran"] = True
    Path(path).write_text("code ran")


class Evil:
    """Unpickling this calls _payload: the attack `weights_only=True` must refuse."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (_payload, (self.path,))


def test_pt_file_holding_a_pickled_object_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "x": Evil(str(marker))}, path)
    with pytest.raises(BadInputError, match="refused"):
        read_tensors(path)
    with pytest.raises(BadInputError, match="refused"):
        load_checkpoint(path, model="resetassay.models:mlp", model_kwargs=MLP_KWARGS)
    assert not marker.exists() and SIDE_EFFECT["ran"] is False
    # control: the payload is live — an unsafe load does run it
    torch.load(path, weights_only=False)
    assert marker.exists() and SIDE_EFFECT["ran"] is True
    SIDE_EFFECT["ran"] = False


def test_pt_file_not_holding_tensors_is_refused(tmp_path):
    path = tmp_path / "numbers.pt"
    torch.save({"a": 1, "b": [2, 3]}, path)
    with pytest.raises(BadInputError, match="dict of tensors"):
        read_tensors(path)


@pytest.mark.parametrize("wrap", [None, "state_dict", "model_state_dict"])
def test_plain_state_dict_loads_with_a_named_factory(tmp_path, wrap):
    model = create_model("mlp", **MLP_KWARGS)
    sd = model.state_dict()
    path = tmp_path / "weights.pt"
    torch.save({wrap: sd, "epoch": 3} if wrap else sd, path)
    ckpt = load_checkpoint(path, model="resetassay.models:mlp", model_kwargs=MLP_KWARGS)
    assert not ckpt.model.training
    for k, v in sd.items():
        assert torch.equal(ckpt.model.state_dict()[k], v), k
    assert ckpt.info.factory == "resetassay.models:mlp"


def test_plain_state_dict_with_extra_keys_warns_and_loads(tmp_path):
    model = create_model("mlp", **MLP_KWARGS)
    sd = {**model.state_dict(), "optimizer_step": torch.tensor(5.0)}
    path = tmp_path / "weights.pt"
    torch.save(sd, path)
    with pytest.warns(UserWarning, match="optimizer_step"):
        ckpt = load_checkpoint(path, model="resetassay.models:mlp", model_kwargs=MLP_KWARGS)
    assert torch.equal(ckpt.model.head.weight, model.head.weight)


def test_plain_state_dict_missing_keys_is_refused(tmp_path):
    sd = create_model("mlp", **MLP_KWARGS).state_dict()
    del sd["head.bias"]
    path = tmp_path / "weights.pt"
    torch.save(sd, path)
    with pytest.raises(BadInputError, match="head.bias"):
        load_checkpoint(path, model="resetassay.models:mlp", model_kwargs=MLP_KWARGS)


def test_plain_state_dict_without_model_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(create_model("mlp", **MLP_KWARGS).state_dict(), path)
    with pytest.raises(BadInputError, match="--model"):
        load_checkpoint(path)


@pytest.mark.parametrize("spec, message", [
    ("resetassay.no_such_module:mlp", "cannot import"),
    ("resetassay.models:no_such_factory", "no attribute"),
    ("resetassay.models", "expected package.module:factory"),
    (":mlp", "expected package.module:factory"),
])
def test_model_option_naming_a_missing_module_or_attribute_is_refused(spec, message):
    with pytest.raises(BadInputError, match=message):
        import_factory(spec)


def test_import_factory_finds_a_real_factory():
    from resetassay.models import mlp
    assert import_factory("resetassay.models:mlp") is mlp


# --- find_checkpoints -----------------------------------------------------------------------


def test_find_checkpoints_searches_recursively_and_sorts(tmp_path):
    root = tmp_path / "runs"
    for sub in ("b/task5", "a/task0", "a/deep/er/task9"):
        _save_mlp(root / sub)
    (root / "notes").mkdir()
    found = find_checkpoints([root])
    assert [p for p, _ in found] == sorted([root / "a/task0", root / "a/deep/er/task9",
                                            root / "b/task5"])
    assert [name for _, name in found] == [str(Path("runs") / p.relative_to(root))
                                           for p, _ in found]


def test_find_checkpoints_with_model_also_finds_plain_state_dicts(tmp_path):
    root = tmp_path / "runs"
    _save_mlp(root / "ck")
    (root / "foreign").mkdir()
    torch.save({"w": torch.zeros(1)}, root / "foreign" / "net.pt")
    assert [p for p, _ in find_checkpoints([root])] == [root / "ck"]
    found = {p for p, _ in find_checkpoints([root], foreign_ok=True)}
    assert found == {root / "ck", root / "foreign" / "net.pt"}
    with pytest.raises(BadInputError, match="--model"):
        find_checkpoints([root / "foreign" / "net.pt"])
    assert find_checkpoints([root / "foreign" / "net.pt"], foreign_ok=True) == [
        (root / "foreign" / "net.pt", "net.pt")]


def test_find_checkpoints_errors_on_missing_path_and_empty_dir(tmp_path):
    with pytest.raises(BadInputError, match="no such file"):
        find_checkpoints([tmp_path / "nope"])
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(BadInputError, match="no checkpoint found"):
        find_checkpoints([tmp_path / "empty"])
