"""The run directory's parts (resetassay/io/rundir.py; DESIGN "Runs are resumable"): atomic writes, the part key,
work items checked by their sha256, a refusal that names what changed, and the tables as written.

Runs resumed end to end are in tests/pipeline/test_run.py; run tables as parquet in test_rundir_parquet.py.
"""

from __future__ import annotations

import json
import os
import signal
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import torch

import resetassay
from resetassay.io.rundir import atomic_write
from resetassay.names import PARTS, TABLES


def test_atomic_write_interrupted_leaves_neither_the_file_nor_a_temporary(tmp_path, monkeypatch):
    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "part.json", "x" * 10_000)
    assert list(tmp_path.iterdir()) == []


def test_a_written_file_is_readable_by_all_and_writable_by_its_owner(tmp_path):
    atomic_write(tmp_path / "part.json", "x")
    assert (tmp_path / "part.json").stat().st_mode & 0o777 == 0o644


def test_a_write_goes_through_a_dot_temporary_named_after_its_file(tmp_path, monkeypatch):
    """The temporary is `.<name>.*.resetassay-tmp` beside the file: the only dotfiles a run removes, never another
    file's (a user's `.gitkeep`)."""
    from resetassay.io.rundir import TEMPORARY

    seen, real = [], os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: seen.append(Path(src)) or real(src, dst))
    atomic_write(tmp_path / "part.json", "x")
    (tmp,) = seen
    assert tmp.parent == tmp_path and tmp.name.startswith(".part.json.") and tmp.name.endswith(TEMPORARY)
    assert (tmp_path / "part.json").read_text() == "x" and not tmp.exists()


def test_ctrl_c_while_a_part_is_written_waits_until_it_is_complete(tmp_path, monkeypatch):
    """pandas' csv reader would turn an interrupt into a ParserError: Ctrl-C is held while a part is saved."""
    import resetassay.io.rundir as rundir

    store = rundir.RunParts(tmp_path, {"config": {}})
    tables = {name: pd.DataFrame({"checkpoint": ["c"], "x": [0.1]}) for name in TABLES}
    write = rundir.atomic_write

    def interrupted_write(path, text):
        os.kill(os.getpid(), signal.SIGINT)  # arrives while the part is being written
        write(path, text)

    monkeypatch.setattr(rundir, "atomic_write", interrupted_write)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # even where CI ignores SIGINT
    try:
        with pytest.raises(KeyboardInterrupt):
            store.save("k", tables)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert store.load("k")["summary"].equals(tables["summary"])


def test_the_part_key_depends_on_config_name_path_and_file_digests(tmp_path):
    with resetassay.io.rundir.RunParts(tmp_path / "a", {"config": {"seed": 0}}) as a, \
            resetassay.io.rundir.RunParts(tmp_path / "b", {"config": {"seed": 1}}) as b:
        base = a.key("c", Path("x/c"), {"model.safetensors": "00"})
        assert base == a.key("c", Path("x/c"), {"model.safetensors": "00"})
        others = [b.key("c", Path("x/c"), {"model.safetensors": "00"}),
                  a.key("d", Path("x/c"), {"model.safetensors": "00"}),
                  a.key("c", Path("y/c"), {"model.safetensors": "00"}),
                  a.key("c", Path("x/c"), {"model.safetensors": "01"})]
        assert len({base, *others}) == 5


def test_a_refusal_names_the_section_of_a_key_two_sections_share():
    from resetassay.io.rundir import _differences

    old = {"config": {"utilities": ["gxd"], "seed": 0}, "versions": {"torch": "2.13.0"}}
    new = {"config": {"utilities": ["gxd"], "seed": 0}, "versions": {"torch": "2.13.0", "utilities": {"mine": "pkg"}}}
    assert _differences(old, new) == "versions.utilities None -> {'mine': 'pkg'}"
    assert _differences(old, {**old, "config": {"utilities": ["gxd"], "seed": 1}}) == "seed 0 -> 1"  # one home: bare
    assert _differences(old, {**old, "config": {"utilities": ["act"], "seed": 1}}) == (
        "seed 0 -> 1; utilities ['gxd'] -> ['act']")


def test_the_run_identity_is_written_with_sorted_keys(tmp_path):
    from resetassay.io.rundir import IDENTITY, RunParts

    with RunParts(tmp_path, {"versions": {"torch": "x"}, "config": {"seed": 0, "q": 0.05}}):
        pass
    text = (tmp_path / PARTS / IDENTITY).read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


def test_the_canonical_hash_is_the_sha256_of_compact_sorted_json():
    import hashlib

    from resetassay.io.rundir import canonical_hash

    assert canonical_hash({"b": [1, 2], "a": "x"}) == hashlib.sha256(b'{"a":"x","b":[1,2]}').hexdigest()


