"""Models whose forward returns a tuple, dict or object holding the logits: `--output`
(resetassay/discovery/outputs.py).

The same FunctionalMLP weights return their logits plain or wrapped; every wrapped form, read with the
default rule or an explicit `--output` path, must give the same UnitTable as the plain one (exactly: the
same computation), with both lesion engines, from Python and from the CLI. Also `inspect --input-shape`.
"""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from helpers.foreign_models import wrapped_output_mlp
from safetensors.torch import save_file
from torch import fx
from typer.testing import CliRunner

from resetassay.cli import app
from resetassay.discovery.outputs import default_path, select_output
from resetassay.errors import BadInputError
from resetassay.pipeline.assay import AssayConfig, assay_model

runner = CliRunner()
CONFIG = dict(utilities=["gxd", "activation", "contribution", "oracle"], metrics=["l1", "kl"], joint=False)


def _data() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(80, 64, generator=g)
    y = torch.randint(0, 10, (80,), generator=g)
    return (x[:40], y[:40]), (x[40:], y[40:])


@pytest.fixture(scope="module")
def plain_units() -> dict[str, pd.DataFrame]:
    calib, probe = _data()
    return {engine: assay_model(wrapped_output_mlp(1), calib, probe, config=AssayConfig(engine=engine, **CONFIG)).units
            for engine in ("fast", "plain")}


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fast", "plain"])
@pytest.mark.parametrize(("wrap", "output"), [("tuple", None), ("tuple", "0"), ("dict", None), ("dict", "logits"),
                                              ("object", None), ("object", "logits"), ("nested", "out.1")])
def test_wrapped_logits_give_the_plain_models_unit_table(plain_units, wrap, output, engine, recwarn):
    calib, probe = _data()
    config = AssayConfig(engine=engine, output=output, **CONFIG)
    units = assay_model(wrapped_output_mlp(1, wrap), calib, probe, config=config).units
    pd.testing.assert_frame_equal(units, plain_units[engine])
    said = [str(w.message) for w in recwarn if "reading its logits from" in str(w.message)]
    assert bool(said) == (output is None)


def test_default_path_prefers_logits_then_the_first_tensor_depth_first():
    t = torch.zeros(2, 3)
    assert default_path({"features": t, "logits": t}) == "logits"
    assert default_path((t, t)) == "0"
    assert default_path({"aux": {"n": 1}, "out": [1, (t,)]}) == "out.1.0"
    assert default_path({"n": 1}) is None


def test_selection_keeps_names_state_and_traces_and_copies():
    model = wrapped_output_mlp(1, "dict")
    x = torch.rand(4, 64)
    selected = select_output(model, "logits", x)
    assert list(selected.state_dict()) == list(model.state_dict())
    assert all(a is b for a, b in zip(selected.parameters(), model.parameters(), strict=True))
    assert dict(selected.named_modules()).keys() == dict(model.named_modules()).keys()
    torch.testing.assert_close(fx.symbolic_trace(selected)(x), model(x)["logits"], rtol=0, atol=0)
    torch.testing.assert_close(copy.deepcopy(selected)(x), model(x)["logits"], rtol=0, atol=0)
    assert isinstance(model(x), dict)  # the user's model is unchanged


@pytest.mark.parametrize(("wrap", "output", "message"), [
    ("dict", "probs", "no 'probs' in what the model returns, a dict with keys features, logits"),
    ("tuple", "5", "no '5' in what the model returns, a tuple of 2 items"),
    ("dict", "logits.0", "no '0' in 'logits', a tensor of shape (2, 10); the model returns a dict with keys features"),
    ("nested", "out.1.T", "no 'T' in 'out.1', a tensor of shape (2, 10); the model returns a"),
    ("nested", "out", "selects a tuple of 2 items (0: tensor (2, 3), 1: tensor (2, 10)), not logits"),
    ("none", None, "with no tensor in it"),
    ("dict", " . ", "give a key, attribute or index path"),
])
def test_bad_output_paths_are_one_line_errors_naming_the_flag(wrap, output, message):
    calib, probe = _data()
    with pytest.raises(BadInputError, match="(?s)^(?!.*\n).*") as caught:
        assay_model(wrapped_output_mlp(1, wrap), calib, probe, config=AssayConfig(output=output, **CONFIG))
    assert message in str(caught.value) and caught.value.field == "output"


def _state(tmp_path, wrap: str) -> str:
    path = tmp_path / f"{wrap}.safetensors"
    save_file(wrapped_output_mlp(1, wrap).state_dict(), path)
    return str(path)


@pytest.mark.slow
def test_cli_run_reads_the_logits_with_output_and_matches_the_plain_run(tmp_path):
    common = ["--data", "digits", "--calib-size", "50", "--probe-size", "50", "--utilities", "gxd,oracle",
              "--no-joint", "--quiet"]
    runs = {}
    for wrap, extra in (("tensor", []), ("nested", ["--output", "out.1"])):
        out = tmp_path / wrap
        result = runner.invoke(app, ["run", _state(tmp_path, wrap), "--model",
                                     "helpers.foreign_models:wrapped_output_mlp", "--model-kwargs",
                                     f'{{"wrap": "{wrap}"}}', "--out", str(out), *common, *extra])
        assert result.exit_code == 0, result.output
        runs[wrap] = pd.read_csv(out / "units.csv").drop(columns="checkpoint")
    pd.testing.assert_frame_equal(runs["nested"], runs["tensor"])
    bad = runner.invoke(app, ["run", _state(tmp_path, "dict"), "--model", "helpers.foreign_models:wrapped_output_mlp",
                              "--model-kwargs", '{"wrap": "dict"}', "--output", "probs", "--out", str(tmp_path / "bad"),
                              *common])
    assert bad.exit_code == 2 and "--output 'probs'" in bad.output


def test_cli_inspect_lists_unit_layers_from_an_input_shape_without_data(tmp_path):
    state = _state(tmp_path, "dict")
    args = ["inspect", state, "--model", "helpers.foreign_models:wrapped_output_mlp", "--model-kwargs",
            '{"wrap": "dict"}']
    result = runner.invoke(app, [*args, "--input-shape", "64"])
    assert result.exit_code == 0, result.output
    for name in ("relu@0", "relu@1", "tanh@0"):
        assert name in result.output
    assert runner.invoke(app, args).exit_code == 2  # no data record, no shape
    wrong = runner.invoke(app, [*args, "--input-shape", "3,5"])
    assert wrong.exit_code == 2 and "--input-shape 3,5: the model does not take inputs" in wrong.output
    both = runner.invoke(app, [*args, "--input-shape", "64", "--data", "digits"])
    assert both.exit_code == 2 and "--input-shape and --data" in both.output
