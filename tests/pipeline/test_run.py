"""Resumable, atomic, reproducible runs (DESIGN "Runs are resumable"): a killed or interrupted run loses at
most the checkpoint in flight, a rerun finishes it with the tables of an uninterrupted run, and a run
directory never mixes results of two configs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers.paths import FIXTURES, ROOT
from typer.testing import CliRunner

import resetassay
import resetassay.pipeline.run
import resetassay.report
from resetassay import run_assay
from resetassay.cli import app
from resetassay.errors import BadInputError
from resetassay.io.rundir import IDENTITY
from resetassay.names import PARTS, TABLES

runner = CliRunner()
# Six MLP checkpoints, about 0.1 s each: a kill 5 ms after the first part lands well before the last one;
# one metric and three utilities keep the report quick.
FAST = ["--utilities", "gxd,activation,random", "--metrics", "l1", "--calib-size", "64", "--probe-size", "64",
        "--quiet"]
SMALL = {"utilities": ["gxd", "activation"], "metrics": ["l1"], "calib_size": 32, "probe_size": 32, "joint": False}


def _copy(names: list[str], into: Path) -> Path:
    """Copy fixture families into `into` (a test may change them; the key hashes their files)."""
    for name in names:
        shutil.copytree(FIXTURES / name, into / name, ignore=shutil.ignore_patterns("accuracy.csv"))
    return into


def _tables(run_dir: Path) -> dict[str, bytes]:
    return {name: (run_dir / name).read_bytes() for name in [*(f"{t}.csv" for t in TABLES), "run.json"]}


def _parts(run_dir: Path) -> list[Path]:
    """Checkpoint parts (not the identity, nor the work-item folder of a checkpoint in flight)."""
    return sorted(p for p in (run_dir / PARTS).iterdir() if p.name != IDENTITY and not p.is_dir())


@pytest.fixture(scope="module")
def six(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy(["relu_mlp", "silu_mlp", "layernorm_mlp"], tmp_path_factory.mktemp("six"))


def _skip_render(monkeypatch: pytest.MonkeyPatch) -> None:
    """No figures and report.md in tests about a run directory's tables (rendering is tested elsewhere)."""
    monkeypatch.setattr(resetassay.report, "render", lambda out: Path(out) / "report.md")


@pytest.fixture
def no_render(monkeypatch: pytest.MonkeyPatch) -> None:
    _skip_render(monkeypatch)


