"""Closing the loop (paper §5.2): does a better reset-cost ranking keep plasticity? (SPEC S6, S7)

For each activation, method and seed, `resetassay.train.loop` trains a narrow MLP on a long stream of short
permuted-MNIST tasks with plain backprop or with CBP (SPEC S7) ranking units by one utility (contribution,
mc_adaptable, gxd, gxi) or by none (CBP random: a mature unit drawn at random, the control a utility must beat),
and logs each task's online accuracy (each batch's accuracy before its SGD step: the CBP paper's curve) and test
accuracy (the task's held-out split after training on it: the GXD paper's §5.2 measure). `resetassay.run_assay`
then assays the checkpoint of every run after the last task (calibration-mean reference, SPEC S2): the offline
Spearman ρ of each utility against the logit-L1 shock (SPEC S4, S5). The questions: which utility keeps more
plasticity than random resets, and does the one whose offline ranking is better keep more?

The budget (`BUDGET`, chosen by the pilots in pilots.csv, docs/replication/plasticity.md): ReLU, widths 32 x 3, SGD
lr 0.2, batch 64, 120 tasks of 1000 examples x 5 epochs (80 steps a task), CBP rho 1e-3, decay 0.99, maturity
100, 8 seeds. Pilots override one setting (`--widths`, `--lr`, `--tasks`, `--replacement-rate`, `--maturity`,
with their own `--work` and `--publish`). A run CBP refuses (mc_adaptable behind LayerNorm) or that diverges is
left out and listed. Both steps resume in `--work` (default reports/replication/work/plasticity, not committed):
finished training runs and assayed checkpoints are skipped. Runs train `--jobs` at a time, one torch thread each,
seed by seed. It writes into `--publish` (default reports/replication/plasticity):

    online.csv            per activation x method x task: online and test accuracy, mean, SE, count over seeds
    final.csv             per activation x method: online and test accuracy over the first and the last 10% of
                          tasks, mean ± SE over seeds, and each utility's offline ρ (l1) on the same runs
    contrasts.csv         per activation x measure x CBP method: its paired difference (by seed) from backprop,
                          CBP random and CBP contribution, a seed-cluster bootstrap 95% interval, and the MDE
    loop.csv              per CBP run: the method's own utility's ρ beside its final online and test accuracy
    loop_correlation.csv  Spearman r of own ρ with final online accuracy, with its seed-cluster interval
    figures/online_<activation>.png   online accuracy vs task (running mean), one line per method, ± SE
    pilots.csv            every pilot's runs (`--pilot NAME`: train only, one row per run)
    left_out.csv          runs left out, with why
    README.md             the tables as markdown and a conclusion worded by the intervals, rendered from the CSVs
                          alone (`--render` writes it again without training)
    timings.json          measured wall time per training run and for the assay

    python benchmarks/plasticity.py [--mnist ../shared/data/mnist] [--seeds 0,1,2] [--activations ...]
                                    [--methods ...] [--jobs 2] [--quick]

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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from replicate_paper import ACTIVATIONS, ROOT, assay, mean_se
from scipy.stats import t as student_t

from resetassay.data import DataSpec
from resetassay.errors import BadInputError
from resetassay.io.rundir import read_run
from resetassay.stats.summary import checkpoint_stats
from resetassay.train.cbp import CBPConfig
from resetassay.train.loop import ACCURACY, TrainConfig, TrainingFailed, train, zoo_kwargs

# backprop, or CBP with that utility online; CBP random (a fresh draw each step) is the control a utility must beat
METHODS = ["backprop", "random", "contribution", "mc_adaptable", "gxd", "gxi"]
UTILITIES = ["activation", "contribution", "mc_adaptable", "gxd", "gxi"]  # assayed offline (l1 shock)
FINAL_WINDOW = 0.1  # the last 10% of tasks
BOOTSTRAP_DRAWS = 10_000
PILOTS = "pilots.csv"  # every pilot's runs (`--pilot`), rendered into the README
LEFT_OUT = "left_out.csv"  # runs left out of the study (CBP refused the utility, or training diverged), with why


@dataclass(frozen=True)
class Budget:
    """One run's training budget (SPEC S6 protocol; CBP hyper-parameters of SPEC S7)."""

    widths: tuple[int, ...] = (32, 32, 32)
    lr: float = 0.2
    tasks: int = 120
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
            for method in args.methods:
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
        if err.field != "utility":
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
    """Online and held-out (test) accuracy and CBP's resets per run and task (accuracy.csv of every training run)."""
    frames = [pd.read_csv(work / "train" / name / ACCURACY).assign(**_split(name)) for name in names]
    return pd.concat(frames, ignore_index=True)[["activation", "method", "seed", "task", "online_accuracy",
                                                 "holdout_accuracy", "resets"]]


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


