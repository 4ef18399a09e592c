"""Sequential probes against the exact fast engine, one run, same data (issue 28; SPEC S4b).

On the paper MLP (784 -> [256]x4 -> 10, SiLU; SPEC S6; seeded random weights and inputs, as lesion_speed.py: the
timing does not depend on the data) with P probe examples and references the calibration means: the exact fast
engine, then sequential probes at each confidence. Prints, per run, lesioned probe-example forwards, seconds, the
ratios to exact, the share of (layer, metric) oracle bottom-k sets equal to the exact ones, and the largest
relative shock error over the units of those sets. Seconds are the median of `--repeats` runs, the exact and the
sequential runs alternating so that a change in the machine's load falls on both. --json writes them, and the
same table as markdown beside it (FILE with .md; docs/method.md S4b includes it).

    python benchmarks/sequential_speed.py [--quick] [--probe 2048] [--width 256] [--confidence 0.95 0.5]
                                          [--repeats 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

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
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each; seconds are their median")
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
    times: dict[str, list[float]] = {}

    def timed(name: str, run):
        start = time.perf_counter()
        out = run()
        times.setdefault(name, []).append(time.perf_counter() - start)
        return out

    for _ in range(args.repeats):
        exact = timed("exact", lambda: unit_shocks_of(request))
        outs = {c: timed(c, lambda c=c: sequential_unit_shocks(request, c, args.q)) for c in args.confidence}
    exact_s = statistics.median(times["exact"])
    rows = [{"run": "exact fast", "forwards": n_units * p, "seconds": exact_s, "forward_ratio": 1.0,
             "time_ratio": 1.0, "oracle_sets_equal": 1.0, "max_rel_error_in_sets": 0.0}]
    for c, out in outs.items():
        seconds = statistics.median(times[c])
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
        path = Path(args.json)
        path.write_text(json.dumps(rows, indent=2) + "\n")
        path.with_suffix(".md").write_text(markdown(rows, width, n_units, p, args))


def markdown(rows: list[dict], width: int, n_units: int, p: int, args: argparse.Namespace) -> str:
    """The rows as the markdown table docs/method.md S4b includes."""
    lines = [f"Paper MLP 784-[{width}]x4-10 SiLU, {n_units} units, P = {p}, q = {args.q:g}, "
             f"{torch.get_num_threads()} threads, median of {args.repeats} runs.", "",
             "| run | probe-example forwards | seconds | oracle sets equal | largest relative error in the sets |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['forwards']:,d} ({r['forward_ratio']:.2f}x) | {r['seconds']:.1f} "
              f"({r['time_ratio']:.2f}x) | {r['oracle_sets_equal']:.0%} | {r['max_rel_error_in_sets']:.1e} |"
              for r in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
