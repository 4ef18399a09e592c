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
shared with other work (docs/replication/resnet-cifar10.md has the measured times). Both steps resume (`--work`, default
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

`--recipe table3` trains on the paper's recipe instead (SPEC S6, Table 3), `--seeds` (default 0,1,2) times: the lr
x0.2 after 30/60/80 % of the epochs (`--schedule step`) instead of the cosine schedule, crops, flips and a rotation
by 0-15° (`--augment crop-flip-rotate`), Kaiming normal init, batch 90, and 450 training images of each class
(`--examples-per-class`, seeded per seed: 4500 of CIFAR-10's; the paper's 50 validation images per class are
among those never trained on), the rest as above (widths, blocks, epochs, checkpoints, calibration and probe).
Its work goes into `--work` (default reports/replication/work/resnet_table3: `seed<k>/` the checkpoints of each
seed, `run/` the one assay of all of them), its tables into `--publish` (default
reports/replication/resnet_table3): per_checkpoint.csv (ρ and oracle ratio of every seed x checkpoint),
spearman.csv (mean ± SE over seeds x the trained checkpoints, over the per-seed means, and per seed),
checkpoints.csv (accuracy of every seed x checkpoint), report.md, figures/, aggregate.csv, timings.json, and a
README.md that sets the paper's numbers beside ours, with the distance in SEs, and lists every departure from
Table 3. The default recipe, `cosine`, is the published run of reports/replication/resnet_cifar10, unchanged.

Both recipes also write findings.md, the numbers the docs state, as marked blocks written from the published tables
alone; `--render` rewrites it from them without training (`--recipe`, `--publish` say which).

`--quick` is a miniature (1024 training images, or 50 per class with table3; widths 4-8, 2 epochs, 128/128
images; a few minutes).

Over 500 lines: the two recipes share the training, the assay and the publishing, and each writes its tables, their
markdown and its findings from them here, so that one script owns every file of its folder; the findings
(`cosine_findings`, `table3_findings`, `findings_file`) are what moves out next, into a module of their own.
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
from generated import distance, document, minutes, pm, signed, span, versus, write
from replicate_paper import ROOT, UTILITIES, assay, mean_se

from resetassay.data import data_spec, training_images
from resetassay.io.checkpoint import load_checkpoint
from resetassay.io.rundir import read_run
from resetassay.stats.summary import checkpoint_stats
from resetassay.stats.verdict import COST_STAGE
from resetassay.train.loop import TrainConfig, _task_sample, step_milestones, train, zoo_kwargs

PAPER_FRACTIONS = (0.3, 0.6, 0.8, 1.0)  # SPEC S6: epochs 60, 120, 160, 200 of 200
# SPEC S6, Table 7: ResNet-18 on CIFAR-100, pooled Spearman ρ of GXD (target logit) and all-logit GXD
PAPER_RHO = {("gxd", "l1"): 0.926, ("gxd_all", "l1"): 0.937, ("gxd", "kl"): 0.803, ("gxd_all", "kl"): 0.783}
FAMILY = "resnet-relu-bn@cifar10"
RECIPES = ("cosine", "table3")  # cosine: the published run (resnet_cifar10); table3: SPEC S6's Table 3 recipe
FORWARD = ["activation", "contribution", "mc_contribution", "dormancy", "firing_rate"]  # forward-only utilities
GRADIENT = ["loss_gradient", "gxi", "gxd", "gxd_all"]
TABLE3_ROWS = [("gxd", "l1"), ("gxd_all", "l1"), ("gxd", "kl"), ("gxd_all", "kl"), ("gxi", "l1"), ("activation", "l1"),
               ("contribution", "kl")]  # the rows where docs/replication/resnet-table3.md compares the two recipes
TABLE3 = {"family": "resnet-relu-bn-kaiming-normal@cifar10", "schedule": "step", "augment": "crop-flip-rotate",
          "init": "kaiming-normal", "batch_size": 90, "examples_per_class": 450, "seeds": (0, 1, 2)}


def assay_seconds(stages: dict[str, float]) -> float:
    """A checkpoint's assay time from the stages of its run's timings.json: their sum, less the per-utility
    calibration costs (`COST_STAGE`, "utility gxd"), which overlap the "utilities" stage and each other."""
    cost = COST_STAGE.format("")
    return round(sum(v for k, v in stages.items() if not k.startswith(cost)), 1)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def config(args: argparse.Namespace, seed: int = 0) -> TrainConfig:
    """The training run of `seed`: SGD with momentum and weight decay; a cosine schedule, crops and flips, or the
    Table 3 recipe (module doc)."""
    spec = data_spec(str(args.cifar), normalize="cifar10")
    steps = (0, *sorted({max(1, round(f * args.epochs)) for f in PAPER_FRACTIONS}))
    if args.recipe == "table3":
        kwargs = zoo_kwargs("resnet", spec, args.widths, blocks=args.blocks, init=TABLE3["init"])
        return TrainConfig("resnet", kwargs, spec, epochs_per_task=args.epochs, lr=0.1, momentum=0.9,
                           weight_decay=5e-4, schedule=TABLE3["schedule"], augment=TABLE3["augment"],
                           batch_size=args.batch_size, checkpoint_at=steps, checkpoint_in="epochs",
                           family=TABLE3["family"], examples_per_class=args.examples_per_class, seed=seed)
    return TrainConfig("resnet", zoo_kwargs("resnet", spec, args.widths, blocks=args.blocks), spec,
                       epochs_per_task=args.epochs, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                       augment="crop-flip", batch_size=128, checkpoint_at=steps, checkpoint_in="epochs", family=FAMILY,
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
        "checkpoint": ckpts["checkpoint"], "seed": [info.meta["seed"] for info in infos],
        "epoch": [info.step["epoch"] for info in infos],
        "holdout_accuracy": [info.meta["holdout_accuracy"] for info in infos],
        "probe_accuracy": ckpts["probe_accuracy"], "probe_size": ckpts["split_probe_size"],
    }).sort_values(["seed", "epoch"])
    return stats, accuracy


