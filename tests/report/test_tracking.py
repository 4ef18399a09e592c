"""`resetassay report --log` / `tracking.log_run`: a run's per-step statistics, verdict, config, report and figures
in a local MLflow, W&B (offline) or TensorBoard store, read back with each tracker's own reader. A tracker that is
not installed is a one-line error (those tests need no tracker and are never skipped). A test that needs a tracker
skips without it, unless RESETASSAY_REQUIRE_TRACKERS is set (.ci/run sets it): then it fails."""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import struct
import sys
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
from helpers.paths import FIXTURES
from typer.testing import CliRunner

import resetassay.report
import resetassay.report.tracking
from resetassay.cli import app
from resetassay.errors import BadInputError
from resetassay.io.rundir import read_run, read_run_info, write_run
from resetassay.names import POOLED_SCOPES
from resetassay.report.tracking import BACKENDS, backend_names, log_run, metric_name, run_params, tracked

runner = CliRunner()
pytestmark = pytest.mark.slow  # the trackers and a rendered run: `-m "not slow"` leaves them out
STATS = ("spearman", "shock_at_q", "gap_ratio")
MARKS = ("best", "indistinguishable", "cheapest", "fails")


def _tracker(module: str) -> ModuleType:
    """The tracker's module; the test skips without it, or fails where RESETASSAY_REQUIRE_TRACKERS is set."""
    if os.environ.get("RESETASSAY_REQUIRE_TRACKERS"):
        return importlib.import_module(module)
    return pytest.importorskip(module)


