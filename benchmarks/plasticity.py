"""Closing the loop (paper §5.2): does a better reset-cost ranking keep plasticity? (SPEC S6, S7)

For each activation, method and seed, `resetassay.train.loop` trains a narrow MLP on a long stream of short
permuted-MNIST tasks with plain backprop or with CBP (SPEC S7) ranking units by one utility (contribution,
mc_adaptable, gxd, gxi), and logs each task's online accuracy (the mean over the task's training stream of each
batch's accuracy before its SGD step: the paper's loss-of-plasticity curve). `resetassay.run_assay` then assays
the checkpoint of every run after the last task (calibration-mean reference, SPEC S2): the offline Spearman ρ of
each utility against the logit-L1 shock (SPEC S4, S5). The question: does the utility whose offline ranking is
better keep more plasticity when CBP uses it online?

The budget (`BUDGET`, chosen by the pilots in reports/replication/plasticity/report.md): widths 32 x 3, SGD lr
0.2, batch 64, 60 tasks of 1000 examples x 5 epochs (80 steps a task), CBP rho 1e-3, decay 0.99, maturity 100.
The published study adds `--activations relu,silu,leaky_relu,relu-ln`; a run CBP refuses (mc_adaptable behind
LayerNorm) or that diverges is left out and listed. Both steps resume in `--work` (default
reports/replication/work/plasticity, not committed): finished training runs and assayed checkpoints are skipped.
Runs train `--jobs` at a time, one torch thread each. It writes into `--publish` (default
reports/replication/plasticity):

    online.csv       per activation x method x task: online accuracy, mean ± SE over seeds
    final.csv        per activation x method: online accuracy over the first and the last 10% of tasks, mean ± SE
                     over seeds, and each utility's offline ρ (l1) on the last checkpoints of the same runs
    loop.csv         per activation x CBP method x seed: the method's own utility's ρ beside its final accuracy
    figures/online_<activation>.png   online accuracy vs task (running mean of 5 tasks), one line per method,
                     ± SE over seeds
    README.md        the table as markdown, and the rank correlation of own-utility ρ with final accuracy
    timings.json     measured wall time per training run and for the assay

    python benchmarks/plasticity.py [--mnist ../shared/data/mnist] [--seeds 0,1,2] [--activations ...] [--jobs 2]
                                    [--quick]

`--quick` is the miniature CI runs (about a minute on 2 cores): bundled digits, 2 activations, every method, one
seed, 4 tasks, 256/256 assay examples, published into its work folder. Without `--quick` and without the MNIST
folder it says so and exits 0 (nothing to do).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from replicate_paper import ACTIVATIONS, ROOT, assay, mean_se

from resetassay.data import DataSpec
from resetassay.errors import BadInputError
from resetassay.io.rundir import read_run
from resetassay.stats.summary import checkpoint_stats
from resetassay.train.cbp import CBPConfig
from resetassay.train.loop import ACCURACY, TrainConfig, TrainingFailed, train, zoo_kwargs

METHODS = ["backprop", "contribution", "mc_adaptable", "gxd", "gxi"]  # backprop, or CBP with that utility online
UTILITIES = ["activation", "contribution", "mc_adaptable", "gxd", "gxi"]  # assayed offline (l1 shock)
FINAL_WINDOW = 0.1  # the last 10% of tasks


@dataclass(frozen=True)
class Budget:
    """One run's training budget (SPEC S6 protocol; CBP hyper-parameters of SPEC S7)."""

    widths: tuple[int, ...] = (32, 32, 32)
    lr: float = 0.2
    tasks: int = 60
    examples_per_task: int = 1000
    epochs_per_task: int = 5
    replacement_rate: float = 1e-3
    maturity: int = 100


BUDGET = Budget()
QUICK = Budget(widths=(32, 32), lr=0.1, tasks=4, examples_per_task=600, epochs_per_task=3, replacement_rate=1e-2,
               maturity=10)