def _pooled(utility: str, metric: str, late: pd.DataFrame) -> dict:
    """One utility x metric's row: its unit count and ρ and ratio as mean ± SE over the checkpoints of `late`."""
    row = {"utility": utility, "metric": metric, "n_units": int(late["n_units"].max())}
    for stat in ("spearman", "ratio"):
        row[stat], row[f"{stat}_se"], row[f"{stat}_n"] = mean_se(late[stat])
    return row


def summarise(stats: pd.DataFrame, trained: list[int]) -> pd.DataFrame:
    """Per utility x metric: mean ± SE of ρ and ratio over the `trained` epochs, and ρ at every epoch."""
    rows = []
    for (utility, metric), g in stats.groupby(["utility", "metric"], sort=False):
        late = g[g["step"].isin(trained)]
        row = _pooled(utility, metric, late)
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


def seed_table(stats: pd.DataFrame, trained: list[int]) -> pd.DataFrame:
    """Per utility x metric (the Table 3 recipe, several seeds): ρ and Shock@5% / oracle, mean ± SE over every seed x
    trained checkpoint (the paper's "mean ± SE across checkpoints", its seeds pooled); ρ mean ± SE over the per-seed
    means (the seeds as the independent units); per seed, mean ± SE over its checkpoints; per epoch, the mean over
    seeds."""
    rows = []
    for (utility, metric), g in stats.groupby(["utility", "metric"], sort=False):
        late = g[g["step"].isin(trained)]
        row = _pooled(utility, metric, late)
        per_seed = late.groupby("seed")["spearman"]
        row["spearman_seeds"], row["spearman_seeds_se"], row["spearman_seeds_n"] = mean_se(per_seed.mean())
        for seed, values in per_seed:
            row[f"spearman_seed{seed}"], row[f"spearman_seed{seed}_se"], _ = mean_se(values)
        row.update({f"spearman_epoch{int(s)}": v for s, v in g.groupby("step")["spearman"].mean().items()})
        rows.append(row)
    return pd.DataFrame(rows)


