"""Which protocol choice moves which number of the replication (SPEC S6): one choice varied at a time.

On the checkpoints `benchmarks/replicate_paper.py` trained (its `--work`), for the chosen activations and
steps, the assay is rerun under each variant with everything else at the default:

    default      calibration-mean reference, probe from the task trained last, target = the label, per-example
                 scores in absolute value, pooled Spearman, plain backprop training
    predicted    the gradient utilities follow the model's predicted class instead of the label (--target)
    zero-ref     the reference is 0 (zero-ablation: GXD becomes GXI, S2)
    first-task   calibration and probe from task 0 instead of the task trained last (--task 0)
    signed       gxi and gxd as |E[sum_s ...]|, the absolute value of the mean of the signed per-example scores
                 (registered utilities on the gxi_signed / gxd_signed ingredients), shown on the gxi and gxd rows
    per-layer    the default run's Spearman ρ per layer, averaged over layers, instead of pooled
    cbp          the same MLPs trained with CBP (contribution utility, SPEC S7; `--cbp-seeds`), default assay
    ema-ref      those CBP checkpoints with the reference CBP itself tracked (--reference stored, the EMA r̂)

and the training step itself is a choice (0 = untrained vs 30; cbp and ema-ref exist only after training).
Writes `variants.csv` (mean ± SE over seeds of the Spearman ρ on logit L1, per activation x step x variant x
utility), `variants.md` and `variants_findings.md` (the numbers the docs state, as marked blocks written from
variants.csv alone) into `--publish`; each variant's runs resume in `--work`/variants/<name>, the CBP training in
`--work`/train-cbp.

    python benchmarks/replication_variants.py [--activations silu,relu] [--steps 0,30] [--cbp-seeds 0]
    python benchmarks/replication_variants.py --render [--publish DIR]   # variants_findings.md from variants.csv
"""

from __future__ import annotations

import argparse
import re
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from generated import document, pm, versus, write
from replicate_paper import PAPER_RHO, ROOT, aggregate, assay, configs

import resetassay as ra
from resetassay.data import DataChoice
from resetassay.io.rundir import read_run
from resetassay.stats.summary import checkpoint_stats
from resetassay.train.cbp import CBPConfig
from resetassay.train.loop import train

UTILITIES = ["activation", "gxi", "gxd", "oracle"]
SIGNED = {"gxi_signed": "gxi", "gxd_signed": "gxd"}  # |E[...]| utilities, reported on the rows of gxi and gxd
VARIANTS = {"default": {}, "predicted": {"target": "predicted"}, "zero-ref": {"reference": "zero"},
            "first-task": {"data": DataChoice(task=0)},
            "signed": {"utilities": ["activation", *SIGNED, "oracle"]}}
CBP_VARIANTS = {"cbp": {}, "ema-ref": {"reference": "stored"}}


def register_signed() -> None:
    """The utilities of the signed variant: the absolute value of the mean signed per-example score."""
    for name in SIGNED:
        ra.register_utility(name, lambda stats, _layer, name=name: getattr(stats, name).abs(), needs=(name,))


def cbp_checkpoints(args: argparse.Namespace) -> list[Path]:
    """Train (or find) the paper's MLPs with CBP for `--cbp-seeds`; their checkpoints at `--steps` after training."""
    args.quick, args.seeds = False, args.cbp_seeds
    for name, config in configs(args).items():
        if name.rsplit("-s", 1)[0] in args.activations:
            train(replace(config, cbp=CBPConfig(), family=None), args.work / "train-cbp" / name, note=print)
    return sorted(p for p in (args.work / "train-cbp").glob("*-s*/task*")
                  if p.parent.name.rsplit("-s", 1)[0] in args.activations
                  and int(re.sub(r"\D", "", p.name)) in args.steps and int(re.sub(r"\D", "", p.name)) > 0)


