"""The committed fixtures are what fixtures/make_fixtures.py produces, bit for bit."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from helpers.paths import FIXTURES


def _make_fixtures():
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fixtures_are_small() -> None:
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    assert total < 5 * 2**20


def test_regenerating_a_fixture_is_bit_identical(tmp_path: Path) -> None:
    record = json.loads((FIXTURES / "FIXTURES.json").read_text())
    here = (torch.__version__.split("+")[0], torch.backends.cpu.get_cpu_capability())
    if here != (record["torch"], record["cpu_capability"]):
        pytest.skip(f"fixtures were made with torch {record['torch']} on {record['cpu_capability']}; "
                    f"this is {here}")
    threads = torch.get_num_threads()
    try:
        hashes = _make_fixtures().make(tmp_path, ["relu_mlp"])
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
    assert hashes["relu_mlp"] == record["sha256"]["relu_mlp"]