DEPARTURES = [  # (what, Table 3 / SPEC S6, ours); "{...}" filled in by table3_markdown
    ("data", "CIFAR-100 (100 classes)", "CIFAR-10 (10 classes), a lossy JPEG copy (median abs pixel error 5.7/255 "
     "on 200 images checked; /work/shared/data/cifar10/SOURCES.txt)"),
    ("training images", "450 per class (45000) + 50 validation per class", "450 per class (4500), a seeded sample "
     "of the 5000 of each class, new per seed; no validation set is used (the paper's validation images serve its "
     "model selection, which this run does not do), so the 50 per class are simply not trained on"),
    ("network", "ResNet-18: BasicBlocks [2, 2, 2, 2], widths 64-128-256-512, about 11 M parameters",
     "zoo ResNet: 3x3 stem, BasicBlocks {blocks}, widths {widths}, projection shortcuts, BatchNorm, "
     "{parameters} parameters; {unit_layers} unit layers, {units} units"),
    ("init", "Kaiming normal", "Kaiming normal, ReLU gain, fan_in, zero biases, on every conv and on the output "
     "Linear (the loss-of-plasticity code the protocol comes from gives the output layer the linear gain, "
     "std 1/sqrt(fan_in); SPEC S6 does not say)"),
    ("epochs", "200, lr x0.2 at epochs 60, 120, 160", "{epochs}, lr x0.2 after epochs {milestones} "
     "(the same fractions, 30/60/80 %; `MultiStepLR` stepped per SGD step)"),
    ("batch", "90 (training) / 100 (test)", "90 (training); the assay's own batches for calibration and probe"),
    ("optimizer", "SGD lr 0.1, momentum 0.9, weight decay 5e-4", "the same"),
    ("augmentation", "flip + crop (pad 4) + rotation 0–15°", "flip + crop (pad 4, **zero** padding: the reference "
     "code pads by reflection) + rotation by [0°, 15°] counterclockwise, bilinear, uncovered corners at the mean "
     "colour (the reference code: nearest pixel)"),
    ("checkpoints", "epochs 60, 120, 160, 200", "epochs {trained} (the same fractions), and 0 (untrained)"),
    ("calibration / probe", "2048 / 2048", "{calib} / {probe} of the 10000 test images, seeded and disjoint"),
    ("seeds", "3", "{seeds}"),
]


