"""Bad input through the CLI (tests/test_bad_input.py), part: data and models that are not what they say (issue 24).
Each case is `resetassay run` on a plain state dict of the relu_mlp fixture with `--model` and `--data`: one `error:`
line naming the data (or the model spec) and what to do, exit 2, and no table written."""

from __future__ import annotations

import io
import sys
import tarfile
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import SMALL, invoke, one_error
from helpers.paths import FIXTURES

from resetassay import load_checkpoint
from resetassay.names import PARTS


@pytest.fixture
def state_dict(tmp_path) -> Path:
    """relu_mlp/task2's weights as a plain state dict (an MLP of 64 inputs and 10 classes)."""
    path = tmp_path / "model.pt"
    torch.save(load_checkpoint(FIXTURES / "relu_mlp" / "task2").model.state_dict(), path)
    return path


def _run(state_dict: Path, data: object, *more: object, model: str = "resetassay.models:mlp"):
    out = state_dict.parent / "run"
    result = invoke("run", state_dict, "--model", model, "--data", data, *more, "--out", out, *SMALL)
    return result, out


def _png(path: Path, seed: int = 0) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)


def _empty_class_folder(tmp: Path) -> tuple[Path, str]:
    """Classes a, b, c with b empty: left out, c would take b's label."""
    for klass in ("a", "c"):
        for i in range(3):
            _png(tmp / "images" / klass / f"{i}.png", i)
    (tmp / "images" / "b").mkdir()
    return tmp / "images", "class folder b holds no image"


def _tar(path: Path, names: list[str]) -> Path:
    """A tar of one 8x8 PNG under each of `names`, written as given (tarfile.add would strip a leading '/')."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(buffer, format="png")
    with tarfile.open(path, "w") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = len(buffer.getvalue())
            tar.addfile(info, io.BytesIO(buffer.getvalue()))
    return path


def _escaping_tar(tmp: Path) -> tuple[Path, str]:
    """Every member leaves the archive's folder (through '..' or absolute): skipped, and the error says why."""
    path = _tar(tmp / "images.tar", ["../outside/a/0.png", "/abs/b/0.png"])
    return path, "2 archive members were skipped: their paths leave the archive's folder, absolute or through '..'"


def _overflowing_float64(tmp: Path) -> tuple[Path, str]:
    """Finite float64 inputs beyond float32's range: named as overflow, not as 'NaN or Inf'."""
    from safetensors.torch import save_file

    x = torch.rand(80, 64, dtype=torch.float64)
    x[3, 5] = 1e300
    save_file({"x": x, "y": torch.randint(0, 10, (80,))}, tmp / "big.safetensors")
    return tmp / "big.safetensors", "inputs overflow float32 (example 3 holds 1e+300"


def _factory(tmp: Path, body: str) -> str:
    """`--data my_data_<n>:make` defined by `body` in a module in the working folder (on sys.path)."""
    name = f"my_data_{zlib.crc32(body.encode()):x}"
    (tmp / f"{name}.py").write_text(f"import itertools\nimport torch\n\n\ndef make():\n    {body}\n")
    return f"{name}:make"


def _endless_generator(tmp: Path) -> tuple[str, str]:
    """It hung: now bounded, refused past MAX_ITERATED_EXAMPLES."""
    spec = _factory(tmp, "return ((torch.zeros(50_000, 64), torch.zeros(50_000, dtype=torch.long)) "
                         "for _ in itertools.count())")
    return spec, "yielded more than 500,000 examples without ending; return a finite iterable"


def _dict_without_inputs(tmp: Path) -> tuple[str, str]:
    """A dict is one batch (it was iterated by its keys): without inputs under a known name, it says so."""
    spec = _factory(tmp, "return {'pixels': torch.zeros(80, 64), 'y': torch.zeros(80, dtype=torch.long)}")
    return spec, "a batch dict needs inputs (pixel_values, image, img, input_ids, x, inputs, features)"


DATA = {"image folder with an empty class folder": _empty_class_folder, "tar whose members escape": _escaping_tar,
        "float64 overflowing float32": _overflowing_float64, "factory: endless generator": _endless_generator,
        "factory: dict without inputs": _dict_without_inputs}


@pytest.mark.parametrize("make", DATA.values(), ids=DATA.keys())
def test_data_that_is_not_what_it_says_is_one_line_exit_2(state_dict, tmp_path, monkeypatch, make):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    data, needle = make(tmp_path)
    result, out = _run(state_dict, data)
    one_error(result, 2, str(data), needle)
    assert not (out / "units.csv").exists()


def test_a_factory_returning_a_dict_of_x_and_y_is_one_batch(state_dict, tmp_path, monkeypatch):
    """Iterated by its keys, the dict was a batch 'x' and a batch 'y' of strings: a misleading error."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = _factory(tmp_path, "g = torch.Generator().manual_seed(0)\n    "
                              "return {'x': torch.rand(200, 64, generator=g), 'y': torch.randint(0, 10, (200,))}")
    result, out = _run(state_dict, spec)
    assert result.exit_code == 0, result.output
    assert len(list((out / PARTS).glob("*.json"))) == 2  # config.json and the checkpoint's part


def test_an_unknown_transformers_type_does_not_suggest_a_list_models(state_dict, monkeypatch):
    """transformers has no list_models() (the hint named it): the hint names the mapping of causal-LM types. A
    stand-in transformers module (the library is an extra) holding that mapping."""
    auto = types.SimpleNamespace(modeling_auto=types.SimpleNamespace(
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES={"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}))
    fake = types.ModuleType("transformers")
    fake.models = types.SimpleNamespace(auto=auto)
    monkeypatch.setitem(sys.modules, "transformers", fake)
    result, out = _run(state_dict, "digits", model="transformers:zzz")
    line = one_error(result, 2, "--model 'transformers:zzz': transformers has no model 'zzz'",
                     "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES lists them")
    assert "list_models" not in line
    assert not (out / PARTS).exists()


def test_archive_members_that_escape_among_good_ones_are_skipped_with_a_warning_saying_why(state_dict, tmp_path):
    """The images inside are assayed; the member leaving the archive is left out, and a warning says so (it was
    dropped silently: the user's data shrank without a word)."""
    from resetassay.models import create_model

    kwargs = '{"in_features": 192, "widths": [16], "n_classes": 2}'
    torch.save(create_model("mlp", in_features=192, widths=[16], n_classes=2).state_dict(), state_dict)
    names = [f"{c}/{i}.png" for c in "ab" for i in range(40)]
    path = _tar(tmp_path / "images.tar", [*names, "../outside/a/0.png"])
    result, _ = _run(state_dict, path, "--model-kwargs", kwargs)
    assert result.exit_code == 0, result.output
    assert "1 archive member was skipped: its path leaves the archive's folder" in " ".join(result.stderr.split())
