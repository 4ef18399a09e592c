"""`resetassay report --log` / `tracking.log_run`: a run's config, pooled statistics, report and figures in a local
MLflow, W&B (offline) or TensorBoard store, read back with each tracker's own reader. A tracker that is not
installed is a one-line error (those tests need no tracker and are never skipped)."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import resetassay.report
import resetassay.report.tracking
from resetassay.cli import app
from resetassay.errors import BadInputError
from resetassay.names import POOLED_SCOPES
from resetassay.report.tracking import BACKENDS, backend_names, log_run, metric_name, run_metrics

runner = CliRunner()
STATS = ("spearman", "shock_at_q", "gap_ratio")


@pytest.fixture
def run(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the shared rendered run (logging writes a store into it)."""
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def _expected(run: Path) -> dict[str, float]:
    """The pooled statistics straight from summary.csv, named as the module docstring says."""
    summary = pd.read_csv(run / "summary.csv")
    pooled = summary[summary["scope"].isin(POOLED_SCOPES)]
    return {f"{r.checkpoint}/{r.scope}/{r.metric}/{r.utility}/{stat}": float(getattr(r, stat))
            for r in pooled.itertuples() for stat in STATS}


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_metrics_are_the_pooled_statistics_of_summary_csv_on_both_scopes(run):
    expected = _expected(run)
    assert run_metrics(run).keys() == expected.keys()
    assert all(_same(run_metrics(run)[k], v) for k, v in expected.items())
    assert {k.split("/")[2] for k in expected} == {"ALL", "common"}  # checkpoint names are family/task


def test_metric_names_keep_only_what_trackers_accept():
    assert metric_name("ck:1/t*2", "ALL", "l1", "gxd", "spearman") == "ck_1/t_2/ALL/l1/gxd/spearman"
    assert metric_name("a//b", "..", "c") == "a/_/b/__/c"


