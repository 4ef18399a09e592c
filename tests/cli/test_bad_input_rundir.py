"""Bad input through the CLI (tests/test_bad_input.py), part: run directories and baselines (issue 24). Nothing of the
user's is lost (`run` keeps what it did not write in parts/, `baseline -o` replaces only a baseline), nothing is
judged from a damaged table or a bad baseline (one `error:` line naming the file, exit 2), and the tables say what
they mean (a step is `2`, not `2.0`)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from helpers.cli import SMALL, invoke, one_error, run_small
from helpers.paths import FIXTURES

from resetassay.names import PARTS


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a run of relu_mlp's two checkpoints without figures, its baseline); read-only: copy before editing."""
    root = tmp_path_factory.mktemp("small")
    result = invoke("run", FIXTURES / "relu_mlp", "--out", root / "run", "--figures", "none", *SMALL)
    assert result.exit_code == 0, result.output
    result = invoke("baseline", root / "run", "-o", root / "baseline.json")
    assert result.exit_code == 0, result.output
    return root / "run", root / "baseline.json"


def test_checkpoints_csv_writes_a_whole_step_as_an_integer(small_run):
    """A training step is a count: `2`, not `2.0` (a float column, read back by other tools as such)."""
    rows = list(csv.DictReader((small_run[0] / "checkpoints.csv").read_text().splitlines()))
    assert [r["step"] for r in rows] == ["2", "4"]


def test_a_plain_run_keeps_what_the_user_put_in_parts(tmp_path):
    """parts/.gitkeep (a repository keeping the folder) and a dot-folder are the user's: a plain run (no --overwrite),
    and its resumed rerun, remove only their own temporaries (a dot-folder was a traceback)."""
    out = tmp_path / "run"
    (out / PARTS / ".cache").mkdir(parents=True)
    (out / PARTS / ".gitkeep").write_text("")
    (out / PARTS / ".cache" / "notes.txt").write_text("mine\n")
    (out / PARTS / ".cut.json.1234.resetassay-tmp").write_text("{")  # left by a killed write: removed
    for _ in range(2):
        result = run_small(FIXTURES / "relu_mlp" / "task2", "--figures", "none", out=out)
        assert result.exit_code == 0, result.output
        assert (out / PARTS / ".gitkeep").exists()
        assert (out / PARTS / ".cache" / "notes.txt").read_text() == "mine\n"
    assert not (out / PARTS / ".cut.json.1234.resetassay-tmp").exists()


def test_baseline_output_does_not_replace_a_file_that_is_not_a_baseline(small_run, tmp_path):
    mine = tmp_path / "settings.json"
    mine.write_text('{"theme": "dark"}\n')
    one_error(invoke("baseline", small_run[0], "-o", mine), 2,
              f"--output {mine}: exists and is not a resetassay baseline; name another file, or remove it first")
    assert mine.read_text() == '{"theme": "dark"}\n'
    again = tmp_path / "again.json"  # a baseline is replaced
    shutil.copy(small_run[1], again)
    assert invoke("baseline", small_run[0], "-o", again).exit_code == 0


def _rows(edit):
    def apply(baseline: dict) -> str:
        edit(baseline["rows"])
        return json.dumps(baseline)
    return apply


def _first(**changes):
    return _rows(lambda rows: rows[0].update(changes))


BASELINES = {
    "nested 200,000 deep": (lambda b: "[" * 200_000 + "]" * 200_000, "JSON nested too deep to be a baseline"),
    "a row without scope": (_rows(lambda rows: rows[0].pop("scope")), "rows[0]: no 'scope' (ALL, common,"),
    "an unknown key": (_first(spearmann=0.9), "rows[0]: unknown key 'spearmann'; a ALL row holds family,"),
    "a duplicate row": (_rows(lambda rows: rows.append(dict(rows[0]))),
                        "the same family, utility, metric and scope as rows[0]; keep one row per key"),
    "rho 2.5": (_first(spearman=2.5), "rows[0]: 'spearman' is 2.5, outside [-1, 1]"),
}


@pytest.mark.parametrize(("make", "needle"), BASELINES.values(), ids=BASELINES.keys())
def test_check_against_a_bad_baseline_is_one_line_exit_2(small_run, tmp_path, make, needle):
    """Exit 2, bad input: never a pass or a regression (exit 0/1) judged from it, nor a RecursionError."""
    path = tmp_path / "baseline.json"
    path.write_text(make(json.loads(small_run[1].read_text())))
    one_error(invoke("check", small_run[0], "--baseline", path), 2, str(path), needle)


