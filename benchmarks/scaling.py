"""Scaling of a run over torchrun ranks on this machine (DESIGN "Beyond one machine"; resetassay/pipeline/shard.py).

Runs the same `resetassay run` with 1 process (`python -m resetassay`) and with 2, 3, ... ranks
(`python -m torch.distributed.run --nproc-per-node N -m resetassay`), on two kinds of work:

  many    many small checkpoints: the bundled fixtures (MLPs, CNN, ResNet, transformer)
  wide    one model with many units: a zoo MLP 64 -> [1024]x3 -> 10 on digits (3072 units, 12 chunks of 256),
          random Kaiming weights, written once into a temporary folder

and reports each launch's wall time (imports and start included), the speedup over one process, the
seconds per stage summed over the ranks (timings.json) and whether the tables equal the single-process run's
byte for byte. On one machine the ranks share its cores (each gets cores / ranks threads, while one process
uses them all as threads), so the ideal is the same wall time: what this measures is the sharding's overhead
(each rank loads the checkpoints it works on and recomputes their probe logits; calibration is one rank per
checkpoint; rank 0 merges) against the gain of processes over intra-op threads on small models.

    python benchmarks/scaling.py [--quick] [--ranks 1,2,3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from resetassay.data import DataSpec
from resetassay.io.checkpoint import save_checkpoint
from resetassay.models import create_model
from resetassay.names import TABLES, TIMINGS

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
WIDE = {"in_features": 64, "widths": [1024, 1024, 1024], "n_classes": 10, "activation": "relu"}


def wide_checkpoint(folder: Path) -> Path:
    """The `wide` case: one zoo MLP checkpoint with random weights, recorded as trained on digits task 0."""
    torch.manual_seed(0)
    model = create_model("mlp", **WIDE)
    return save_checkpoint(folder / "wide_mlp", model, "resetassay.models:mlp", WIDE, step={"task": 0},
                           data=DataSpec())


def launch(ranks: int, paths: list[Path], out: Path, flags: list[str]) -> float:
    """Wall seconds of one `resetassay run` with `ranks` processes (1: no torchrun)."""
    command = [sys.executable, "-m", "resetassay", "run", *map(str, paths), "--out", str(out), "--quiet", *flags]
    if ranks > 1:
        command[1:3] = ["-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "-m", "resetassay"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return seconds


def stage_seconds(out: Path) -> dict[str, float]:
    """Seconds per stage, summed over checkpoints (and ranks) from timings.json, and the report's."""
    timings = json.loads((out / TIMINGS).read_text())
    totals: dict[str, float] = {}
    for stages in timings["checkpoints"].values():
        for stage, seconds in stages.items():
            totals[stage] = round(totals.get(stage, 0.0) + seconds, 2)
    totals["report"] = round(timings["report"], 2)
    return totals


def tables(out: Path) -> dict[str, bytes]:
    return {name: (out / f"{name}.csv").read_bytes() for name in TABLES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small calibration/probe sets, two fixture families")
    parser.add_argument("--ranks", default="1,2,3", help="comma-separated numbers of processes (1 always runs)")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args = parser.parse_args()
    counts = sorted({1, *(int(n) for n in args.ranks.split(","))})
    size = 128 if args.quick else 256  # the fixtures' smallest held-out set (grammar) has 512 examples
    sizes = ["--calib-size", str(size), "--probe-size", str(size)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = {
            "many": ([FIXTURES / "relu_mlp", FIXTURES / "cnn"] if args.quick else [FIXTURES], sizes),
            "wide": ([wide_checkpoint(tmp)], [*sizes, "--utilities", "gxd,activation,oracle"]),
        }
        rows = []
        print(f"{os.cpu_count()} CPU cores, torch {torch.__version__}")
        print("| work | ranks | wall s | speedup | calibration s | lesions s | joint s | report s | same tables |")
        print("|---|---|---|---|---|---|---|---|---|")
        for case, (paths, flags) in cases.items():
            first: dict[str, bytes] = {}
            t1 = 0.0
            for n in counts:
                out = tmp / f"{case}-{n}"
                wall = launch(n, paths, out, flags)
                stages = stage_seconds(out)
                same = tables(out) == first if first else True
                first = first or tables(out)
                t1 = wall if n == 1 else t1
                row = {"work": case, "ranks": n, "wall_s": round(wall, 2), "speedup": round(t1 / wall, 2),
                       "stages_s": stages, "same_tables": same}
                rows.append(row)
                calibration = stages.get("references", 0) + stages.get("utilities", 0)
                print(f"| {case} | {n} | {wall:.1f} | {t1 / wall:.2f}x | {calibration:.1f} | "
                      f"{stages.get('lesions', 0):.1f} | {stages.get('joint lesions', 0):.1f} | "
                      f"{stages['report']:.1f} | {'yes' if same else 'NO'} |", flush=True)
                if not same:
                    sys.exit(f"{case}: the tables of {n} ranks differ from one process's")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