@pytest.fixture
def run(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the shared rendered run (logging writes a store into it): two families, steps 2 and 4."""
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def _pooled_series(run: Path) -> dict[str, dict[int, float]]:
    """The pooled S5 series straight from summary.csv and checkpoints.csv: per family, a point per training step
    (no step: 0), the mean of the family's checkpoints there."""
    summary = pd.read_csv(run / "summary.csv")
    steps = pd.read_csv(run / "checkpoints.csv")[["checkpoint", "family", "step"]]
    pooled = summary[summary["scope"].isin(POOLED_SCOPES)].merge(steps, on="checkpoint")
    pooled["step"] = pooled["step"].fillna(0).astype(int)
    series: dict[str, dict[int, float]] = {}
    for (family, scope, metric, utility, step), rows in pooled.groupby(["family", "scope", "metric", "utility",
                                                                         "step"]):
        for stat in STATS:
            series.setdefault(metric_name(family, scope, metric, utility, stat), {})[step] = rows[stat].mean()
    return series


def _same_series(found: dict[str, dict[int, float]], expected: dict[str, dict[int, float]], rel: float = 1e-12
                 ) -> bool:
    return found.keys() == expected.keys() and all(
        list(found[k]) == sorted(expected[k]) and found[k] == pytest.approx(expected[k], rel=rel, nan_ok=True)
        for k in expected)


def _verdict(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "verdict.csv", keep_default_na=False, na_values=[""])


def _expected_tags(run: Path) -> dict[str, str]:
    """The verdict's marks per family, kind and metric straight from verdict.csv."""
    return {metric_name("verdict", family, kind, metric, mark): ",".join(rows.loc[rows[mark], "utility"])
            for (family, kind, metric), rows in _verdict(run).groupby(["family", "kind", "metric"])
            for mark in MARKS}


def _checkpoints(run: Path) -> list[str]:
    return list(pd.read_csv(run / "checkpoints.csv")["checkpoint"])


def test_series_are_per_family_with_a_point_per_training_step_and_no_checkpoint_in_their_names(run):
    found = tracked(run)
    pooled = {k: v for k, v in found.series.items() if k.split("/")[1] in POOLED_SCOPES}
    assert _same_series(pooled, _pooled_series(run))
    assert found.steps == [2, 4] and all(list(points) == [2, 4] for points in found.series.values())
    kinds = {k: v for k, v in found.series.items() if k not in pooled}
    families = {metric_name(f) for f in pd.read_csv(run / "checkpoints.csv")["family"]}
    assert {k.rsplit("/", 1)[1] for k in kinds} == {"regret", "balanced_rho"}
    assert {(k.split("/")[0], k.split("/")[1]) for k in kinds} == {(f, "neurons") for f in families}
    names = [*found.series, *found.verdict, *found.tags]
    assert not [n for n in names for c in _checkpoints(run) if c in n or c.split("/")[1] in n]


def test_checkpoints_at_one_step_are_averaged_and_a_checkpoint_without_a_step_is_at_step_0(run):
    tables = read_run(run)
    steps = tables["checkpoints"]
    steps.loc[steps["family"] == "mlp-relu@digits", "step"] = 2.0  # two checkpoints at one step: seeds, say
    steps.loc[steps["family"] == "mlp-silu@digits", "step"] = math.nan
    write_run(run, tables, read_run_info(run))
    found = tracked(run)
    assert found.steps == [0, 2]
    assert _same_series({k: v for k, v in found.series.items() if k.split("/")[1] in POOLED_SCOPES},
                        _pooled_series(run))
    name = "mlp-relu_digits/neurons/l1/gxd/regret"
    relu = found.series[name]  # both checkpoints at step 2: their mean, which the verdict's regret also is
    assert list(relu) == [2] and relu[2] == pytest.approx(found.verdict[f"verdict/{name}"], rel=1e-12)
    assert list(found.series["mlp-silu_digits/ALL/l1/gxd/spearman"]) == [0]


def test_verdict_values_and_tags_come_from_verdict_csv_and_agree_with_the_series(run):
    found, verdict = tracked(run), _verdict(run)
    assert found.verdict == {metric_name("verdict", r.family, r.kind, r.metric, r.utility, stat): getattr(r, stat)
                             for r in verdict.itertuples() for stat in ("regret", "balanced_rho")}
    assert found.tags == _expected_tags(run)
    assert found.tags["verdict/mlp-relu_digits/neurons/l1/best"] in {"gxd", "activation"}
    assert "," in found.tags["verdict/mlp-relu_digits/neurons/l1/indistinguishable"]  # gxd ≈ activation there
    for r in verdict.itertuples():  # the verdict's regret is the mean of its checkpoints' (one per step here)
        points = found.series[metric_name(r.family, r.kind, r.metric, r.utility, "regret")]
        assert r.regret == pytest.approx(sum(points.values()) / len(points), rel=1e-12, abs=1e-15)
    (run / "verdict.csv").unlink()  # no report drawn: no verdict, the series all the same
    bare = tracked(run)
    assert not bare.verdict and not bare.tags and bare.series == found.series


def test_metric_names_keep_only_what_trackers_accept():
    assert metric_name("ck:1/t*2", "ALL", "l1", "gxd", "spearman") == "ck_1/t_2/ALL/l1/gxd/spearman"
    assert metric_name("a//b", "..", "c") == "a/_/b/__/c"
    assert metric_name("mlp-relu@digits", "neurons") == "mlp-relu_digits/neurons"


def test_mlflow_logs_series_at_training_steps_verdict_params_tags_and_files_into_a_store_under_the_run(
        run, monkeypatch):
    _tracker("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    logged = log_run(run, "mlflow")
    assert logged.location == f"sqlite:///{run.resolve() / 'mlflow' / 'mlflow.db'}"
    assert (run / "mlflow" / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=logged.location)
    found = client.get_run(logged.run_id)
    assert found.info.status == "FINISHED" and found.info.run_name == "run"
    expected = tracked(run)
    assert found.data.metrics.keys() == expected.series.keys() | expected.verdict.keys()
    for name in ("mlp-relu_digits/ALL/l1/gxd/spearman", "mlp-silu_digits/neurons/l1/gxd/regret"):
        history = client.get_metric_history(logged.run_id, name)
        assert {m.step: m.value for m in history} == expected.series[name] and len(history) == 2  # exact: float64
    assert _same_series({k: {m.step: m.value for m in client.get_metric_history(logged.run_id, k)}
                         for k in expected.series if k.split("/")[1] in POOLED_SCOPES}, _pooled_series(run))
    for name, value in expected.verdict.items():
        (point,) = client.get_metric_history(logged.run_id, name)
        assert point.step == 0 and point.value == value
    assert not [n for n in found.data.metrics for c in _checkpoints(run) if c in n]
    config = json.loads((run / "run.json").read_text())["config"]
    params = {k: v for k, v in found.data.params.items() if k not in ("config_hash", "table_format")}
    assert {k: json.loads(v) if k in config and not isinstance(config[k], str) else v
            for k, v in params.items()} == config
    assert found.data.params["table_format"] == "csv"
    tags = {k: v for k, v in found.data.tags.items() if k.startswith("verdict/")}
    assert tags == _expected_tags(run) and "verdict/mlp-relu_digits/neurons/l1/indistinguishable" in tags
    files = {f.path for f in client.list_artifacts(logged.run_id)}
    assert {"report.md", "report.html", "run.json", "summary.csv", "aggregate.csv", "figures"} <= files
    figures = {f.path for f in client.list_artifacts(logged.run_id, "figures")}
    assert "figures/regret.png" in figures
    artifact = Path(found.info.artifact_uri.removeprefix("file://")) / "report.md"
    assert artifact.is_relative_to(run.resolve()) and artifact.read_text() == (run / "report.md").read_text()


def test_mlflow_uses_the_tracking_uri_of_the_environment(run, tmp_path, monkeypatch):
    _tracker("mlflow")
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


def test_tensorboard_logs_scalars_at_training_steps_hparams_verdict_text_figures_and_the_report(run):
    _tracker("tensorboard")
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    log_run(run, "tensorboard")
    logged = log_run(run, "tensorboard")  # logging again replaces the first event file
    assert logged.location == str(run / "tensorboard") and len(list((run / "tensorboard").iterdir())) == 1
    events = ea.EventAccumulator(str(run / "tensorboard"), size_guidance={ea.SCALARS: 0, ea.IMAGES: 0,
                                                                         ea.TENSORS: 0})
    events.Reload()
    expected = tracked(run)
    assert set(events.Tags()["scalars"]) == expected.series.keys() | expected.verdict.keys()
    found = {name: {p.step: p.value for p in events.Scalars(name)} for name in expected.series}
    assert _same_series(found, expected.series, rel=1e-6)  # TensorBoard keeps float32
    for name, value in expected.verdict.items():
        (point,) = events.Scalars(name)
        assert point.step == 0 and point.value == pytest.approx(value, rel=1e-6, abs=1e-30, nan_ok=True)
    plugin = events.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(plugin["_hparams_/session_start_info"]).session_start_info
    hparams = {k: v.number_value if v.WhichOneof("kind") == "number_value" else v.string_value
               for k, v in start.hparams.items()}
    config = json.loads((run / "run.json").read_text())["config"]
    assert hparams["q"] == config["q"] and hparams["seed"] == config["seed"]  # numbers stay numbers
    assert json.loads(hparams["utilities"]) == config["utilities"] and hparams["table_format"] == "csv"
    assert hparams == run_params(expected.config, numbers=True)
    experiment = HParamsPluginData.FromString(plugin["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == list(expected.verdict)  # the HParams metrics
    (text,) = events.Tensors("verdict/text_summary")
    table = text.tensor_proto.string_val[0].decode()
    verdict = _verdict(run)
    for (family, kind, metric), rows in verdict.groupby(["family", "kind", "metric"]):
        cells = [metric_name(family, kind, metric), *(",".join(rows.loc[rows[m], "utility"]) for m in MARKS)]
        assert f"| {' | '.join(cells)} |" in table
    figures = {p.stem for p in (run / "figures").glob("*.png")}
    assert set(events.Tags()["images"]) == {f"figures/{f}" for f in figures}
    (image,) = events.Images("figures/regret")
    assert image.width > 100 and image.height > 100
    (text,) = events.Tensors("report/text_summary")
    assert text.tensor_proto.string_val[0].decode() == (run / "report.md").read_text()
    assert "| q | 0.05 |" in events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()


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


def _items(items: object) -> dict[str, object]:
    """W&B history or summary items by key, their JSON values read."""
    return {"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in items}


def test_wandb_logs_offline_history_rows_per_training_step_and_the_verdict_in_the_summary(run, tmp_path,
                                                                                         monkeypatch):
    _tracker("wandb")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "online")  # still offline: nothing leaves the machine
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    logged = log_run(run, "wandb")
    offline = Path(logged.location)
    assert offline.parent == (run / "wandb").resolve() and offline.name.startswith("offline-run-")
    (log,) = offline.glob("run-*.wandb")
    records = _wandb_records(log)
    kinds = [r.WhichOneof("record_type") for r in records]
    expected = tracked(run)
    axes = {m.glob_name: m.step_metric for r, k in zip(records, kinds, strict=True) if k == "metric"
            for m in [r.metric] if m.glob_name}
    assert axes == {"mlp-relu_digits/*": "training_step", "mlp-silu_digits/*": "training_step"}
    rows = [_items(r.history.item) for r, k in zip(records, kinds, strict=True) if k == "history"]
    by_step = {row["training_step"]: row for row in rows if "training_step" in row}
    assert list(by_step) == [2, 4]  # one row per training step, ascending
    found = {name: {step: row[name] for step, row in by_step.items() if name in row} for name in expected.series}
    assert _same_series(found, expected.series)  # exact: JSON repr
    (figures,) = [row for row in rows if "training_step" not in row]
    assert figures["figures/regret/_type"] == "image-file"  # the figure, copied into the offline run as media
    assert (offline / "files" / figures["figures/regret/path"]).is_file()
    summary = {k: v for r, k in zip(records, kinds, strict=True) if k == "summary"
               for k, v in _items(r.summary.update).items()}
    assert {k: summary[k] for k in expected.tags} == _expected_tags(run)
    assert all(summary[k] == pytest.approx(v, nan_ok=True) for k, v in expected.verdict.items())
    (header,) = [r.run for r, k in zip(records, kinds, strict=True) if k == "run"]
    config = {item.key: json.loads(item.value_json) for item in header.config.update}
    run_json = json.loads((run / "run.json").read_text())
    assert config["q"] == run_json["config"]["q"] and config["utilities"] == run_json["config"]["utilities"]
    saved = {f.path for r, k in zip(records, kinds, strict=True) if k == "files" for f in r.files.files}
    assert {"report.md", "report.html", "run.json", "summary.csv"} <= saved
    assert (offline / "files" / "report.md").read_text() == (run / "report.md").read_text()
    assert not (offline / "files" / "report.md").is_symlink()


def test_run_log_assays_then_logs_each_tracker_with_one_line_each(tmp_path):
    _tracker("tensorboard")
    _tracker("mlflow")
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(FIXTURES / "relu_mlp"), "--out", str(out), "--utilities", "gxd,oracle",
                                 "--metrics", "l1", "--figures", "none", "--quiet", "--log", "mlflow,tensorboard"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("logged to ")]
    assert [line.split()[2].rstrip(":") for line in lines] == ["mlflow", "tensorboard"]
    assert all("series over 2 training steps, 4 verdict metrics, 4 verdict tags" in line for line in lines)
    assert (out / "mlflow" / "mlflow.db").is_file() and list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_required_trackers_fail_instead_of_skipping(monkeypatch):
    monkeypatch.setenv("RESETASSAY_REQUIRE_TRACKERS", "1")
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError):
        _tracker("wandb")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_tracker_that_is_not_installed_is_a_one_line_error_with_the_pip_command(run, backend, monkeypatch):
    monkeypatch.setitem(sys.modules, backend, None)
    with pytest.raises(BadInputError) as caught:
        log_run(run, backend)
    message = str(caught.value)
    assert caught.value.field == "log" and "\n" not in message
    assert message == f"`log` {backend}: {backend} is not installed; pip install 'resetassay[{backend}]'"


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
    _tracker("tensorboard")
    calls = []
    monkeypatch.setattr(resetassay.report, "render", lambda run_dir, *_args: calls.append("render") or (
        Path(run_dir) / "report.md"))
    real = resetassay.report.tracking.log_run
    monkeypatch.setattr(resetassay.report.tracking, "log_run", lambda *a, **k: calls.append("log") or real(*a, **k))
    result = runner.invoke(app, ["report", str(run), "--log", "tensorboard"])
    assert result.exit_code == 0, result.output
    assert calls == ["log"] and "report.md is current: logged as it is" in result.output
    assert f"logged to tensorboard: {len(tracked(run).series)} series over 2 training steps" in result.output
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
    _tracker("tensorboard")
    with pytest.raises(BadInputError, match="tensorboard takes no option project"):
        log_run(run, "tensorboard", project="x")
