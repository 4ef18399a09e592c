"""--model sources beside package.module:factory (torchvision:NAME, timm:NAME), and state dicts as people save
them: DDP/DataParallel `module.` keys, Lightning `.ckpt` files, `.pth`/`.ckpt` suffixes, float16/bfloat16 weights.

torchvision and timm are optional and may not import beside the pinned torch, so the dispatch is tested with fake
modules in sys.modules; the tests with the real libraries are skipped where they do not import (they fail instead where
RESETASSAY_REQUIRE_VISION is set, as in .ci/run's second environment).
"""

from __future__ import annotations

import inspect
import os
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from resetassay.errors import BadInputError
from resetassay.io.checkpoint import STATE_DICT_SUFFIXES, find_checkpoints, import_factory, load_checkpoint

MODULE = "rs_tinynet"
SPEC = f"{MODULE}:net"
FACTORY = '''
from torch import nn


def net(width=4):
    return nn.Sequential(nn.Linear(3, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, 2))
'''


def _tiny(width: int = 4) -> nn.Module:
    net = nn.Sequential(nn.Linear(3, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, 2)).train()
    net(torch.randn(8, 3))  # running statistics and num_batches_tracked off their init
    return net


@pytest.fixture
def factory(tmp_path, monkeypatch):
    """A `--model` factory module `rs_tinynet:net` importable from tmp_path."""
    (tmp_path / f"{MODULE}.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    return SPEC


def _load(path: Path, spec: str = SPEC, kwargs: dict | None = None):
    """load_checkpoint, and the warnings it gave (as strings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ckpt = load_checkpoint(path, model=spec, model_kwargs=kwargs)
    return ckpt, [str(w.message) for w in caught]


def _same(ckpt, want: dict[str, torch.Tensor]) -> None:
    got = ckpt.model.state_dict()
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype, key
        assert torch.equal(got[key], value), key


def _save(tensors: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    else:
        torch.save(tensors, path)
    return path


def _lightning(state_dict: dict) -> dict:
    """What Lightning's Trainer.save_checkpoint writes (the parts weights_only=True can read)."""
    return {
        "epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.5.0",
        "state_dict": state_dict,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4, "completed": 3}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.25),
                                                                 "best_model_path": "/runs/epoch=2.ckpt"}},
        "optimizer_states": [{"state": {0: {"momentum_buffer": torch.zeros(3)}},
                              "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0]}]}],
        "lr_schedulers": [{"step_size": 10, "gamma": 0.5, "base_lrs": [0.1], "last_epoch": 3}],
        "hparams_name": "kwargs", "hyper_parameters": {"width": 4, "lr": 0.1},
    }


# --- state dicts as people save them ------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors"])
def test_ddp_module_prefix_is_stripped_with_one_warning(tmp_path, factory, suffix):
    sd = _tiny().state_dict()
    path = _save({f"module.{k}": v for k, v in sd.items()}, tmp_path / f"ddp{suffix}")
    ckpt, warned = _load(path)
    _same(ckpt, sd)
    assert warned == [f"{path}: the model's weights are under the prefix module. (a DDP/DataParallel wrapper or a "
                      "LightningModule attribute); stripped it to match the model's keys"]
    assert set(ckpt.sha256) == {path.name}


@pytest.mark.parametrize("attribute", ["model.", "net."])
def test_lightning_ckpt_strips_the_module_attribute_with_a_warning(tmp_path, factory, attribute):
    sd = _tiny().state_dict()
    keys = {f"{attribute}{k}": v for k, v in sd.items()}
    keys["criterion.weight"] = torch.ones(2)  # a loss module's buffer: not the model's
    path = _save(_lightning(keys), tmp_path / "epoch=2-step=120.ckpt")
    ckpt, warned = _load(path)
    _same(ckpt, sd)
    assert len(warned) == 2
    assert warned[0].startswith(f"{path}: the model's weights are under the prefix {attribute} ")
    assert warned[1] == f"{path}: ignoring keys the model lacks: criterion.weight"


def test_lightning_ckpt_of_a_ddp_run_in_bfloat16(tmp_path, factory):
    sd = _tiny().state_dict()
    half = {f"model.module.{k}": v.bfloat16() if v.is_floating_point() else v for k, v in sd.items()}
    path = _save(_lightning(half), tmp_path / "last.ckpt")
    ckpt, warned = _load(path)
    _same(ckpt, {k: v.bfloat16().float() if v.is_floating_point() else v for k, v in sd.items()})
    assert len(warned) == 2
    assert "prefix model.module. " in warned[0]
    assert warned[1] == f"{path}: weights stored as torch.bfloat16; cast to the model's torch.float32"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_half_weights_are_cast_to_the_models_dtype_keeping_integer_buffers(tmp_path, factory, dtype, suffix):
    sd = _tiny().state_dict()
    half = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    assert half["1.num_batches_tracked"].dtype == torch.int64 and int(half["1.num_batches_tracked"]) == 1
    path = _save(half, tmp_path / f"half{suffix}")
    ckpt, warned = _load(path)
    _same(ckpt, {k: v.float() if v.is_floating_point() else v for k, v in half.items()})
    assert ckpt.model.state_dict()["1.num_batches_tracked"].dtype == torch.int64
    assert warned == [f"{path}: weights stored as {dtype}; cast to the model's torch.float32"]


def test_weights_already_in_the_models_dtype_and_keys_give_no_warning(tmp_path, factory):
    sd = _tiny().state_dict()
    ckpt, warned = _load(_save(sd, tmp_path / "plain.pth"))
    _same(ckpt, sd)
    assert warned == []


def test_float64_weights_are_still_refused(tmp_path, factory):
    sd = {k: v.double() if v.is_floating_point() else v for k, v in _tiny().state_dict().items()}
    path = _save(sd, tmp_path / "double.pt")
    with pytest.raises(BadInputError, match=r"0\.weight is torch\.float64 \(4, 3\), the model wants torch\.float32"):
        load_checkpoint(path, model=SPEC)


def test_half_weights_of_the_wrong_shape_name_the_stored_dtype(tmp_path, factory):
    sd = {k: v.half() if v.is_floating_point() else v for k, v in _tiny(width=5).state_dict().items()}
    path = _save(sd, tmp_path / "wide.pt")
    with pytest.raises(BadInputError, match=r"0\.weight is torch\.float16 \(5, 3\), the model wants torch\.float32 "
                                            r"\(4, 3\); check `model`/`model_kwargs`"), \
            pytest.warns(UserWarning, match="weights stored as torch.float16"):  # 3.bias has the model's shape
        load_checkpoint(path, model=SPEC)


def test_missing_keys_under_a_prefix_are_still_refused(tmp_path, factory):
    sd = {f"model.{k}": v for k, v in _tiny().state_dict().items()}
    del sd["model.3.bias"]
    path = _save(_lightning(sd), tmp_path / "broken.ckpt")
    with pytest.raises(BadInputError, match=r"missing weights for the model: 0\.bias"):
        load_checkpoint(path, model=SPEC)


def test_keys_that_do_not_match_name_both_sides(tmp_path, factory):
    """Another model's state dict (or a data file): the error shows what the file holds beside what is missing."""
    path = _save({f"x_{k}": v for k, v in _tiny().state_dict().items()}, tmp_path / "other.safetensors")
    with pytest.raises(BadInputError) as err:
        load_checkpoint(path, model=SPEC)
    assert str(err.value) == (f"{path}: missing weights for the model: 0.bias, 0.weight, 1.bias, 1.num_batches_tracked,"
                              " 1.running_mean, ... (9 of its 9 missing); the file holds x_0.bias, x_0.weight, "
                              "x_1.bias, x_1.num_batches_tracked, x_1.running_mean, ... instead; check "
                              "`model`/`model_kwargs`")


def test_two_prefixes_holding_the_model_are_refused(tmp_path, factory):
    sd = _tiny().state_dict()
    keys = {**{f"model.{k}": v for k, v in sd.items()}, **{f"ema_model.{k}": v for k, v in sd.items()}}
    path = _save(_lightning(keys), tmp_path / "ema.ckpt")
    with pytest.raises(BadInputError, match=r"ema\.ckpt: the model's weights are found under several prefixes "
                                            r"\(ema_model\., model\.\); save the state dict of the one to assay"):
        load_checkpoint(path, model=SPEC)


def test_a_prefix_whose_shapes_fit_wins_over_one_whose_do_not(tmp_path, factory):
    sd = _tiny().state_dict()
    keys = {**{f"student.{k}": v for k, v in sd.items()},
            **{f"teacher.{k}": v for k, v in _tiny(width=6).state_dict().items()}}
    ckpt, warned = _load(_save(_lightning(keys), tmp_path / "distill.ckpt"))
    _same(ckpt, sd)
    assert "prefix student. " in warned[0]


class Pickled:
    def __init__(self, value: int) -> None:
        self.value = value


def test_lightning_ckpt_holding_pickled_objects_is_still_refused(tmp_path, factory):
    ckpt = _lightning({f"model.{k}": v for k, v in _tiny().state_dict().items()})
    ckpt["hyper_parameters"] = {"config": Pickled(3)}
    path = _save(ckpt, tmp_path / "objects.ckpt")
    with pytest.raises(BadInputError, match="refused — not a plain tensor state dict") as err:
        load_checkpoint(path, model=SPEC)
    # it names the object and, for a .ckpt, how to extract the state dict where the file is trusted
    assert f": it holds a {__name__}.Pickled (weights_only=True" in str(err.value)
    assert str(err.value).endswith(f"e.g. where you trust the file: torch.save(torch.load({str(path)!r}, "
                                   "weights_only=False)['state_dict'], 'weights.pt')")
    assert "\n" not in str(err.value)


def test_find_checkpoints_finds_ckpt_and_pth_files_with_model(tmp_path):
    assert {".safetensors", ".pt", ".pth", ".ckpt"} <= set(STATE_DICT_SUFFIXES)
    root = tmp_path / "runs"
    (root / "lightning_logs" / "version_0" / "checkpoints").mkdir(parents=True)
    for name in ("lightning_logs/version_0/checkpoints/last.ckpt", "a.pth", "b.pt", "notes.txt"):
        (root / name).write_bytes(b"")
    found = [name for _, name in find_checkpoints([root], foreign_ok=True)]
    assert found == ["runs/a.pth", "runs/b.pt", "runs/lightning_logs/version_0/checkpoints/last.ckpt"]
    with pytest.raises(BadInputError, match=r"needs `model` package\.module:factory \(or torchvision:NAME, "):
        find_checkpoints([root / "a.pth"])


# --- torchvision:NAME and timm:NAME, with fake libraries -------------------------------------------------------


def _fake_torchvision(monkeypatch, calls: list, builder_params: tuple[str, ...] = ("weights", "progress")):
    def get_model(name, **kwargs):
        calls.append((name, kwargs))
        return _tiny(width=kwargs.get("width", 4)).eval()

    def builder(**kwargs):
        raise AssertionError("only its signature is read")

    builder.__signature__ = inspect.Signature(
        [inspect.Parameter(p, inspect.Parameter.KEYWORD_ONLY, default=None) for p in builder_params])
    tv = types.ModuleType("torchvision")
    tv.models = types.SimpleNamespace(get_model=get_model, get_model_builder=lambda name: builder,
                                      list_models=lambda: ["alexnet", "resnet18", "resnet34", "resnet50",
                                                           "resnext50_32x4d", "fasterrcnn_resnet50_fpn"])
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    return tv


def _fake_timm(monkeypatch, calls: list):
    def create_model(name, **kwargs):
        calls.append((name, kwargs))
        return _tiny(width=kwargs.get("width", 4)).eval()

    timm = types.ModuleType("timm")
    timm.create_model = create_model
    timm.list_models = lambda: ["resnet18", "resnet26", "resnet50", "vit_tiny_patch16_224", "efficientnet_b0"]
    monkeypatch.setitem(sys.modules, "timm", timm)
    return timm


def test_torchvision_model_is_built_without_weights_and_loads_a_state_dict(tmp_path, monkeypatch):
    calls: list = []
    _fake_torchvision(monkeypatch, calls)
    sd = _tiny(width=6).state_dict()
    path = _save({f"module.{k}": v.half() if v.is_floating_point() else v for k, v in sd.items()},
                 tmp_path / "resnet.pth")
    ckpt, warned = _load(path, "torchvision:resnet18", {"width": 6})
    assert calls == [("resnet18", {"weights": None, "width": 6})]
    _same(ckpt, {k: v.half().float() if v.is_floating_point() else v for k, v in sd.items()})
    assert len(warned) == 2  # the prefix, the cast
    assert ckpt.info.factory == "torchvision:resnet18" and ckpt.info.family == "resnet18"
    assert ckpt.info.kwargs == {"width": 6}


def test_torchvision_detection_model_gets_no_backbone_weights(monkeypatch):
    calls: list = []
    _fake_torchvision(monkeypatch, calls, builder_params=("weights", "progress", "num_classes", "weights_backbone"))
    import_factory("torchvision:fasterrcnn_resnet50_fpn")(num_classes=3)
    assert calls == [("fasterrcnn_resnet50_fpn", {"weights": None, "weights_backbone": None, "num_classes": 3})]


def test_timm_model_is_built_with_pretrained_false(tmp_path, monkeypatch):
    calls: list = []
    _fake_timm(monkeypatch, calls)
    sd = _tiny().state_dict()
    path = _save(sd, tmp_path / "timm.safetensors")
    ckpt, warned = _load(path, "timm:resnet18", {"num_classes": 10})
    assert calls == [("resnet18", {"pretrained": False, "num_classes": 10})]
    _same(ckpt, sd)
    assert warned == []
    import_factory("timm:resnet18.a1_in1k")()  # a pretrained tag names the architecture; nothing is downloaded
    assert calls[-1] == ("resnet18.a1_in1k", {"pretrained": False})


@pytest.mark.parametrize("spec, kwargs, refused", [
    ("timm:resnet18", {"pretrained": True}, "pretrained"),
    ("timm:resnet18", {"pretrained": False, "num_classes": 10}, "pretrained"),
    ("timm:resnet18", {"pretrained_cfg_overlay": {"file": "w.pth"}}, "pretrained_cfg_overlay"),
    ("timm:resnet18", {"checkpoint_path": "w.pth"}, "checkpoint_path"),
    ("timm:resnet18", {"cache_dir": "/tmp/hub"}, "cache_dir"),
    ("torchvision:resnet18", {"weights": "DEFAULT"}, "weights"),
    ("torchvision:resnet18", {"weights_backbone": "DEFAULT", "weights": None}, "weights, weights_backbone"),
])
def test_kwargs_that_would_download_weights_are_refused(tmp_path, monkeypatch, spec, kwargs, refused):
    calls: list = []
    _fake_torchvision(monkeypatch, calls)
    _fake_timm(monkeypatch, calls)
    message = rf"^`model_kwargs` .*: {refused} would load pretrained weights; resetassay never downloads weights"
    with pytest.raises(BadInputError, match=message) as early:
        import_factory(spec, kwargs)
    path = _save(_tiny().state_dict(), tmp_path / "w.pt")
    with pytest.raises(BadInputError, match=message) as late:
        load_checkpoint(path, model=spec, model_kwargs=kwargs)
    assert early.value.field == late.value.field == "model_kwargs"
    assert "\n" not in str(late.value)
    assert calls == []


@pytest.mark.parametrize("lib", ["torchvision", "timm"])
def test_download_kwargs_are_refused_before_the_library_is_imported(tmp_path, monkeypatch, lib):
    """Where the library is not installed, `pretrained` is still the error (installing it would not help)."""
    monkeypatch.setitem(sys.modules, lib, None)
    path = _save(_tiny().state_dict(), tmp_path / "w.pt")
    for load in (lambda: import_factory(f"{lib}:resnet18", {"pretrained": True}),
                 lambda: load_checkpoint(path, model=f"{lib}:resnet18", model_kwargs={"pretrained": True})):
        with pytest.raises(BadInputError, match=r"^`model_kwargs` \{'pretrained': True\}: pretrained would load"):
            load()


@pytest.mark.parametrize("spec, close", [
    ("torchvision:resnet19", "close matches: resnet18, resnet50, resnet34"),
    ("torchvision:ResNet18", "close matches: resnet18"),
    ("timm:vit_tiny", "close matches: vit_tiny_patch16_224"),
    ("timm:zzz", "timm.list_models() lists them"),
    ("torchvision:zzz", "torchvision.models.list_models() lists them"),
])
def test_unknown_model_name_lists_close_matches(monkeypatch, spec, close):
    _fake_torchvision(monkeypatch, [])
    _fake_timm(monkeypatch, [])
    lib, _, name = spec.partition(":")
    with pytest.raises(BadInputError) as err:
        import_factory(spec)
    assert str(err.value).startswith(f"`model` {spec!r}: {lib} has no model {name!r}; ")
    assert close in str(err.value) and err.value.field == "model"


@pytest.mark.parametrize("spec", ["timm:hf-hub:timm/resnet18.a1_in1k", "timm:local-dir:/models/r18", "timm:",
                                  "torchvision:"])
def test_hub_and_empty_names_are_refused(monkeypatch, spec):
    _fake_timm(monkeypatch, [])
    with pytest.raises(BadInputError, match=r"expected (timm|torchvision):NAME, the name of one of its architectures "
                                            r"\(resetassay never downloads models or weights\)"):
        import_factory(spec)


@pytest.mark.parametrize("lib", ["torchvision", "timm"])
def test_missing_library_names_the_extra_to_install(monkeypatch, lib):
    monkeypatch.setitem(sys.modules, lib, None)  # import raises ModuleNotFoundError, as when not installed
    with pytest.raises(BadInputError) as err:
        import_factory(f"{lib}:resnet18")
    assert str(err.value) == f"`model` '{lib}:resnet18': {lib} is not installed; pip install 'resetassay[{lib}]'"
    assert err.value.field == "model"


def test_timm_without_torchvision_names_what_is_missing(tmp_path, monkeypatch):
    (tmp_path / "timm").mkdir()
    (tmp_path / "timm" / "__init__.py").write_text("import torchvision\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "timm", raising=False)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(BadInputError, match=r"^`model` 'timm:resnet18': timm needs torchvision, which is not "
                                            r"installed; pip install 'resetassay\[timm\]'$"):
        import_factory("timm:resnet18")


def test_library_built_for_another_torch_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "torchvision").mkdir()
    (tmp_path / "torchvision" / "__init__.py").write_text(
        "raise RuntimeError('operator torchvision::nms does not exist\\n  C++ stack trace ...')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    with pytest.raises(BadInputError) as err:
        import_factory("torchvision:resnet18")
    assert str(err.value) == (f"`model` 'torchvision:resnet18': torchvision does not import beside torch "
                              f"{torch.__version__} (RuntimeError: operator torchvision::nms does not exist); "
                              "install the torchvision built for this torch: pip install 'resetassay[torchvision]'")


def test_package_module_factory_specs_are_unchanged(factory):
    assert import_factory(factory, {"width": 3})(width=3)[0].out_features == 3


# --- the real libraries, where they import ----------------------------------------------------------------------


def _real(lib: str):
    try:
        return __import__(lib)
    except Exception as err:  # not installed, or built for another torch (RuntimeError)
        if os.environ.get("RESETASSAY_REQUIRE_VISION"):
            raise
        pytest.skip(f"{lib} does not import here ({type(err).__name__}: {str(err).splitlines()[0][:120]})")


@pytest.mark.parametrize("lib", ["torchvision", "timm"])
def test_real_library_resnet18_round_trip(tmp_path, lib):
    _real(lib)
    net = import_factory(f"{lib}:resnet18")(num_classes=10)
    sd = net.state_dict()
    path = _save({f"module.{k}": v.half() if v.is_floating_point() else v for k, v in sd.items()},
                 tmp_path / "r18.pth")
    ckpt, warned = _load(path, f"{lib}:resnet18", {"num_classes": 10})
    _same(ckpt, {k: v.half().float() if v.is_floating_point() else v for k, v in sd.items()})
    assert len(warned) == 2
    with pytest.raises(BadInputError, match="has no model 'resnet19'; close matches: .*resnet18"):
        import_factory(f"{lib}:resnet19")


def test_an_unknown_transformers_type_names_where_the_types_are_listed():
    """There is no transformers.list_models() (the hint said so): the hint names the mapping of causal-LM types."""
    pytest.importorskip("transformers")
    with pytest.raises(BadInputError, match="MODEL_FOR_CAUSAL_LM_MAPPING_NAMES lists them"):
        import_factory("transformers:zzz")


def _tiny_gpt2():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def test_a_save_pretrained_folder_is_built_from_its_config_with_tied_weights_not_missing(tmp_path):
    """A Hugging Face `save_pretrained` folder (config.json + model.safetensors, `lm_head.weight` tied to the
    embedding and stored once) under `model` transformers:gpt2 is the model of its config.json, not a 12-layer
    default GPT-2, and assays with `utilities` gxd and oracle."""
    from typer.testing import CliRunner

    from resetassay.cli import app

    model = _tiny_gpt2()
    model.save_pretrained(tmp_path / "gpt2")
    assert (tmp_path / "gpt2" / "config.json").is_file()
    ckpt = load_checkpoint(tmp_path / "gpt2", model="transformers:gpt2")
    assert ckpt.model.config.n_layer == 2 and ckpt.model.config.n_embd == 16
    ids = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ckpt.model(ids).logits, model(ids).logits)
    save_file({"input_ids": torch.randint(0, 32, (32, 8), generator=torch.Generator().manual_seed(1))},
              str(tmp_path / "t.safetensors"))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "gpt2"), "--model", "transformers:gpt2", "--data",
                                      str(tmp_path / "t.safetensors"), "--utilities", "gxd,oracle", "--metrics", "l1",
                                      "--no-joint", "--quiet", "--calib-size", "16", "--probe-size", "16",
                                      "--layers", "*.0.*", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "units.csv").is_file()


