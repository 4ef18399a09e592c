"""The `torchvision:NAME` and `timm:NAME` model routes with the real libraries (issue 25), through the command line.

Models are built from their configs with random weights (never downloaded), saved as a user saves them (a
safetensors state dict, a `.pt` state dict), and assayed on digits resized to 3 x 16 x 16 (SPEC S1, S4, S5); the
fast engine must equal the plain one (SPEC S4; tolerance of tests/helpers/engines.py with a 2e-5 floor for
BatchNorm folding's rounding). PyPI's torchvision does not import beside the pinned CPU torch, so these tests skip
in the main venv and run in .ci/run's second environment, which sets RESETASSAY_REQUIRE_VISION: there they fail
instead of skipping. CONTRIBUTING.md ("The real torchvision and timm") says how to run them locally.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers.engines import REL
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from typer.testing import CliRunner

from resetassay.cli import app


def _library(name: str) -> ModuleType:
    """The library, or a skip with a one-line reason (a failure where RESETASSAY_REQUIRE_VISION is set)."""
    try:
        return importlib.import_module(name)
    except Exception as err:  # not installed, or built for another torch: "operator torchvision::nms does not exist"
        if os.environ.get("RESETASSAY_REQUIRE_VISION"):
            raise
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        pytest.skip(f"{name} does not import here ({reason})", allow_module_level=True)


torchvision = _library("torchvision")
timm = _library("timm")

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
FLOOR = 2e-5  # BatchNorm folding's rounding, as tests/test_examples.py
RESNET_SITES = ["relu", *[f"layer{s}.{b}.relu@{k}" for s in range(1, 5) for b in range(2) for k in range(2)]]
TIMM_RESNET_SITES = ["act1", *[f"layer{s}.{b}.act{k}" for s in range(1, 5) for b in range(2) for k in (1, 2)]]


@pytest.fixture(scope="module")
def digits16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 digits as 3 x 16 x 16 images in [0, 1] with their labels, a tensor file (docs/guide/data.md)."""
    digits = load_digits()
    x = torch.tensor(digits.images[:96], dtype=torch.float32)[:, None] / 16
    x = F.interpolate(x, size=16, mode="bilinear").repeat(1, 3, 1, 1).contiguous()
    path = tmp_path_factory.mktemp("data") / "digits16.safetensors"
    save_file({"x": x, "y": torch.tensor(digits.target[:96])}, path)
    return path


def _assay(ckpt: Path, model: str, kwargs: dict, data: Path, out: Path, *flags: str) -> Path:
    """`resetassay run` on one state dict: gxd, activation and the oracle, the l1 shock, 48 + 48 examples."""
    args = ["run", str(ckpt), "--model", model, "--model-kwargs", json.dumps(kwargs), "--data", str(data),
            "--calib-size", "48", "--probe-size", "48", "--utilities", "gxd,activation,oracle", "--metrics", "l1",
            "--figures", "none", "--quiet", "--out", str(out), *flags]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def _check_tables(out: Path, layers: list[str], *kinds: str) -> pd.DataFrame:
    """The tables are written, hold the expected unit layers, and gxd's Spearman rho is finite (SPEC S5)."""
    for name in ("units.csv", "summary.csv", "notes.csv", "checkpoints.csv", "run.json", "report.md"):
        assert (out / name).stat().st_size > 0, name
    units = pd.read_csv(out / "units.csv")
    assert list(dict.fromkeys(units["layer"])) == layers
    assert set(units["kind"]) == set(kinds)
    assert units["shock_l1"].notna().all() and units["shock_l1"].gt(0).any()
    summary = pd.read_csv(out / "summary.csv")
    rho = summary.query("utility == 'gxd' and scope == 'ALL'")["spearman"]
    assert len(rho) == 1 and math.isfinite(float(rho.iloc[0]))
    return units


def _assert_fast_equals_plain(fast: pd.DataFrame, plain: pd.DataFrame) -> None:
    """Per layer, max |fast - plain| <= REL * max |plain| + FLOOR (tests/helpers/engines.py's rule)."""
    key = ["layer", "unit"]
    both = fast.set_index(key)["shock_l1"].to_frame("fast").join(plain.set_index(key)["shock_l1"].rename("plain"),
                                                                   how="outer")
    assert both.notna().all().all()
    for layer, rows in both.groupby(level="layer"):
        error = float((rows["fast"] - rows["plain"]).abs().max())
        assert error <= REL * float(rows["plain"].abs().max()) + FLOOR, f"{layer}: max error {error:.3g}"


def _inspect(ckpt: Path, model: str, kwargs: dict, data: Path) -> tuple[str, list[str]]:
    """`resetassay inspect` on one state dict: the discovery route and the unit layers' names, in forward order."""
    result = runner.invoke(app, ["inspect", str(ckpt), "--model", model, "--model-kwargs", json.dumps(kwargs),
                                 "--data", str(data)], terminal_width=300)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    title = next(i for i, line in enumerate(lines) if "(unit layers found by: " in line)
    route = lines[title].split("(unit layers found by: ", 1)[1].rstrip(")")
    return route, [line.split()[0] for line in lines[title + 2:] if line.strip()]


def test_torchvision_imports_with_its_compiled_operators():
    """The environment itself: torchvision's C++ operators load beside this torch (the failure PyPI's build shows
    beside the CPU torch 2.13.0 wheel)."""
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.1, 1.1], [5.0, 5.0, 6.0, 6.0]])
    kept = torch.ops.torchvision.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
    assert kept.tolist() == [0, 2]


