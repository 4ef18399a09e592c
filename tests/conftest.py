"""Shared test setup: every test starts from the same torch RNG state; `one_thread` for tiny models; `run_dir`,
one rendered run of two fixtures shared by the report tests."""

from pathlib import Path

import pytest
import torch
from helpers.paths import FIXTURES


@pytest.fixture(autouse=True)
def _seeded_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is faster, and immune to a loaded machine's thread contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two fixtures (ReLU and SiLU MLP, two checkpoints each), four utilities, rendered once. Read-only: copy it
    before changing anything."""
    from resetassay.pipeline.run import run_assay

    out = tmp_path_factory.mktemp("report")
    result = run_assay([FIXTURES / "silu_mlp", FIXTURES / "relu_mlp"], utilities=["gxd", "activation", "random",
                                                                                  "oracle"], progress=False)
    result.save(out)
    return out