def table3_markdown(table: pd.DataFrame, accuracy: pd.DataFrame, timings: dict, setting: dict,
                    trained: list[int]) -> str:
    """README.md of the Table 3 recipe: ρ beside the paper's with the distance in SEs, per seed and per epoch, the
    oracle ratio, accuracy per seed x checkpoint, every departure from Table 3, the times."""
    seeds = sorted(accuracy["seed"].unique())
    epochs = sorted(int(c.removeprefix("spearman_epoch")) for c in table.columns if c.startswith("spearman_epoch"))
    n = len(seeds) * len(trained)
    lines = [
        "# The residual case on the paper's recipe: zoo ResNet on CIFAR-10, Table 3 (SPEC S6, scaled down)", "",
        f"Written by `benchmarks/replicate_resnet.py --recipe table3`. {setting['line']}", "",
        f"Pooled Spearman ρ over every unit where the utility applies (ALL scope, SPEC S5), mean ± SE over the "
        f"{len(seeds)} seeds x {len(trained)} checkpoints at epochs {', '.join(map(str, trained))} (n = {n}; the "
        "paper's \"mean ± SE across checkpoints\", its 60/120/160/200 of 200, scaled). The checkpoints of one seed "
        "are not independent, so that SE is optimistic; \"over seeds\" is the mean ± SE of the per-seed means "
        f"(n = {len(seeds)}). \"Distance\" is (ours − paper) / our SE over seeds x checkpoints: our spread only, "
        "the paper's own SE is not in SPEC S6, so a distance of hundreds of SEs says that our ρ is far above the "
        "paper's and tightly so, not how sure the comparison is. The paper (SPEC S6, Table 7) gives only GXD, "
        "target and all-logit, for the ResNet. The run's report (report.md, figures/) compares the utilities on "
        "their common scope, the units where all of them apply (contribution's), so its ρ differ from these.", ""]
    for metric, title in (("l1", "logit L1"), ("kl", "KL")):
        part = table[(table["metric"] == metric) & (table["n_units"] > 0)]
        lines += [f"## Pooled Spearman ρ, {title}", "",
                  "| utility | units | paper (ResNet-18, CIFAR-100) | ours, seeds x checkpoints | distance | "
                  "ours, over seeds | " + " | ".join(f"seed {s}" for s in seeds) + " |",
                  "|---|---|---|---|---|---|" + "---|" * len(seeds)]
        for _, row in part.iterrows():
            paper = PAPER_RHO.get((row["utility"], metric))
            lines.append(
                f"| {row['utility']} | {row['n_units']} | {f'{paper:.3f}' if paper else '–'} | "
                f"{pm(row['spearman'], row['spearman_se'])} | "
                f"{distance(row['spearman'], row['spearman_se'], paper)} | "
                f"{pm(row['spearman_seeds'], row['spearman_seeds_se'])} | "
                + " | ".join(pm(row[f"spearman_seed{s}"], row[f"spearman_seed{s}_se"]) for s in seeds) + " |")
        lines += ["", f"Per epoch, the mean over the {len(seeds)} seeds:", "",
                  "| utility | " + " | ".join(f"epoch {e}" for e in epochs) + " |", "|---|" + "---|" * len(epochs)]
        lines += [f"| {row['utility']} | " + " | ".join(signed(row[f"spearman_epoch{e}"]) for e in epochs) + " |"
                  for _, row in part.iterrows()]
        none = table[(table["metric"] == metric) & (table["n_units"] == 0)]["utility"]
        if len(none):
            lines += ["", f"Not applicable to any unit layer: {', '.join(none)} (a BatchNorm or a residual add sits "
                      "between every layer's producer and its units, SPEC S3)."]
        lines.append("")
    part = table[(table["metric"] == "l1") & (table["n_units"] > 0)]
    lines += ["## Shock@5% / oracle Shock@5%, logit L1", "", "| utility | ours, seeds x checkpoints |", "|---|---|"]
    lines += [f"| {r['utility']} | {pm(r['ratio'], r['ratio_se'])} |" for _, r in part.iterrows()]
    lines += ["", "## Checkpoints", "", "Held-out accuracy on all 10000 test images (probe accuracy on the "
              f"{int(accuracy['probe_size'].iloc[0])} probe images):", "",
              "| epoch | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for epoch, g in accuracy.groupby("epoch"):
        cells = {int(r["seed"]): f"{r['holdout_accuracy']:.3f} ({r['probe_accuracy']:.3f})" for _, r in g.iterrows()}
        lines.append(f"| {int(epoch)} | " + " | ".join(cells.get(int(s), "–") for s in seeds) + " |")
    lines += ["", "## Departures from Table 3", "", "| | paper (Table 3, SPEC S6) | ours |", "|---|---|---|"]
    lines += [f"| {what} | {paper} | {ours.format(**setting)} |" for what, paper, ours in DEPARTURES]
    lines += ["", "## Time (2 CPU cores shared with other work: upper bounds)", ""]
    per_seed = timings.get("seeds", {})
    for seed in seeds:
        t = per_seed.get(str(seed))
        if t:
            lines.append(f"- training, seed {seed}: {t['train_s']:.0f} s, {t['train_s_per_epoch']:.0f} s per epoch "
                         f"of {t['train_images']} images, with the held-out accuracy of each checkpoint "
                         f"({t['threads']} thread{'s' if t['threads'] != 1 else ''})")
    if "decode_s" in timings:
        lines.append(f"- decoding all {timings['decoded_images']} training JPEGs once into a uint8 tensor: "
                     f"{timings['decode_s']:.1f} s")
    assay_s = timings.get("assay_s_per_checkpoint", {})
    if assay_s:
        lines.append(f"- assay: {sum(assay_s.values()) / len(assay_s):.0f} s per checkpoint on average, "
                     f"{min(assay_s.values()):.0f}–{max(assay_s.values()):.0f} s ({len(assay_s)} checkpoints; every "
                     "utility, L1 and KL, every unit lesioned; the process's one thread)")
    trained_s = sum(per_seed[str(s)]["train_s"] for s in seeds if str(s) in per_seed)
    lines.append(f"- in all: {trained_s / 60:.1f} min of training and {sum(assay_s.values()) / 60:.1f} min of assay")
    return "\n".join(lines) + "\n"


def _train_dirs(args: argparse.Namespace) -> dict[int, Path]:
    """Where each seed trains: the cosine recipe's one run in `train/` (as published), the Table 3 recipe's in
    `seed<k>/`."""
    if args.recipe == "cosine":
        return {args.seeds[0]: args.work / "train"}
    return {seed: args.work / f"seed{seed}" for seed in args.seeds}


def _publish(out: Path, run_dir: Path, timings: dict, files: dict[str, pd.DataFrame], readme: str) -> None:
    """The tables, the run's report, aggregate and figures (PNG), the timings and the README into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in files.items():
        frame.to_csv(out / name, index=False, float_format="%.6g")
    for name in ("report.md", "aggregate.csv"):
        shutil.copy(run_dir / name, out / name)
    (out / "figures").mkdir(exist_ok=True)
    for figure in (run_dir / "figures").glob("*.png"):  # the report's figures; their SVGs hold every point (MBs)
        shutil.copy(figure, out / "figures" / figure.name)
    (out / "timings.json").write_text(json.dumps(timings, indent=1, sort_keys=True) + "\n")
    (out / "README.md").write_text(readme)
    print(f"published {out}")


def _one(table: pd.DataFrame, utility: str, metric: str) -> pd.Series:
    return table[(table["utility"] == utility) & (table["metric"] == metric)].iloc[0]


def _rho(table: pd.DataFrame, utility: str, metric: str, column: str = "spearman") -> str:
    row = _one(table, utility, metric)
    return pm(row[column], row[f"{column}_se"])


def _paper(table: pd.DataFrame, utility: str, metric: str) -> str:
    row = _one(table, utility, metric)
    return versus(row["spearman"], row["spearman_se"], PAPER_RHO[(utility, metric)])


def _orderings(table: pd.DataFrame) -> str:
    """All-logit against target-logit GXD on L1 and on KL, each beside the paper's (SPEC S6, Table 7)."""
    return "; ".join(f"on {title}: all-logit GXD {_paper(table, 'gxd_all', metric)}, target-logit GXD "
                     f"{_paper(table, 'gxd', metric)}" for metric, title in (("l1", "L1"), ("kl", "KL"))) + "."


def cosine_findings(publish: Path) -> dict[str, str]:
    """The cosine run's findings (SPEC S6), from spearman.csv and timings.json in `publish`."""
    table = pd.read_csv(publish / "spearman.csv")
    l1 = table[(table["metric"] == "l1") & (table["n_units"] > 0) & (table["utility"] != "oracle")].sort_values("ratio")
    timings = json.loads((publish / "timings.json").read_text())
    assay_s = list(timings["assay_s_per_checkpoint"].values())
    n = int(_one(table, "gxd", "l1")["spearman_n"])
    forward, gradient = (l1[l1["utility"].isin(names)] for names in (FORWARD, GRADIENT))
    return {
        "shock": f"Shock@5% / oracle on L1, mean ± SE over the {n} trained checkpoints, lowest first: "
                 + ", ".join(f"{r['utility']} {pm(r['ratio'], r['ratio_se'])}" for _, r in l1.iterrows()) + ".",
        "orderings": f"Pooled ρ over the {n} trained checkpoints, {_orderings(table)}",
        "forward": f"On L1, the forward-only utilities ({', '.join(FORWARD)}) go from "
                   f"{span(list(forward['spearman_epoch0']))} at initialisation to {span(list(forward['spearman']))} "
                   f"(mean over the trained checkpoints); the gradient-based ones ({', '.join(GRADIENT)}) are at "
                   f"{span(list(gradient['spearman']))} (the loss gradient "
                   f"{_one(table, 'loss_gradient', 'l1')['spearman_epoch0']:.3f} at initialisation).",
        "time": f"Training {timings['train_s']:.0f} s, {timings['train_s_per_epoch']:.0f} s per epoch of "
                f"{timings['train_images']} images (decoding the {timings['decoded_images']} training JPEGs once: "
                f"{timings['decode_s']:.0f} s); assay {span(assay_s, 1, ' s')} per checkpoint; "
                f"{minutes([timings['train_s']])} of training and {minutes(assay_s)} of assay in all.",
    }


def table3_findings(publish: Path, cosine: Path) -> dict[str, str]:
    """The Table 3 recipe's findings (SPEC S6), from spearman.csv, checkpoints.csv and timings.json in `publish`,
    beside the cosine run's (`cosine`, its published folder)."""
    table, other = pd.read_csv(publish / "spearman.csv"), pd.read_csv(cosine / "spearman.csv")
    accuracy = pd.read_csv(publish / "checkpoints.csv")
    last = accuracy[accuracy["epoch"] == accuracy["epoch"].max()]
    cosine_last = pd.read_csv(cosine / "checkpoints.csv").iloc[-1]
    timings = json.loads((publish / "timings.json").read_text())
    seeds = sorted(accuracy["seed"].unique())
    kl = [_one(table, u, "kl") for u in ("gxd", "gxd_all")]
    per_seed = "; ".join(f"seed {s}: {kl[0][f'spearman_seed{s}']:.3f} vs {kl[1][f'spearman_seed{s}']:.3f}"
                         for s in seeds)
    train_s = [t["train_s"] for t in timings["seeds"].values()]
    assay_s = list(timings["assay_s_per_checkpoint"].values())
    return {
        "recipe": f"Pooled ρ, Table 3 recipe (mean ± SE over {len(seeds)} seeds × "
                  f"{int(_one(table, 'gxd', 'l1')['spearman_n']) // len(seeds)} trained checkpoints) against the "
                  "cosine run (over its trained checkpoints): "
                  + "; ".join(f"{u} on {m.upper()} {_rho(table, u, m)} against {_rho(other, u, m)}"
                              for u, m in TABLE3_ROWS) + ".",
        "orderings": f"Against the paper, {_orderings(table)} Target against all-logit GXD on KL per seed "
                     f"(mean over its checkpoints): {per_seed}.",
        "accuracy": f"Held-out accuracy after epoch {int(last['epoch'].iloc[0])}: "
                    + ", ".join(f"{100 * a:.1f} %" for a in last["holdout_accuracy"])
                    + f" (seeds {', '.join(map(str, seeds))}; {timings['seeds'][str(seeds[0])]['train_images']} "
                      f"training images), against {100 * cosine_last['holdout_accuracy']:.1f} % for the cosine run "
                      f"after epoch {int(cosine_last['epoch'])}.",
        "time": f"Training {span(train_s, 0, ' s')} a seed, assay {span(assay_s, 1, ' s')} a checkpoint; "
                f"{minutes(train_s)} of training and {minutes(assay_s)} of assay in all.",
    }


def findings_file(publish: Path, recipe: str) -> tuple[Path, str]:
    """(path, text) of findings.md in `publish`, from the tables there alone (no training, no data); table3's
    beside the cosine run's published tables (SPEC S6)."""
    blocks = (table3_findings(publish, ROOT / "reports" / "replication" / "resnet_cifar10") if recipe == "table3"
              else cosine_findings(publish))
    return publish / "findings.md", document(f"Findings of the ResNet study, {recipe} recipe",
                                             "benchmarks/replicate_resnet.py", blocks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=RECIPES, default="cosine",
                        help="cosine: the published run; table3: the paper's recipe (module doc)")
    parser.add_argument("--cifar", type=Path,
                        default=ROOT.parent / "shared" / "data" / "cifar10" / "cifar10-images-jpg.tar.gz")
    parser.add_argument("--work", type=Path, default=None, help="default reports/replication/work/resnet_cifar10, "
                        "or resnet_table3 with --recipe table3")
    parser.add_argument("--publish", type=Path, default=None, help="default reports/replication/resnet_cifar10, "
                        "or resnet_table3 with --recipe table3")
    parser.add_argument("--widths", type=_ints, default=(8, 16, 32, 64))
    parser.add_argument("--blocks", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--examples", type=int, default=10000, help="cosine: train on a seeded sample of this many "
                        "images")
    parser.add_argument("--examples-per-class", type=int, default=TABLE3["examples_per_class"],
                        help="table3: train on a seeded sample of this many images of each class")
    parser.add_argument("--batch-size", type=int, default=TABLE3["batch_size"], help="table3: SGD batch (cosine: 128)")
    parser.add_argument("--seeds", type=_ints, default=None, help="table3: default 0,1,2 (cosine: one seed, 0)")
    parser.add_argument("--calib", type=int, default=1024)
    parser.add_argument("--probe", type=int, default=1024)
    parser.add_argument("--units-per-layer", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="the miniature: 1024 images (table3: 50 per class), "
                        "widths 4,8, 2 epochs")
    parser.add_argument("--render", action="store_true", help="only rewrite --publish's findings.md from its tables")
    args = parser.parse_args()
    table3 = args.recipe == "table3"
    name = "resnet_table3" if table3 else "resnet_cifar10"
    args.work = args.work or ROOT / "reports" / "replication" / "work" / name
    args.publish = args.publish or ROOT / "reports" / "replication" / name
    if args.render:
        write(*findings_file(args.publish, args.recipe))
        return
    args.seeds = args.seeds or (TABLE3["seeds"] if table3 else (0,))
    if not table3 and args.seeds != (0,):
        parser.error("--seeds: the cosine recipe is the published one-seed run (seed 0); use --recipe table3 for "
                     "several seeds")
    if args.quick:
        args.widths, args.blocks, args.epochs, args.examples, args.calib, args.probe = (4, 8), 1, 2, 1024, 128, 128
        args.examples_per_class = 50
    if not args.cifar.is_file():
        parser.error(f"--cifar {args.cifar}: no such archive of CIFAR-10 JPEGs")
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    timings_path = args.work / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    dirs = _train_dirs(args)
    runs = {seed: config(args, seed) for seed in dirs}
    start = time.perf_counter()
    images = training_images(runs[args.seeds[0]].data)  # decoded once; train reuses it (same process)
    decode_s = time.perf_counter() - start
    for seed, folder in dirs.items():
        print(f"training seed {seed} into {folder}", flush=True)
        began = time.perf_counter()
        written = train(runs[seed], folder, progress=False, note=print)
        if not written:
            continue
        train_s = time.perf_counter() - began  # trained now, not found on disk: its time is a measurement
        if table3:
            timings.setdefault("seeds", {})[str(seed)] = {
                "train_s": round(train_s, 1), "train_s_per_epoch": round(train_s / args.epochs, 1),
                "train_images": len(_task_sample(images, runs[seed], 0)[1]), "threads": torch.get_num_threads()}
            timings.update(decode_s=round(decode_s, 1), decoded_images=len(images[0]))
        else:
            timings.update(train_s=round(train_s, 1), train_s_per_epoch=round(train_s / args.epochs, 1),
                           decode_s=round(decode_s, 1), decoded_images=len(images[0]),
                           train_images=min(len(images[0]), args.examples or len(images[0])))
        timings_path.write_text(json.dumps(timings, indent=1, sort_keys=True) + "\n")
        print(f"trained seed {seed}: {train_s:.0f} s", flush=True)
    run_dir = args.work / "run"
    assay(list(dirs.values()), run_dir, utilities=UTILITIES, metrics=["l1", "kl"], calib_size=args.calib,
          probe_size=args.probe, units_per_layer=args.units_per_layer)
    assayed = json.loads((run_dir / "timings.json").read_text())["checkpoints"]  # those assayed by this launch
    timings.setdefault("assay_s_per_checkpoint", {}).update(
        {name: assay_seconds(stages) for name, stages in assayed.items()})
    timings_path.write_text(json.dumps(timings, indent=1, sort_keys=True) + "\n")
    stats, accuracy = stats_table(run_dir)
    first = runs[args.seeds[0]]
    trained = [s for s in first.checkpoint_at if s > 0]
    model = load_checkpoint(dirs[args.seeds[0]] / f"epoch{trained[-1]}").model
    parameters = sum(p.numel() for p in model.parameters())
    if table3:
        stats = stats.merge(accuracy[["checkpoint", "seed"]], on="checkpoint", how="left")
        table = seed_table(stats, trained)
        l1 = table[table["metric"] == "l1"]
        spe = math.ceil(len(_task_sample(images, first, 0)[1]) / args.batch_size)  # SGD steps per epoch
        milestones = [f"{m / spe:.3g}" for m in step_milestones(args.epochs * spe)]  # after this many epochs
        units_row = l1[l1["utility"] == "gxd"]
        setting = {
            "line": (f"ResNet {'-'.join(map(str, args.widths))}, {args.blocks} BasicBlock(s) per stage, "
                     f"{parameters} parameters, Kaiming normal init; {args.epochs} epochs on {args.examples_per_class} "
                     f"CIFAR-10 training JPEGs per class, batch {args.batch_size}, SGD lr 0.1 x0.2 after epochs "
                     f"{', '.join(milestones)}, crop + flip + rotation 0–15°; seeds "
                     f"{', '.join(map(str, args.seeds))}; {args.calib} calibration and {args.probe} probe images of "
                     "the 10000 test JPEGs"
                     + (f"; at most {args.units_per_layer} units per layer" if args.units_per_layer else "") + "."),
            "blocks": f"[{', '.join([str(args.blocks)] * len(args.widths))}]",
            "widths": "-".join(map(str, args.widths)),
            "parameters": f"{parameters:,}", "unit_layers": len(model.unit_layer_specs()),
            "units": int(units_row["n_units"].iloc[0]) if len(units_row) else "?", "epochs": args.epochs,
            "milestones": ", ".join(milestones), "trained": ", ".join(map(str, trained)),
            "calib": args.calib, "probe": args.probe, "seeds": f"{len(args.seeds)} ({', '.join(map(str, args.seeds))})",
        }
        per_checkpoint = stats[["seed", "step", "utility", "metric", "n_units", "spearman", "ratio"]].rename(
            columns={"step": "epoch"}).sort_values(["seed", "epoch", "metric", "utility"], kind="stable")
        _publish(args.publish, run_dir, timings,
                 {"spearman.csv": table, "per_checkpoint.csv": per_checkpoint, "checkpoints.csv": accuracy},
                 table3_markdown(table, accuracy, timings, setting, trained))
        write(*findings_file(args.publish, args.recipe))
        return
    table = summarise(stats, trained)
    setting = (f"ResNet {'-'.join(map(str, args.widths))}, {args.blocks} BasicBlock(s) per stage, "
               f"{parameters} parameters; "
               f"{args.epochs} epochs on {timings.get('train_images', '?')} CIFAR-10 training JPEGs; "
               f"{args.calib} calibration and {args.probe} probe images of the 10000 test JPEGs"
               + (f"; at most {args.units_per_layer} units per layer" if args.units_per_layer else "") + ".")
    _publish(args.publish, run_dir, timings,
             {"spearman.csv": table, "checkpoints.csv": accuracy.drop(columns="seed")},
             markdown(table, accuracy, timings, setting, trained))
    write(*findings_file(args.publish, args.recipe))


if __name__ == "__main__":
    main()
