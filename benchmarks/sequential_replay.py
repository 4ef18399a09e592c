"""Sequential probes replayed on recorded per-example shocks: what any stopping rule could save, and what ours does
(issue 28; SPEC S4b).

`record` lesions every unit of a checkpoint on every probe example once (an exact run's cost) and keeps each
layer's per-example shocks `(units, P)` per metric and its utility scores (DIR/<layer>.pt, float32; about 64 MB for a
ResNet-18 at P = 2048). `replay` then reads them back and reports, in seconds:

- the clairvoyant bound: the probe-example forwards a rule would spend that knew every unit's exact shock and
  per-example spread, stopping each unit the moment a normal bound at the sequential rule's level less its
  rounds, one-sided (1 - c) / (k M) for k set members and M metrics, could tell it apart from its layer's bottom-k
  boundary (the midpoint of the k-th and k+1-th exact shocks), continuously, in L1, KL or both. No rule that
  reaches the same sets with the same per-unit confidence spends less: it must tell the same units apart from the
  same boundary, without knowing it (beside it, the median over units of the per-example shocks' sd / mean,
  which sets how many examples that takes);
- the rule of resetassay/lesion/sequential.py itself (`sequential_shocks`, then `settle_pooled_ranks` at its
  default tolerance), its measurements read from the record instead of the engine: forwards, units ending on
  every probe, where the forwards went (every unit's first round; the rest of the probe set for the units the rule
  took to every example: the sets' and the resets'; the later rounds of the others; the rank rule),
  (layer, metric) oracle sets equal to the exact ones, and the largest |Δρ| of the pooled Spearman ρ
  of any utility in any metric, at each confidence and seed, with the first round at an eighth (the rule's) and a
  sixteenth of the probe set.

    python benchmarks/sequential_replay.py record runs/r18/resnet18.safetensors --model examples.resnet18:resnet18 \\
        --data ARCHIVE --normalize cifar10 --probe-size 2048 --out runs/per-example
    python benchmarks/sequential_replay.py replay runs/per-example --json reports/benchmarks/sequential_replay.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import norm, spearmanr

import resetassay as ra
from resetassay.lesion import unit_shocks_of
from resetassay.lesion.rank_precision import settle_pooled_ranks
from resetassay.lesion.sequential import BLOCKS, FIRST, PROBES_COLUMN, schedule, sequential_shocks
from resetassay.names import se_column, shock_column
from resetassay.pipeline.assay import calibrate, checkpoint_inputs, config_with, lesion_request
from resetassay.stats.summary import k_at, selection

UTILITIES = ["gxd", "activation", "contribution", "oracle"]
METRICS = ["l1", "kl"]


def record(args: argparse.Namespace) -> None:
    """Every unit's shock on every probe example, per layer, with the layer's utility scores."""
    config = config_with(None, {"utilities": UTILITIES, "metrics": METRICS, "probe_size": args.probe_size,
                                "calib_size": args.probe_size}, "sequential_replay")
    data = ra.data_spec(args.data, normalize=args.normalize) if args.data else None
    inputs = checkpoint_inputs(ra.load_checkpoint(args.checkpoint, model=args.model), config, data)
    p = inputs.prepare()
    cal = calibrate(p)
    args.out.mkdir(parents=True, exist_ok=True)
    n_probe = len(p.probe_x)
    for i, layer in enumerate(p.layers):
        target = args.out / f"{i:03d}.pt"
        if target.exists():
            continue
        request = lesion_request(p.model, [layer], cal.refs, p.probe_x, p.probe_y, p.base, config,
                                 groups=torch.arange(n_probe))
        shocks = unit_shocks_of(request)
        torch.save({"layer": layer.name, "shocks": {m: shocks[m][layer.name].float().cpu() for m in METRICS},
                    "scores": {u: s[layer.name].double().cpu() for u, s in cal.scores.items() if layer.name in s}},
                   target)
        print(f"{layer.name}: {shocks[METRICS[0]][layer.name].shape[0]} units x {n_probe} probes", flush=True)


def _load(folder: Path) -> list[dict]:
    return [torch.load(f, weights_only=True) for f in sorted(folder.glob("*.pt"))]


def clairvoyant(layers: list[dict], metrics: list[str], confidence: float, q: float = 0.05) -> float:
    """Forwards of the clairvoyant rule (module docstring) over units x P."""
    spent = total = 0.0
    for rec in layers:
        n, n_probe = rec["shocks"][metrics[0]].shape
        k = k_at(n, q)
        z = norm.isf((1 - confidence) / (k * len(metrics)))
        need = torch.zeros(n, dtype=torch.float64)
        for m in metrics:
            x = rec["shocks"][m].double()
            mean, sd = x.mean(1), x.std(1)
            low = mean.sort().values
            gap = (mean - (low[k - 1] + low[k]) / 2).abs() if k < n else torch.full((n,), torch.inf)
            # examples for a normal interval z·sd·sqrt(1/m - 1/P) (finite population) to fit inside the gap
            examples = 1 / (gap ** 2 / (z * sd).clamp(min=1e-300) ** 2 + 1 / n_probe)
            need = torch.maximum(need, examples.clamp(max=n_probe))
        spent += float(need.sum())
        total += n * n_probe
    return spent / total


def spread(layers: list[dict], metric: str) -> float:
    """The median over units of the per-example shocks' standard deviation over their mean."""
    ratios = torch.cat([(x.std(1) / x.mean(1)) for rec in layers for x in [rec["shocks"][metric].double()]])
    return float(ratios.nanmedian())


