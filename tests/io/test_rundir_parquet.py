"""Run tables as parquet (`write_run(..., table_format="parquet")`, `--format parquet`): they read back to the bit
as their csv does, every reader (report, check, baseline) takes either format, and without pyarrow asking for
parquet is a one-line error with the install hint."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.paths import FIXTURES
from typer.testing import CliRunner

from resetassay.cli import app
from resetassay.errors import BadInputError
from resetassay.io.rundir import (
    as_csv_reads,
    check_table_format,
    convert_run,
    read_run,
    read_run_info,
    read_table,
    table_path,
    write_run,
    write_table,
)
from resetassay.names import TABLES

runner = CliRunner()


@pytest.fixture(scope="module")
def in_memory() -> dict[str, pd.DataFrame]:
    """The tables of an assay as it holds them in memory (not read back from csv: all-empty text columns, a
    column of None, ...)."""
    pytest.importorskip("pyarrow")
    from resetassay.pipeline.run import run_assay

    result = run_assay([FIXTURES / "relu_mlp"], utilities=["gxd", "activation", "random", "oracle"],
                       calib_size=64, probe_size=64, progress=False)
    return result.tables()


def _same_bits(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    for column in a.columns:
        if a[column].dtype == np.float64:  # NaN == NaN and -0.0 != 0.0: compare the bits
            assert (a[column].to_numpy().view(np.int64) == b[column].to_numpy().view(np.int64)).all(), column


@pytest.mark.slow
def test_a_run_written_as_parquet_reads_back_as_its_csv_to_the_bit(in_memory, tmp_path):
    write_run(tmp_path / "csv", in_memory, {"config": {"q": 0.05}})
    write_run(tmp_path / "parquet", in_memory, {"config": {"q": 0.05}}, table_format="parquet")
    assert sorted(p.name for p in (tmp_path / "parquet").iterdir()) == sorted(
        [*(f"{t}.parquet" for t in TABLES), "run.json"])
    csv, parquet = read_run(tmp_path / "csv"), read_run(tmp_path / "parquet")
    for name in TABLES:
        _same_bits(csv[name], parquet[name])
        _same_bits(parquet[name], read_table(write_table(in_memory[name])))  # what a csv round trip gives
    assert parquet["units"]["shock_l1"].dtype == np.float64 and len(parquet["units"]) == len(in_memory["units"])
    assert read_run_info(tmp_path / "parquet")["table_format"] == "parquet"
    assert read_run_info(tmp_path / "csv")["table_format"] == "csv"


def test_as_csv_reads_gives_the_csv_round_trip_of_awkward_columns():
    table = pd.DataFrame({"f": [0.1, -0.0, np.nan, 1e-310], "i": np.array([1, 2, 3, 4], dtype=np.int32),
                          "s": ["1", "2", "3", "4"], "none": [None] * 4, "text": ["a", None, "c|d", ""],
                          "b": [True, False, True, True], 7: [0.5, 1.5, 2.5, 3.5]})
    _same_bits(as_csv_reads(table), read_table(write_table(table)))
    empty = pd.DataFrame({"a": pd.Series([], dtype=np.int64), "b": pd.Series([], dtype=object)})
    _same_bits(as_csv_reads(empty), read_table(write_table(empty)))
    _same_bits(as_csv_reads(pd.DataFrame()), read_table(write_table(pd.DataFrame())))


def test_rewriting_a_run_in_the_other_format_leaves_one_file_per_table(in_memory, tmp_path):
    out = write_run(tmp_path / "run", in_memory, {"config": {"q": 0.05}})
    csv_bytes = {name: (out / f"{name}.csv").read_bytes() for name in TABLES}
    convert_run(out, "parquet")
    assert not list(out.glob("*.csv")) and len(list(out.glob("*.parquet"))) == len(TABLES)
    assert table_path(out, "units") == out / "units.parquet"
    convert_run(out, "csv")
    assert not list(out.glob("*.parquet"))
    assert {name: (out / f"{name}.csv").read_bytes() for name in TABLES} == csv_bytes  # byte for byte


def test_readers_prefer_the_format_run_json_records_else_whichever_exists(in_memory, tmp_path):
    out = write_run(tmp_path / "run", in_memory, {"config": {"q": 0.05}}, table_format="parquet")
    shutil.copy(out / "summary.parquet", tmp_path / "keep.parquet")
    (out / "summary.csv").write_text("checkpoint\nstale\n")  # a stray csv beside the recorded parquet
    assert table_path(out, "summary") == out / "summary.parquet"
    assert len(read_run(out)["summary"]) == len(in_memory["summary"])
    info = json.loads((out / "run.json").read_text())
    del info["table_format"]  # a run.json without the record (an older run, or none): the csv first
    (out / "run.json").write_text(json.dumps(info))
    assert table_path(out, "summary") == out / "summary.csv"
    assert table_path(out, "units") == out / "units.parquet"  # the only one there


@pytest.mark.slow
def test_report_check_and_baseline_read_a_run_converted_to_parquet(run_dir, tmp_path):
    pytest.importorskip("pyarrow")
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    convert_run(run, "parquet")
    assert not (run / "units.csv").exists() and (run / "units.parquet").exists()
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "report.md").read_text() == (run_dir / "report.md").read_text()
    assert (run / "aggregate.csv").read_bytes() == (run_dir / "aggregate.csv").read_bytes()
    baseline = tmp_path / "baseline.json"
    result = runner.invoke(app, ["baseline", str(run_dir), "-o", str(baseline)])  # from the csv run
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["check", str(run), "--baseline", str(baseline)])  # the parquet one
    assert result.exit_code == 0, result.output
    assert "0 failed" in result.output and "(0 moved" in result.output
    from_parquet = tmp_path / "from_parquet.json"
    assert runner.invoke(app, ["baseline", str(run), "-o", str(from_parquet)]).exit_code == 0
    rows = [json.loads(p.read_text())["rows"] for p in (baseline, from_parquet)]
    assert rows[0] == rows[1]


def test_a_bad_parquet_table_is_a_one_line_error_naming_it(in_memory, tmp_path):
    out = write_run(tmp_path / "run", in_memory, {"config": {"q": 0.05}}, table_format="parquet")
    (out / "summary.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(BadInputError, match=r"summary\.parquet: unreadable table") as caught:
        read_run(out)
    assert "\n" not in str(caught.value)
    result = runner.invoke(app, ["check", str(out), "--baseline", str(tmp_path / "none.json")])
    assert result.exit_code == 2


def test_without_pyarrow_parquet_is_a_one_line_error_with_the_install_hint(tmp_path, monkeypatch):
    tables = {name: pd.DataFrame({"checkpoint": ["c"], "x": [0.1]}) for name in TABLES}
    try:
        import pyarrow  # noqa: F401

        parquet = write_run(tmp_path / "parquet", tables, {}, table_format="parquet")
    except ImportError:
        parquet = None
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(BadInputError) as caught:
        write_run(tmp_path / "other", tables, {}, table_format="parquet")
    assert caught.value.field == "table_format" and "\n" not in str(caught.value)
    assert str(caught.value) == ("`table_format` parquet: needs pyarrow, which is not installed; "
                                 "pip install 'resetassay[parquet]' (pyarrow)")
    assert not (tmp_path / "other").exists()  # refused before anything is written
    if parquet is not None:
        with pytest.raises(BadInputError, match=r"units\.parquet: reading a parquet table needs pyarrow, which is "
                                                r"not installed; pip install 'resetassay\[parquet\]'"):
            read_run(parquet)


def test_an_unknown_format_is_refused_naming_the_flag():
    with pytest.raises(BadInputError, match="`table_format` 'xlsx': choose csv or parquet") as caught:
        check_table_format("xlsx")
    assert caught.value.field == "table_format"
