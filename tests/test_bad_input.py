"""Every bad input answered through the CLI (README "What happens when..."): one `error:` line naming the file
or flag and what to do, exit code 2 for bad input and 1 for a failure during the run, and what finished is kept.

Cases already covered elsewhere: a missing path, an unknown utility/metric, `--layers` matching nothing and a
too-large `--calib-size` stop a run with exit 2 (tests/cli/test_commands.py); the loaders' refusals one by one
(tests/io/test_checkpoint.py, tests/data/). Here: each case from the command line, and a bad checkpoint among good ones.
The table goes on by topic in tests/cli/test_bad_input_plugins.py (what a user's utility or metric returns),
tests/cli/test_bad_input_data.py (data and model specs that are not what they say) and
tests/cli/test_bad_input_rundir.py (run directories, baselines, torchrun work items); the helpers are
tests/helpers/cli.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers.cli import SMALL, errors, one_error, run_small, runner
from helpers.paths import FIXTURES

import resetassay.report
from resetassay import load_checkpoint, save_checkpoint
from resetassay.cli import app
from resetassay.names import FAILURES, MANIFEST, METRICS, PARTS, WEIGHTS
from resetassay.scoring.registry import utility_names

_run, _errors, _one_error = run_small, errors, one_error


@pytest.fixture
def no_render(monkeypatch: pytest.MonkeyPatch) -> None:
    """No figures in tests about which checkpoints are kept (rendering is tested in tests/report/test_render.py)."""
    monkeypatch.setattr(resetassay.report, "render", lambda out: Path(out) / "report.md")


def _copy(fixture: str, into: Path) -> Path:
    shutil.copytree(FIXTURES / fixture, into)
    return into


def _edited_copy(into: Path, edit) -> Path:
    """relu_mlp/task2 with its weights edited in place by `edit(model)`."""
    ckpt = load_checkpoint(FIXTURES / "relu_mlp" / "task2")
    with torch.no_grad():
        edit(ckpt.model)
    return save_checkpoint(into, ckpt.model, ckpt.info.factory, ckpt.info.kwargs, step=ckpt.info.step,
                           data=ckpt.info.data, meta=ckpt.info.meta)


@pytest.mark.parametrize("content", [[], [WEIGHTS]], ids=["empty directory", "no manifest.json"])
def test_directory_without_a_checkpoint_exits_2_naming_it(tmp_path, content):
    folder = tmp_path / "ck"
    folder.mkdir()
    for name in content:
        shutil.copy(FIXTURES / "relu_mlp" / "task2" / name, folder / name)
    _one_error(_run(folder, out=tmp_path / "run"), 2, str(folder), MANIFEST)


@pytest.mark.parametrize(
    ("text", "needle"),
    [("{not json", "malformed JSON"),
     (json.dumps({"format": "resetassay.checkpoint/9"}), "'resetassay.checkpoint/9' is not 'resetassay.checkpoint/1'"),
     ("[1, 2]", "format None")],
    ids=["malformed", "unknown format version", "not an object"],
)
def test_bad_manifest_exits_2_naming_it(tmp_path, text, needle):
    ck = _copy("relu_mlp/task2", tmp_path / "ck")
    (ck / MANIFEST).write_text(text)
    _one_error(_run(ck, out=tmp_path / "run"), 2, str(ck / MANIFEST), needle, "regenerate the checkpoint")


@pytest.mark.parametrize("keep", [0.5, 0.001], ids=["truncated body", "truncated header"])
def test_truncated_safetensors_exits_2_naming_it(tmp_path, keep):
    ck = _copy("relu_mlp/task2", tmp_path / "ck")
    data = (ck / WEIGHTS).read_bytes()
    (ck / WEIGHTS).write_bytes(data[: int(len(data) * keep)])
    _one_error(_run(ck, out=tmp_path / "run"), 2, str(ck / WEIGHTS), "unreadable safetensors", "re-save it")


@pytest.mark.parametrize(
    ("edit", "needle"),
    [(lambda m: setattr(m.layers[0], "linear", torch.nn.Linear(64, 7)), "(7, 64), the model wants torch.float32 (64"),
     (lambda m: m.double(), "is torch.float64")],
    ids=["wrong shape", "wrong dtype"],
)
def test_weights_of_the_wrong_shape_or_dtype_exit_2_naming_file_and_tensor(tmp_path, edit, needle):
    ck = _edited_copy(tmp_path / "ck", edit)
    _one_error(_run(ck, out=tmp_path / "run"), 2, str(ck / WEIGHTS), "layers.0.linear.weight", needle)


class _Payload:
    """Unpickling this would create `path`: the code `weights_only=True` must never run."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_pickled_pt_file_is_refused_saying_why_and_runs_no_code(tmp_path):
    marker = tmp_path / "ran.txt"
    path = tmp_path / "model.pt"
    ckpt = load_checkpoint(FIXTURES / "relu_mlp" / "task2")
    torch.save({**ckpt.model.state_dict(), "extra": _Payload(str(marker))}, path)
    result = _run(path, "--model", "resetassay.models:mlp", "--data", "digits", out=tmp_path / "run")
    _one_error(result, 2, str(path), "refused", "weights_only=True", "no code runs")
    assert not marker.exists()


