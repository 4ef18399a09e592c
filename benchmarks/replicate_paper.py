"""Reproduce the GXD paper's MLP reset-cost study on real MNIST (SPEC S6), resumably, and publish its tables.

For each activation (relu, silu, leaky_relu, tanh, relu + LayerNorm) and seed, `resetassay.train.loop` trains the
paper's MLP (784 -> [256] x 4 -> 10, SGD lr 0.01, batch 64, plain backprop) on 30 permuted-MNIST tasks of one
epoch, with checkpoints before training and after tasks 5, 10, 20 and 30; `resetassay.run_assay` then assays
every checkpoint (2048 calibration and 2048 probe examples of the held-out split of the task it trained on last,
every built-in utility, l1 and kl). Both steps resume: a rerun keeps the finished checkpoints and assayed
checkpoints (`--work`, default reports/replication/work, not committed) and does the rest, so the study can span
sittings; the assay is redone (minutes) when resetassay's code changed in between, since a run records it.
Finally it writes, into `--publish` (default reports/replication):

    spearman.csv / shock.csv   per activation x utility x metric: mean ± SE over seeds x checkpoints of the
                               pooled Spearman ρ and of Shock@5% / oracle ratio (SPEC S5), as the paper reports
    by_step.csv                the same per checkpoint step (0, 5, 10, 20, 30)
    report.md, figures/        the run's own report (headline, figures)
    timings.json               measured wall time per seed (training) and per checkpoint (assay) on this machine
    README.md                  the tables as markdown, with the paper's numbers beside ours (SPEC S6)
    findings.md                the numbers the docs state, as marked blocks written from the tables above alone

    python benchmarks/replicate_paper.py --render [--publish DIR]   # findings.md again from DIR's tables alone

    python benchmarks/replicate_paper.py [--mnist ../shared/data/mnist] [--seeds 0,1,2] [--activations ...]
                                         [--inits kaiming-relu,torch-default] [--tasks 30] [--quick]

`--quick` is the miniature CI runs: digits instead of MNIST, 4 tasks, checkpoints {0, 2, 4}, one seed, two
activations, 256/256 examples (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
from generated import document, minutes, pm, span, versus, write

from resetassay import run_assay
from resetassay.data import DataSpec
from resetassay.errors import BadInputError
from resetassay.io.rundir import read_run
from resetassay.models import DEFAULT_INIT, INITS
from resetassay.stats.summary import checkpoint_stats
from resetassay.train.loop import TrainConfig, train, zoo_kwargs

ROOT = Path(__file__).resolve().parents[1]
ACTIVATIONS = {"relu": ("relu", False), "silu": ("silu", False), "leaky_relu": ("leaky_relu", False),
               "tanh": ("tanh", False), "relu-ln": ("relu", True)}
PAPER_STEPS = (0, 5, 10, 20, 30)
TORCH_DEFAULT = INITS[1]
UTILITIES = ["activation", "contribution", "mc_contribution", "mc_adaptable", "loss_gradient", "gxi", "gxd", "gxd_all",
             "dormancy", "firing_rate", "random", "oracle"]  # every built-in one a backprop checkpoint has
# SPEC S6: the paper's Table 7, pooled Spearman ρ on logit L1
PAPER_RHO = {("relu", "gxd"): 0.996, ("relu", "gxi"): 0.970, ("silu", "gxd"): 0.980, ("silu", "gxi"): 0.469}


def configs(args: argparse.Namespace) -> dict[str, TrainConfig]:
    """The training runs of the study, by folder name `<activation>-s<seed>`, or `<activation>-<init>-s<seed>` for
    an init other than the default (SPEC S6: "Kaiming uniform" read as PyTorch's own default)."""
    data = DataSpec(source="digits") if args.quick else DataSpec(source="mnist", data_dir=str(args.mnist.resolve()))
    runs = {}
    for name in args.activations:
        activation, layer_norm = ACTIVATIONS[name]
        for init in args.inits:
            label = name if init == DEFAULT_INIT else f"{name}-{init}"
            for seed in args.seeds:
                runs[f"{label}-s{seed}"] = TrainConfig(
                    "mlp", zoo_kwargs("mlp", data, None, activation, layer_norm, init=init), data, tasks=args.tasks,
                    seed=seed, checkpoint_at=tuple(t for t in args.steps if t <= args.tasks))
    return runs


def assay(paths: list[Path], out: Path, **options: object) -> None:
    """`run_assay` into the run directory `out`, resuming it; assayed again from the start when the run there was
    made by other code or settings (a run records resetassay's source, so a code change refuses to resume)."""
    try:
        run_assay(paths, out=out, progress=False, note=print, **options)
    except BadInputError as err:
        if err.field != "out":
            raise
        print(f"{err}\nassaying again with this code", flush=True)
        run_assay(paths, out=out, progress=False, note=print, overwrite=True, **options)


def mean_se(values: pd.Series) -> tuple[float, float, int]:
    """Mean, standard error (sd / √n; NaN for one value) and n of the finite values (SPEC S5)."""
    v = values.dropna()
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan
    return float(v.mean()), se, len(v)


def aggregate(stats: pd.DataFrame, by: list[str], column: str) -> pd.DataFrame:
    """Mean ± SE of `column` over the checkpoints in each group of `by`."""
    rows = [{**dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True)),
             **dict(zip(("mean", "se", "n"), mean_se(g[column]), strict=True))}
            for key, g in stats.groupby(by, sort=False)]
    return pd.DataFrame(rows)