def _cut_lines(path: Path, lines: int) -> None:
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-lines]))


def _text_in(path: Path, column: str) -> None:
    rows = list(csv.DictReader(path.read_text().splitlines()))
    rows[2][column] = "abc"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


SUMMARIES = {
    "cut short": (lambda p: p.write_bytes(p.read_bytes()[:-7]), "summary.csv: cut short"),
    "cut at a line": (lambda p: _cut_lines(p, 6), "the table is incomplete"),
    "text in a number column": (lambda p: _text_in(p, "spearman"), "column spearman holds 'abc' (line 4)"),
}


@pytest.mark.parametrize(("edit", "needle"), SUMMARIES.values(), ids=SUMMARIES.keys())
def test_check_on_a_damaged_summary_says_so_not_that_rows_are_missing(small_run, tmp_path, edit, needle):
    """A damaged summary.csv is named as damaged (exit 2), not compared as "not in the run" (a failed check)."""
    run = shutil.copytree(small_run[0], tmp_path / "run")
    edit(run / "summary.csv")
    result = invoke("check", run, "--baseline", small_run[1])
    one_error(result, 2, str(run / "summary.csv"), needle, "rerun the assay, or restore the file")
    assert "not in the run" not in result.output


def _cli_rank(rank: int, args: list[str], crash_after: int | None = None) -> tuple[int, str]:
    """One rank of `resetassay ARGS` launched as torchrun does (WORLD_SIZE set, the group made by helpers.ranks),
    with 24-unit work items; with `crash_after`, rank 1 dies after that many lesion chunks (a killed launch)."""
    import os

    from helpers.ranks import kill_after_chunks

    import resetassay.pipeline.assay

    os.environ["WORLD_SIZE"] = "2"
    resetassay.pipeline.assay.LESION_CHUNK = 24
    if crash_after is not None and rank == 1:
        kill_after_chunks(crash_after)
    result = invoke(*args)
    return result.exit_code, result.stderr + (f"{result.exception!r}" if result.exception else "")


@pytest.mark.slow
@pytest.mark.parametrize("edited", ["calibration", "lesions-0"])
def test_an_edited_work_item_left_by_a_killed_launch_is_done_again(tmp_path, monkeypatch, edited):
    """Under torchrun (the ranks as tests/pipeline/test_shard.py launches them), a killed launch leaves work items
    in parts/; one edited since is not reused (a calibration item was, with no check) nor a failure (once checked,
    it was removed by the check and the checkpoint failed, exit 1): the relaunch warns, redoes it, exits 0, and its
    tables equal a single process's."""
    from helpers.ranks import launch
    from safetensors import safe_open
    from safetensors.torch import save_file

    import resetassay.pipeline.assay

    args = ["run", str(FIXTURES / "relu_mlp" / "task2"), "--figures", "none", *SMALL]
    killed = launch(2, _cli_rank, [*args, "--out", str(tmp_path / "ranks")], 1)
    assert killed[1][0] == "ok" and killed[1][1][0] != 0, killed  # rank 1 died
    (item,) = (tmp_path / "ranks" / PARTS).glob(f"*/{edited}.safetensors")
    with safe_open(item, framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118 (not a dict)
    for name in tensors:
        tensors[name] = tensors[name].flip(0) + 1  # other references, scores or shocks; the checksum of the old
    save_file(tensors, item, metadata=metadata)

    relaunched = launch(2, _cli_rank, [*args, "--out", str(tmp_path / "ranks")])
    assert [r[1][0] for r in relaunched] == [0, 0], relaunched
    stderr = " ".join(" ".join(r[1][1] for r in relaunched).split())
    assert f"{item}: its content does not match its sha256 (edited, or written by an older version); it is done " \
           "again" in stderr
    monkeypatch.setattr(resetassay.pipeline.assay, "LESION_CHUNK", 24)
    assert invoke(*args, "--out", tmp_path / "alone").exit_code == 0
    for table in ("units.csv", "summary.csv"):
        assert (tmp_path / "ranks" / table).read_bytes() == (tmp_path / "alone" / table).read_bytes()