def variant_stats(name: str, paths: list[Path], out: Path, options: dict) -> pd.DataFrame:
    """One variant's assay (resumed in `out`) as per-checkpoint statistics, its utilities named as in the default."""
    assay(paths, out, **{"utilities": UTILITIES, "metrics": ["l1"], **options})
    tables = read_run(out)
    stats = checkpoint_stats(tables["summary"], tables["checkpoints"]).assign(variant=name)
    print(f"{name}: {tables['checkpoints']['checkpoint'].nunique()} checkpoints", flush=True)
    return stats.replace({"utility": SIGNED})


def _cell(table: pd.DataFrame, activation: str, step: int, variant: str, utility: str) -> pd.Series | None:
    """The row of one activation x step x variant x utility, or None where the variant has no such checkpoint."""
    rows = table[(table["activation"] == activation) & (table["step"] == step) & (table["variant"] == variant)
                 & (table["utility"] == utility)]
    return rows.iloc[0] if len(rows) else None


def _pm(row: pd.Series | None) -> str:
    return "–" if row is None else pm(row["mean"], row["se"])


def _gap(table: pd.DataFrame, variant: str, utilities: list[str], against: str = "default") -> pd.Series:
    """|ρ(variant) − ρ(against)| per activation x step x utility of `utilities`, where both exist."""
    key = ["activation", "step", "utility"]
    part = table[table["utility"].isin(utilities)]
    both = part[part["variant"] == variant].merge(part[part["variant"] == against], on=key)
    return (both["mean_x"] - both["mean_y"]).abs().set_axis(pd.MultiIndex.from_frame(both[key]))


def findings(table: pd.DataFrame) -> dict[str, str]:
    """The variants' findings (SPEC S6) from variants.csv alone: what each choice does to SiLU GXI, the signed
    estimator's GXD, CBP's EMA reference, per-layer ρ and CBP training, beside the paper's numbers."""
    first, last = int(table["step"].min()), int(table["step"].max())
    variants = list(dict.fromkeys(table["variant"]))

    def both(activation: str, variant: str, utility: str) -> str:
        return (f"{_pm(_cell(table, activation, first, variant, utility))} / "
                f"{_pm(_cell(table, activation, last, variant, utility))}")

    signed = [_cell(table, "silu", step, "signed", "gxi") for step in (first, last)]
    signed_gxi = [versus(row["mean"], row["se"], PAPER_RHO[("silu", "gxi")]) for row in signed]
    ema = _gap(table, "ema-ref", ["activation", "gxi", "gxd"], against="cbp")
    layer = _gap(table, "per-layer", ["gxi", "gxd"])
    layer_act = _gap(table, "per-layer", ["activation"])
    worst = layer_act.idxmax()
    cbp = _gap(table, "cbp", ["gxi", "gxd"])
    return {
        "silu-gxi": f"SiLU GXI, untrained / after task {last}: "
                    + "; ".join(f"{v} {both('silu', v, 'gxi')}" for v in variants) + ".",
        "signed": f"The signed estimator's SiLU GXI: {signed_gxi[0]} untrained, {signed_gxi[1]} after task {last}"
                  + f". Its GXD, untrained / after task {last}: SiLU {both('silu', 'signed', 'gxd')} (the paper's "
                    f"SiLU GXD: {PAPER_RHO[('silu', 'gxd')]:.3f}), ReLU {both('relu', 'signed', 'gxd')}; the default "
                    f"GXD: SiLU {both('silu', 'default', 'gxd')}, ReLU {both('relu', 'default', 'gxd')}.",
        "ema-ref": f"On the CBP-trained checkpoints after task {last}, CBP's EMA reference against the calibration "
                   f"mean: ReLU GXD {_pm(_cell(table, 'relu', last, 'ema-ref', 'gxd'))} vs "
                   f"{_pm(_cell(table, 'relu', last, 'cbp', 'gxd'))}, GXI "
                   f"{_pm(_cell(table, 'relu', last, 'ema-ref', 'gxi'))} vs "
                   f"{_pm(_cell(table, 'relu', last, 'cbp', 'gxi'))}; the largest difference over activation, GXI "
                   f"and GXD: {ema.max():.3f}.",
        "per-layer": f"Per-layer ρ against pooled: within {layer.max():.3f} for GXD and GXI; activation up to "
                     f"{layer_act.max():.3f} ({worst[0]} at step {worst[1]}: "
                     f"{_pm(_cell(table, worst[0], worst[1], 'per-layer', 'activation'))} per layer against "
                     f"{_pm(_cell(table, worst[0], worst[1], 'default', 'activation'))} pooled).",
        "cbp": f"CBP training against backprop after task {last}: GXD and GXI within {cbp.max():.3f}; activation on "
               f"ReLU {_pm(_cell(table, 'relu', last, 'cbp', 'activation'))} against "
               f"{_pm(_cell(table, 'relu', last, 'default', 'activation'))}, on SiLU "
               f"{_pm(_cell(table, 'silu', last, 'cbp', 'activation'))} against "
               f"{_pm(_cell(table, 'silu', last, 'default', 'activation'))}.",
    }