def replay(layers: list[dict], confidence: float, seed: int, first: int, q: float = 0.05) -> dict:
    """The sequential rule and the pooled-rank rule on the recorded shocks, against the exact (full-set) shocks."""
    tables, redraws = [], {m: [] for m in METRICS}
    for rec in layers:
        x = {m: rec["shocks"][m].double() for m in METRICS}
        name = rec["layer"]
        n, n_probe = x[METRICS[0]].shape

        def measure(idx: torch.Tensor, groups: torch.Tensor, which: dict, x: dict = x, name: str = name) -> dict:
            count = torch.bincount(groups).double()
            return {m: {name: torch.zeros(len(which[name]), len(count), dtype=torch.float64)
                        .index_add_(1, groups, x[m][which[name]][:, idx]) / count} for m in METRICS}

        scores = torch.stack(list(rec["scores"].values())) if rec["scores"] else None
        out = sequential_shocks(measure, {name: n}, n_probe, METRICS, confidence, q, seed,
                                utilities=None if scores is None else {name: scores}, first=first)
        table = pd.DataFrame({"layer": name, "unit": np.arange(n), "mature": True,
                              PROBES_COLUMN: out.probes[name].numpy()})
        for u in UTILITIES[:-1]:
            table[u] = rec["scores"][u].numpy() if u in rec["scores"] else np.nan
        for m in METRICS:
            table[f"exact_{m}"] = x[m].mean(1).numpy()
            table[shock_column(m)], table[se_column(m)] = out.shocks[m][name].numpy(), out.se[m][name].numpy()
            redraws[m].append(out.redraws[m][name])
        tables.append(table)
    units = pd.concat(tables, ignore_index=True)
    before = units[PROBES_COLUMN].to_numpy(copy=True)
    blocks = torch.tensor_split(torch.arange(n_probe), min(BLOCKS, n_probe))
    opening = sum(len(b) for b in blocks[:schedule(len(blocks), first)[0]])  # examples of the first round
    lookup = {rec["layer"]: rec["shocks"] for rec in layers}
    settle_pooled_ranks(units, UTILITIES[:-1], METRICS, 0.01, confidence,
                        lambda chosen: {m: {name: lookup[name][m][picked].double().mean(1)
                                            for name, picked in chosen.items()} for m in METRICS},
                        n_probe, {m: torch.cat(r) for m, r in redraws.items()})
    same = [set(selection(g, f"exact_{m}", q)) == set(selection(g, shock_column(m), q))
            for m in METRICS for _, g in units.groupby("layer", sort=False)]
    drho = max(abs(spearmanr(g[u], g[shock_column(m)])[0] - spearmanr(g[u], g[f"exact_{m}"])[0])
               for m in METRICS for u in UTILITIES[:-1] for g in [units[units[u].notna()]] if len(g) > 1)
    total = len(units) * n_probe
    full = before == n_probe
    return {"confidence": confidence, "seed": seed, "first": first,
            "forward_ratio": float(units[PROBES_COLUMN].sum()) / total,
            "spent": {"first round": float(np.minimum(before, opening).sum()) / total,
                      "rest of units taken to every example": float((before[full] - opening).sum()) / total,
                      "later rounds of the others": float((before[~full] - opening).clip(min=0).sum()) / total,
                      "rank rule": float(units[PROBES_COLUMN].sum() - before.sum()) / total},
            "share_full": float((units[PROBES_COLUMN] == n_probe).mean()),
            "oracle_sets_equal": sum(same) / len(same), "max_rho_diff": float(drho)}



def markdown(bound: list[dict], rules: list[dict]) -> str:
    """The two tables as markdown."""
    lines = ["| metrics | confidence | clairvoyant forwards | median per-example sd / mean |", "|---|---|---|---|"]
    lines += [f"| {', '.join(r['metrics'])} | {r['confidence']:g} | {r['forward_ratio']:.3f}x | "
              f"{', '.join(f'{v:.2f}' for v in r['median_spread'].values())} |" for r in bound]
    lines += ["", "| first round | confidence | seed | probe-example forwards (first round + set and resets to every "
              "example + later rounds + rank rule) | units ending on every probe | oracle sets equal | largest abs. "
              "Δρ |", "|---" * 7 + "|"]
    lines += [f"| 1/{r['first']} | {r['confidence']:g} | {r['seed']} | {r['forward_ratio']:.3f}x "
              f"({' + '.join(f'{v:.3f}' for v in r['spent'].values())}) | "
              f"{r['share_full']:.0%} | {r['oracle_sets_equal']:.0%} | {r['max_rho_diff']:.4f} |" for r in rules]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("checkpoint", type=Path)
    rec.add_argument("--model", default=None, help="package.module:factory of a plain state dict")
    rec.add_argument("--data", default=None)
    rec.add_argument("--normalize", default=None)
    rec.add_argument("--probe-size", type=int, default=2048)
    rec.add_argument("--out", type=Path, required=True)
    rep = sub.add_parser("replay")
    rep.add_argument("folder", type=Path)
    rep.add_argument("--confidence", type=float, nargs="+", default=[0.95, 0.5])
    rep.add_argument("--seeds", type=int, default=3)
    rep.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.command == "record":
        record(args)
        return
    layers = _load(args.folder)
    bound = [{"metrics": metrics, "confidence": c, "forward_ratio": clairvoyant(layers, metrics, c),
              "median_spread": {m: spread(layers, m) for m in metrics}}
             for c in args.confidence for metrics in (["l1"], ["kl"], METRICS)]
    rules = [replay(layers, c, seed, first) for first in (FIRST, 2 * FIRST) for c in args.confidence
             for seed in range(args.seeds)]
    text = markdown(bound, rules)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"clairvoyant": bound, "replay": rules}, indent=2) + "\n")
        args.json.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