def test_a_transformers_classifier_is_reachable_by_its_class_name(tmp_path):
    """`transformers:BertForSequenceClassification` builds that class from its config (model_kwargs as fields);
    `transformers:bert` with a classifier's weights says it builds a language model and names the class to use."""
    transformers = pytest.importorskip("transformers")
    fields = {"vocab_size": 32, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 32, "max_position_embeddings": 16, "num_labels": 3}
    torch.manual_seed(0)
    classifier = transformers.BertForSequenceClassification(transformers.BertConfig(**fields)).eval()
    save_file(classifier.state_dict(), str(tmp_path / "bert.safetensors"))
    ckpt = load_checkpoint(tmp_path / "bert.safetensors", model="transformers:BertForSequenceClassification",
                           model_kwargs=fields)
    assert type(ckpt.model).__name__ == "BertForSequenceClassification"
    ids = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ckpt.model(ids).logits, classifier(ids).logits)
    with pytest.raises(BadInputError, match=r"builds the causal language model BertLMHeadModel; for a classifier .*"
                                            r"transformers:BertForSequenceClassification"):
        load_checkpoint(tmp_path / "bert.safetensors", model="transformers:bert", model_kwargs=fields)


def test_a_loading_warning_names_the_callers_line_however_deep_it_is_raised(tmp_path, factory):
    """`errors.warn_user` walks out of the package: a warning raised inside load_checkpoint, or inside run_assay
    (whose checkpoint failures go through one more layer), names the line of the code that called resetassay."""
    from resetassay import run_assay

    sd = _tiny().state_dict()
    path = _save({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, tmp_path / "half.pt")
    with pytest.warns(UserWarning, match="cast to the model's") as caught:
        load_checkpoint(path, model=SPEC)
    assert {w.filename for w in caught} == {__file__}
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning) as caught:
        run_assay([broken], model=SPEC, progress=False)
    assert caught and {w.filename for w in caught} == {__file__}