def test_a_checkpoints_hash_covers_its_state_file(tmp_path):
    """The per-unit state file is part of what a checkpoint is: editing it changes the checkpoint's hash (and so
    its part's key: it is assayed again)."""
    from resetassay.io.rundir import checkpoint_sha256, file_sha256, state_key

    weights, state = tmp_path / "net.pt", tmp_path / "state.safetensors"
    weights.write_bytes(b"weights")
    state.write_bytes(b"state 1")
    before = checkpoint_sha256(weights, foreign=True, state=state)
    assert before[state_key(weights, state)] == file_sha256(state)
    state.write_bytes(b"state 2")
    assert checkpoint_sha256(weights, foreign=True, state=state) != before


def test_the_reports_seconds_are_kept_under_report_and_dropping_items_twice_is_harmless(tmp_path):
    from resetassay.io.rundir import RunParts, write_report_timings

    write_report_timings(tmp_path, {"figures": 1.5, "encode": 0.5})
    text = (tmp_path / "timings.json").read_text()
    assert json.loads(text)["report"] == {"figures": 1.5, "encode": 0.5}
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"  # sorted: diffs stay small
    write_report_timings(tmp_path, None)
    assert "report" not in json.loads((tmp_path / "timings.json").read_text())
    with RunParts(tmp_path, {"config": {}}) as parts:
        parts.drop_items("0" * 64)  # no items folder: nothing to remove, no error


def test_an_edited_work_item_is_not_reused(tmp_path):
    """A torchrun work item carries the sha256 of its content (issue 24: an edited calibration item left by a killed
    launch was reused without a check and the final tables differed from a clean run): an edit, or an item without
    a checksum, is done again."""
    from safetensors.torch import load_file, save_file

    import resetassay.io.rundir as rundir

    store = rundir.RunParts(tmp_path, {"config": {}})
    key = "a" * 64
    refs = {"layers.0.act": torch.arange(4.0), "ages": torch.tensor([1, 2], dtype=torch.int64)}
    store.save_item(key, "calibration", refs, {"seconds": 1.5})
    tensors, meta = store.load_item(key, "calibration")
    assert torch.equal(tensors["layers.0.act"], refs["layers.0.act"]) and meta == {"seconds": 1.5}
    path = tmp_path / PARTS / key / "calibration.safetensors"
    with safe_open_metadata(path) as metadata:
        edited = load_file(path)
    edited["layers.0.act"][2] = 99.0
    save_file(edited, path, metadata=metadata)
    with pytest.warns(UserWarning, match="does not match its sha256"):
        assert store.load_item(key, "calibration") is None
    assert not path.exists()
    save_file(refs, path, metadata={"meta": "{}"})  # written before items had a checksum
    with pytest.warns(UserWarning, match="does not match its sha256"):
        assert store.load_item(key, "calibration") is None
    store.close()


@contextmanager
def safe_open_metadata(path: Path):
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        yield f.metadata()


@pytest.mark.slow
def test_checkpoints_csv_writes_whole_steps_as_integers(run_dir):
    """A training step is a count: `2`, not `2.0` (issue 24)."""
    import csv

    rows = list(csv.DictReader((run_dir / "checkpoints.csv").read_text().splitlines()))
    assert sorted({r["step"] for r in rows}) == ["2", "4"]


def test_a_run_directory_reopens_and_lists_only_its_own_part_files(tmp_path):
    """Opening an existing run directory again (a rerun) works and finds its parts; `finished` lists only files
    named as parts (not a folder of work items, a user's file or a link), and closing twice is harmless."""
    from resetassay.io.rundir import RunParts

    identity = {"config": {"seed": 0}}
    with RunParts(tmp_path / "run", identity) as first:
        part = first.parts / f"{'a' * 64}.json"
        part.write_text("{}")
        (first.parts / ("b" * 64)).mkdir()  # a checkpoint's work items
        (first.parts / "notes.json").write_text("{}")
        (first.parts / f"{'c' * 64}.json").symlink_to(part)
    first.close()
    with RunParts(tmp_path / "run", identity) as again:
        assert again.finished() == [part] and again.count() == 1


def test_timings_that_are_not_a_table_of_checkpoints_read_as_none(tmp_path):
    from resetassay.io.rundir import read_timings, write_timings

    write_timings(tmp_path, {"checkpoints": {"c": {"lesions": 2.5}}})
    assert read_timings(tmp_path) == {"c": {"lesions": 2.5}}

    (tmp_path / "timings.json").write_text('{"checkpoints": [1, 2]}')
    assert read_timings(tmp_path) == {}
    (tmp_path / "timings.json").write_text('{"checkpoints": {"c": {"lesions": 1.5}}}')
    assert read_timings(tmp_path) == {"c": {"lesions": 1.5}}


