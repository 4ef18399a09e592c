"""Checkpoint directories: round trip, determinism, and refusal of unsafe or broken input."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from resetassay.data import DataSpec
from resetassay.errors import BadInputError
from resetassay.io.checkpoint import (
    MANIFEST,
    STATE,
    WEIGHTS,
    check_family,
    family_name,
    find_checkpoints,
    import_factory,
    load_checkpoint,
    read_tensors,
    save_checkpoint,
)
from resetassay.io.rundir import checkpoint_sha256
from resetassay.models import MODELS, create_model

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
    assert ckpt.info.family == "mlp-relu@digits"  # family_name of the model and its data
    x = torch.randn(2, 6)
    torch.testing.assert_close(ckpt.model(x), model.eval()(x), atol=0, rtol=0)


@pytest.mark.parametrize(("data", "utility", "family"), [
    (DataSpec(source="mnist", data_dir="D"), None, "mlp-relu"),
    (DataSpec(source="mnist", data_dir="D"), "contribution", "mlp-relu+cbp-contribution"),
    (DataSpec(source="fashion-mnist", data_dir="D"), None, "mlp-relu@fashion-mnist"),
    (DataSpec(source="fashion-mnist", data_dir="D"), "gxd", "mlp-relu+cbp-gxd@fashion-mnist"),
    (DataSpec(), None, "mlp-relu@digits"),
    (None, None, "mlp-relu"),
])
def test_a_family_is_the_model_and_its_training(data, utility, family):
    """Plain MNIST, Fashion-MNIST and CBP checkpoints of one model fall into different families (README)."""
    assert family_name("mlp", MLP_KWARGS, data, utility) == family
    assert check_family(family) == family


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
    with pytest.raises(BadInputError, match=r"manifest\.json: model\.kwargs do not build resetassay\.models:mlp "
                       r"\(TypeError: .*'depth'"):
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
        read_tensors(path, path.read_bytes())
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
        read_tensors(path, path.read_bytes())


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
    with pytest.raises(BadInputError, match="`model`"):
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
    for sub in ("b/task5", "b/task10", "a/task0", "a/deep/er/task9"):
        _save_mlp(root / sub)
    (root / "notes").mkdir()
    found = find_checkpoints([root])
    assert [p for p, _ in found] == [root / "a/deep/er/task9", root / "a/task0", root / "b/task5",
                                     root / "b/task10"]  # natural order: task5 before task10
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
    with pytest.raises(BadInputError, match="`model`"):
        find_checkpoints([root / "foreign" / "net.pt"])
    assert find_checkpoints([root / "foreign" / "net.pt"], foreign_ok=True) == [
        (root / "foreign" / "net.pt", "net.pt")]


def test_find_checkpoints_errors_on_missing_path_and_empty_dir(tmp_path):
    with pytest.raises(BadInputError, match="no such file"):
        find_checkpoints([tmp_path / "nope"])
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(BadInputError, match="no checkpoint found"):
        find_checkpoints([tmp_path / "empty"])


# --- sha256 of the bytes loaded -------------------------------------------------------------


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_loaded_checkpoint_holds_the_sha256_of_each_file_it_read(tmp_path):
    _save_mlp(tmp_path / "ck")
    ckpt = load_checkpoint(tmp_path / "ck")
    assert ckpt.sha256 == {n: _sha(tmp_path / "ck" / n) for n in (MANIFEST, WEIGHTS, STATE)}
    assert ckpt.sha256 == checkpoint_sha256(tmp_path / "ck", foreign=False)
    foreign = load_checkpoint(tmp_path / "ck", model="resetassay.models:mlp", model_kwargs=MLP_KWARGS)
    assert foreign.sha256 == {WEIGHTS: _sha(tmp_path / "ck" / WEIGHTS)} == checkpoint_sha256(tmp_path / "ck", True)
    torch.save(create_model("mlp", **MLP_KWARGS).state_dict(), tmp_path / "net.pt")
    plain = load_checkpoint(tmp_path / "net.pt", model="resetassay.models:mlp", model_kwargs=MLP_KWARGS)
    assert plain.sha256 == {"net.pt": _sha(tmp_path / "net.pt")} == checkpoint_sha256(tmp_path / "net.pt", True)


def test_a_file_replaced_after_or_while_loading_keeps_the_digest_of_the_bytes_loaded(tmp_path, monkeypatch):
    """Each file is read once: replacing it right after that read changes neither what was loaded nor its hash."""
    model, state = _save_mlp(tmp_path / "ck")
    originals = {n: (tmp_path / "ck" / n).read_bytes() for n in (MANIFEST, WEIGHTS, STATE)}
    torch.manual_seed(1)
    save_checkpoint(tmp_path / "other", create_model("mlp", **MLP_KWARGS), "resetassay.models:mlp", MLP_KWARGS,
                    state={k: v + 1 for k, v in state.items()}, meta={"seed": 9})  # same shapes, other values
    others = {n: (tmp_path / "other" / n).read_bytes() for n in originals}
    assert all(others[n] != originals[n] for n in originals)
    read_bytes = Path.read_bytes

    def read_then_replace(self: Path) -> bytes:
        raw = read_bytes(self)
        if self.parent == tmp_path / "ck":
            self.write_bytes(others[self.name])
        return raw

    monkeypatch.setattr(Path, "read_bytes", read_then_replace)
    ckpt = load_checkpoint(tmp_path / "ck")
    monkeypatch.undo()
    assert ckpt.sha256 == {n: hashlib.sha256(raw).hexdigest() for n, raw in originals.items()}
    assert all(ckpt.sha256[n] != _sha(tmp_path / "ck" / n) for n in originals)  # the disk holds the others now
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[k], v), k
    assert "seed" not in ckpt.info.meta and all(torch.equal(ckpt.state[k], v) for k, v in state.items())


# --- saving whole ---------------------------------------------------------------------------


def test_saving_again_without_state_replaces_the_whole_directory(tmp_path):
    _save_mlp(tmp_path / "ck")
    assert (tmp_path / "ck" / STATE).exists()
    model = create_model("mlp", **MLP_KWARGS)
    save_checkpoint(tmp_path / "ck", model, "resetassay.models:mlp", MLP_KWARGS)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == sorted([MANIFEST, WEIGHTS])
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temporary or old directory left
    ckpt = load_checkpoint(tmp_path / "ck")
    assert ckpt.state == {} and ckpt.info.step == {}
    assert torch.equal(ckpt.model.head.weight, model.head.weight)


def test_a_directory_holding_other_files_is_never_replaced(tmp_path):
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "notes.txt").write_text("mine")
    with pytest.raises(BadInputError, match="holds notes.txt, not only a checkpoint"):
        _save_mlp(tmp_path / "ck")
    (tmp_path / "file").write_text("mine")
    with pytest.raises(BadInputError, match="is a file"):
        _save_mlp(tmp_path / "file")
    assert (tmp_path / "ck" / "notes.txt").read_text() == (tmp_path / "file").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "file"]


CRASH = """
import os, sys, torch
import resetassay.io.checkpoint as c
from resetassay.models import create_model
point, target = sys.argv[1], sys.argv[2]
calls = {"n": 0}
real = getattr(os, point)
def crash(*args):
    calls["n"] += 1
    if calls["n"] == 2:  # the second file flushed, or the second rename (the new directory into place)
        os._exit(3)
    return real(*args)