@pytest.mark.parametrize("content", [bytes(range(7, 250)), b"hello"])
def test_a_pt_file_torch_did_not_write_is_unreadable_not_refused(tmp_path, content):
    """Garbage bytes are not "pickled objects": the error says the file is not torch.save's, with the unpickler's
    reason, and does not send the user looking for objects in it."""
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    line = _one_error(_run(path, "--model", "resetassay.models:mlp", "--data", "digits", out=tmp_path / "run"), 2,
                      str(path), "unreadable — not a file torch.save wrote (", "or use safetensors")
    assert "refused" not in line


def test_data_the_model_does_not_take_is_one_line_in_run_and_inspect(tmp_path, no_render):
    """An MLP for 64 features on a file of 32: was a traceback from inside the model's forward."""
    from safetensors.torch import save_file
    torch.save(load_checkpoint(FIXTURES / "relu_mlp" / "task2").model.state_dict(), tmp_path / "model.pt")
    save_file({"x": torch.rand(80, 32), "y": torch.randint(0, 10, (80,))}, tmp_path / "narrow.safetensors")
    model = ["--model", "resetassay.models:mlp", "--data", tmp_path / "narrow.safetensors"]
    needles = ("model.pt: the model cannot read inputs of shape (32,) per example (RuntimeError: mat1 and mat2",
               "; give data shaped as the model takes it (channels, --image-size, features), or check --model")
    _one_error(_run(tmp_path / "model.pt", *model, out=tmp_path / "run"), 2, *needles)
    _one_error(runner.invoke(app, ["inspect", str(tmp_path / "model.pt"), *map(str, model)]), 2, *needles)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [("no_such_module_xyz:mlp", "cannot import no_such_module_xyz"),
     ("resetassay.models:no_such_factory", "has no attribute 'no_such_factory'")],
    ids=["module", "attribute"],
)
def test_model_naming_a_missing_module_or_attribute_exits_2_before_any_work(tmp_path, spec, needle):
    torch.save(load_checkpoint(FIXTURES / "relu_mlp" / "task2").model.state_dict(), tmp_path / "model.pt")
    result = _run(tmp_path / "model.pt", "--model", spec, "--data", "digits", out=tmp_path / "run")
    _one_error(result, 2, f"--model {spec!r}", needle)
    assert not (tmp_path / "run" / PARTS).exists()


@pytest.mark.parametrize(
    ("flag", "value", "names"),
    [("--utilities", "gxd,bogus", utility_names()), ("--metrics", "l1,l7", list(METRICS))],
)
def test_unknown_utility_or_metric_lists_the_valid_names(tmp_path, flag, value, names):
    result = runner.invoke(app, ["run", str(FIXTURES / "relu_mlp"), "--out", str(tmp_path), flag, value])
    line = _one_error(result, 2, flag, value.split(",")[1])
    assert line.endswith(", ".join(names))


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--probe-size", "5000"], "--probe-size 5000"),
     (["--calib-size", "600", "--probe-size", "600"], "exceed the 898 held-out examples"),
     (["--model-kwargs", "{oops"], "--model-kwargs is not valid JSON"),
     (["--device", "tpu"], "--device 'tpu': choose auto, cpu or cuda"),
     (["--intervention", "zero"], "--intervention 'zero': choose from clamp, cbp-reset")],
    ids=["probe size", "sizes together", "model kwargs", "device name", "intervention"],
)
def test_bad_flag_exits_2_naming_it(tmp_path, args, needle):
    result = runner.invoke(app, ["run", str(FIXTURES / "relu_mlp"), "--out", str(tmp_path), "--quiet", *args])
    _one_error(result, 2, needle)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present on this machine")