def test_mlflow_logs_config_metrics_report_and_figures_into_a_store_under_the_run(run, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    logged = log_run(run, "mlflow")
    assert logged.location == f"sqlite:///{run.resolve() / 'mlflow' / 'mlflow.db'}"
    assert (run / "mlflow" / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=logged.location)
    found = client.get_run(logged.run_id)
    assert found.info.status == "FINISHED" and found.info.run_name == "run"
    expected = _expected(run)
    assert found.data.metrics.keys() == expected.keys()
    assert all(_same(found.data.metrics[k], v) for k, v in expected.items())  # exact: float64 both ways
    config = json.loads((run / "run.json").read_text())["config"]
    assert found.data.params["q"] == json.dumps(config["q"])
    assert json.loads(found.data.params["utilities"]) == config["utilities"]
    assert found.data.params["table_format"] == "csv"
    files = {f.path for f in client.list_artifacts(logged.run_id)}
    assert {"report.md", "report.html", "run.json", "summary.csv", "aggregate.csv", "figures"} <= files
    figures = {f.path for f in client.list_artifacts(logged.run_id, "figures")}
    assert "figures/regret.png" in figures
    artifact = Path(found.info.artifact_uri.removeprefix("file://")) / "report.md"
    assert artifact.is_relative_to(run.resolve()) and artifact.read_text() == (run / "report.md").read_text()


def test_mlflow_uses_the_tracking_uri_of_the_environment(run, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'shared.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    logged = log_run(run, "mlflow", experiment="mine", run_name="first")
    assert logged.location == uri and not (run / "mlflow").exists()
    found = MlflowClient(tracking_uri=uri).get_run(logged.run_id)
    assert found.info.run_name == "first" and found.data.metrics
    assert found.info.artifact_uri.startswith((tmp_path / "artifacts").as_uri())  # beside the database
    assert (tmp_path / "artifacts").is_dir() and not (tmp_path / "mlruns").exists()  # not MLflow's ./mlruns


def test_tensorboard_logs_scalars_figures_and_the_report_as_text(run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing import event_accumulator as ea

    log_run(run, "tensorboard")
    logged = log_run(run, "tensorboard")  # logging again replaces the first event file
    assert logged.location == str(run / "tensorboard") and len(list((run / "tensorboard").iterdir())) == 1
    events = ea.EventAccumulator(str(run / "tensorboard"), size_guidance={ea.SCALARS: 0, ea.IMAGES: 0,
                                                                         ea.TENSORS: 0})
    events.Reload()
    expected = _expected(run)
    assert set(events.Tags()["scalars"]) == expected.keys()
    for name, value in expected.items():
        (point,) = events.Scalars(name)
        assert point.step == 0 and _same(point.value, float(np.float32(value)))  # TensorBoard keeps float32
    figures = {p.stem for p in (run / "figures").glob("*.png")}
    assert set(events.Tags()["images"]) == {f"figures/{f}" for f in figures}
    (image,) = events.Images("figures/regret")
    assert image.width > 100 and image.height > 100
    (text,) = events.Tensors("report/text_summary")
    assert text.tensor_proto.string_val[0].decode() == (run / "report.md").read_text()
    assert "| q |" in events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()


def _wandb_records(path: Path) -> list:
    """The records of an offline W&B run file (a LevelDB-style log: 7-byte header, 32 KiB blocks of records with
    a 7-byte header each: crc32, length, kind 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # block trailer
            pos += left
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_logs_offline_into_the_run_directory(run, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "online")  # still offline: nothing leaves the machine
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    logged = log_run(run, "wandb")
    offline = Path(logged.location)
    assert offline.parent == (run / "wandb").resolve() and offline.name.startswith("offline-run-")
    (log,) = offline.glob("run-*.wandb")
    records = _wandb_records(log)
    history = [r.history for r in records if r.WhichOneof("record_type") == "history"]
    assert len(history) == 1
    values = {"/".join(item.nested_key) or item.key: item.value_json for item in history[0].item}
    expected = _expected(run)
    assert all(_same(float(json.loads(values[k])), v) for k, v in expected.items())  # exact: JSON repr
    image = json.loads(values["figures/regret/path"])  # the figure, copied into the offline run as media
    assert json.loads(values["figures/regret/_type"]) == "image-file" and (offline / "files" / image).is_file()
    summary = {"/".join(u.nested_key) or u.key: u.value_json for r in records
               if r.WhichOneof("record_type") == "summary" for u in r.summary.update}
    assert all(_same(float(json.loads(summary[k])), v) for k, v in expected.items())
    (header,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {item.key: item.value_json for item in header.config.update}
    run_json = json.loads((run / "run.json").read_text())
    assert json.loads(config["q"]) == run_json["config"]["q"]
    assert json.loads(config["utilities"]) == run_json["config"]["utilities"]
    saved = {f.path for r in records if r.WhichOneof("record_type") == "files" for f in r.files.files}
    assert {"report.md", "report.html", "run.json", "summary.csv"} <= saved
    assert (offline / "files" / "report.md").read_text() == (run / "report.md").read_text()
    assert not (offline / "files" / "report.md").is_symlink()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_tracker_that_is_not_installed_is_a_one_line_error_with_the_pip_command(run, backend, monkeypatch):
    monkeypatch.setitem(sys.modules, backend, None)
    with pytest.raises(BadInputError) as caught:
        log_run(run, backend)
    message = str(caught.value)
    assert caught.value.flag == "--log" and "\n" not in message
    assert message == f"--log {backend}: {backend} is not installed; pip install 'resetassay[{backend}]'"


def test_report_log_refuses_a_missing_or_unknown_tracker_before_drawing(run, monkeypatch):
    monkeypatch.setattr(resetassay.report, "render", lambda *a, **k: pytest.fail("rendered before the check"))
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    result = runner.invoke(app, ["report", str(run), "--log", "mlflow,tensorboard"])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line == "error: --log mlflow: mlflow is not installed; pip install 'resetassay[mlflow]'"
    result = runner.invoke(app, ["report", str(run), "--log", "neptune"])
    assert result.exit_code == 2 and "choose mlflow, wandb or tensorboard" in result.output
    with pytest.raises(BadInputError, match="name each tracker once"):
        backend_names("wandb,wandb")


def test_report_log_logs_a_current_report_as_it_is_and_draws_it_first_when_stale_or_asked(run, monkeypatch):
    """The rule of README "Where results go": no redraw when report.md is newer than the tables (and its render
    succeeded), unless --figures or --q ask for another report."""
    pytest.importorskip("tensorboard")
    calls = []
    monkeypatch.setattr(resetassay.report, "render", lambda run_dir, *_args: calls.append("render") or (
        Path(run_dir) / "report.md"))
    real = resetassay.report.tracking.log_run
    monkeypatch.setattr(resetassay.report.tracking, "log_run", lambda *a, **k: calls.append("log") or real(*a, **k))
    result = runner.invoke(app, ["report", str(run), "--log", "tensorboard"])
    assert result.exit_code == 0, result.output
    assert calls == ["log"] and "report.md is current: logged as it is" in result.output
    assert f"logged to tensorboard: {len(_expected(run))} metrics" in result.output
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    for args in (["--figures", "png"], ["--q", "0.1"]):
        calls.clear()
        assert runner.invoke(app, ["report", str(run), "--log", "tensorboard", "--quiet", *args]).exit_code == 0
        assert calls == ["render", "log"], args
    later = (run / "report.md").stat().st_mtime_ns + 10**9
    os.utime(run / "units.csv", ns=(later, later))
    calls.clear()
    assert runner.invoke(app, ["report", str(run), "--log", "tensorboard", "--quiet"]).exit_code == 0
    assert calls == ["render", "log"]


def test_log_run_refuses_an_unknown_option(run):
    pytest.importorskip("tensorboard")
    with pytest.raises(BadInputError, match="tensorboard takes no option project"):
        log_run(run, "tensorboard", project="x")
