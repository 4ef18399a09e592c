"""Progress reporting: plain lines where stderr is not a terminal (SLURM, nohup), a callback from Python."""

from __future__ import annotations

import io

from helpers.paths import FIXTURES

from resetassay.pipeline.run import run_assay
from resetassay.progress import plain_lines, rich_progress


def test_plain_lines_print_first_last_and_at_most_one_per_interval():
    stream, now = io.StringIO(), [0.0]
    update = plain_lines(stream, every=10.0, clock=lambda: now[0])
    for done in range(1, 101):
        now[0] = done * 1.0  # one step per second: lines at 1, 11, 21, ... and the last
        update("lesions c", done, 100)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "lesions c: 1/100 (1%)" or lines[0].startswith("lesions c: 1/100 (1%), about")
    assert lines[-1] == "lesions c: 100/100 (100%)"
    assert len(lines) == 11
    assert "about 48 s left" in lines[5]  # 51 done 50 s after the first: 49 more at that pace


def test_rich_progress_writes_plain_lines_when_the_stream_is_not_a_terminal():
    stream = io.StringIO()
    with rich_progress(True, stream) as update:
        update("checkpoints", 0, 2)
        update("checkpoints", 2, 2)
    assert stream.getvalue().splitlines() == ["checkpoints: 0/2 (0%)", "checkpoints: 2/2 (100%)"]
    with rich_progress(False, stream) as update:
        assert update is None


def test_run_assay_reports_calibration_and_lesions_of_each_checkpoint_to_a_callback():
    seen: dict[str, list[tuple[int, int]]] = {}
    run_assay([FIXTURES / "relu_mlp" / "task2"], utilities=["gxd"], metrics=["l1"], calib_size=64, probe_size=64,
              joint=False, progress=lambda task, done, total: seen.setdefault(task, []).append((done, total)))
    assert seen["checkpoints"][-1] == (1, 1)
    assert seen["calibration task2"][-1] == (64, 64)
    lesions = seen["lesions task2"]
    assert lesions[-1][0] == lesions[-1][1] > 0 and [d for d, _ in lesions] == sorted(d for d, _ in lesions)