def test_cuda_requested_but_absent_exits_2_before_any_work(tmp_path):
    _one_error(_run(FIXTURES / "relu_mlp", "--device", "cuda", out=tmp_path), 2,
               "--device cuda: CUDA is not available here; use --device cpu")
    assert not (tmp_path / PARTS).exists()


def test_layers_matching_nothing_mid_run_stops_keeping_the_finished_checkpoints(tmp_path, no_render):
    """A flag error found at the second checkpoint stops the run (it would fail every such checkpoint)."""
    shutil.copytree(FIXTURES / "relu_mlp" / "task2", tmp_path / "ck" / "a_mlp")
    shutil.copytree(FIXTURES / "cnn" / "task2", tmp_path / "ck" / "b_cnn")
    result = _run(tmp_path / "ck", "--layers", "layers.*", out=tmp_path / "run")
    _one_error(result, 2, "--layers layers.* matched no unit layer; available: blocks.0.act, blocks.1.act",
               f"(checkpoint ck/b_cnn; the 1 finished are kept in {tmp_path / 'run'})")
    assert len([p for p in (tmp_path / "run" / PARTS).iterdir() if p.name != "config.json"]) == 1


@pytest.mark.slow
def test_nan_logits_are_reported_per_checkpoint_and_the_others_finish(tmp_path):
    shutil.copytree(FIXTURES / "relu_mlp", tmp_path / "ck", ignore=shutil.ignore_patterns("accuracy.csv"))
    _edited_copy(tmp_path / "ck" / "task3", lambda m: m.layers[1].linear.weight[3, 5].fill_(float("nan")))
    result = _run(tmp_path / "ck", out=tmp_path / "run")
    _one_error(result, 1, "ck/task3: the model gives NaN/Inf logits on the probe set", "check its weights")
    assert f"1 of 3 checkpoints failed (listed in {tmp_path / 'run' / FAILURES})" in result.stderr
    run = tmp_path / "run"
    assert set(pd.read_csv(run / "units.csv")["checkpoint"]) == {"ck/task2", "ck/task4"}
    assert (run / "report.md").exists()
    failures = pd.read_csv(run / FAILURES)
    assert failures[["checkpoint", "kind"]].values.tolist() == [["ck/task3", "failure"]]
    assert json.loads((run / "run.json").read_text())["failures"][0]["checkpoint"] == "ck/task3"


@pytest.mark.slow
def test_corrupt_checkpoint_among_good_ones_exits_2_and_a_fixed_rerun_assays_only_it(tmp_path, no_render):
    shutil.copytree(FIXTURES / "relu_mlp", tmp_path / "ck", ignore=shutil.ignore_patterns("accuracy.csv"))
    shutil.copytree(FIXTURES / "relu_mlp" / "task2", tmp_path / "ck" / "task3")
    _edited_copy(tmp_path / "ck" / "task5", lambda m: m.head.bias.fill_(float("inf")))
    (tmp_path / "ck" / "task3" / WEIGHTS).write_bytes(b"\x00" * 10)
    run = tmp_path / "run"
    result = _run(tmp_path / "ck", out=run)
    assert result.exit_code == 2  # bad input wins over a failure during the run
    assert len(_errors(result)) == 2
    assert pd.read_csv(run / FAILURES)[["checkpoint", "kind"]].values.tolist() == [
        ["ck/task3", "bad input"], ["ck/task5", "failure"]]
    assert set(pd.read_csv(run / "units.csv")["checkpoint"]) == {"ck/task2", "ck/task4"}

    shutil.copy(FIXTURES / "relu_mlp" / "task2" / WEIGHTS, tmp_path / "ck" / "task3" / WEIGHTS)
    shutil.rmtree(tmp_path / "ck" / "task5")
    again = _run(tmp_path / "ck", out=run)
    assert again.exit_code == 0, again.output
    assert "skipping 2 of 3 checkpoints" in again.stderr
    assert not (run / FAILURES).exists()
    assert set(pd.read_csv(run / "units.csv")["checkpoint"]) == {"ck/task2", "ck/task3", "ck/task4"}


