"""Drawing the report against the lesions of a one-checkpoint run (issue: reports at the speed of the assay).

For each checkpoint (default: the ReLU MLP and the transformer fixture), --repeat times, each in a fresh process:
  run      resetassay run CKPT --out TMP --quiet --figures FORMAT
           timings.json: the checkpoint's lesion seconds (stages `lesions` + `joint lesions`) and the report's
           stages (analysis, figures, documents; the figures' include importing matplotlib and seaborn)
  report   resetassay report TMP --quiet --figures FORMAT, wall time (imports included), and its figures stage
Prints the median of each and figures / lesions: the target is below 1, the figures of a one-checkpoint run
drawn in less time than its lesions take.

    python benchmarks/report_speed.py [CHECKPOINT ...] [--repeat 3] [--figures png|svg] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CHECKPOINTS = [FIXTURES / "relu_mlp" / "task2", FIXTURES / "transformer" / "task2"]
LESION_STAGES = ("lesions", "joint lesions")


def resetassay(*args: str) -> float:
    """Wall seconds of one `resetassay` command in a fresh process."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "resetassay", *args, "--quiet"], check=True, capture_output=True)
    return time.perf_counter() - start


def measure(checkpoint: Path, figures: str) -> dict[str, float]:
    """Seconds of one run of `checkpoint` and of re-rendering its report."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "run")
        run_wall = resetassay("run", str(checkpoint), "--out", out, "--figures", figures)
        timings = json.loads((Path(out) / "timings.json").read_text())
        (stages,) = timings["checkpoints"].values()
        row = {"run wall": run_wall, "lesions": sum(stages.get(s, 0.0) for s in LESION_STAGES),
               **{f"run {stage}": seconds for stage, seconds in timings["report"].items()}}
        row["report wall"] = resetassay("report", out, "--figures", figures)
        row["report figures"] = json.loads((Path(out) / "timings.json").read_text())["report"]["figures"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", type=Path, default=CHECKPOINTS)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--figures", choices=("png", "svg"), default="png")
    parser.add_argument("--json", help="write the medians per checkpoint here")
    args = parser.parse_args()
    results = {}
    for checkpoint in args.checkpoints:
        rows = [measure(checkpoint, args.figures) for _ in range(args.repeat)]
        median = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        median["figures / lesions"] = median["run figures"] / median["lesions"]
        results[str(checkpoint)] = median
        print(f"{checkpoint.relative_to(FIXTURES) if checkpoint.is_relative_to(FIXTURES) else checkpoint} "
              f"(median of {args.repeat}, --figures {args.figures}):")
        for key, value in median.items():
            print(f"  {key:18s} {value:7.2f}{'' if key == 'figures / lesions' else ' s'}")
        verdict = "below" if median["figures / lesions"] < 1 else "ABOVE"
        print(f"  the figures take {median['figures / lesions']:.2f}x the lesions: {verdict} the target of 1")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
