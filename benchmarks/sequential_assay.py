"""Sequential probes against the exact run, whole assays side by side (issue 28; SPEC S4b, S5).

For each checkpoint (default: the bundled ResNet, transformer and ReLU MLP fixtures after task 4), `run_assay`
twice with the same data, utilities and seed: exact, then `sequential` at each confidence. Per checkpoint and
confidence it reports the lesioned probe-example forwards (the sum of units.csv `probes` against units x P), the
lesion stage's seconds, the share of (layer, metric) oracle bottom-k sets equal to the exact run's, and the largest
difference of any utility's pooled Spearman ρ and Shock@q ratio from the exact run's. --json writes the rows, and
a markdown table beside it (FILE with .md).

A plain state dict takes `--model` (a factory) and `--data` (e.g. the CIFAR-10 JPEG archive, with `--normalize`);
`--work DIR` keeps each assay's run directory there (DIR/<checkpoint>/exact, .../sequential-<c>), so a killed
benchmark resumes: a finished assay is read back from its tables (and the seconds of the launch that finished it),
one in progress goes on from its finished lesion chunks. The paper MLP case of the performance guide (784-[256]x4-10
SiLU, three permuted-MNIST tasks of 10,000 examples; MNIST_DIR holds its IDX files):

    resetassay train --out runs/paper-mlp --model mlp --activation silu --data permuted-mnist \
        --data-dir MNIST_DIR --tasks 3 --examples-per-task 10000 --checkpoint-at 3
    python benchmarks/sequential_assay.py runs/paper-mlp/task3 --probe-size 2048 --json FILE

and its ResNet-18 case:

    python examples/cifar10_resnet18.py ARCHIVE --epochs 2 --out runs/r18
    python benchmarks/sequential_assay.py runs/r18/resnet18.safetensors --model examples.resnet18:resnet18 \
        --data ARCHIVE --normalize cifar10 --probe-size 2048 --work runs/sequential-r18 \
        --json reports/benchmarks/sequential_resnet18.json

    python benchmarks/sequential_assay.py [CHECKPOINT ...] [--confidence 0.95 0.5] [--probe-size N]
                                          [--model F --data D --normalize N] [--work DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

import resetassay as ra
from resetassay.io.rundir import read_run, read_run_info, read_timings
from resetassay.lesion.sequential import BLOCKS, schedule
from resetassay.names import ALL, shock_column
from resetassay.stats.summary import selection

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = [ROOT / "fixtures" / name / "task4" for name in ("resnet", "transformer", "relu_mlp")]
UTILITIES = ["gxd", "activation", "contribution", "oracle"]
METRICS = ["l1", "kl"]


def _assay(path: Path, sequential: float | None, args: argparse.Namespace) -> ra.AssayResult | SimpleNamespace:
    """One assay of `path`, exact (`sequential` None) or sequential; with `--work`, read back from its run directory
    when it finished there (its tables and the seconds of the launch that finished it)."""
    out = (args.work / path.stem / ("exact" if sequential is None else f"sequential-{sequential:g}")
           if args.work else None)
    if out is not None and (out / "units.csv").exists():
        tables = read_run(out, ("units", "summary"))
        return SimpleNamespace(units=tables["units"], summary=tables["summary"], timings=read_timings(out),
                               config=SimpleNamespace(q=read_run_info(out)["config"]["q"]))
    data = ra.data_spec(args.data, normalize=args.normalize) if args.data else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixtures' small held-out sets shrink both sets to half each
        return ra.run_assay([path], model=args.model, data=data, out=out, utilities=UTILITIES, metrics=METRICS,
                            probe_size=args.probe_size, calib_size=args.probe_size, joint=False,
                            sequential=sequential, progress=args.work is not None)



def compare(exact: ra.AssayResult, seq: ra.AssayResult, q: float) -> dict:
    """Forwards, the share of units that ended on the full probe set and after the first round, oracle sets and
    pooled statistics of a sequential result against the exact one (same units)."""
    ue, us = exact.units, seq.units
    n_probe = int(us["probes"].max())
    same = [set(selection(g, shock_column(m), q)) == set(selection(us[us["layer"] == layer], shock_column(m), q))
            for m in METRICS for layer, g in ue.groupby("layer", sort=False)]
    pooled = [t[t["scope"] == ALL].set_index(["utility", "metric"])[["spearman", "gap_ratio"]]
              for t in (exact.summary, seq.summary)]
    diff = (pooled[1] - pooled[0]).abs()
    lesion = [sum(v for k, v in stages.items() if k.startswith("lesion")) if stages else math.nan for stages in
              (next(iter(r.timings.values()), {}) for r in (exact, seq))]  # none for an assay read back from --work
    ends = us["probes"].value_counts(normalize=True)
    sizes = [len(b) for b in torch.tensor_split(torch.arange(n_probe), min(BLOCKS, n_probe))]
    first = sum(sizes[:schedule(len(sizes))[0]])  # probe examples of the first round (sequential.schedule)
    return {"forward_ratio": float(us["probes"].sum()) / (len(us) * n_probe), "probe_size": n_probe,
            "share_full": float(ends.get(n_probe, 0.0)), "share_first_round": float(ends.get(first, 0.0)),
            "lesion_s_exact": lesion[0], "lesion_s": lesion[1], "oracle_sets_equal": sum(same) / len(same),
            "max_rho_diff": float(diff["spearman"].max()), "max_ratio_diff": float(diff["gap_ratio"].max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", type=Path, default=DEFAULT)
    parser.add_argument("--confidence", type=float, nargs="+", default=[0.95, 0.5])
    parser.add_argument("--probe-size", type=int, default=None,
                        help="calibration and probe examples each (default: 2048, or half the held-out split)")
    parser.add_argument("--model", default=None, help="package.module:factory of a plain state dict")
    parser.add_argument("--data", default=None, help="the data of a checkpoint that records none")
    parser.add_argument("--normalize", default=None, help="with --data: e.g. cifar10")
    parser.add_argument("--work", type=Path, default=None, help="keep the run directories here (resumable)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for path in args.checkpoints:
        exact = _assay(path, None, args)
        for c in args.confidence:
            row = {"checkpoint": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else Path(*path.parts[-2:])),
                   "units": len(exact.units), "confidence": c,
                   **compare(exact, _assay(path, c, args), exact.config.q)}
            rows.append(row)
            print(f"{row['checkpoint']:<28} {row['units']:>5} units  P {row['probe_size']:>4}  c {c:<5g} "
                  f"forwards {row['forward_ratio']:.2f}x  lesion {row['lesion_s']:.1f} s / {row['lesion_s_exact']:.1f} "
                  f"s  oracle sets equal {row['oracle_sets_equal']:.0%}  |Δρ| ≤ {row['max_rho_diff']:.4f}  "
                  f"|Δ Shock@q ratio| ≤ {row['max_ratio_diff']:.4f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
        args.json.with_suffix(".md").write_text(markdown(rows))


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    lines = ["| checkpoint | units | P | confidence | probe-example forwards | units ending on every probe / after the "
             "first round | lesion seconds (exact) | oracle sets equal | largest abs. Δρ | largest abs. Δ Shock@q "
             "ratio |",
             "|---" * 10 + "|"]
    lines += [f"| {r['checkpoint']} | {r['units']} | {r['probe_size']} | {r['confidence']:g} | "
              f"{r['forward_ratio']:.2f}x | {r['share_full']:.0%} / {r['share_first_round']:.0%} | "
              f"{r['lesion_s']:.1f} ({r['lesion_s_exact']:.1f}) | "
              f"{r['oracle_sets_equal']:.0%} | {r['max_rho_diff']:.4f} | {r['max_ratio_diff']:.4f} |" for r in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
