"""Where the exact fast engine's time goes on a ResNet-18 against its FLOP bound (issue 28, item 3).

The case of benchmarks/lesion_speed.py: examples/resnet18.py (torchvision's layout) at 3x32x32 with BatchNorm
statistics set away from their defaults, one unit layer per stage, 24 seeded units each, P = 256 random inputs.
Per layer it measures, in one run:

  fast           the engine as it runs on CPU (Conv2d readers recomputed densely), seconds
  fast shortcut  the same with the Conv2d-reader shortcut forced on (a grouped one-channel convolution instead)
  bound          the FLOPs of lesion_speed's bound (everything after the unit's readers, readers corrected, not
                 recomputed) at the rate of the model's own forward, and the FLOPs the engine runs (readers
                 recomputed): the difference is the readers' dense convolutions
  profile        torch.profiler's self CPU time of the fast run by kind of op: convolutions, BatchNorm, pooling,
                 other element-wise ops, copies (the K clamped copies of the layer's output and of the values read
                 where lesions join), and the rest (metrics, indexing, bookkeeping)

and the convolution rate each layer's downstream reaches against the model forward's. --json writes the rows, with
a markdown table beside it (FILE with .md).

    python benchmarks/exact_gap.py [--threads 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from lesion_speed import RESNET18_LAYERS, _bn_statistics_, forward_rate, lesion_flops, timed
from torch.profiler import ProfilerActivity, profile

from resetassay.discovery.taps import tap_unit_layers
from resetassay.discovery.units import unit_layers
from resetassay.lesion import LesionRequest, unit_shocks_of
from resetassay.lesion.graph_split import trace
from resetassay.lesion.shocks import probe_logits
from resetassay.pipeline.assay import sample_units
from resetassay.scoring.reference import unit_references

ROOT = Path(__file__).resolve().parents[1]
KINDS = {  # aten op -> kind; anything else is "rest"
    "convolutions": ("conv", "mkldnn_convolution", "_convolution", "thnn_conv"),
    "batchnorm": ("batch_norm", "native_batch_norm"),
    "pooling": ("pool",),
    "elementwise": ("aten::relu", "aten::add", "aten::clamp_min", "aten::threshold"),
    "copies": ("aten::repeat", "aten::copy_", "aten::expand", "aten::clone", "aten::index_put", "aten::cat",
               "aten::contiguous", "aten::reshape", "aten::_unsafe_view", "aten::view"),
}


def kind_of(op: str) -> str:
    for kind, keys in KINDS.items():
        if any(key in op for key in keys):
            return kind
    return "rest"


def layer_row(model, gm, layer, refs, probe_x, units, rate: float) -> dict:
    """One unit layer: seconds of the engine both ways, FLOPs both ways, the bound and the profile by kind."""

    def run(shortcut: bool | None):
        request = LesionRequest(model, [layer], refs, probe_x, ["l1", "kl"], base=probe_logits(model, probe_x),
                                units={layer.name: units}, shortcut=shortcut)
        return lambda: unit_shocks_of(request)

    fast, shortcut = run(None), run(True)
    fast()  # tracing and imports, once
    _, t_fast = timed(fast, 3)
    _, t_short = timed(shortcut, 3)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fast()
    by_kind: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        by_kind[kind_of(event.key)] += event.self_cpu_time_total / 1e6
    total = sum(by_kind.values())
    dense = lesion_flops(gm, layer, refs, probe_x, False) * len(units)
    bound = lesion_flops(gm, layer, refs, probe_x, True) * len(units)
    return {"layer": layer.name, "units": len(units), "fast_s": t_fast, "fast_shortcut_s": t_short,
            "bound_s": bound / rate, "engine_gflop": dense / 1e9, "bound_gflop": bound / 1e9,
            "engine_gflops_per_s": dense / t_fast / 1e9,
            "profile_share": {k: by_kind.get(k, 0.0) / total for k in [*KINDS, "rest"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    from examples.resnet18 import resnet18

    g = torch.Generator().manual_seed(0)
    calib_x, probe_x = torch.randn(256, 3, 32, 32, generator=g), torch.randn(256, 3, 32, 32, generator=g)
    model = tap_unit_layers(_bn_statistics_(resnet18(num_classes=10)), calib_x[:2])
    layers = unit_layers(model, calib_x[:2], list(RESNET18_LAYERS))
    refs = unit_references(model, layers, calib_x)
    chosen = sample_units(layers, 24, seed=0)
    rate = forward_rate(model, probe_x)
    gm = trace(model)
    rows = [layer_row(model, gm, layer, refs, probe_x, chosen[layer.name], rate) for layer in layers]
    total = {key: sum(r[key] for r in rows) for key in ("fast_s", "fast_shortcut_s", "bound_s", "engine_gflop",
                                                          "bound_gflop")}
    out = {"threads": args.threads, "probe": len(probe_x), "forward_gflops_per_s": rate / 1e9, "layers": rows,
           "total": total}
    print(markdown(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        args.json.with_suffix(".md").write_text(markdown(out))


def markdown(out: dict) -> str:
    """The rows as a markdown table, the totals last."""
    lines = [f"ResNet-18 (torchvision layout) at 3x32x32, 24 units per layer, P = {out['probe']}, {out['threads']} "
             f"threads; the model's own forward at {out['forward_gflops_per_s']:.0f} GFLOP/s.", "",
             "| layer | fast s | fast / bound | shortcut forced / fast | engine GFLOP / bound GFLOP | engine GFLOP/s | "
             "time in convolutions | BatchNorm | pooling | element-wise | copies | rest |", "|---" * 12 + "|"]
    for r in out["layers"]:
        s = r["profile_share"]
        lines.append(f"| {r['layer']} | {r['fast_s']:.2f} | {r['fast_s'] / r['bound_s']:.2f}x | "
                     f"{r['fast_shortcut_s'] / r['fast_s']:.2f}x | {r['engine_gflop'] / r['bound_gflop']:.2f}x | "
                     f"{r['engine_gflops_per_s']:.0f} | {s['convolutions']:.0%} | {s['batchnorm']:.0%} | "
                     f"{s['pooling']:.0%} | "
                     f"{s['elementwise']:.0%} | {s['copies']:.0%} | {s['rest']:.0%} |")
    t = out["total"]
    lines.append(f"| all | {t['fast_s']:.2f} | {t['fast_s'] / t['bound_s']:.2f}x | "
                 f"{t['fast_shortcut_s'] / t['fast_s']:.2f}x | {t['engine_gflop'] / t['bound_gflop']:.2f}x | "
                 f"{t['engine_gflop'] / t['fast_s']:.0f} | | | | | | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
