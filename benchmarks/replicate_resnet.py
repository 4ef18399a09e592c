"""The paper's residual case (SPEC S6: ResNet-18 on CIFAR-100, checkpoints at epochs 60/120/160/200) scaled to 2 CPU
cores: the zoo ResNet on CIFAR-10 JPEGs, trained once with checkpoints along training, every checkpoint assayed.

`resetassay.train.loop` trains the zoo ResNet (BatchNorm, projection shortcuts; `--widths`, `--blocks` BasicBlocks per
stage; default 8-16-32-64 x 1: ResNet-18's four stages at an eighth of its width, one block each instead of two) on
`--examples` images (default a seeded 10000) of the `train` root of the CIFAR-10 archive with SGD (lr 0.1, momentum
0.9, weight decay 5e-4, batch 128, cosine schedule), random crops of the 4-pixel-padded image and flips, for
`--epochs` epochs (default 10), checkpoints before training and at 30/60/80/100 % of the epochs (the paper's
60/120/160/200 of 200). `resetassay.run_assay` then assays each checkpoint on its held-out `test` root (its data
record, no --data): `--calib`/`--probe` images (default 1024 each), every built-in utility of a backprop checkpoint,
L1 and KL, at most `--units-per-layer` units per layer when given. The defaults fit about an hour on 2 CPU cores
shared with other work (the README's "The residual case" has the measured times). Both steps resume (`--work`, default
reports/replication/work/resnet_cifar10, not committed): `train` keeps the checkpoints on disk and retrains from the
start only when one is missing, the assay keeps finished checkpoints and is redone when resetassay's code changed.
It writes into `--publish` (default reports/replication/resnet_cifar10):

    spearman.csv       per utility x metric: pooled Spearman ρ (ALL scope) and Shock@5% / oracle, mean ± SE over the
                       trained checkpoints (the paper's four), and per checkpoint
    checkpoints.csv    per checkpoint: epoch, held-out accuracy (all 10000 test images) and probe accuracy
    report.md, figures/, aggregate.csv   the run's own report
    timings.json       measured wall time: training (per epoch) and assay (per checkpoint)
    README.md          the tables as markdown, the paper's numbers beside ours (SPEC S6)

    python benchmarks/replicate_resnet.py [--cifar PATH] [--widths 8,16,32,64] [--blocks 1] [--epochs 10]
                                          [--examples 10000] [--units-per-layer N] [--quick]

`--quick` is a miniature (1024 training images, widths 4-8, 2 epochs, 128/128 images; a few minutes).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import pandas as pd
import torch
from replicate_paper import ROOT, UTILITIES, assay, mean_se

from resetassay.data import data_spec, training_images
from resetassay.io.checkpoint import load_checkpoint
from resetassay.io.rundir import read_run
from resetassay.stats.summary import checkpoint_stats
from resetassay.train.loop import TrainConfig, train, zoo_kwargs

PAPER_FRACTIONS = (0.3, 0.6, 0.8, 1.0)  # SPEC S6: epochs 60, 120, 160, 200 of 200
# SPEC S6, Table 7: ResNet-18 on CIFAR-100, pooled Spearman ρ of GXD (target logit) and all-logit GXD
PAPER_RHO = {("gxd", "l1"): 0.926, ("gxd_all", "l1"): 0.937, ("gxd", "kl"): 0.803, ("gxd_all", "kl"): 0.783}
FAMILY = "resnet-relu-bn@cifar10"


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def config(args: argparse.Namespace) -> TrainConfig:
    """The training run: SGD with momentum, weight decay and a cosine schedule, crops and flips (module doc)."""
    spec = data_spec(str(args.cifar), normalize="cifar10")
    steps = (0, *sorted({max(1, round(f * args.epochs)) for f in PAPER_FRACTIONS}))
    return TrainConfig("resnet", zoo_kwargs("resnet", spec, args.widths, blocks=args.blocks), spec,
                       epochs_per_task=args.epochs, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                       augment=True, batch_size=128, checkpoint_at=steps, checkpoint_in="epochs", family=FAMILY,
                       examples_per_task=args.examples)


def stats_table(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per checkpoint x utility x metric: pooled ALL-scope Spearman ρ and oracle ratio, with the epoch; per
    checkpoint: epoch, held-out and probe accuracy)."""
    tables = read_run(run_dir)
    stats = checkpoint_stats(tables["summary"], tables["checkpoints"])
    stats["ratio"] = stats["shock_at_q"] / stats["oracle_shock_at_q"]
    ckpts = tables["checkpoints"]
    infos = [load_checkpoint(path).info for path in ckpts["path"]]
    accuracy = pd.DataFrame({
        "checkpoint": ckpts["checkpoint"], "epoch": [info.step["epoch"] for info in infos],
        "holdout_accuracy": [info.meta["holdout_accuracy"] for info in infos],
        "probe_accuracy": ckpts["probe_accuracy"], "probe_size": ckpts["split_probe_size"],
    }).sort_values("epoch")
    return stats, accuracy