def findings_file(publish: Path) -> tuple[Path, str]:
    """(path, text) of variants_findings.md in `publish`, from its variants.csv alone (no assay, no data)."""
    return publish / "variants_findings.md", document("Findings of the protocol variants",
                                                      "benchmarks/replication_variants.py",
                                                      findings(pd.read_csv(publish / "variants.csv")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "reports" / "replication" / "work")
    parser.add_argument("--publish", type=Path, default=ROOT / "reports" / "replication")
    parser.add_argument("--activations", type=lambda s: s.split(","), default=["silu", "relu"])
    parser.add_argument("--steps", type=lambda s: [int(v) for v in s.split(",")], default=[0, 30])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cbp-seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0])
    parser.add_argument("--mnist", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--render", action="store_true", help="only rewrite --publish's variants_findings.md")
    args = parser.parse_args()
    if args.render:
        write(*findings_file(args.publish))
        return
    torch.set_num_threads(args.threads)
    register_signed()
    checkpoints = sorted(p for p in (args.work / "train").glob("*-s*/task*")
                         if p.parent.name.rsplit("-s", 1)[0] in args.activations
                         and int(re.sub(r"\D", "", p.name)) in args.steps)
    if not checkpoints:
        parser.error(f"no checkpoints of {args.activations} at steps {args.steps} under {args.work / 'train'}; "
                     "run benchmarks/replicate_paper.py first")
    frames = []
    for name, options in VARIANTS.items():
        frames.append(variant_stats(name, checkpoints, args.work / "variants" / name, options))
    frames.append(frames[0].assign(variant="per-layer", spearman=frames[0]["layer_spearman"]))
    cbp = cbp_checkpoints(args)
    for name, options in CBP_VARIANTS.items():
        frames.append(variant_stats(name, cbp, args.work / "variants" / name, options))
    stats = pd.concat(frames, ignore_index=True)
    stats["activation"] = stats["family"].str.removeprefix("mlp-").str.replace(r"(\+cbp.*|@.*)$", "", regex=True)
    stats["step"] = stats["step"].astype(int)
    table = aggregate(stats, ["activation", "step", "variant", "utility"], "spearman")
    args.publish.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.publish / "variants.csv", index=False, float_format="%.6g")
    wide = table.assign(cell=[f"{m:.3f} ± {s:.3f}" if s == s else f"{m:.3f}" for m, s in zip(table["mean"],
                                                                                           table["se"], strict=True)])
    wide = wide.pivot_table(index=["activation", "step", "utility"], columns="variant", values="cell",
                            aggfunc="first").reindex(columns=[*VARIANTS, "per-layer", *CBP_VARIANTS])
    wide = wide.fillna("–").reset_index()  # cbp and ema-ref: no untrained checkpoint of their own
    lines = ["# Replication variants: Spearman ρ on logit L1, mean ± SE over seeds (cbp, ema-ref: "
             f"{len(args.cbp_seeds)} seed{'s' if len(args.cbp_seeds) != 1 else ''})", "",
             "| " + " | ".join(wide.columns) + " |", "|" + "---|" * len(wide.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in wide.itertuples(index=False)]
    (args.publish / "variants.md").write_text("\n".join(lines) + "\n")
    print(f"published {args.publish / 'variants.md'}")
    write(*findings_file(args.publish))


if __name__ == "__main__":
    main()