def configs(args: argparse.Namespace, budget: Budget) -> dict[str, TrainConfig]:
    """The study's training runs, by folder name `<activation>-<method>-s<seed>`, each checkpointed after its last
    task; seed by seed, so that a study cut short has whole seeds."""
    data = DataSpec(source="digits") if args.quick else DataSpec(source="mnist", data_dir=str(args.mnist.resolve()))
    runs = {}
    for seed in args.seeds:
        for name in args.activations:
            activation, layer_norm = ACTIVATIONS[name]
            for method in METHODS:
                cbp = None if method == "backprop" else CBPConfig(
                    utility=method, replacement_rate=budget.replacement_rate, maturity=budget.maturity)
                runs[f"{name}-{method}-s{seed}"] = TrainConfig(
                    "mlp", zoo_kwargs("mlp", data, budget.widths, activation, layer_norm), data, tasks=budget.tasks,
                    epochs_per_task=budget.epochs_per_task, lr=budget.lr, examples_per_task=budget.examples_per_task,
                    seed=seed, cbp=cbp, checkpoint_at=(budget.tasks,))
    return runs


def train_one(config: TrainConfig, out: Path) -> float | str | None:
    """Train one run on one torch thread: its wall time in seconds, None when it was finished on disk, or why it
    cannot be part of the study (diverged, or a utility CBP cannot use on this network, e.g. mc_adaptable behind
    LayerNorm)."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        written = train(config, out, progress=False)
    except TrainingFailed as err:
        return str(err)
    except BadInputError as err:
        if err.flag != "--utility":
            raise
        return str(err)
    return round(time.perf_counter() - start, 1) if written else None


def train_all(runs: dict[str, TrainConfig], work: Path, jobs: int, timings: dict) -> dict[str, str]:
    """Every run, `jobs` at a time (processes at nice 19 when run so); the measured times into `timings`. Returns
    the failed runs, with why."""
    failed = {}
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {name: pool.submit(train_one, config, work / "train" / name) for name, config in runs.items()}
        for name, future in futures.items():
            result = future.result()
            if isinstance(result, str):
                failed[name] = result
                print(f"{name}: left out ({result})", flush=True)
                continue
            if result is not None:
                timings["train_s"][name] = result
                (work / "timings.json").write_text(json.dumps(timings, indent=1) + "\n")
            print(f"{name}: trained ({timings['train_s'].get(name, '?')} s)", flush=True)
    return failed


def _split(name: str) -> dict:
    activation, method, seed = name.rsplit("-", 2)
    return {"activation": activation, "method": method, "seed": int(seed.removeprefix("s"))}


def online(work: Path, names: list[str]) -> pd.DataFrame:
    """Online accuracy per run and task (accuracy.csv of every training run)."""
    frames = [pd.read_csv(work / "train" / name / ACCURACY).assign(**_split(name)) for name in names]
    return pd.concat(frames, ignore_index=True)[["activation", "method", "seed", "task", "online_accuracy"]]


def offline(run_dir: Path) -> pd.DataFrame:
    """Offline Spearman ρ (logit L1) per run and utility, on the run's last checkpoint."""
    tables = read_run(run_dir)
    paths = tables["checkpoints"][["checkpoint", "path"]].drop_duplicates("checkpoint")
    stats = checkpoint_stats(tables["summary"], tables["checkpoints"]).merge(paths, on="checkpoint")
    stats = stats[stats["metric"] == "l1"]
    runs = pd.DataFrame([_split(Path(p).parent.name) for p in stats["path"]], index=stats.index)
    return pd.concat([runs, stats[["utility", "spearman"]]], axis=1)


def _cell(mean: float, se: float) -> str:
    """mean ± se; – where there is no value (a utility not applicable to the network)."""
    if math.isnan(mean):
        return "–"
    return f"{mean:.3f}" if math.isnan(se) else f"{mean:.3f} ± {se:.3f}"


