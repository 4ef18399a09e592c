"""A run shared by torchrun ranks (shard.py, DESIGN "Beyond one machine"): the tables equal the single-process
run's byte for byte whatever the number of ranks; a stopped launch keeps its finished items and a launch with
another number of ranks completes them; errors reach every rank instead of leaving them waiting."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.paths import FIXTURES, ROOT
from helpers.ranks import kill_after_chunks, launch
from torch import nn

import resetassay.pipeline.assay
import resetassay.pipeline.shard
import resetassay.report
from resetassay import run_assay
from resetassay.names import PARTS, TABLES
from resetassay.pipeline.shard import CALIBRATION, assign, downstream_flops

# Small chunks, so that each 64-unit layer is three work items (the last one short) spread over the ranks.
CHUNK = 24
pytestmark = pytest.mark.slow  # gloo ranks and torchrun: `-m "not slow"` leaves them out
SMALL = {"utilities": ["gxd", "activation", "oracle"], "metrics": ["l1", "kl"], "calib_size": 64, "probe_size": 64,
         "progress": False}


def _tables(run_dir: Path) -> dict[str, bytes]:
    return {name: (run_dir / name).read_bytes() for name in [*(f"{t}.csv" for t in TABLES), "run.json"]}


def _small_chunks_no_report() -> None:
    """CHUNK-unit work items; no figures or report (rendering is tested elsewhere; these tests compare tables)."""
    resetassay.pipeline.assay.LESION_CHUNK = CHUNK
    resetassay.report.render = lambda out: Path(out) / "report.md"


def _sharded_run(rank: int, paths: list[str], out: str, crash_after: int | None = None) -> int:
    """One rank of a run with CHUNK-unit chunks; with `crash_after`, rank 1 crashes after that many chunks."""
    _small_chunks_no_report()
    if crash_after is not None and rank == 1:
        kill_after_chunks(crash_after)
    return len(run_assay(paths, out=out, **SMALL).units)


def _counted_run(rank: int, paths: list[str], out: str) -> int:
    """One rank of a run that counts the chunks it lesions (a resumed launch does only the missing ones)."""
    _small_chunks_no_report()
    real, done = resetassay.pipeline.shard.lesion_chunk, []

    def counted(*args, **kwargs):
        done.append(1)
        return real(*args, **kwargs)

    resetassay.pipeline.shard.lesion_chunk = counted
    run_assay(paths, out=out, **SMALL)
    return len(done)


def _sequential_run(rank: int, paths: list[str], out: str) -> int:
    """One rank of a sequential run (SPEC S4b): its work items are whole layers, with each estimate's redraws."""
    _small_chunks_no_report()
    return len(run_assay(paths, out=out, sequential=0.9, **SMALL).units)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    """The two ReLU MLP checkpoints and one LayerNorm one, assayed in one process with CHUNK-unit chunks."""
    paths = [str(FIXTURES / "relu_mlp"), str(FIXTURES / "layernorm_mlp" / "task2")]
    out = tmp_path_factory.mktemp("single") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(resetassay.pipeline.assay, "LESION_CHUNK", CHUNK)
        mp.setattr(resetassay.report, "render", lambda out: Path(out) / "report.md")
        run_assay(paths, out=out, **SMALL)
    return paths, out


@pytest.mark.parametrize("size", [2, 3])
def test_sharded_tables_equal_the_single_process_run_byte_for_byte(single, tmp_path, size):
    paths, alone = single
    results = launch(size, _sharded_run, paths, str(tmp_path / "run"))
    assert [r[0] for r in results] == ["ok"] * size, results
    assert len({r[1] for r in results}) == 1  # every rank returns the whole result
    assert _tables(tmp_path / "run") == _tables(alone)
    assert not [p for p in (tmp_path / "run" / PARTS).iterdir() if p.is_dir()]  # work items removed once merged


def test_a_sequential_run_shared_by_ranks_equals_the_single_process_one(tmp_path, monkeypatch, one_thread):
    """The work items of a sequential run carry what the rank rule reads after every layer is done (the redraws of
    each estimate, beside its shock, SE and probes): two ranks give the single process's tables byte for byte (on
    one thread each, as the ranks run: a round's small passes round differently on two)."""
    paths = [str(FIXTURES / "relu_mlp" / "task4")]
    monkeypatch.setattr(resetassay.report, "render", lambda out: Path(out) / "report.md")
    run_assay(paths, out=tmp_path / "alone", sequential=0.9, **SMALL)
    results = launch(2, _sequential_run, paths, str(tmp_path / "run"))
    assert [r[0] for r in results] == ["ok"] * 2, results
    assert _tables(tmp_path / "run") == _tables(tmp_path / "alone")