def activation_of(family: pd.Series) -> pd.Series:
    """The study's activation name of each model family ("mlp-silu@digits" -> "silu")."""
    return family.str.removeprefix("mlp-").str.removesuffix("@digits")


def publish(run_dir: Path, out: Path, timings: dict) -> None:
    """The study's tables (csv and markdown), the run's report and figures, and the timings, into `out`."""
    tables = read_run(run_dir)
    stats = checkpoint_stats(tables["summary"], tables["checkpoints"])
    stats["activation"] = activation_of(stats["family"])
    out.mkdir(parents=True, exist_ok=True)
    spearman = aggregate(stats, ["activation", "utility", "metric"], "spearman")
    shock = aggregate(stats.assign(ratio=stats["shock_at_q"] / stats["oracle_shock_at_q"]),
                      ["activation", "utility", "metric"], "ratio")
    by_step = aggregate(stats, ["activation", "step", "utility", "metric"], "spearman")
    for name, frame in (("spearman", spearman), ("shock", shock), ("by_step", by_step)):
        frame.to_csv(out / f"{name}.csv", index=False, float_format="%.6g")
    shutil.copy(run_dir / "report.md", out / "report.md")
    shutil.copytree(run_dir / "figures", out / "figures", dirs_exist_ok=True)
    (out / "timings.json").write_text(json.dumps(timings, indent=1, sort_keys=True) + "\n")
    (out / "README.md").write_text(markdown(spearman, shock, tables["checkpoints"]))
    write(*findings_file(out))


def _cell(row: pd.Series) -> str:
    return f"{row['mean']:.3f} ± {row['se']:.3f}" if not math.isnan(row["se"]) else f"{row['mean']:.3f}"