def test_layer_of_constant_units_gives_nan_spearman_with_the_reason(tmp_path):
    """Layer 0 outputs relu(0·x + 1) = 1 for every unit and example; every later layer is constant too."""
    def constant(model):
        model.layers[0].linear.weight.zero_()
        model.layers[0].linear.bias.fill_(1.0)

    ck = _edited_copy(tmp_path / "ck", constant)
    result = _run(ck, out=tmp_path / "run")
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "run" / "summary.csv")
    layer0 = summary[summary["scope"] == "layers.0.act"].set_index("utility")
    assert layer0["spearman"].isna().all()
    # E|h_i| = 1 for all i; h_i - r_i = 0, so GXD = 0; clamping a constant unit to its mean moves nothing
    for utility in ("activation", "gxd"):
        assert layer0.loc[utility, "note"] == ("utility is constant over the units; top-k overlap undefined where "
                                               "shock is constant (every layer)")
    assert layer0["overlap"].isna().all()
    assert (tmp_path / "run" / "report.md").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--batch-size", "0"], "--batch-size 0: must be a whole number >= 1"),
     (["--max-memory", "inf"], "--max-memory 'inf': must be a finite size"),
     (["--max-memory", "nanGB"], "--max-memory 'nanGB'"),
     (["--seed", "-1"], "--seed -1: must be a whole number in [0, 2**32)"),
     (["--seed", str(2**32)], f"--seed {2**32}"),
     (["--utilities", ""], "--utilities: empty"),
     (["--utilities", "gxd,gxd"], "--utilities: gxd given twice"),
     (["--metrics", ""], "--metrics: empty"),
     (["--metrics", "l1,kl,l1"], "--metrics: l1 given twice"),
     (["--q", "nan"], "--q nan: must be in (0, 1]"),
     (["--data", "digits", "--task", "-1"], "--task -1: tasks count from 0"),
     (["--reference", "median"], "--reference 'median': choose from calibration-mean, stored, zero")],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_bad_run_flag_is_one_line_exit_2_before_any_work(tmp_path, args, needle):
    """Every one of these used to run (or crash after running); now refused up front, nothing written."""
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(FIXTURES / "relu_mlp"), "--out", str(out), "--quiet", *args])
    _one_error(result, 2, needle)
    assert not (out / PARTS).exists() or not any((out / PARTS).glob("*.json"))


@pytest.mark.parametrize("kind", ["file", "empty"])
def test_out_that_cannot_be_a_run_directory_is_refused(tmp_path, kind):
    out = tmp_path / "taken.txt"
    if kind == "file":
        out.write_text("a user's file\n")
    result = runner.invoke(app, ["run", str(FIXTURES / "relu_mlp"), "--out", str(out) if kind == "file" else "",
                                 "--quiet"])
    _one_error(result, 2, "--out", "is a file" if kind == "file" else "name a folder")
    if kind == "file":
        assert out.read_text() == "a user's file\n"


def test_read_only_out_is_one_line(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        if os.access(parent, os.W_OK):  # root ignores permissions
            pytest.skip("this user can write into read-only folders (root)")
        result = runner.invoke(app, ["run", str(FIXTURES / "relu_mlp"), "--out", str(parent / "run"), "--quiet"])
        _one_error(result, 2, f"--out {parent / 'run'}: cannot create the run directory")
    finally:
        parent.chmod(0o700)


def test_a_full_disk_names_the_file_and_keeps_the_finished_parts(tmp_path, monkeypatch, no_render):
    """The second part's write fails with ENOSPC: one line naming it, exit 2, the first part kept."""
    import errno
    import os
    import re

    import resetassay.io.rundir as rundir

    real, calls = rundir.os.fsync, {"n": 0}

    def fsync(fd):
        if re.match(r"\.[0-9a-f]{64}\.json\.", Path(os.readlink(f"/proc/self/fd/{fd}")).name):  # a part's temporary
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(rundir.os, "fsync", fsync)
    out = tmp_path / "run"
    result = _run(FIXTURES / "relu_mlp", out=out)
    line = _one_error(result, 2, "cannot write (the disk is full)", "files written before it are kept")
    assert str(out / PARTS) in line
    assert len(list((out / PARTS).glob("*.json"))) == 2  # config.json and the first part
    assert not [p for p in (out / PARTS).iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_a_path_given_twice_or_inside_another_is_assayed_once(tmp_path, no_render):
    out = tmp_path / "run"
    result = _run(FIXTURES / "relu_mlp", FIXTURES / "relu_mlp" / "task2", FIXTURES / "relu_mlp", out=out)
    assert result.exit_code == 0, result.output
    assert "relu_mlp/task2: already under" in result.stderr and "given twice" in result.stderr
    checkpoints = pd.read_csv(out / "checkpoints.csv")["checkpoint"].tolist()
    assert checkpoints == ["relu_mlp/task2", "relu_mlp/task4"]
    assert pd.read_csv(out / "units.csv").groupby("checkpoint").size().nunique() == 1


@pytest.mark.slow
def test_a_failed_checkpoint_error_line_shows_even_with_python_warnings_off(tmp_path):
    """The error line is printed, not warned: PYTHONWARNINGS=ignore cannot hide it."""
    ck = tmp_path / "ck"
    shutil.copytree(FIXTURES / "relu_mlp" / "task2", ck / "good")
    shutil.copytree(FIXTURES / "relu_mlp" / "task2", ck / "bad")
    (ck / "bad" / WEIGHTS).write_bytes(b"\x00" * 10)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-m", "resetassay.cli", "run", str(ck), "--out", str(tmp_path / "run"),
                           *SMALL], capture_output=True, text=True, env=env)
    assert done.returncode == 2, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")][0].startswith(
        f"error: {ck / 'bad' / WEIGHTS}: unreadable safetensors file")