def test_a_stopped_launch_keeps_its_items_and_another_world_size_finishes_them(single, tmp_path):
    paths, alone = single
    out = tmp_path / "run"
    results = launch(3, _sharded_run, paths, str(out), 1)
    assert results[1][0] == "error" and "rank 1 killed" in results[1][1]
    assert all(r[0] == "error" and "another rank stopped the run" in r[1] for r in (results[0], results[2]))
    items = sorted(p.name for d in (out / PARTS).iterdir() if d.is_dir() for p in d.iterdir())
    assert items.count(f"{CALIBRATION}.safetensors") == 3  # every checkpoint calibrated, some chunks lesioned
    lesioned = len(items) - 3
    assert lesioned > 0
    resumed = launch(2, _counted_run, paths, str(out))
    total_chunks = 3 * 3 * 3  # three checkpoints, three layers, three chunks each
    assert sum(r[1] for r in resumed) == total_chunks - lesioned
    assert _tables(out) == _tables(alone)


def _bad_commands(rank: int, paths: list[str], out: str) -> list[str]:
    """The one-line errors of two bad commands, on this rank: a --layers glob that matches nothing, no --out."""
    from resetassay.errors import BadInputError

    messages = []
    for kwargs in ({"out": out, "layers": ["no.such.layer"]}, {}):
        try:
            run_assay(paths, **kwargs, **SMALL)
        except BadInputError as err:
            messages.append(f"{err.field}: {err}")
    return messages


def test_a_bad_command_stops_every_rank_with_its_one_line_error(single, tmp_path):
    results = launch(2, _bad_commands, single[0], str(tmp_path / "run"))
    assert [r[0] for r in results] == ["ok", "ok"], results
    for _, (layers, out) in results:
        assert layers.startswith("layers: `layers` ") and "no.such.layer" in layers
        assert out.startswith("out: `out`: ") and "torchrun" in out


def test_assign_balances_costs_the_same_way_for_any_caller():
    costs = [5.0, 1.0, 4.0, 4.0, 2.0, 3.0, 3.0, 1.0]
    owners = assign(costs, 3)
    assert owners == assign(list(costs), 3)
    loads = [sum(c for c, o in zip(costs, owners, strict=True) if o == r) for r in range(3)]
    assert max(loads) - min(loads) <= max(costs)  # greedy, costliest first: within one item of even
    assert sorted(loads) == [7.0, 8.0, 8.0]
    assert assign(costs, 1) == [0] * len(costs)
    assert assign([], 4) == []


def test_downstream_flops_count_what_a_lesion_recomputes():
    from resetassay.discovery.units import unit_layers

    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    layers = unit_layers(net, torch.randn(2, 6), None)
    flops = downstream_flops(net, layers, torch.randn(7, 6))
    # after the first ReLU: Linear(5,4) 20, ReLU 4, Linear(4,3) 12; after the second: 12; plus one each
    assert flops == {"1": 20 + 4 + 12 + 1, "3": 12 + 1}


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun is not installed next to this Python")
def test_torchrun_launches_the_command_line_and_rank_zero_writes_the_report(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    args = ["-m", "resetassay", "run", str(FIXTURES / "cnn" / "task2"), "--utilities", "gxd,oracle", "--metrics",
            "l1", "--calib-size", "64", "--probe-size", "64", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    alone = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "alone")], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr
    launched = subprocess.run([torchrun, "--nproc-per-node", "2", *args, "--out", str(tmp_path / "ranks")], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr
    assert launched.stdout.count("wrote ") == 1  # rank 0 alone prints and reports
    assert _tables(tmp_path / "ranks") == _tables(tmp_path / "alone")
    assert (tmp_path / "ranks" / "report.md").exists()
    refused = subprocess.run([torchrun, "--nproc-per-node", "2", *args, "--layers", "no.such", "--out",
                              str(tmp_path / "bad")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0
    assert [line for line in refused.stderr.splitlines() if line.startswith("error:")] == [
        "error: --layers no.such matched no unit layer; available: blocks.0.act, blocks.1.act"]  # once, by rank 0


def test_a_single_process_run_stopped_mid_checkpoint_resumes_from_its_chunks(single, tmp_path, monkeypatch):
    """Without torchrun too, each lesion chunk is kept as it finishes: a run stopped (Ctrl-C) after 4 chunks
    lesions only the other 23 when rerun, and its tables equal an uninterrupted run's byte for byte."""
    from resetassay.io.rundir import RunInterrupted

    paths, alone = single
    out = tmp_path / "run"
    monkeypatch.setattr(resetassay.pipeline.assay, "LESION_CHUNK", CHUNK)
    monkeypatch.setattr(resetassay.report, "render", lambda out: Path(out) / "report.md")
    real, calls = resetassay.pipeline.shard.lesion_chunk, []

    def stopped(*args, **kwargs):
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(resetassay.pipeline.shard, "lesion_chunk", stopped)
    with pytest.raises(RunInterrupted, match="resume"):
        run_assay(paths, out=out, **SMALL)
    assert len([p for d in (out / PARTS).iterdir() if d.is_dir() for p in d.glob("lesions-*")]) == 4
    calls.clear()
    monkeypatch.setattr(resetassay.pipeline.shard, "lesion_chunk", lambda *a, **k: calls.append(1) or real(*a, **k))
    run_assay(paths, out=out, **SMALL)
    assert len(calls) == 3 * 3 * 3 - 4
    assert _tables(out) == _tables(alone)
    assert not [p for p in (out / PARTS).iterdir() if p.is_dir()]  # work items removed once merged