@pytest.mark.slow
def test_torchvision_resnet18_safetensors_through_the_cli(digits16: Path, tmp_path: Path):
    """torchvision's ResNet-18: 17 unit layers traced (the shared relu's calls); `run` writes its tables, and the
    fast engine equals the plain one."""
    torch.manual_seed(0)
    ckpt = tmp_path / "resnet18.safetensors"
    save_file(torchvision.models.get_model("resnet18", weights=None, num_classes=10).state_dict(), ckpt)
    spec, kwargs = "torchvision:resnet18", {"num_classes": 10}
    assert _inspect(ckpt, spec, kwargs, digits16) == ("fx", RESNET_SITES)
    chosen, sites = ["--layers", "relu,layer4.1.relu@1", "--units-per-layer", "4"], ["relu", "layer4.1.relu@1"]
    fast = _check_tables(_assay(ckpt, spec, kwargs, digits16, tmp_path / "fast", *chosen), sites, "conv")
    plain = _check_tables(_assay(ckpt, spec, kwargs, digits16, tmp_path / "plain", *chosen, "--engine", "plain"),
                          sites, "conv")
    assert pd.read_csv(tmp_path / "fast" / "checkpoints.csv")["n_classes"].tolist() == [10]
    _assert_fast_equals_plain(fast, plain)


@pytest.mark.slow
def test_torchvision_mobilenet_v3_small_squeeze_excitation_units(digits16: Path, tmp_path: Path):
    """torchvision's MobileNetV3-Small: Hardswish/ReLU after BatchNorm, the squeeze-excitation ReLU between its
    fc1 and fc2 (producer and consumer both known), the classifier's Hardswish; fast equal to plain on these."""
    torch.manual_seed(0)
    ckpt = tmp_path / "mobilenet.safetensors"
    save_file(torchvision.models.get_model("mobilenet_v3_small", weights=None, num_classes=10).state_dict(), ckpt)
    spec, kwargs = "torchvision:mobilenet_v3_small", {"num_classes": 10}
    route, layers = _inspect(ckpt, spec, kwargs, digits16)
    squeeze = [f"features.{i}.block.{1 if i == 1 else 2}.activation" for i in (1, *range(4, 12))]
    assert route == "fx" and len(layers) == 33 and layers[0] == "features.0.2" and layers[-1] == "classifier.1"
    assert [name for name in layers if name.endswith(".activation")] == squeeze
    chosen = ["features.4.block.0.2", "features.4.block.2.activation", "classifier.1"]
    flags = ["--layers", ",".join(chosen), "--units-per-layer", "4"]
    fast = _check_tables(_assay(ckpt, spec, kwargs, digits16, tmp_path / "fast", *flags), chosen, "conv", "linear")
    plain = _check_tables(_assay(ckpt, spec, kwargs, digits16, tmp_path / "plain", *flags, "--engine", "plain"),
                          chosen, "conv", "linear")
    _assert_fast_equals_plain(fast, plain)


def test_timm_resnet18_pt_state_dict_through_the_cli(digits16: Path, tmp_path: Path):
    """timm's ResNet-18 (its own module names: act1, act2), saved with torch.save as a state dict."""
    torch.manual_seed(0)
    ckpt = tmp_path / "resnet18.pt"
    torch.save(timm.create_model("resnet18", pretrained=False, num_classes=10).state_dict(), ckpt)
    spec, kwargs = "timm:resnet18", {"num_classes": 10}
    assert _inspect(ckpt, spec, kwargs, digits16) == ("fx", TIMM_RESNET_SITES)
    out = _assay(ckpt, spec, kwargs, digits16, tmp_path / "run", "--layers", "act1,layer3.1.act2",
                 "--units-per-layer", "4")
    _check_tables(out, ["act1", "layer3.1.act2"], "conv")


def test_timm_vit_is_assayed_by_heads_and_neurons_fast_equal_to_plain(digits16: Path, tmp_path: Path):
    """timm's ViT-Tiny at 16 x 16 (patch 4, two blocks): attention heads and MLP neurons (SPEC S9), and the fast
    engine equals the plain one on both kinds."""
    torch.manual_seed(0)
    kwargs = {"num_classes": 10, "img_size": 16, "patch_size": 4, "depth": 2}
    ckpt = tmp_path / "vit.safetensors"
    save_file(timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs).state_dict(), ckpt)
    spec, chosen = "timm:vit_tiny_patch16_224", ["--units-per-layer", "3"]
    layers = ["blocks.0.attn.heads", "blocks.0.mlp.act", "blocks.1.attn.heads", "blocks.1.mlp.act"]
    fast = _check_tables(_assay(ckpt, spec, kwargs, digits16, tmp_path / "fast", *chosen), layers, "head", "token")
    plain = _check_tables(_assay(ckpt, spec, kwargs, digits16, tmp_path / "plain", *chosen, "--engine", "plain"),
                          layers, "head", "token")
    assert fast.groupby("layer")["kind"].first().to_dict() == dict(zip(layers, ["head", "token"] * 2, strict=True))
    assert fast.groupby("layer").size().tolist() == [3, 3, 3, 3]
    _assert_fast_equals_plain(fast, plain)