def _run_in_process(checkpoints: Path, out: Path) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        _skip_render(monkeypatch)
        result = runner.invoke(app, ["run", str(checkpoints), "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def reference(six: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run of the six checkpoints."""
    out = tmp_path_factory.mktemp("reference")
    _run_in_process(six, out)
    return out


@pytest.fixture
def assayed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the checkpoints actually assayed (not skipped) by run_assay."""
    names: list[str] = []
    real = resetassay.pipeline.run.assay_checkpoint

    def counting(ckpt, *args, **kwargs):
        names.append(ckpt.info.name)
        return real(ckpt, *args, **kwargs)

    def counting_items(inputs, *args, **kwargs):  # a run with `out`: the same, its work kept as items
        names.append(inputs.ckpt.info.name)
        return real_items(inputs, *args, **kwargs)

    real_items = resetassay.pipeline.run.assay_with_items
    monkeypatch.setattr(resetassay.pipeline.run, "assay_checkpoint", counting)
    monkeypatch.setattr(resetassay.pipeline.run, "assay_with_items", counting_items)
    return names


def _start(checkpoints: Path, out: Path) -> subprocess.Popen:
    """`resetassay run` in its own process, as a user starts it."""
    command = [sys.executable, "-m", "resetassay.cli", "run", str(checkpoints), "--out", str(out), *FAST]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_interruptible)


def _interruptible() -> None:
    """Ctrl-C as at a terminal: a shell running CI in the background starts children with SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _finished(run_dir: Path) -> list[Path]:
    """Parts under their final name (not temporaries)."""
    return [p for p in _parts(run_dir) if not p.name.startswith(".")] if (run_dir / PARTS).is_dir() else []


def _wait_for_first_part(process: subprocess.Popen, out: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not _finished(out):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint finished in time"
        time.sleep(0.005)


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_gives_the_tables_of_an_uninterrupted_run(six, reference, tmp_path):
    out = tmp_path / "run"
    process = _start(six, out)
    _wait_for_first_part(process, out)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    finished = _finished(out)
    assert 1 <= len(finished) < 6, "the kill must land between the first and the last checkpoint"
    assert not (out / "units.csv").exists()  # no final table from a run that did not finish
    store_before = {p.name: p.read_bytes() for p in finished}
    for part in finished:  # every part visible under its final name is complete
        json.loads(part.read_text())

    result = subprocess.run([sys.executable, "-m", "resetassay.cli", "run", str(six), "--out", str(out), *FAST],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"skipping {len(finished)} of 6 checkpoints" in result.stderr
    assert {p.name: p.read_bytes() for p in finished} == store_before  # finished parts were not redone
    assert not [p for p in (out / PARTS).iterdir() if p.name.startswith(".")]  # temporaries cleaned
    assert _tables(out) == _tables(reference)


@pytest.mark.slow
def test_ctrl_c_keeps_finished_checkpoints_and_says_how_to_resume(six, tmp_path):
    out = tmp_path / "run"
    process = _start(six, out)
    _wait_for_first_part(process, out)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    saved = _finished(out)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1] == (f"interrupted: {len(saved)} of 6 checkpoints saved in {out}; rerun the same command "
                         "to resume")
    assert 1 <= len(saved) < 6
    assert not [p for p in (out / PARTS).iterdir() if p.name.startswith(".")]
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_same_command_twice_gives_byte_identical_tables_and_run_json(six, reference, tmp_path):
    _run_in_process(six, tmp_path)
    assert _tables(tmp_path) == _tables(reference)


@pytest.mark.slow
def test_run_json_records_seeds_versions_device_and_full_config(six, reference):
    info = json.loads((reference / "run.json").read_text())
    assert info["config"]["utilities"] == ["gxd", "activation", "random"] and info["config"]["seed"] == 0
    assert info["device"] == "cpu" and {"torch", "captum", "resetassay", "python"} <= set(info["versions"])
    assert info["seeds"]["calibration_probe_split"] == info["seeds"]["random_utility"] == 0
    manifest = json.loads((FIXTURES / "relu_mlp" / "task2" / "manifest.json").read_text())
    assert info["seeds"]["checkpoints"][f"{six.name}/relu_mlp/task2"] == {
        "training": manifest["meta"]["seed"], "data_split": manifest["data"]["split_seed"],
        "permutation": manifest["data"]["permutation_seed"]}
    assert [c["checkpoint"] for c in info["checkpoints"]] == sorted(
        f"{six.name}/{family}/{task}" for family in ("relu_mlp", "silu_mlp", "layernorm_mlp")
        for task in ("task2", "task4"))
    assert info["config_hash"] == json.loads((reference / PARTS / IDENTITY).read_text())["hash"]
    assert info["failures"] == [] and not (reference / "failures.csv").exists()


@pytest.mark.slow
def test_rerun_skips_finished_checkpoints_and_says_so(tmp_path, no_render, assayed):
    ckpts = _copy(["relu_mlp"], tmp_path / "ck") / "relu_mlp"
    out = tmp_path / "run"
    first = run_assay([ckpts], progress=False, out=out, **SMALL)
    assert assayed == ["relu_mlp/task2", "relu_mlp/task4"]
    notes: list[str] = []
    second = run_assay([ckpts], progress=False, out=out, note=notes.append, **SMALL)
    assert assayed == ["relu_mlp/task2", "relu_mlp/task4"]  # nothing assayed again
    assert notes == [f"skipping 2 of 2 checkpoints finished earlier in {out} (`overwrite` assays them again)"]
    pd.testing.assert_frame_equal(first.units, second.units)


@pytest.mark.slow
def test_final_tables_equal_the_in_memory_result(tmp_path, no_render):
    """The tables go through the parts on disk; their numbers round-trip exactly (float repr)."""
    ckpts = _copy(["silu_mlp"], tmp_path / "ck") / "silu_mlp"
    in_memory = run_assay([ckpts], progress=False, **SMALL)
    run_assay([ckpts], progress=False, out=tmp_path / "run", **SMALL)
    for name in TABLES:
        assert (tmp_path / "run" / f"{name}.csv").read_text() == getattr(in_memory, name).to_csv(index=False), name


@pytest.mark.slow
def test_changed_checkpoint_file_is_assayed_again(tmp_path, no_render, assayed):
    ckpts = _copy(["relu_mlp"], tmp_path / "ck") / "relu_mlp"
    out = tmp_path / "run"
    run_assay([ckpts], progress=False, out=out, **SMALL)
    shutil.copy(ckpts / "task2" / "model.safetensors", ckpts / "task4" / "model.safetensors")
    again = run_assay([ckpts], progress=False, out=out, **SMALL)
    assert assayed == ["relu_mlp/task2", "relu_mlp/task4", "relu_mlp/task4"]
    fresh = run_assay([ckpts], progress=False, **SMALL)  # the changed checkpoint, assayed from scratch
    pd.testing.assert_frame_equal(again.units, fresh.units)
    assert len(_finished(out)) == 3  # the stale part stays on disk, unused


@pytest.mark.slow
def test_changed_config_is_refused_unless_overwrite(tmp_path, no_render, assayed):
    ckpts = _copy(["relu_mlp"], tmp_path / "ck") / "relu_mlp"
    out = tmp_path / "run"
    run_assay([ckpts], progress=False, out=out, **SMALL)
    with pytest.raises(BadInputError, match=r"^`out` .*: holds 2 checkpoints assayed with another config "
                                            r"\(seed 0 -> 1\); use another `out`, or `overwrite`"):
        run_assay([ckpts], progress=False, out=out, **{**SMALL, "seed": 1})
    assert len(_parts(out)) == 2
    run_assay([ckpts], progress=False, out=out, overwrite=True, **{**SMALL, "seed": 1})
    assert assayed == ["relu_mlp/task2", "relu_mlp/task4"] * 2
    assert len(_parts(out)) == 2  # the old config's parts are gone
    assert json.loads((out / "run.json").read_text())["config"]["seed"] == 1


@pytest.mark.slow
def test_run_directory_of_another_resetassay_version_is_refused(tmp_path, no_render, monkeypatch):
    ckpts = _copy(["relu_mlp"], tmp_path / "ck") / "relu_mlp"
    run_assay([ckpts], progress=False, out=tmp_path / "run", **SMALL)
    monkeypatch.setattr(resetassay, "__version__", "0.0.9")
    with pytest.raises(BadInputError, match=r"another config \(resetassay '0\.1\.0' -> '0\.0\.9'\)"):
        run_assay([ckpts], progress=False, out=tmp_path / "run", **SMALL)


@pytest.mark.slow
def test_changed_config_is_refused_by_the_cli_with_exit_2(tmp_path, no_render):
    ckpts = _copy(["cnn"], tmp_path / "ck") / "cnn"
    args = ["run", str(ckpts), "--out", str(tmp_path / "run"), "--utilities", "gxd", "--metrics", "l1",
            "--calib-size", "32", "--probe-size", "32", "--no-joint", "--quiet"]
    assert runner.invoke(app, [*args, "--q", "0.1"]).exit_code == 0
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert result.stderr == (f"error: --out {tmp_path / 'run'}: holds 2 checkpoints assayed with another config "
                             "(q 0.1 -> 0.05); use another --out, or --overwrite to discard them\n")
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


@pytest.mark.slow
def test_unreadable_part_is_assayed_again(tmp_path, no_render, assayed):
    ckpts = _copy(["relu_mlp"], tmp_path / "ck") / "relu_mlp"
    out = tmp_path / "run"
    first = run_assay([ckpts], progress=False, out=out, **SMALL)
    broken = _parts(out)[0]
    broken.write_text(broken.read_text()[:100])
    with pytest.warns(UserWarning, match="unreadable part"):
        second = run_assay([ckpts], progress=False, out=out, **SMALL)
    assert len(assayed) == 3
    pd.testing.assert_frame_equal(first.units, second.units)


@pytest.mark.slow
def test_temporary_files_of_a_killed_write_are_never_read_and_are_removed(tmp_path, no_render, assayed):
    ckpts = _copy(["relu_mlp"], tmp_path / "ck") / "relu_mlp"
    out = tmp_path / "run"
    run_assay([ckpts], progress=False, out=out, **SMALL)
    leftover = out / PARTS / ".abc.json.x1y2.resetassay-tmp"
    leftover.write_text('{"format": "resetassay.part/1"')
    keep = out / PARTS / ".gitkeep"  # the user's: a run deletes only what it wrote (issue 24)
    keep.write_text("")
    (out / PARTS / ".cache").mkdir()  # a dot-directory: was a traceback (unlink of a directory)
    run_assay([ckpts], progress=False, out=out, **SMALL)
    assert not leftover.exists() and len(assayed) == 2
    assert keep.exists() and (out / PARTS / ".cache").is_dir()


@pytest.mark.slow
def test_a_part_edited_by_hand_is_assayed_again(tmp_path, no_render, assayed):
    """Each part stores the sha256 of its tables: a hand edit that still parses is caught, not used."""
    ckpts = _copy(["relu_mlp"], tmp_path / "ck") / "relu_mlp"
    out = tmp_path / "run"
    first = run_assay([ckpts], progress=False, out=out, **SMALL)
    part = _parts(out)[0]
    edited = json.loads(part.read_text())
    units = edited["tables"]["units"].splitlines()
    units[1] = units[1].replace(units[1].split(",")[-1], "123.0")  # one shock changed
    edited["tables"]["units"] = "\n".join(units) + "\n"
    part.write_text(json.dumps(edited))
    with pytest.warns(UserWarning, match="edited since it was written"):
        second = run_assay([ckpts], progress=False, out=out, **SMALL)
    assert len(assayed) == 3
    pd.testing.assert_frame_equal(first.units, second.units)


@pytest.mark.slow
def test_a_checkpoint_replaced_during_the_run_is_filed_under_the_bytes_assayed(tmp_path, no_render, monkeypatch):
    """task4's weights are swapped after the run hashed them and before it loads them; restoring them and
    rerunning must not reuse numbers of the swapped file."""
    ckpts = _copy(["relu_mlp"], tmp_path / "ck") / "relu_mlp"
    original = (ckpts / "task4" / "model.safetensors").read_bytes()
    real_load = resetassay.pipeline.run.load_checkpoint

    def swap_then_load(path, *args, **kwargs):
        if Path(path).name == "task4":
            shutil.copy(ckpts / "task2" / "model.safetensors", ckpts / "task4" / "model.safetensors")
        return real_load(path, *args, **kwargs)

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(resetassay.pipeline.run, "load_checkpoint", swap_then_load)
        run_assay([ckpts], progress=False, out=out, **SMALL)
    (ckpts / "task4" / "model.safetensors").write_bytes(original)
    again = run_assay([ckpts], progress=False, out=out, **SMALL)
    fresh = run_assay([ckpts], progress=False, **SMALL)
    pd.testing.assert_frame_equal(again.units, fresh.units)


@pytest.mark.slow
def test_a_second_launch_on_the_same_out_is_refused_naming_the_first(tmp_path, no_render):
    ckpts = _copy(["relu_mlp"], tmp_path / "ck") / "relu_mlp"
    out = tmp_path / "run"
    holder = resetassay.io.rundir.RunParts(out, {"config": {}})
    try:
        with pytest.raises(BadInputError, match=rf"^`out` {out}: in use by another resetassay run "
                                                rf"\(host .*, pid {os.getpid()}, since .*\)"):
            run_assay([ckpts], progress=False, out=out, **SMALL)
    finally:
        holder.close()
    run_assay([ckpts], progress=False, out=out, overwrite=True, **SMALL)  # free again once released


@pytest.mark.slow
def test_overwrite_deletes_only_the_parts_resetassay_wrote(tmp_path, no_render):
    ckpts = _copy(["relu_mlp"], tmp_path / "ck") / "relu_mlp"
    out = tmp_path / "run"
    run_assay([ckpts], progress=False, out=out, **SMALL)
    mine = out / PARTS / "my-notes.txt"
    mine.write_text("keep me\n")
    target = tmp_path / "precious.json"
    target.write_text("{}\n")
    (out / PARTS / ("f" * 64 + ".json")).symlink_to(target)
    run_assay([ckpts], progress=False, out=out, overwrite=True, **{**SMALL, "seed": 1})
    assert mine.read_text() == "keep me\n" and target.read_text() == "{}\n"


@pytest.mark.slow
def test_a_run_over_some_of_the_checkpoints_of_an_out_says_the_tables_cover_only_those(tmp_path, no_render):
    ckpts = _copy(["relu_mlp"], tmp_path / "ck") / "relu_mlp"
    out = tmp_path / "run"
    run_assay([ckpts], progress=False, out=out, **SMALL)
    notes: list[str] = []
    result = run_assay([ckpts / "task2"], progress=False, out=out, note=notes.append, **SMALL)
    assert set(result.units["checkpoint"]) == {"task2"}
    assert any("also holds" in n and "the tables cover only the 1 given" in n for n in notes), notes


@pytest.mark.slow
def test_timings_json_has_each_stage_of_each_assayed_checkpoint_and_run_json_stays_free_of_them(tmp_path):
    ckpts = _copy(["relu_mlp"], tmp_path / "ck") / "relu_mlp"
    out = tmp_path / "run"
    run_assay([ckpts], progress=False, out=out, **SMALL)
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings["checkpoints"]) == {"relu_mlp/task2", "relu_mlp/task4"}
    for stages in timings["checkpoints"].values():
        assert {"load", "probe logits", "references", "utilities", "lesions", "summary"} <= set(stages)
        assert all(seconds >= 0 for seconds in stages.values())
    assert set(timings["report"]) == {"analysis", "figures", "documents"}
    assert "timings" not in json.loads((out / "run.json").read_text())
    run_assay([ckpts], progress=False, out=out, **SMALL)  # everything finished earlier: nothing timed
    assert json.loads((out / "timings.json").read_text())["checkpoints"] == {}
