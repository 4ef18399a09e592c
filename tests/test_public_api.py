"""The public API (issue 23 item 4): what `import resetassay` offers a notebook, each package's `__all__`, the
documented and runnable examples of every root export, and `assay_model` taking AssayConfig fields as keywords
as `run_assay` does."""

from __future__ import annotations

import pytest
import torch

import resetassay as ra


def _net_and_data():
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.randn(48, 4, generator=g), torch.randint(0, 3, (48,), generator=g)
    return net, (x[:24], y[:24]), (x[24:], y[24:])


def test_assay_model_takes_config_fields_as_keywords_like_run_assay(one_thread):
    net, calib, probe = _net_and_data()
    by_keywords = ra.assay_model(net, calib, probe, utilities=["gxd"], metrics=["l1"])
    by_config = ra.assay_model(net, calib, probe, ra.AssayConfig(utilities=["gxd"], metrics=["l1"]))
    assert by_keywords.config == by_config.config
    assert by_keywords.units.equals(by_config.units) and by_keywords.summary.equals(by_config.summary)
    # keywords replace the fields of a given config, as run_assay's do
    merged = ra.assay_model(net, calib, probe, ra.AssayConfig(utilities=["gxd"], metrics=["l1"], seed=3),
                            layers=["1"], q=0.25)
    assert (merged.config.seed, merged.config.q, merged.config.layers) == (3, 0.25, ["1"])


@pytest.mark.parametrize("call", ["assay_model", "run_assay"])
def test_an_unknown_keyword_is_a_type_error_naming_it(call):
    net, calib, probe = _net_and_data()
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'utilites' \(did you mean utilities\?\)"):
        if call == "assay_model":
            ra.assay_model(net, calib, probe, utilites=["gxd"])
        else:
            ra.run_assay(["fixtures/relu_mlp"], utilites=["gxd"], progress=False)


def test_assay_model_refuses_a_config_that_is_not_one():
    net, calib, probe = _net_and_data()
    with pytest.raises(TypeError, match=r"config must be an AssayConfig, not list; .*layers="):
        ra.assay_model(net, calib, probe, ["1"])  # the old fourth positional argument, layers


def test_a_bad_config_value_given_as_keyword_is_a_bad_input_error():
    net, calib, probe = _net_and_data()
    with pytest.raises(ra.BadInputError):
        ra.assay_model(net, calib, probe, q=2.0)