def test_state_with_another_number_of_units_fails_that_checkpoint_only(tmp_path, no_render):
    from safetensors.torch import save_file

    ck = tmp_path / "ck"
    shutil.copytree(FIXTURES / "relu_mlp" / "task2", ck / "a")
    shutil.copytree(FIXTURES / "relu_mlp" / "task2", ck / "b")
    save_file({"layers.0.act.age": torch.arange(5)}, ck / "b" / "state.safetensors")
    result = _run(ck, out=tmp_path / "run")
    _one_error(result, 2, "ck/b/state.safetensors: layers.0.act.age has shape (5,), but layers.0.act has")
    assert pd.read_csv(tmp_path / "run" / "checkpoints.csv")["checkpoint"].tolist() == ["ck/a"]


def test_a_bad_data_record_fails_that_checkpoint_without_blaming_a_flag(tmp_path, no_render):
    ck = tmp_path / "ck"
    shutil.copytree(FIXTURES / "relu_mlp" / "task2", ck / "a")
    shutil.copytree(FIXTURES / "relu_mlp" / "task2", ck / "b")
    manifest = json.loads((ck / "b" / MANIFEST).read_text())
    manifest["data"].update(source="mnist", data_dir=str(tmp_path / "nowhere"))
    (ck / "b" / MANIFEST).write_text(json.dumps(manifest))
    result = _run(ck, out=tmp_path / "run")
    line = _one_error(result, 2, f"{ck / 'b' / MANIFEST}: its data record cannot be loaded")
    assert not line.startswith("error: --")
    assert pd.read_csv(tmp_path / "run" / FAILURES)["checkpoint"].tolist() == ["ck/b"]


def _cut_lines(path: Path, lines: int) -> None:
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-lines]))


@pytest.mark.slow
@pytest.mark.parametrize(("table", "edit", "needle"), [
    ("units", lambda p: p.write_bytes(p.read_bytes()[:-40]), "units.csv: cut short"),  # was a traceback
    ("units", lambda p: pd.read_csv(p).drop(columns="mature").to_csv(p, index=False), "no column mature"),
    ("units", lambda p: pd.read_csv(p).astype({"shock_l1": object}).assign(
        shock_l1=lambda t: t["shock_l1"].where(t.index != 5, "abc")).to_csv(p, index=False),
     "column shock_l1 holds 'abc' (line 7), not a number"),
    # cut at a line boundary: the headline showed missing rows and a wrong best, exit 0
    ("summary", lambda p: _cut_lines(p, 6), "the table is incomplete"),
    ("summary", lambda p: p.write_bytes(p.read_bytes()[:-7]), "summary.csv: cut short"),
])
def test_report_on_a_damaged_table_is_one_line_naming_it(tmp_path, table, edit, needle):
    """Tables read back are checked at the boundary (issue 24): `report` refuses, naming the file, and writes
    nothing (the report of the intact run stays)."""
    out = tmp_path / "run"
    assert _run(FIXTURES / "relu_mlp" / "task2", out=out).exit_code == 0
    before = (out / "report.md").read_text()
    edit(out / f"{table}.csv")
    result = runner.invoke(app, ["report", str(out)])
    _one_error(result, 2, f"{table}.csv", needle)
    assert (out / "report.md").read_text() == before


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_zoo_checkpoint_is_cast_like_a_state_dict(tmp_path, no_render, dtype):
    """A zoo checkpoint saved in float16/bfloat16 was refused ("is torch.float16, the model wants torch.float32")
    while a plain state dict of the same weights was cast; both are cast now, with a warning (issue 24)."""
    ck = _edited_copy(tmp_path / "ck", lambda m: m.to(dtype))
    result = _run(ck, out=tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert f"weights stored as {str(dtype)}; cast to the model's torch.float32" in " ".join(result.output.split())
