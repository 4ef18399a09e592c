"""Sequential probes against the exact fast engine, one run, same data (issue 28; SPEC S4b).

On the paper MLP (784 -> [256]x4 -> 10, SiLU; SPEC S6; seeded random weights and inputs, as lesion_speed.py: the
timing does not depend on the data) with P probe examples and references the calibration means: the exact fast
engine, then sequential probes at each confidence. Prints, per run, lesioned probe-example forwards, seconds, the
ratios to exact, the share of (layer, metric) oracle bottom-k sets equal to the exact ones, and the largest
relative shock error over the units of those sets. --json writes them.

    python benchmarks/sequential_speed.py [--quick] [--probe 2048] [--width 256] [--confidence 0.95 0.5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from resetassay.discovery.units import unit_layers
from resetassay.lesion import LesionRequest, unit_shocks_of
from resetassay.lesion.sequential import sequential_unit_shocks
from resetassay.lesion.shocks import probe_logits
from resetassay.models import create_model
from resetassay.scoring.reference import unit_references
from resetassay.stats.summary import k_at

METRICS = ["l1", "kl"]


def bottom(values: torch.Tensor, k: int) -> set[int]:
    return set(torch.argsort(values, stable=True)[:k].tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="P = 512 and widths 128")
    parser.add_argument("--probe", type=int, default=2048)
    parser.add_argument("--width", type=int, default=256, help="units per hidden layer (the paper's 256)")
    parser.add_argument("--q", type=float, default=0.05)
    parser.add_argument("--confidence", type=float, nargs="+", default=[0.95, 0.5])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    p, width = (512, 128) if args.quick else (args.probe, args.width)
    torch.manual_seed(0)
    model = create_model("mlp", in_features=784, widths=[width] * 4, activation="silu").eval()
    calib_x, probe_x = torch.rand(p, 784), torch.rand(p, 784)
    layers = unit_layers(model, calib_x[:2])
    refs = unit_references(model, layers, calib_x)
    request = LesionRequest(model, layers, refs, probe_x, METRICS, base=probe_logits(model, probe_x))
    n_units = sum(layer.n_units for layer in layers)
    start = time.perf_counter()
    exact = unit_shocks_of(request)
    exact_s = time.perf_counter() - start
    rows = [{"run": "exact fast", "forwards": n_units * p, "seconds": exact_s, "forward_ratio": 1.0,
             "time_ratio": 1.0, "oracle_sets_equal": 1.0, "max_rel_error_in_sets": 0.0}]
    for c in args.confidence:
        start = time.perf_counter()
        out = sequential_unit_shocks(request, c, args.q)
        seconds = time.perf_counter() - start
        same, worst = [], 0.0
        for m in METRICS:
            for layer in layers:
                k = k_at(layer.n_units, args.q)
                truth = bottom(exact[m][layer.name], k)
                same.append(bottom(out.shocks[m][layer.name], k) == truth)
                idx = torch.tensor(sorted(truth))
                err = (out.shocks[m][layer.name][idx] - exact[m][layer.name][idx]).abs().max()
                worst = max(worst, float(err / exact[m][layer.name].abs().max()))
        rows.append({"run": f"sequential {c:g}", "forwards": out.forwards, "seconds": seconds,
                     "forward_ratio": out.forwards / (n_units * p), "time_ratio": seconds / exact_s,
                     "oracle_sets_equal": sum(same) / len(same), "max_rel_error_in_sets": worst})
    print(f"paper MLP 784-[{width}]x4-10 silu, {n_units} units, P = {p}, q = {args.q:g}, "
          f"{torch.get_num_threads()} threads")
    for r in rows:
        print(f"  {r['run']:<16} forwards {r['forwards']:>10,d} ({r['forward_ratio']:.2f}x)  "
              f"{r['seconds']:7.1f} s ({r['time_ratio']:.2f}x)  oracle sets equal {r['oracle_sets_equal']:.0%}  "
              f"max rel. error in sets {r['max_rel_error_in_sets']:.1e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
