"""Which protocol choice moves which number of the replication (SPEC S6): one choice varied at a time.

On the checkpoints `benchmarks/replicate_paper.py` trained (its `--work`), for the chosen activations and
steps, the assay is rerun under each variant with everything else at the default:

    default      calibration-mean reference, probe from the task trained last, target = the label
    predicted    the gradient utilities follow the model's predicted class instead of the label (--target)
    zero-ref     the reference is 0 (zero-ablation: GXD becomes GXI, S2)
    first-task   calibration and probe from task 0 instead of the task trained last (--task 0)

and the training step itself is a choice (0 = untrained vs 30). Writes `variants.csv` (mean ± SE over seeds of
the pooled Spearman ρ on logit L1, per activation x step x variant x utility) and `variants.md` into
`--publish`; each variant's runs resume in `--work`/variants/<name>.

    python benchmarks/replication_variants.py [--activations silu,relu] [--steps 0,30]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd
import torch
from replicate_paper import ROOT, aggregate, assay

from resetassay.data import DataChoice
from resetassay.rundir import read_run
from resetassay.summary import checkpoint_stats

UTILITIES = ["activation", "gxi", "gxd", "oracle"]
VARIANTS = {"default": {}, "predicted": {"target": "predicted"}, "zero-ref": {"reference": "zero"},
            "first-task": {"data": DataChoice(task=0)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "reports" / "replication" / "work")
    parser.add_argument("--publish", type=Path, default=ROOT / "reports" / "replication")
    parser.add_argument("--activations", type=lambda s: s.split(","), default=["silu", "relu"])
    parser.add_argument("--steps", type=lambda s: [int(v) for v in s.split(",")], default=[0, 30])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoints = sorted(p for p in (args.work / "train").glob("*-s*/task*")
                         if p.parent.name.rsplit("-s", 1)[0] in args.activations
                         and int(re.sub(r"\D", "", p.name)) in args.steps)
    if not checkpoints:
        parser.error(f"no checkpoints of {args.activations} at steps {args.steps} under {args.work / 'train'}; "
                     "run benchmarks/replicate_paper.py first")
    frames = []
    for name, options in VARIANTS.items():
        out = args.work / "variants" / name
        assay(checkpoints, out, utilities=UTILITIES, metrics=["l1"], **options)
        tables = read_run(out)
        stats = checkpoint_stats(tables["summary"], tables["checkpoints"]).assign(variant=name)
        frames.append(stats)
        print(f"{name}: {tables['checkpoints']['checkpoint'].nunique()} checkpoints", flush=True)
    stats = pd.concat(frames, ignore_index=True)
    stats["activation"] = stats["family"].str.removeprefix("mlp-")
    stats["step"] = stats["step"].astype(int)
    table = aggregate(stats, ["activation", "step", "variant", "utility"], "spearman")
    args.publish.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.publish / "variants.csv", index=False, float_format="%.6g")
    wide = table.assign(cell=[f"{m:.3f} ± {s:.3f}" if s == s else f"{m:.3f}" for m, s in zip(table["mean"],
                                                                                           table["se"], strict=True)])
    wide = wide.pivot_table(index=["activation", "step", "utility"], columns="variant", values="cell",
                            aggfunc="first").reindex(columns=list(VARIANTS)).reset_index()
    lines = ["# Replication variants: pooled Spearman ρ on logit L1, mean ± SE over seeds", "",
             "| " + " | ".join(wide.columns) + " |", "|" + "---|" * len(wide.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in wide.itertuples(index=False)]
    (args.publish / "variants.md").write_text("\n".join(lines) + "\n")
    print(f"published {args.publish / 'variants.md'}")


if __name__ == "__main__":
    main()
