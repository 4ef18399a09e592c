"""What the greedy set-aware selector gxd_greedy costs on the fixtures, against one gxd calibration pass (SPEC S5).

Per fixture checkpoint: the seconds of one calibration pass computing GXD alone (what `gxd` costs) and of
`greedy.greedy_selection` at --q (default m, and --greedy-every if given), each the best of --repeat runs (the
machine is shared and noisy), with the number of rounds (calibration passes) the greedy made. The joint Shock@q
numbers of docs/guide/utilities.md come from `resetassay run fixtures/... --utilities gxd,gxd_greedy,oracle`, not
from here.

    python benchmarks/greedy_cost.py [--q 0.05] [--greedy-every M] [--repeat 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from resetassay.io.checkpoint import load_checkpoint
from resetassay.pipeline.assay import AssayConfig, calibration_targets, checkpoint_inputs
from resetassay.scoring.calibration import calibration_stats
from resetassay.scoring.greedy import greedy_selection, picks_per_round
from resetassay.scoring.reference import unit_references
from resetassay.stats.summary import k_at

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CASES = [f"{family}/task{task}" for family in ("relu_mlp", "silu_mlp", "layernorm_mlp", "cnn", "resnet")
         for task in (2, 4)]


def best_time(fn: Callable[[], object], repeat: int) -> float:
    """The fastest of `repeat` wall times of `fn()`."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(case: str, q: float, every: int | None, repeat: int) -> dict:
    """Seconds of one GXD pass and of the greedy selection of one fixture checkpoint, and the greedy's rounds."""
    config = AssayConfig(utilities=["gxd", "gxd_greedy"], q=q, greedy_every=every)
    p = checkpoint_inputs(load_checkpoint(FIXTURES / case), config).prepare()
    x, y = p.calib_x, calibration_targets(p)
    refs = unit_references(p.model, p.layers, x, config.reference, config.batch_size)
    pool = {layer.name: np.arange(layer.n_units) for layer in p.layers}  # the fixtures store no ages: all mature
    gxd_s = best_time(lambda: calibration_stats(p.model, p.layers, x, y, refs, {"gxd"}, config.batch_size), repeat)
    greedy_s = best_time(lambda: greedy_selection(p.model, p.layers, refs, x, y, pool, q, every,
                                                  config.batch_size), repeat)
    rounds = max(math.ceil(k / picks_per_round(k, every)) for k in (k_at(layer.n_units, q) for layer in p.layers))
    return {"checkpoint": case, "units": sum(layer.n_units for layer in p.layers), "rounds": rounds,
            "gxd_pass_s": round(gxd_s, 4), "greedy_s": round(greedy_s, 4),
            "greedy_per_pass": round(greedy_s / gxd_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--q", type=float, default=0.05)
    parser.add_argument("--greedy-every", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = [measure(case, args.q, args.greedy_every, args.repeat) for case in CASES]
    print(f"q = {args.q}, greedy-every = {args.greedy_every or 'default'}, torch threads {torch.get_num_threads()}")
    print("| checkpoint | units | rounds | one gxd pass | gxd_greedy | greedy / pass |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['checkpoint']} | {r['units']} | {r['rounds']} | {r['gxd_pass_s']:.3f} s | {r['greedy_s']:.3f} s "
              f"| {r['greedy_per_pass']:.1f}× |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