def markdown(spearman: pd.DataFrame, shock: pd.DataFrame, checkpoints: pd.DataFrame) -> str:
    """The published tables: pooled Spearman ρ (l1, kl) and oracle ratio (l1) per activation and utility."""
    n = checkpoints.groupby("family")["checkpoint"].nunique()
    lines = ["# Replication of the paper's MLP study (SPEC S6)", "",
             "Written by `benchmarks/replicate_paper.py`; mean ± SE over seeds x checkpoints "
             f"({', '.join(f'{f}: {k}' for f, k in n.items())} checkpoints).", ""]
    for title, frame, metric, paper in (("Pooled Spearman ρ, logit L1", spearman, "l1", True),
                                        ("Pooled Spearman ρ, KL", spearman, "kl", False),
                                        ("Shock@5% / oracle Shock@5%, logit L1", shock, "l1", False)):
        part = frame[frame["metric"] == metric]
        activations = list(dict.fromkeys(part["activation"]))
        lines += [f"## {title}", "", "| utility | " + " | ".join(activations) + " |",
                  "|---|" + "---|" * len(activations)]
        for utility, g in part.groupby("utility", sort=False):
            cells = []
            for a in activations:
                row = g[g["activation"] == a]
                cell = _cell(row.iloc[0]) if len(row) else "–"
                if paper and (a.removesuffix(f"-{TORCH_DEFAULT}"), utility) in PAPER_RHO:
                    cell += f" (paper {PAPER_RHO[(a.removesuffix(f'-{TORCH_DEFAULT}'), utility)]:.3f})"
                cells.append(cell)
            lines.append(f"| {utility} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _row(frame: pd.DataFrame, **key: object) -> pd.Series:
    """The one row of `frame` whose columns equal `key`."""
    for column, value in key.items():
        frame = frame[frame[column] == value]
    return frame.iloc[0]


def _pm(row: pd.Series) -> str:
    return pm(row["mean"], row["se"])


def _versus(row: pd.Series, paper: float) -> str:
    return versus(row["mean"], row["se"], paper)


def per_checkpoint(report: str) -> pd.DataFrame:
    """The run report's "Pooled Spearman ρ per checkpoint" table (report.md, published beside the csv files)."""
    part = report.split("## Pooled Spearman ρ per checkpoint", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in part.splitlines()
            if line.startswith("|")]
    table = pd.DataFrame(rows[2:], columns=rows[0])
    return table.assign(step=table["step"].astype(int), nonlinearity=activation_of(table["family"]))


def _trained(by_step: pd.DataFrame, activation: str, utility: str) -> list[float]:
    """The means over seeds of `utility`'s ρ on logit L1 at every step after the first."""
    part = by_step[(by_step["activation"] == activation) & (by_step["utility"] == utility)
                   & (by_step["metric"] == "l1") & (by_step["step"] > 0)]
    return list(part["mean"])


def findings(publish: Path) -> dict[str, str]:
    """The MLP study's findings (SPEC S6), from spearman.csv, shock.csv, by_step.csv, timings.json and report.md in
    `publish`: ours beside the paper's Table 7 with the distance in our SEs."""
    rho = pd.read_csv(publish / "spearman.csv").query("metric == 'l1'")
    shock = pd.read_csv(publish / "shock.csv").query("metric == 'l1'")
    by_step = pd.read_csv(publish / "by_step.csv").query("metric == 'l1'")
    checkpoints = per_checkpoint((publish / "report.md").read_text())
    timings = json.loads((publish / "timings.json").read_text())
    train_s, assay_s = list(timings["train_s"].values()), list(timings["assay_s_per_checkpoint"].values())
    silu = checkpoints[(checkpoints["nonlinearity"] == "silu") & (checkpoints["metric"] == "l1")]
    silu0 = silu[silu["step"] == 0]
    lowest = silu0.loc[silu0["gxi"].astype(float).idxmin()]
    trained = silu[silu["step"] > 0]["activation"].astype(float)
    relu_shock = shock[shock["activation"] == "relu"].sort_values("mean", ascending=False)
    largest = relu_shock[relu_shock["utility"] != "random"].iloc[0]
    n = int(_row(rho, activation="relu", utility="gxd")["n"])
    later = "after tasks " + ", ".join(str(s) for s in sorted(by_step["step"].unique()) if s > 0)
    return {
        "timings": f"{span(train_s, 0, ' s')} of training per seed ({len(train_s)} runs) and a median of "
                   f"{statistics.median(assay_s):.2f} s of assay per checkpoint ({span(assay_s, 2, ' s')} over the "
                   f"{len(assay_s)}); {minutes(train_s)} of training and {minutes(assay_s)} of assay in all "
                   "(`timings.json`).",
        "relu": f"ReLU, pooled over {n} checkpoints: GXD "
                f"{_versus(_row(rho, activation='relu', utility='gxd'), PAPER_RHO[('relu', 'gxd')])}, GXI "
                f"{_versus(_row(rho, activation='relu', utility='gxi'), PAPER_RHO[('relu', 'gxi')])}.",
        "silu-gxd": "SiLU GXD on the untrained network (mean over seeds): "
                    f"{_versus(_row(by_step, activation='silu', step=0, utility='gxd'), PAPER_RHO[('silu', 'gxd')])};"
                    f" {later} (means over seeds per step): {span(_trained(by_step, 'silu', 'gxd'))}.",
        "silu-gxi": f"SiLU GXI over all {n} checkpoints: "
                    f"{_versus(_row(rho, activation='silu', utility='gxi'), PAPER_RHO[('silu', 'gxi')])}; on the "
                    "untrained network (mean over seeds): "
                    f"{_versus(_row(by_step, activation='silu', step=0, utility='gxi'), PAPER_RHO[('silu', 'gxi')])}"
                    f" (its lowest checkpoint, {lowest['checkpoint']}, {float(lowest['gxi']):.3f}); {later} (means "
                    f"over seeds per step): {span(_trained(by_step, 'silu', 'gxi'))}.",
        "silu-activation": "SiLU activation: "
                           f"{_pm(_row(by_step, activation='silu', step=0, utility='activation'))} on the untrained "
                           f"network (mean over seeds), {span(list(trained))} on every trained checkpoint "
                           "(`report.md`, per checkpoint).",
        "shock": f"ReLU Shock@5% / oracle on logit L1, pooled: `{largest['utility']}` {_pm(largest)}, the largest "
                 f"apart from `random` ({_pm(_row(relu_shock, utility='random'))}); GXD "
                 f"{_pm(_row(relu_shock, utility='gxd'))} (`shock.csv`).",
    }


def init_findings(publish: Path) -> dict[str, str]:
    """The init study's findings (SPEC S6, "Kaiming uniform" read as PyTorch's default), from spearman.csv,
    by_step.csv and timings.json in `publish`, beside the paper's Table 7."""
    rho = pd.read_csv(publish / "spearman.csv").query("metric == 'l1'")
    by_step = pd.read_csv(publish / "by_step.csv").query("metric == 'l1'")
    train_s = list(json.loads((publish / "timings.json").read_text())["train_s"].values())

    def pair(activation: str, name: str) -> str:
        return ", ".join(f"{utility.upper()} {_versus(_row(rho, activation=name, utility=utility), paper)}"
                         for (a, utility), paper in PAPER_RHO.items() if a == activation)

    default = f"silu-{TORCH_DEFAULT}"
    steps = by_step[(by_step["activation"] == default) & (by_step["utility"] == "gxi")]
    return {
        "pair": f"Pooled over {int(_row(rho, activation=default, utility='gxi')['n'])} checkpoints, with PyTorch's "
                f"default init: SiLU {pair('silu', default)}; ReLU {pair('relu', f'relu-{TORCH_DEFAULT}')}. With "
                f"our init: SiLU {pair('silu', 'silu')}; ReLU {pair('relu', 'relu')}.",
        "gxi-steps": "SiLU GXI with PyTorch's default init, per step (mean ± SE over seeds): "
                     + ", ".join(f"step {int(r['step'])} {_pm(r)}" for _, r in steps.iterrows()) + ".",
        "timings": f"Training took {span(train_s, 0, ' s')} per seed ({len(train_s)} runs; `timings.json`).",
    }


def findings_file(publish: Path) -> tuple[Path, str]:
    """(path, text) of findings.md in `publish`, from the tables there alone (no training, no data): the init
    study's findings when its runs include PyTorch's default init, else the MLP study's (SPEC S6)."""
    activations = set(pd.read_csv(publish / "spearman.csv")["activation"])
    init = any(a.endswith(f"-{TORCH_DEFAULT}") for a in activations)
    title = "Findings of the init study" if init else "Findings of the MLP study"
    return publish / "findings.md", document(title, "benchmarks/replicate_paper.py",
                                             init_findings(publish) if init else findings(publish))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    parser.add_argument("--work", type=Path, default=ROOT / "reports" / "replication" / "work")
    parser.add_argument("--publish", type=Path, default=ROOT / "reports" / "replication")
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--activations", type=lambda s: s.split(","), default=list(ACTIVATIONS))
    parser.add_argument("--inits", type=lambda s: s.split(","), default=[DEFAULT_INIT],
                        help=f"comma-separated zoo inits ({', '.join(INITS)}); the default alone by default")
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="the miniature: digits, 4 tasks, 1 seed, 2 activations")
    parser.add_argument("--render", action="store_true", help="only rewrite --publish's findings.md from its tables")
    args = parser.parse_args()
    if args.render:
        write(*findings_file(args.publish))
        return
    args.steps = PAPER_STEPS
    if args.quick:
        args.seeds, args.activations, args.tasks, args.steps = [0], ["relu", "silu"], 4, (0, 2, 4)
    if unknown := [i for i in args.inits if i not in INITS]:
        parser.error(f"--inits: unknown {', '.join(unknown)}; choose from {', '.join(INITS)}")
    unknown = [a for a in args.activations if a not in ACTIVATIONS]
    if unknown:
        parser.error(f"--activations: unknown {', '.join(unknown)}; choose from {', '.join(ACTIVATIONS)}")
    if not args.quick and not args.mnist.is_dir():
        parser.error(f"--mnist {args.mnist}: no such folder of MNIST IDX files")
    torch.set_num_threads(args.threads)
    timings_path = args.work / "timings.json"
    args.work.mkdir(parents=True, exist_ok=True)
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {"train_s": {}}
    for name, config in configs(args).items():
        start = time.perf_counter()
        written = train(config, args.work / "train" / name, progress=False, note=print)
        if written:  # a run trained now (not only found on disk): its time is a measurement
            timings["train_s"][name] = round(time.perf_counter() - start, 1)
            timings_path.write_text(json.dumps(timings, indent=1) + "\n")
        print(f"{name}: trained ({timings['train_s'].get(name, '?')} s)", flush=True)
    sizes = {"calib_size": 256, "probe_size": 256} if args.quick else {}
    run_dir = args.work / "run"
    assay([args.work / "train"], run_dir, utilities=UTILITIES, **sizes)
    assayed = json.loads((run_dir / "timings.json").read_text())["checkpoints"]  # those assayed by this launch
    timings.setdefault("assay_s_per_checkpoint", {}).update(
        {name: round(sum(stages.values()), 2) for name, stages in assayed.items()})
    timings_path.write_text(json.dumps(timings, indent=1) + "\n")
    publish(run_dir, args.publish, timings)
    print(f"published {args.publish}")


if __name__ == "__main__":
    main()