@pytest.mark.parametrize("damage", [
    lambda part: part["tables"].pop("notes"),  # a table missing
    lambda part: part.update(format="resetassay.part/0"),  # another format, its checksum still right
    lambda part: part.update(key="0" * 64),  # filed under another checkpoint's name
])
def test_a_part_that_is_not_whole_is_assayed_again_not_read(tmp_path, damage):
    """A part file with a table missing, of another format or filed under another key reads as unreadable (a
    warning, the file removed, its checkpoint assayed again), never as tables and never as a KeyError."""
    from resetassay.io.rundir import PART_FORMAT, RunParts, canonical_hash

    with RunParts(tmp_path / "run", {"config": {"seed": 0}}) as parts:
        key = "a" * 64
        tables = {name: "x\n1\n" for name in TABLES}
        part = {"format": PART_FORMAT, "key": key, "sha256": canonical_hash(tables), "tables": tables}
        damage(part)
        if "notes" in part["tables"]:
            part["sha256"] = canonical_hash(part["tables"])
        path = parts.parts / f"{key}.json"
        path.write_text(json.dumps(part))
        with pytest.warns(UserWarning, match=f"{key}.json: unreadable part; its checkpoint is assayed again$"):
            assert parts.load(key) is None
        assert not path.exists()


def test_a_part_edited_since_it_was_written_says_so_and_is_assayed_again(tmp_path):
    """A whole part whose tables no longer match its checksum is named as edited, not as unreadable."""
    from resetassay.io.rundir import PART_FORMAT, RunParts, canonical_hash

    with RunParts(tmp_path / "run", {"config": {"seed": 0}}) as parts:
        key = "b" * 64
        tables = {name: "x\n1\n" for name in TABLES}
        part = {"format": PART_FORMAT, "key": key, "sha256": canonical_hash(tables),
                "tables": {**tables, "units": "x\n2\n"}}
        path = parts.parts / f"{key}.json"
        path.write_text(json.dumps(part))
        with pytest.warns(UserWarning, match=r"part edited since it was written \(its checksum does not match\)"):
            assert parts.load(key) is None
        assert not path.exists()


def test_run_json_is_written_indented_for_people_to_read(run_dir, tmp_path):
    from resetassay.io.rundir import read_run, write_run

    write_run(tmp_path / "run", read_run(run_dir), {"config": {"seed": 0, "metrics": ["l1"]}})
    text = (tmp_path / "run" / "run.json").read_text()
    assert json.loads(text)["config"]["seed"] == 0 and '\n    "seed": 0' in text  # two levels of 2 spaces


def test_a_run_read_back_refuses_a_table_without_a_column_or_a_summary_without_a_row(run_dir, tmp_path):
    """`read_run` checks what it reads: units.csv without a required column, or a summary.csv that lacks a
    checkpoint's ALL row for a utility and metric of the run, is a one-line error naming the file; a run.json
    without a config still reads."""
    import shutil

    from resetassay.errors import BadInputError
    from resetassay.io.rundir import read_run

    for damage, needle in ((lambda d: pd.read_csv(d / "units.csv").drop(columns="mature").to_csv(d / "units.csv",
                                                                                               index=False), "mature"),
                           (lambda d: pd.read_csv(d / "summary.csv").query("scope != 'ALL'").to_csv(
                               d / "summary.csv", index=False), "incomplete")):
        copy = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        shutil.copytree(run_dir, copy)
        damage(copy)
        with pytest.raises(BadInputError, match=needle):
            read_run(copy)
    bare = tmp_path / "bare"
    shutil.copytree(run_dir, bare)
    info = json.loads((bare / "run.json").read_text())
    info.pop("config", None)
    (bare / "run.json").write_text(json.dumps(info))
    assert set(read_run(bare)) >= {"units", "summary"}
    info["config"] = {"utilities": ["gxd"], "metrics": "l1"}  # metrics not a list: the pairs of summary.csv only
    (bare / "run.json").write_text(json.dumps(info))
    assert set(read_run(bare)) >= {"units", "summary"}


def test_the_q_of_a_run_is_its_summarys_before_its_configs(tmp_path):
    import pandas as pd

    from resetassay.errors import BadInputError
    from resetassay.io.rundir import run_q

    assert run_q(pd.DataFrame({"q": [0.1, 0.1]}), {"config": {"q": 0.05}}, tmp_path) == 0.1
    assert run_q(pd.DataFrame({"spearman": [0.5]}), {"config": {"q": 0.05}}, tmp_path) == 0.05
    with pytest.raises(BadInputError, match="no q recorded"):
        run_q(pd.DataFrame({"spearman": [0.5]}), {}, tmp_path)