def per_run(acc: pd.DataFrame, tasks: int) -> pd.DataFrame:
    """Per run: online and test accuracy (the CBP paper's and the GXD paper's §5.2 measure: held-out accuracy of
    each task after training on it) averaged over the first and the last `FINAL_WINDOW` of tasks."""
    window = max(1, math.ceil(FINAL_WINDOW * tasks))
    first, last = acc[acc["task"] <= window], acc[acc["task"] > tasks - window]
    keys = ["activation", "method", "seed"]
    parts = {f"{when}_{measure}": frame.groupby(keys, sort=False)[f"{column}_accuracy"].mean()
             for when, frame in (("first", first), ("final", last))
             for measure, column in (("online", "online"), ("test", "holdout"))}
    return pd.DataFrame(parts).reset_index()


def final_table(runs: pd.DataFrame, rho: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per activation x method: first- and final-window accuracy and each utility's offline ρ, mean ± SE over
    seeds (SPEC S5); and per CBP run: its own utility's ρ beside its final online accuracy (the loop)."""
    rows = []
    for (activation, method), g in runs.groupby(["activation", "method"], sort=False):
        row = {"activation": activation, "method": method}
        for column in ("first_online", "final_online", "first_test", "final_test"):
            row[column], row[f"{column}_se"], row["n"] = mean_se(g[column])
        mine = rho[(rho["activation"] == activation) & (rho["method"] == method)]
        for utility in UTILITIES:
            row[f"rho_{utility}"], row[f"rho_{utility}_se"], _ = mean_se(mine.loc[mine["utility"] == utility,
                                                                                   "spearman"])
        rows.append(row)
    own = rho[rho["utility"] == rho["method"]][["activation", "method", "seed", "spearman"]]
    loop = runs[["activation", "method", "seed", "final_online", "final_test"]].merge(
        own.rename(columns={"spearman": "own_rho"}), on=["activation", "method", "seed"])
    return pd.DataFrame(rows), loop


def mde(sd: float, n: int) -> float:
    """The smallest mean paired difference a two-sided t-test at α = .05 finds with 80% power, given the sd of
    the per-seed differences and n seeds: (t_.975 + t_.80) · sd / √n, n − 1 degrees of freedom."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    return float((student_t.ppf(0.975, n - 1) + student_t.ppf(0.8, n - 1)) * sd / math.sqrt(n))


def seed_bootstrap(values: np.ndarray, draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of per-seed values (a paired difference per seed), seeds resampled with
    replacement: the cluster bootstrap where a cluster is a seed (its runs share the task sequence)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return math.nan, math.nan
    means = v[np.random.default_rng(seed).integers(0, len(v), (draws, len(v)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def contrasts(runs: pd.DataFrame) -> pd.DataFrame:
    """Per activation, measure (final online, final test accuracy) and CBP utility: its difference from backprop,
    from CBP random and from CBP contribution (the CBP paper's utility), paired by seed; mean, the seed-cluster
    bootstrap 95% interval and the smallest effect the design detects (`mde`)."""
    rows = []
    for activation, g in runs.groupby("activation", sort=False):
        for measure in ("final_online", "final_test"):
            wide = g.pivot(index="seed", columns="method", values=measure)
            for versus in ("backprop", "random", "contribution"):
                for method in wide.columns:
                    if method in ("backprop", versus) or versus not in wide.columns or (
                            method == "random" and versus != "backprop"):
                        continue
                    d = (wide[method] - wide[versus]).dropna()
                    low, high = seed_bootstrap(d.to_numpy())
                    rows.append({"activation": activation, "measure": measure, "method": method, "versus": versus,
                                 "n_seeds": len(d), "difference": d.mean(), "low": low, "high": high,
                                 "mde": mde(float(d.std(ddof=1)), len(d))})
    return pd.DataFrame(rows)


def _spearman(frame: pd.DataFrame) -> float:
    return float(frame["own_rho"].corr(frame["final_online"], method="spearman")) if len(frame) > 2 else math.nan


def loop_correlations(loop: pd.DataFrame, draws: int = BOOTSTRAP_DRAWS // 5) -> pd.DataFrame:
    """Spearman r of the own utility's offline ρ with final online accuracy over CBP runs (random has no own ρ),
    within each activation and over all of them (each centred on its activation's mean), with a 95% interval from
    resampling seeds (clusters: a seed's runs share its task sequence)."""
    centred = loop.assign(**{c: loop[c] - loop.groupby("activation")[c].transform("mean")
                             for c in ("own_rho", "final_online")})
    groups = [(f"within {a}", g) for a, g in loop.groupby("activation", sort=False)]
    if len(groups) > 1:
        groups.insert(0, ("all activations, centred", centred))
    rng = np.random.default_rng(0)
    rows = []
    for label, g in groups:
        by_seed = [s for _, s in g.groupby("seed")]
        boot = [_spearman(pd.concat([by_seed[i] for i in rng.integers(0, len(by_seed), len(by_seed))]))
                for _ in range(draws)] if len(by_seed) > 1 else [math.nan]
        low, high = np.nanpercentile(boot, [2.5, 97.5]) if np.isfinite(boot).any() else (math.nan, math.nan)
        rows.append({"group": label, "r": _spearman(g), "low": float(low), "high": float(high), "n_runs": len(g),
                     "n_seeds": len(by_seed)})
    return pd.DataFrame(rows)


def _interval(row: dict | pd.Series) -> str:
    if math.isnan(row["low"]):
        return f"{row['difference']:+.3f} (no interval: one seed)"
    return f"{row['difference']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}]"


def markdown(final: pd.DataFrame, diffs: pd.DataFrame, correlations: pd.DataFrame, budget: Budget) -> str:
    """The published tables, and a conclusion worded by what the intervals allow."""
    window = max(1, math.ceil(FINAL_WINDOW * budget.tasks))
    lines = ["# Closing the loop: offline rank quality vs online plasticity (paper §5.2)", "",
             f"Written by `benchmarks/plasticity.py`. Budget: MLP widths {'x'.join(map(str, budget.widths))}, SGD lr "
             f"{budget.lr}, batch 64, {budget.tasks} permuted tasks of {budget.examples_per_task} examples x "
             f"{budget.epochs_per_task} epochs, CBP ρ {budget.replacement_rate} (decay 0.99, maturity "
             f"{budget.maturity}); CBP random resets a mature unit drawn at random (the control). Accuracy: online "
             "(each batch before its step, the CBP paper's measure) and test (each task's held-out split after "
             f"training on it, the GXD paper's §5.2 measure), averaged over the first and the last {window} tasks; "
             "mean ± SE over seeds. ρ: offline pooled Spearman of the utility vs logit-L1 shock on each run's "
             "checkpoint after its last task (calibration-mean reference).", ""]
    header = ["activation", "method", "online, first", "online, last", "test, first", "test, last",
              *(f"ρ {u}" for u in UTILITIES)]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in final.to_dict("records"):
        cells = [r["activation"], r["method"],
                 *(_cell(r[c], r[f"{c}_se"]) for c in ("first_online", "final_online", "first_test", "final_test")),
                 *(_cell(r[f"rho_{u}"], r[f"rho_{u}_se"]) for u in UTILITIES)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", f"## Differences in accuracy over the last {window} tasks, paired by seed", "",
              "Mean difference [95% interval from resampling seeds, the cluster bootstrap]; MDE: the smallest "
              "difference this many seeds detect (two-sided α = .05, power .8, from the sd of the per-seed "
              "differences).", "",
              "| activation | method | measure | − backprop | − CBP random | − CBP contribution | MDE vs random |",
              "|---|---|---|---|---|---|---|"]
    for (activation, method, measure), g in diffs.groupby(["activation", "method", "measure"], sort=False):
        by = {row["versus"]: row for row in g.to_dict("records")}
        cells = [_interval(by[v]) if v in by else "–" for v in ("backprop", "random", "contribution")]
        mde_random = f"{by['random']['mde']:.3f}" if "random" in by else "–"
        lines.append(f"| {activation} | {method} | {measure.removeprefix('final_')} | {' | '.join(cells)} | "
                     f"{mde_random} |")
    lines += ["", "## Does a better offline ranking keep more plasticity?", "",
              "Spearman r of the own utility's offline ρ with final online accuracy over CBP runs, with a 95% "
              "interval from resampling seeds:", ""]
    for r in correlations.to_dict("records"):
        interval = "no interval" if math.isnan(r["low"]) else f"[{r['low']:+.2f}, {r['high']:+.2f}]"
        lines.append(f"- {r['group']}: r = {r['r']:+.2f} {interval} (n = {r['n_runs']} runs, {r['n_seeds']} seeds)")
    return "\n".join(lines + ["", *conclusion(diffs, correlations)]) + "\n"


def pilot_table(pilots: pd.DataFrame) -> list[str]:
    """The pilots (pilots.csv, one seed each) as markdown: budget, method, accuracy of the first and the last 10% of
    tasks (online; test where it was logged), resets and training seconds (2 shared cores)."""
    header = ["pilot", "activation", "widths", "lr", "examples x epochs", "CBP ρ", "method", "online, first",
              "online, last", "test, first", "test, last", "resets", "train s"]
    lines = ["## Pilots", "", "Seed 0, 60 tasks each, written by `--pilot NAME` into pilots.csv (pilots a–h predate "
             "the test-accuracy column and the random control):", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in pilots.to_dict("records"):
        number = [_cell(r[c], math.nan) for c in ("first_online", "final_online", "first_test", "final_test")]
        rate = "–" if pd.isna(r["replacement_rate"]) else f"{r['replacement_rate']:g}"
        resets = "–" if pd.isna(r["resets"]) else f"{int(r['resets'])}"
        lines.append("| " + " | ".join([str(r["pilot"]), r["activation"], r["widths"], f"{r['lr']:g}",
                                        r["examples_x_epochs"], rate, r["method"], *number, resets,
                                        f"{r['train_s']:g}"]) + " |")
    return lines


def conclusion(diffs: pd.DataFrame, correlations: pd.DataFrame) -> list[str]:
    """What the intervals allow, sentence by sentence and per accuracy measure: which CBP method is above or below
    backprop, CBP random and CBP contribution (its interval excludes 0) and which is not resolved from them (with
    the MDE), and whether the loop's correlation is resolved."""
    lines = ["## What the intervals allow", ""]
    if diffs.empty or diffs["low"].isna().all():
        return [*lines, "- Nothing: with one seed there is no interval, so no difference and no correlation is "
                        "claimed."]
    for (activation, measure), g in diffs.groupby(["activation", "measure"], sort=False):
        said = []
        for versus in ("backprop", "random", "contribution"):
            v = g[g["versus"] == versus]
            above = v.loc[v["low"] > 0, "method"].tolist()
            below = v.loc[v["high"] < 0, "method"].tolist()
            open_ = v[(v["low"] <= 0) & (v["high"] >= 0)]
            unresolved = open_["method"].tolist()
            name = "CBP " + versus if versus != "backprop" else "backprop"
            parts = [f"above {name}: {', '.join(above)}" if above else "",
                     f"below {name}: {', '.join(below)}" if below else "",
                     f"not resolved from {name} (interval holds 0; MDE up to {open_['mde'].max():.3f}): "
                     f"{', '.join(unresolved)}" if unresolved else ""]
            said += [p for p in parts if p]
        lines.append(f"- {activation}, final {measure.removeprefix('final_')} accuracy: " + "; ".join(said) + ".")
    for r in correlations.to_dict("records"):
        if r["low"] > 0 or r["high"] < 0:
            lines.append(f"- {r['group']}: the loop's correlation is {'positive' if r['low'] > 0 else 'negative'} "
                         f"(interval [{r['low']:+.2f}, {r['high']:+.2f}] excludes 0).")
        else:
            lines.append(f"- {r['group']}: the loop's correlation is not resolved (interval [{r['low']:+.2f}, "
                         f"{r['high']:+.2f}] holds 0): no claim either way.")
    return lines


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
    runs = per_run(acc, budget.tasks)
    final, loop = final_table(runs, rho)
    diffs, correlations = contrasts(runs), loop_correlations(loop)
    summary = acc.groupby(["activation", "method", "task"], sort=False)[["online_accuracy", "holdout_accuracy"]]
    summary = summary.agg(["mean", "sem", "count"])
    summary.columns = [f"{measure.removesuffix('_accuracy')}_{stat}" for measure, stat in summary.columns]
    tables = {"online": summary.reset_index(), "final": final, "loop": loop, "contrasts": diffs,
              "loop_correlation": correlations}
    for name, frame in tables.items():
        frame.to_csv(out / f"{name}.csv", index=False, float_format="%.6g")
    figures(acc, out / "figures", budget.tasks)
    (out / "timings.json").write_text(json.dumps(timings, indent=1, sort_keys=True) + "\n")
    pd.DataFrame({"run": list(failed), "why": list(failed.values())}).to_csv(out / LEFT_OUT, index=False)
    path, text = readme_file(out, budget)
    path.write_text(text)


def readme_file(out: Path, budget: Budget = BUDGET) -> tuple[Path, str]:
    """(path, text) of the README in `out`, rendered from the tables there alone (no training, no data), so that
    every number it states is one of theirs; `--render` writes it, a test holds the committed one to it."""
    read = {name: pd.read_csv(out / f"{name}.csv") for name in ("final", "contrasts", "loop_correlation")}
    left = pd.read_csv(out / LEFT_OUT, dtype=str) if (out / LEFT_OUT).exists() else pd.DataFrame(columns=["run", "why"])
    text = markdown(read["final"], read["contrasts"], read["loop_correlation"], budget)
    text += "".join(f"\n- {r.run} left out: {r.why}" for r in left.itertuples()) + ("\n" if len(left) else "")
    if (out / PILOTS).exists():
        text += "\n" + "\n".join(pilot_table(pd.read_csv(out / PILOTS))) + "\n"
    return out / "README.md", text


PILOT_SETTINGS = ("widths", "lr", "tasks", "replacement_rate", "maturity")


def pilot_rows(name: str, work: Path, runs: dict[str, TrainConfig], failed: dict[str, str], budget: Budget,
               timings: dict) -> pd.DataFrame:
    """One row per run of pilot `name`: its budget, first- and final-window online and test accuracy, resets and
    training seconds (no assay: a pilot only asks whether a budget loses plasticity and separates methods)."""
    names = [n for n in runs if n not in failed]
    acc = online(work, names)
    rows = per_run(acc, budget.tasks)
    rows.insert(0, "pilot", name)
    for setting in PILOT_SETTINGS:
        value = getattr(budget, setting)
        rows[setting] = "x".join(map(str, value)) if isinstance(value, tuple) else value
    rows["examples_x_epochs"] = f"{budget.examples_per_task}x{budget.epochs_per_task}"
    keys = [f"{a}-{m}-s{s}" for a, m, s in zip(rows["activation"], rows["method"], rows["seed"], strict=True)]
    rows["resets"] = acc.groupby(["activation", "method", "seed"], sort=False)["resets"].sum().to_numpy()
    rows["train_s"] = [timings["train_s"].get(k) for k in keys]
    return rows


def record_pilot(rows: pd.DataFrame, path: Path) -> None:
    """Upsert a pilot's rows into `path` (pilots.csv): rows of the same pilot are replaced."""
    old = pd.read_csv(path) if path.exists() else rows.iloc[:0]
    merged = pd.concat([old[old["pilot"] != rows["pilot"].iloc[0]], rows], ignore_index=True)
    merged.to_csv(path, index=False, float_format="%.6g")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    parser.add_argument("--work", type=Path, default=None,
                        help="default reports/replication/work/plasticity[-quick | -pilot-NAME]")
    parser.add_argument("--publish", type=Path, default=None,
                        help="default reports/replication/plasticity (--quick: <work>/publish)")
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=list(range(8)))
    parser.add_argument("--activations", type=lambda s: s.split(","), default=["relu"])
    parser.add_argument("--jobs", type=int, default=2, help="training runs at a time, one torch thread each")
    parser.add_argument("--methods", type=lambda s: s.split(","), default=METHODS)
    parser.add_argument("--quick", action="store_true", help="the miniature: digits, 4 tasks, 1 seed, 2 activations")
    parser.add_argument("--pilot", default=None, help="train only, and record the runs as this pilot in pilots.csv")
    parser.add_argument("--render", action="store_true", help="only rewrite --publish's README from its tables")
    for name, kind in (("widths", lambda s: tuple(int(v) for v in s.split(","))), ("lr", float), ("tasks", int),
                       ("replacement-rate", float), ("maturity", int)):
        parser.add_argument(f"--{name}", type=kind, default=None, help="a pilot's budget, in place of BUDGET's")
    args = parser.parse_args()
    overrides = {f: getattr(args, f) for f in PILOT_SETTINGS if getattr(args, f) is not None}
    budget = replace(QUICK if args.quick else BUDGET, **overrides)
    folder = "plasticity-quick" if args.quick else f"plasticity-pilot-{args.pilot}" if args.pilot else "plasticity"
    work = args.work or ROOT / "reports" / "replication" / "work" / folder
    publish_to = args.publish or (work / "publish" if args.quick else ROOT / "reports" / "replication" / "plasticity")
    if args.render:
        path, text = readme_file(publish_to, budget)
        path.write_text(text)
        print(f"rendered {path}")
        return
    if args.quick:
        args.seeds, args.activations = [0], ["relu", "silu"]
    if unknown := [a for a in args.activations if a not in ACTIVATIONS]:
        parser.error(f"--activations: unknown {', '.join(unknown)}; choose from {', '.join(ACTIVATIONS)}")
    if unknown := [m for m in args.methods if m not in METHODS]:
        parser.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if overrides and not args.pilot and (args.work is None or args.publish is None):
        parser.error("a budget of its own (--widths, --lr, --tasks, --replacement-rate, --maturity) is a --pilot, "
                     "or needs its own --work and --publish folders")
    if not args.quick and not args.mnist.is_dir():
        print(f"skipped: --mnist {args.mnist} is not a folder of MNIST IDX files (--quick runs on bundled digits)")
        return
    work.mkdir(parents=True, exist_ok=True)
    timings_path = work / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {"train_s": {}}
    runs = configs(args, budget)
    start = time.perf_counter()
    failed = train_all(runs, work, args.jobs, timings)
    if args.pilot:
        publish_to.mkdir(parents=True, exist_ok=True)
        record_pilot(pilot_rows(args.pilot, work, runs, failed, budget, timings), publish_to / PILOTS)
        print(f"recorded pilot {args.pilot} in {publish_to / PILOTS}")
        return
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