setattr(os, point, crash)
c.save_checkpoint(target, create_model("mlp", in_features=6, widths=[5, 4], n_classes=3), "resetassay.models:mlp",
                  {"in_features": 6, "widths": [5, 4], "n_classes": 3}, meta={"seed": 1})
"""


@pytest.mark.slow
@pytest.mark.parametrize("point", ["fsync", "rename"], ids=["while writing", "between the renames"])
def test_a_save_killed_midway_leaves_no_mix_and_only_hidden_leftovers(tmp_path, point):
    _save_mlp(tmp_path / "ck")
    before = {n: (tmp_path / "ck" / n).read_bytes() for n in (MANIFEST, WEIGHTS, STATE)}
    done = subprocess.run([sys.executable, "-c", CRASH, point, str(tmp_path / "ck")], capture_output=True)
    assert done.returncode == 3, done.stderr.decode()
    hidden = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert hidden and all(n.startswith((".ck.tmp-", ".ck.old-")) for n in hidden)
    if point == "fsync":  # the old checkpoint is untouched
        assert {n: (tmp_path / "ck" / n).read_bytes() for n in before} == before
        assert [p for p, _ in find_checkpoints([tmp_path])] == [tmp_path / "ck"]
    else:  # old and new both aside: no checkpoint rather than a mixed one
        assert not (tmp_path / "ck").exists()
        with pytest.raises(BadInputError, match="no checkpoint found"):
            find_checkpoints([tmp_path])
    _save_mlp(tmp_path / "ck")  # the next save deletes the leftovers
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_find_checkpoints_skips_hidden_directories_and_files(tmp_path):
    root = tmp_path / "runs"
    for sub in ("ck", ".ck.tmp-0123abcd", ".cache/ck", "deep/.old/ck"):
        _save_mlp(root / sub)
    torch.save({"w": torch.zeros(1)}, root / ".net.pt")
    torch.save({"w": torch.zeros(1)}, root / "net.pt")
    assert [p for p, _ in find_checkpoints([root])] == [root / "ck"]
    assert {p for p, _ in find_checkpoints([root], foreign_ok=True)} == {root / "ck", root / "net.pt"}
    assert [p for p, _ in find_checkpoints([root / ".cache"])] == [root / ".cache" / "ck"]  # named: not skipped


# --- the manifest schema --------------------------------------------------------------------

DATA = DataSpec(task=3, permutation_seed=7).to_dict()


@pytest.mark.parametrize(("edit", "needle"), [
    ({"data": {**DATA, "holdout_fraction": 5}}, "data.holdout_fraction must be a number in (0, 1), got 5"),
    ({"data": {**DATA, "holdout_fraction": 0}}, "data.holdout_fraction must be a number in (0, 1), got 0"),
    ({"data": {**DATA, "task": 1.5}}, "data.task must be an integer >= 0, got 1.5"),
    ({"data": {**DATA, "task": "1"}}, "data.task must be an integer >= 0, got '1'"),
    ({"data": {**DATA, "task": True}}, "data.task must be an integer >= 0, got True"),
    ({"data": {**DATA, "permutation_seed": -1}}, "data.permutation_seed must be an integer >= 0, got -1"),
    ({"data": {**DATA, "split_seed": None}}, "data.split_seed must be an integer >= 0, got None"),
    ({"data": {**DATA, "source": "cifar"}},
     "data.source must be 'digits' or 'mnist' or 'fashion-mnist' or 'grammar', got 'cifar'"),
    ({"data": {**DATA, "layout": ["flat"]}}, "data.layout must be 'flat' or 'image', got ['flat']"),
    ({"data": {**DATA, "data_dir": 3}}, "data.data_dir must be a string or null, got 3"),
    ({"data": {**DATA, "colour": "red"}}, "data.colour is not a data field"),
    ({"data": {k: v for k, v in DATA.items() if k != "split_seed"}}, "data.split_seed is missing"),
    ({"data": "digits"}, "data must be an object or null, got 'digits'"),
    ({"model": "resetassay.models:mlp"}, "model must be an object, got 'resetassay.models:mlp'"),
    ({"model": {"kwargs": {}}}, "model.factory is missing"),
    ({"model": {"factory": 3}}, "model.factory must be a string, got 3"),
    ({"model": {"factory": "resetassay.models:mlp", "kwargs": [6]}}, "model.kwargs must be an object, got [6]"),
    ({"model": {"factory": "resetassay.models:mlp", "args": []}}, "unknown field model.args"),
    ({"step": {"task": -1}}, "step.task must be an integer >= 0, got -1"),
    ({"step": {"task": "3"}}, "step.task must be an integer >= 0, got '3'"),
    ({"step": {"round": 3}}, "unknown field step.round"),
    ({"step": [3]}, "step must be an object, got [3]"),
    ({"unit_layers": ["a", 1]}, "unit_layers must be a list of strings, got ['a', 1]"),
    ({"meta": None}, "meta must be an object, got None"),
    ({"meta": {"maturity": "100"}}, "meta.maturity must be an integer >= 0, got '100'"),
    ({"meta": {"family": ["mlp"]}}, "meta.family must be a string, got ['mlp']"),
    ({"meta": {"seed": 0.5}}, "meta.seed must be an integer, got 0.5"),
    ({"extra": 1}, "unknown field extra"),
    ({"unknown\nfield": 1}, "unknown field 'unknown\\nfield'"),
])
def test_every_manifest_field_is_checked_and_named_in_one_line(tmp_path, edit, needle):
    _save_mlp(tmp_path / "ck")
    _rewrite_manifest(tmp_path / "ck", lambda m: m.update(edit))
    with pytest.raises(BadInputError) as err:
        load_checkpoint(tmp_path / "ck")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'ck' / MANIFEST}: ") and needle in message, message
    assert message.endswith("; regenerate the checkpoint") and "\n" not in message and err.value.field is None


def test_a_missing_model_and_a_missing_format_are_named(tmp_path):
    _save_mlp(tmp_path / "ck")
    _rewrite_manifest(tmp_path / "ck", lambda m: m.pop("model"))
    with pytest.raises(BadInputError, match="model is missing"):
        load_checkpoint(tmp_path / "ck")
    _rewrite_manifest(tmp_path / "ck", lambda m: m.pop("format"))
    with pytest.raises(BadInputError, match="format None is not 'resetassay.checkpoint/1'"):
        load_checkpoint(tmp_path / "ck")


def test_optional_manifest_fields_may_be_left_out(tmp_path):
    _save_mlp(tmp_path / "ck")
    _rewrite_manifest(tmp_path / "ck", lambda m: [m.pop(k) for k in ("step", "data", "unit_layers", "meta")])
    ckpt = load_checkpoint(tmp_path / "ck")
    assert (ckpt.info.step, ckpt.info.data, ckpt.info.meta, ckpt.info.family) == ({}, None, {}, "mlp")


@pytest.mark.parametrize(("content", "needle"), [
    (None, "is a directory, not a file"),
    (b'{"format": "resetassay.checkpoint/1", "meta": {"x": "\xff\xfe"}}', "not UTF-8 text"),
    (b'{"meta": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "malformed JSON (nested too deeply)"),
    (b'{"step": {"task": 1' + b"0" * 5000 + b"}}", "malformed JSON"),
    (b"[1, 2]", "format None (the file holds an array, not an object)"),
    (b'"resetassay.checkpoint/1"', "format None (the file holds a string, not an object)"),
], ids=["directory", "not utf-8", "nested too deeply", "5000-digit integer", "array", "string"])
def test_an_unreadable_manifest_is_one_line_naming_it(tmp_path, content, needle):
    _save_mlp(tmp_path / "ck")
    manifest = tmp_path / "ck" / MANIFEST
    manifest.unlink()
    if content is None:
        manifest.mkdir()
    else:
        manifest.write_bytes(content)
    with pytest.raises(BadInputError) as err:
        load_checkpoint(tmp_path / "ck")
    assert str(err.value).startswith(f"{manifest}: ") and needle in str(err.value) and "\n" not in str(err.value)


# --- model factories ------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    {"widths": [-1, 4]}, {"activation": "nope"}, {"activation": {}}, {"widths": "ab"}, {"depth": 3},
    {"in_features": 10**30}, {"layer_norm": "yes", "widths": [[5]]},
], ids=["negative width", "unknown activation", "unhashable activation", "string widths", "unknown kwarg",
        "overflowing size", "nested width"])
def test_zoo_kwargs_that_make_the_factory_fail_are_one_line_naming_model_kwargs(tmp_path, kwargs):
    _save_mlp(tmp_path / "ck")
    _rewrite_manifest(tmp_path / "ck", lambda m: m["model"]["kwargs"].update(kwargs))
    with pytest.raises(BadInputError) as err:
        load_checkpoint(tmp_path / "ck")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'ck' / MANIFEST}: model.kwargs do not build resetassay.models:mlp (")
    assert "\n" not in message and err.value.field is None


def test_zoo_kwargs_asking_for_a_huge_model_are_refused_before_allocating_it(tmp_path, monkeypatch):
    _save_mlp(tmp_path / "ck")
    _rewrite_manifest(tmp_path / "ck", lambda m: m["model"]["kwargs"].update(in_features=2**28))  # 5 GB of weights
    devices = []
    mlp = MODELS["mlp"]
    monkeypatch.setitem(MODELS, "mlp", lambda **kw: devices.append(torch.get_default_device()) or mlp(**kw))
    with pytest.raises(BadInputError, match=r"model\.safetensors: layers\.0\.linear\.weight is .* \(5, 6\), the "
                       r"model wants torch\.float32 \(5, 268435456\)"):
        load_checkpoint(tmp_path / "ck")
    assert devices == [torch.device("meta")]


def test_a_model_factory_that_cannot_take_the_kwargs_is_a_model_kwargs_error(tmp_path):
    torch.save(create_model("mlp", **MLP_KWARGS).state_dict(), tmp_path / "net.pt")
    for kwargs, needle in (({"width": 3}, "TypeError: MLP.__init__() got an unexpected keyword argument 'width'"),
                           ({"widths": [-1]}, "RuntimeError: Trying to create tensor with negative dimension")):
        with pytest.raises(BadInputError) as err:
            load_checkpoint(tmp_path / "net.pt", model="resetassay.models:mlp", model_kwargs=kwargs)
        assert err.value.field == "model_kwargs" and "resetassay.models:mlp cannot take them" in str(err.value)
        assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_model_factory_that_returns_no_module_is_a_model_error(tmp_path, monkeypatch):
    fake = types.ModuleType("fake_zoo")
    fake.pair = lambda: (create_model("mlp", **MLP_KWARGS), {})
    fake.nothing = lambda: None
    monkeypatch.setitem(sys.modules, "fake_zoo", fake)
    torch.save(create_model("mlp", **MLP_KWARGS).state_dict(), tmp_path / "net.pt")
    for attr, what in (("pair", "returned a builtins.tuple"), ("nothing", "returned None")):
        with pytest.raises(BadInputError) as err:
            load_checkpoint(tmp_path / "net.pt", model=f"fake_zoo:{attr}")
        assert err.value.field == "model" and f"`model` 'fake_zoo:{attr}': {what}, not a torch.nn.Module" in str(
            err.value)


# --- state.safetensors ----------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value", "needle"), [
    ("layers.0.act.bogus", torch.zeros(5), "layers.0.act.bogus is not <layer>.age"),
    ("age", torch.zeros(5), "age is not <layer>.age"),
    (".age", torch.zeros(5), ".age is not <layer>.age"),
    ("layers.0.act\n.age", torch.zeros(5, 1), "'layers.0.act\\n.age' has shape (5, 1)"),
    ("layers.0.act.age", torch.zeros(5, 1), "layers.0.act.age has shape (5, 1), not one value per unit"),
    ("layers.0.act.reference", torch.tensor(1.0), "layers.0.act.reference has shape (), not one value per unit"),
    ("layers.0.act.age", torch.tensor([1, -1, 2, 3, 4]), "layers.0.act.age must hold whole numbers >= 0"),
    ("layers.0.act.age", torch.tensor([1.5, 1, 2, 3, 4]), "layers.0.act.age must hold whole numbers >= 0"),
    ("layers.0.act.age", torch.tensor([math.nan] * 5), "layers.0.act.age must hold whole numbers >= 0"),
    ("layers.0.act.age", torch.tensor([math.inf] * 5), "layers.0.act.age must hold whole numbers >= 0"),
    ("layers.0.act.reference", torch.tensor([0.0, math.inf, 0, 0, 0]), "layers.0.act.reference holds NaN or Inf"),
    ("layers.0.act.reference", torch.tensor([0.0, math.nan, 0, 0, 0]), "layers.0.act.reference holds NaN or Inf"),
    ("layers.0.act.age", torch.ones(5, dtype=torch.bool), "has dtype torch.bool"),
    ("layers.0.act.utility", torch.ones(5, dtype=torch.complex64), "has dtype torch.complex64"),
])
def test_a_bad_state_file_is_one_line_naming_file_and_key(tmp_path, key, value, needle):
    _save_mlp(tmp_path / "ck")
    save_file({key: value}, tmp_path / "ck" / STATE)
    with pytest.raises(BadInputError) as err:
        load_checkpoint(tmp_path / "ck")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'ck' / STATE}: ") and needle in message and "\n" not in message


def test_whole_float_ages_and_any_utility_are_accepted(tmp_path):
    _save_mlp(tmp_path / "ck")
    state = {"layers.0.act.age": torch.tensor([0.0, 1, 2, 3, 1e6]), "layers.1.act.utility": torch.rand(4),
             "layers.1.act.reference": torch.zeros(4, dtype=torch.float16)}
    save_file(state, tmp_path / "ck" / STATE)
    assert load_checkpoint(tmp_path / "ck").state.keys() == state.keys()