def final_table(acc: pd.DataFrame, rho: pd.DataFrame, tasks: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per activation x method: final-window online accuracy and each utility's offline ρ, mean ± SE over seeds
    (SPEC S5); and per CBP run: its own utility's ρ beside its final accuracy (the loop)."""
    window = max(1, math.ceil(FINAL_WINDOW * tasks))
    runs = acc.groupby(["activation", "method", "seed"], sort=False)
    per_run = pd.concat([runs.apply(lambda g: g.loc[g["task"] <= window, "online_accuracy"].mean()).rename("first"),
                         runs.apply(lambda g: g.loc[g["task"] > tasks - window, "online_accuracy"].mean())
                         .rename("final_accuracy")], axis=1).reset_index()
    rows = []
    for (activation, method), g in per_run.groupby(["activation", "method"], sort=False):
        row = {"activation": activation, "method": method}
        row["first"], row["first_se"], _ = mean_se(g["first"])
        row["final"], row["final_se"], row["n"] = mean_se(g["final_accuracy"])
        mine = rho[(rho["activation"] == activation) & (rho["method"] == method)]
        for utility in UTILITIES:
            row[f"rho_{utility}"], row[f"rho_{utility}_se"], _ = mean_se(mine.loc[mine["utility"] == utility,
                                                                                   "spearman"])
        rows.append(row)
    own = rho[rho["utility"] == rho["method"]][["activation", "method", "seed", "spearman"]]
    loop = per_run.drop(columns="first").merge(own.rename(columns={"spearman": "own_rho"}),
                                               on=["activation", "method", "seed"])
    return pd.DataFrame(rows), loop


def markdown(final: pd.DataFrame, loop: pd.DataFrame, budget: Budget, window: int) -> str:
    """The published table and the loop's rank correlations."""
    header = ["activation", "method", f"online acc., first {window} tasks", f"online acc., last {window} tasks",
              *(f"ρ {u}" for u in UTILITIES)]
    lines = ["# Closing the loop: offline rank quality vs online plasticity (paper §5.2)", "",
             f"Written by `benchmarks/plasticity.py`. Budget: MLP widths {'x'.join(map(str, budget.widths))}, SGD lr "
             f"{budget.lr}, batch 64, {budget.tasks} permuted tasks of {budget.examples_per_task} examples x "
             f"{budget.epochs_per_task} epochs, CBP ρ {budget.replacement_rate} (decay 0.99, maturity "
             f"{budget.maturity}). Mean ± SE over seeds; ρ: offline pooled Spearman of the utility vs logit-L1 "
             "shock on each run's checkpoint after its last task (calibration-mean reference).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in final.itertuples(index=False):
        r = row._asdict()
        cells = [r["activation"], r["method"], _cell(r["first"], r["first_se"]), _cell(r["final"], r["final_se"]),
                 *(_cell(r[f"rho_{u}"], r[f"rho_{u}_se"]) for u in UTILITIES)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "Does the utility CBP ranked by rank better offline where it kept more plasticity? Spearman "
              "correlation of the own utility's offline ρ with the final online accuracy, over CBP runs:", ""]
    centred = loop.assign(**{c: loop[c] - loop.groupby("activation")[c].transform("mean")
                             for c in ("own_rho", "final_accuracy")})
    groups = [("all activations (each centred on its activation's mean)", centred),
              *((f"within {a}", g) for a, g in loop.groupby("activation", sort=False))]
    for label, g in groups:
        r = g["own_rho"].corr(g["final_accuracy"], method="spearman") if len(g) > 2 else math.nan
        lines.append(f"- {label}: r = {r:.2f} (n = {len(g)} runs)")
    return "\n".join(lines) + "\n"


def figures(acc: pd.DataFrame, out: Path, tasks: int) -> None:
    """One figure per activation: online accuracy vs task, one line per method, shaded ± SE over seeds; each run's
    curve is first smoothed by a centred running mean over `tasks // 12` tasks (5 of 60: tasks differ in
    difficulty)."""
    from matplotlib.figure import Figure

    out.mkdir(parents=True, exist_ok=True)
    window = max(1, tasks // 12)
    for activation, g in acc.groupby("activation", sort=False):
        fig = Figure(figsize=(6.5, 3.8))
        ax = fig.add_subplot()
        for method, m in g.groupby("method", sort=False):
            smooth = m.sort_values("task").groupby("seed")["online_accuracy"].transform(
                lambda v: v.rolling(window, center=True, min_periods=1).mean())
            stats = m.assign(online_accuracy=smooth).groupby("task")["online_accuracy"].agg(["mean", "std", "count"])
            se = (stats["std"] / stats["count"] ** 0.5).fillna(0)
            ax.plot(stats.index, stats["mean"], label=method if method == "backprop" else f"CBP {method}", lw=1.2)
            ax.fill_between(stats.index, stats["mean"] - se, stats["mean"] + se, alpha=0.2)
        ax.set(xlabel="task", ylabel=f"online accuracy (running mean of {window})",
               title=f"permuted tasks, MLP {activation}: mean ± SE over seeds")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"online_{activation}.png", dpi=110)


def publish(acc: pd.DataFrame, rho: pd.DataFrame, budget: Budget, out: Path, timings: dict,
            failed: dict[str, str]) -> None:
    """The study's tables, figures and timings into `out`; `failed` runs (diverged) are listed, not counted."""
    out.mkdir(parents=True, exist_ok=True)
    final, loop = final_table(acc, rho, budget.tasks)
    summary = acc.groupby(["activation", "method", "task"], sort=False)["online_accuracy"].agg(["mean", "std", "count"])
    summary = summary.assign(se=summary["std"] / summary["count"] ** 0.5).drop(columns="std").reset_index()
    for name, frame in (("online", summary), ("final", final), ("loop", loop)):
        frame.to_csv(out / f"{name}.csv", index=False, float_format="%.6g")
    figures(acc, out / "figures", budget.tasks)
    (out / "timings.json").write_text(json.dumps(timings, indent=1, sort_keys=True) + "\n")
    window = max(1, math.ceil(FINAL_WINDOW * budget.tasks))
    failures = "".join(f"- {name} left out: {why}\n" for name, why in failed.items())
    (out / "README.md").write_text(markdown(final, loop, budget, window) + (f"\n{failures}" if failures else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    parser.add_argument("--work", type=Path, default=None, help="default reports/replication/work/plasticity[-quick]")
    parser.add_argument("--publish", type=Path, default=None,
                        help="default reports/replication/plasticity (--quick: <work>/publish)")
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--activations", type=lambda s: s.split(","), default=["relu", "silu", "leaky_relu"])
    parser.add_argument("--jobs", type=int, default=2, help="training runs at a time, one torch thread each")
    parser.add_argument("--quick", action="store_true", help="the miniature: digits, 4 tasks, 1 seed, 2 activations")
    args = parser.parse_args()
    budget = QUICK if args.quick else BUDGET
    work = args.work or ROOT / "reports" / "replication" / "work" / ("plasticity-quick" if args.quick else "plasticity")
    publish_to = args.publish or (work / "publish" if args.quick else ROOT / "reports" / "replication" / "plasticity")
    if args.quick:
        args.seeds, args.activations = [0], ["relu", "silu"]
    unknown = [a for a in args.activations if a not in ACTIVATIONS]
    if unknown:
        parser.error(f"--activations: unknown {', '.join(unknown)}; choose from {', '.join(ACTIVATIONS)}")
    if not args.quick and not args.mnist.is_dir():
        print(f"skipped: --mnist {args.mnist} is not a folder of MNIST IDX files (--quick runs on bundled digits)")
        return
    work.mkdir(parents=True, exist_ok=True)
    timings_path = work / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {"train_s": {}}
    runs = configs(args, budget)
    start = time.perf_counter()
    failed = train_all(runs, work, args.jobs, timings)
    names = [name for name in runs if name not in failed]
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    sizes = {"calib_size": 256, "probe_size": 256} if args.quick else {}
    run_dir = work / "run"
    assay([work / "train" / name / f"task{budget.tasks}" for name in names], run_dir, utilities=UTILITIES,
          metrics=["l1"], **sizes)
    assayed = json.loads((run_dir / "timings.json").read_text())["checkpoints"]  # those assayed by this launch
    timings.setdefault("assay_s_per_checkpoint", {}).update(
        {name: round(sum(stages.values()), 2) for name, stages in assayed.items()})
    timings["this_launch_s"] = round(time.perf_counter() - start, 1)
    timings_path.write_text(json.dumps(timings, indent=1) + "\n")
    publish(online(work, names), offline(run_dir), budget, publish_to, timings, failed)
    print(f"published {publish_to}")


if __name__ == "__main__":
    main()