def summarise(stats: pd.DataFrame, trained: list[int]) -> pd.DataFrame:
    """Per utility x metric: mean ± SE of ρ and ratio over the `trained` epochs, and ρ at every epoch."""
    rows = []
    for (utility, metric), g in stats.groupby(["utility", "metric"], sort=False):
        late = g[g["step"].isin(trained)]
        row = {"utility": utility, "metric": metric, "n_units": int(late["n_units"].max())}
        for stat in ("spearman", "ratio"):
            row[stat], row[f"{stat}_se"], row[f"{stat}_n"] = mean_se(late[stat])
        row.update({f"spearman_epoch{int(s)}": v for s, v in zip(g["step"], g["spearman"], strict=True)})
        rows.append(row)
    return pd.DataFrame(rows)


def _pm(mean: float, se: float) -> str:
    return f"{mean:.3f} ± {se:.3f}" if not math.isnan(se) else f"{mean:.3f}"


def markdown(table: pd.DataFrame, accuracy: pd.DataFrame, timings: dict, setting: str, trained: list[int]) -> str:
    """The published tables: ρ on L1 and KL beside the paper's, the oracle ratio, accuracy per checkpoint."""
    epochs = sorted(int(c.removeprefix("spearman_epoch")) for c in table.columns if c.startswith("spearman_epoch"))
    lines = ["# The residual case: zoo ResNet on CIFAR-10 (SPEC S6, scaled down)", "",
             f"Written by `benchmarks/replicate_resnet.py`. {setting}", "",
             f"Mean ± SE over the checkpoints at epochs {', '.join(map(str, trained))} (the paper's 60/120/160/200 "
             "of 200, scaled); pooled Spearman ρ over every unit where the utility applies (ALL scope, SPEC S5).",
             ""]
    for metric, title in (("l1", "logit L1"), ("kl", "KL")):
        part = table[table["metric"] == metric]
        lines += [f"## Pooled Spearman ρ, {title}", "",
                  "| utility | units | paper (ResNet-18, CIFAR-100) | ours, mean ± SE | "
                  + " | ".join(f"epoch {e}" for e in epochs) + " |", "|---|---|---|---|" + "---|" * len(epochs)]
        for _, row in part[part["n_units"] > 0].iterrows():
            paper = PAPER_RHO.get((row["utility"], metric))
            lines.append(f"| {row['utility']} | {row['n_units']} | {f'{paper:.3f}' if paper else '–'} | "
                         f"{_pm(row['spearman'], row['spearman_se'])} | "
                         + " | ".join(f"{row[f'spearman_epoch{e}']:.3f}" for e in epochs) + " |")
        lines.append("")
        lines += [f"Not applicable to any unit layer: {', '.join(part[part['n_units'] == 0]['utility'])} (a "
                  "BatchNorm or a residual add sits between every layer's producer and its units, SPEC S3)."] \
            if (part["n_units"] == 0).any() else []
        lines.append("")
    part = table[table["metric"] == "l1"]
    lines += ["## Shock@5% / oracle Shock@5%, logit L1", "", "| utility | ours, mean ± SE |", "|---|---|"]
    lines += [f"| {r['utility']} | {_pm(r['ratio'], r['ratio_se'])} |" for _, r in part[part["n_units"] > 0].iterrows()]
    lines += ["", "## Checkpoints", "", "| epoch | held-out accuracy (10000 test images) | probe accuracy |",
              "|---|---|---|"]
    lines += [f"| {int(r['epoch'])} | {r['holdout_accuracy']:.3f} | {r['probe_accuracy']:.3f} "
              f"({int(r['probe_size'])} images) |" for _, r in accuracy.iterrows()]
    lines += ["", "## Time (2 CPU cores shared with other work, `nice -n 19`: upper bounds)", ""]
    if "train_s" in timings:
        lines.append(f"- training: {timings['train_s']:.0f} s, {timings['train_s_per_epoch']:.0f} s per epoch of "
                     f"{timings['train_images']} images, with the held-out accuracy of each checkpoint (decoding all "
                     f"{timings['decoded_images']} training JPEGs once into a uint8 tensor: "
                     f"{timings['decode_s']:.1f} s)")
    assay_s = timings.get("assay_s_per_checkpoint", {})
    if assay_s:
        lines.append(f"- assay: {sum(assay_s.values()) / len(assay_s):.0f} s per checkpoint "
                     f"({len(assay_s)} checkpoints)")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", type=Path,
                        default=ROOT.parent / "shared" / "data" / "cifar10" / "cifar10-images-jpg.tar.gz")
    parser.add_argument("--work", type=Path, default=ROOT / "reports" / "replication" / "work" / "resnet_cifar10")
    parser.add_argument("--publish", type=Path, default=ROOT / "reports" / "replication" / "resnet_cifar10")
    parser.add_argument("--widths", type=_ints, default=(8, 16, 32, 64))
    parser.add_argument("--blocks", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--examples", type=int, default=10000, help="train on a seeded sample of this many images")
    parser.add_argument("--calib", type=int, default=1024)
    parser.add_argument("--probe", type=int, default=1024)
    parser.add_argument("--units-per-layer", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="the miniature: 1024 images, widths 4,8, 2 epochs")
    args = parser.parse_args()
    if args.quick:
        args.widths, args.blocks, args.epochs, args.examples, args.calib, args.probe = (4, 8), 1, 2, 1024, 128, 128
    if not args.cifar.is_file():
        parser.error(f"--cifar {args.cifar}: no such archive of CIFAR-10 JPEGs")
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    timings_path = args.work / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    run = config(args)
    start = time.perf_counter()
    images = training_images(run.data)  # decoded once; train reuses it (same process)
    decode_s = time.perf_counter() - start
    written = train(run, args.work / "train", progress=False, note=print)
    if written:  # trained now, not found on disk: its time is a measurement
        train_s = time.perf_counter() - start - decode_s
        timings.update(train_s=round(train_s, 1), train_s_per_epoch=round(train_s / args.epochs, 1),
                       decode_s=round(decode_s, 1), decoded_images=len(images[0]),
                       train_images=min(len(images[0]), args.examples or len(images[0])))
        timings_path.write_text(json.dumps(timings, indent=1, sort_keys=True) + "\n")
    print(f"trained: {timings.get('train_s', '?')} s", flush=True)
    run_dir = args.work / "run"
    assay([args.work / "train"], run_dir, utilities=UTILITIES, metrics=["l1", "kl"], calib_size=args.calib,
          probe_size=args.probe, units_per_layer=args.units_per_layer)
    assayed = json.loads((run_dir / "timings.json").read_text())["checkpoints"]  # those assayed by this launch
    timings.setdefault("assay_s_per_checkpoint", {}).update(
        {name: round(sum(stages.values()), 1) for name, stages in assayed.items()})
    timings_path.write_text(json.dumps(timings, indent=1, sort_keys=True) + "\n")
    stats, accuracy = stats_table(run_dir)
    trained = [s for s in run.checkpoint_at if s > 0]
    table = summarise(stats, trained)
    model = load_checkpoint(args.work / "train" / f"epoch{trained[-1]}").model
    setting = (f"ResNet {'-'.join(map(str, args.widths))}, {args.blocks} BasicBlock(s) per stage, "
               f"{sum(p.numel() for p in model.parameters())} parameters; "
               f"{args.epochs} epochs on {timings.get('train_images', '?')} CIFAR-10 training JPEGs; "
               f"{args.calib} calibration and {args.probe} probe images of the 10000 test JPEGs"
               + (f"; at most {args.units_per_layer} units per layer" if args.units_per_layer else "") + ".")
    out = args.publish
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "spearman.csv", index=False, float_format="%.6g")
    accuracy.to_csv(out / "checkpoints.csv", index=False, float_format="%.6g")
    for name in ("report.md", "aggregate.csv"):
        shutil.copy(run_dir / name, out / name)
    (out / "figures").mkdir(exist_ok=True)
    for figure in (run_dir / "figures").glob("*.png"):  # the report's figures; their SVGs hold every point (MBs)
        shutil.copy(figure, out / "figures" / figure.name)
    (out / "timings.json").write_text(json.dumps(timings, indent=1, sort_keys=True) + "\n")
    (out / "README.md").write_text(markdown(table, accuracy, timings, setting, trained))
    print(f"published {out}")


if __name__ == "__main__":
    main()
