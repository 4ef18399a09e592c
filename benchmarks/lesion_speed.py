"""Lesion engine speed, one run, same data (issue: fast lesion engine; DESIGN "The lesion engine").

Times, on the paper MLP (784 -> [256]x4 -> 10, SiLU; SPEC S6) with P probe examples:
  plain   one forward per unit, hook clamp (resetassay.lesion.unit_shocks(engine="plain"), the reference)
  captum  captum LayerFeatureAblation, same units and references, perturbations_per_eval=32
  fast    resetassay.lesion.unit_shocks(engine="fast")
  bound   the FLOPs no exact engine avoids (every Linear after the unit's first consumer, per
          lesion, over P rows) divided by the matmul rate measured in this run
and, on the ResNet fixture and on a ResNet-18 in torchvision's layout at CIFAR size (examples/resnet18.py,
one unit layer per stage, 24 sampled units each, P = 256; its bound at the rate of the model's own forward),
and on the zoo transformer (d_model 128, 4 blocks, 4 heads; every head and 24 sampled MLP neurons per block;
P = 512 sequences of 32 tokens, SPEC S9), plain vs fast vs the bound, with the fast engine's peak memory
under --max-memory (default 256MB there). Prints units/s and ratios; --json writes them.

    python benchmarks/lesion_speed.py [--quick] [--json FILE] [--threads 2] [--max-memory 1GB]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from captum.attr import LayerFeatureAblation
from torch.utils.flop_counter import FlopCounterMode

from resetassay.data import split_calibration_probe, task_arrays
from resetassay.discovery.taps import tap_unit_layers
from resetassay.discovery.units import unit_layers
from resetassay.fields import parse_bytes
from resetassay.io.checkpoint import load_checkpoint
from resetassay.lesion import unit_shocks
from resetassay.lesion.fast import _downstream_inputs, shortcut_types
from resetassay.lesion.graph_split import split_at, trace
from resetassay.lesion.shocks import probe_logits
from resetassay.models import create_model
from resetassay.pipeline.assay import sample_units
from resetassay.scoring.reference import unit_references

ROOT = Path(__file__).resolve().parents[1]
TIGHT_BUDGET = 8 * 10**6  # a second fast run under this --max-memory shows the budget is kept


class PeakRSS:
    """Peak resident memory above the starting level, sampled every 2 ms from /proc."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    @contextmanager
    def measure(self):
        start = self.rss()
        self.peak = 0

        def poll() -> None:
            while not self._stop.is_set():
                self.peak = max(self.peak, self.rss() - start)
                time.sleep(0.002)

        thread = threading.Thread(target=poll, daemon=True)
        self._stop.clear()
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


REPEAT = 2  # each timing is the best of this many runs (the machine is shared and noisy)


def timed(fn, repeat: int | None = None):
    """(result, best wall time over `repeat` runs, REPEAT by default)."""
    best = float("inf")
    for _ in range(repeat or REPEAT):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def captum_shocks(model, layers, refs, probe_x, ppe: int) -> dict[str, torch.Tensor]:
    """Mean L1 shock per unit via captum's LayerFeatureAblation (ablation to the reference)."""
    base = probe_logits(model, probe_x)

    def l1_from_base(x: torch.Tensor) -> torch.Tensor:
        z = model(x)
        return (z - base.repeat(len(x) // len(base), 1)).abs().sum(dim=1)

    out = {}
    for layer in layers:
        ablation = LayerFeatureAblation(l1_from_base, layer.module)
        with torch.no_grad():
            attr = ablation.attribute(probe_x, layer_baselines=refs[layer.name].view(1, -1),
                                      perturbations_per_eval=ppe)
        out[layer.name] = -attr.double().mean(dim=0)  # attribution = f(x) - f(ablated) = 0 - shock
    return out


def matmul_rate(rows: int, width: int, seconds: float = 1.0) -> float:
    """FLOP/s of (rows x width) @ (width x width), the GEMM shape of the downstream layers."""
    a, b = torch.randn(rows, width), torch.randn(width, width)
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2 * rows * width * width * n / (time.perf_counter() - t0)


def lesion_flops(gm, layer, refs: dict, x: torch.Tensor, shortcut: bool = True) -> float:
    """FLOPs of one lesion of `layer` over the rows of `x`: the downstream graph of `split_at` (counted by torch's
    FlopCounterMode), the unit's Linear/Conv readers corrected (`shortcut`) or recomputed."""
    split = split_at(gm, layer.name, shortcut_types(layer, x.device, shortcut))
    with torch.inference_mode():
        h, *values = split.upstream(x)
        inputs = _downstream_inputs(split, layer, h, values, torch.tensor([0]), refs[layer.name])
        with FlopCounterMode(display=False) as counter:
            split.downstream(*inputs)
    return counter.get_total_flops()


def flop_bound(model: torch.nn.Module, layers: list, refs: dict, probe_x: torch.Tensor,
               per_layer: bool = False) -> float | dict[str, float]:
    """FLOPs no exact engine avoids: per lesion, every op after the unit's Linear/Conv readers (`lesion_flops`),
    over all units; with `per_layer`, the FLOPs of one lesion of each layer."""
    gm = trace(model)
    one = {layer.name: lesion_flops(gm, layer, refs, probe_x) for layer in layers}
    return one if per_layer else sum(one[layer.name] * layer.n_units for layer in layers)


def max_rel_diff(a: dict, b: dict) -> float:
    num = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    return num / max(float(a[k].abs().max()) for k in a)


def fast_engine_once(p: int, width: int, depth: int, max_memory: int) -> tuple[torch.nn.Module, float]:
    """Build the benchmark MLP and data, run the fast engine once; return the peak RSS growth (bytes)."""
    torch.manual_seed(0)
    model = create_model("mlp", in_features=784, widths=[width] * depth, activation="silu").eval()
    calib_x, probe_x = torch.rand(p, 784), torch.rand(p, 784)
    layers = unit_layers(model, calib_x[:2])
    refs = unit_references(model, layers, calib_x)
    probe_logits(model, probe_x)
    rss = PeakRSS()
    with rss.measure():
        unit_shocks(model, layers, refs, probe_x, ["l1", "kl"], max_memory=max_memory)
    return rss.peak


def fresh_process_peak_mb(p: int, width: int, depth: int, max_memory: int) -> float:
    """Peak RSS growth of one fast-engine run in a fresh process (freed memory is not reused there)."""
    out = subprocess.run([sys.executable, __file__, "--peak-rss-child", f"{p},{width},{depth},{max_memory}"],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip()) / 1e6


def mlp_benchmark(p: int, width: int, depth: int, max_memory: int | None) -> dict:
    torch.manual_seed(0)
    widths = [width] * depth
    model = create_model("mlp", in_features=784, widths=widths, activation="silu").eval()
    calib_x, probe_x = torch.rand(p, 784), torch.rand(p, 784)  # timing does not depend on the data
    layers = unit_layers(model, calib_x[:2])
    refs = unit_references(model, layers, calib_x)
    n_units = sum(layer.n_units for layer in layers)

    unit_shocks(model, layers[-1:], refs, probe_x[:8], ["l1", "kl"])  # one-time imports (fx, sympy)
    plain, t_plain = timed(lambda: unit_shocks(model, layers, refs, probe_x, ["l1", "kl"], engine="plain"))
    cap, t_captum = timed(lambda: captum_shocks(model, layers, refs, probe_x, ppe=32))
    fast, t_fast = timed(lambda: unit_shocks(model, layers, refs, probe_x, ["l1", "kl"], max_memory=max_memory))
    rate = matmul_rate(32 * p, width)
    t_bound = flop_bound(model, layers, refs, probe_x) / rate
    return {
        "model": f"mlp 784-[{width}]x{depth}-10 silu", "probe": p, "units": n_units,
        "seconds": {"plain": t_plain, "captum": t_captum, "fast": t_fast, "flop_bound": t_bound},
        "units_per_s": {k: n_units / v for k, v in
                        {"plain": t_plain, "captum": t_captum, "fast": t_fast, "flop_bound": t_bound}.items()},
        "ratios": {"fast_vs_plain": t_plain / t_fast, "fast_vs_captum": t_captum / t_fast,
                   "fast_over_bound": t_fast / t_bound},
        "matmul_gflops": rate / 1e9,
        "max_rel_diff": {"fast_vs_plain_l1": max_rel_diff(plain["l1"], fast["l1"]),
                         "fast_vs_plain_kl": max_rel_diff(plain["kl"], fast["kl"]),
                         "captum_vs_plain_l1": max_rel_diff(plain["l1"], cap)},
        "peak_rss_mb": {f"{b / 1e6:g}MB budget": fresh_process_peak_mb(p, width, depth, b)
                        for b in (max_memory or 2**30, TIGHT_BUDGET)},
    }


def resnet_benchmark(quick: bool, max_memory: int | None, rate: float) -> dict:
    ckpt = load_checkpoint(ROOT / "fixtures" / "resnet" / "task4")
    x, y = task_arrays(ckpt.info.data, "holdout")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = split_calibration_probe(x, y, probe_size=200 if quick else None)
    layers = unit_layers(ckpt.model, data.calib_x[:2])
    refs = unit_references(ckpt.model, layers, data.calib_x)
    n_units = sum(layer.n_units for layer in layers)
    short = max(REPEAT, 5)  # sub-second timings: more runs for the same noise
    plain, t_plain = timed(lambda: unit_shocks(ckpt.model, layers, refs, data.probe_x, ["l1", "kl"], engine="plain"),
                           short)
    fast, t_fast = timed(lambda: unit_shocks(ckpt.model, layers, refs, data.probe_x, ["l1", "kl"],
                                             max_memory=max_memory), short)
    t_bound = flop_bound(ckpt.model, layers, refs, data.probe_x) / rate
    return {
        "model": "resnet fixture (8-16-32, BatchNorm, projection shortcuts)", "probe": len(data.probe_x),
        "units": n_units, "seconds": {"plain": t_plain, "fast": t_fast, "flop_bound": t_bound},
        "units_per_s": {"plain": n_units / t_plain, "fast": n_units / t_fast, "flop_bound": n_units / t_bound},
        "ratios": {"fast_vs_plain": t_plain / t_fast, "fast_over_bound": t_fast / t_bound},
        "max_rel_diff": {"fast_vs_plain_l1": max_rel_diff(plain["l1"], fast["l1"]),
                         "fast_vs_plain_kl": max_rel_diff(plain["kl"], fast["kl"])},
    }


RESNET18_LAYERS = ("relu", "layer1.0.relu@0", "layer2.0.relu@1", "layer3.1.relu@0", "layer4.1.relu@1")


def _bn_statistics_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BatchNorm running statistics and affine parameters (a random init has the identity ones)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(1 + 0.3 * torch.randn(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return model.eval()


def forward_rate(model: torch.nn.Module, x: torch.Tensor) -> float:
    """FLOP/s of the model's own forward on `x` (best of 3): the rate its convolutions reach on this machine."""
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            model(x)
        _, seconds = timed(lambda: model(x), 3)
    return counter.get_total_flops() / seconds


def sampled_engines(model: torch.nn.Module, layers: list, refs: dict, probe_x: torch.Tensor, chosen: dict,
                    max_memory: int | None) -> dict:
    """Plain vs fast engine on the units `chosen` (`assay.sample_units`: every unit of a layer it leaves out), the
    FLOP bound at the rate of the model's own forward, the fast engine's peak RSS growth and the agreement."""
    counts = {layer.name: len(chosen.get(layer.name, range(layer.n_units))) for layer in layers}
    n_units = sum(counts.values())

    def run(engine: str) -> dict:
        return unit_shocks(model, layers, refs, probe_x, ["l1", "kl"], engine=engine, units=chosen,
                           max_memory=max_memory)

    run("fast")  # one-time tracing and imports
    plain, t_plain = timed(lambda: run("plain"))
    rss = PeakRSS()
    with rss.measure():
        fast, t_fast = timed(lambda: run("fast"))
    rate = forward_rate(model, probe_x)
    per_unit = flop_bound(model, layers, refs, probe_x, per_layer=True)
    t_bound = sum(per_unit[name] * count for name, count in counts.items()) / rate
    return {
        "units": n_units, "seconds": {"plain": t_plain, "fast": t_fast, "flop_bound": t_bound},
        "units_per_s": {"plain": n_units / t_plain, "fast": n_units / t_fast, "flop_bound": n_units / t_bound},
        "ratios": {"fast_vs_plain": t_plain / t_fast, "fast_over_bound": t_fast / t_bound},
        "forward_gflops": rate / 1e9, "peak_rss_mb": rss.peak / 1e6,
        "max_rel_diff": {"fast_vs_plain_l1": max_rel_diff(plain["l1"], fast["l1"]),
                         "fast_vs_plain_kl": max_rel_diff(plain["kl"], fast["kl"])},
    }


def resnet18_benchmark(quick: bool, max_memory: int | None) -> dict:
    """torchvision's ResNet-18 layout (examples/resnet18.py) at CIFAR size, found by tracing: one unit layer
    per stage, a seeded sample of units in each, P probe inputs; fast vs plain vs the FLOP bound."""
    sys.path.insert(0, str(ROOT))
    from examples.resnet18 import resnet18

    p, per_layer, names = (32, 4, RESNET18_LAYERS[:2]) if quick else (256, 24, RESNET18_LAYERS)
    g = torch.Generator().manual_seed(0)
    calib_x, probe_x = torch.randn(p, 3, 32, 32, generator=g), torch.randn(p, 3, 32, 32, generator=g)
    model = tap_unit_layers(_bn_statistics_(resnet18(num_classes=10)), calib_x[:2])
    layers = unit_layers(model, calib_x[:2], list(names))
    refs = unit_references(model, layers, calib_x)
    chosen = sample_units(layers, per_layer, seed=0)
    timings = sampled_engines(model, layers, refs, probe_x, chosen, max_memory)
    return {
        "model": f"ResNet-18 (torchvision layout) at 3x32x32, {len(layers)} unit layers, {per_layer} sampled units "
                 "each", "probe": p, "layers": [layer.name for layer in layers], **timings,
    }


def transformer_benchmark(quick: bool, max_memory: int | None) -> dict:
    """The zoo transformer on random token sequences: heads and sampled MLP neurons of every block, fast vs plain
    vs the FLOP bound (at the rate of the model's own forward), and the fast engine's peak RSS growth."""
    p, length, d_model, blocks, per_layer = (32, 16, 64, 2, 4) if quick else (512, 32, 128, 4, 24)
    budget = max_memory or 256 * 10**6
    torch.manual_seed(0)
    model = create_model("transformer", vocab=32, max_len=length, d_model=d_model, n_layers=blocks,
                         n_heads=4).eval()
    g = torch.Generator().manual_seed(0)
    calib_x, probe_x = (torch.randint(0, 32, (p, length), generator=g) for _ in range(2))
    layers = unit_layers(model, calib_x[:2])
    refs = unit_references(model, layers, calib_x)
    chosen = sample_units(layers, per_layer, seed=0)
    return {
        "model": f"zoo transformer d_model {d_model}, {blocks} blocks, 4 heads; every head and {per_layer} sampled "
                 f"MLP neurons per block, sequences of {length} tokens", "probe": p, "max_memory_mb": budget / 1e6,
        **sampled_engines(model, layers, refs, probe_x, chosen, budget),
    }


def main() -> None:
    global REPEAT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced size, well under a minute")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-memory", default=None, help="fast engine budget, e.g. 512MB")
    parser.add_argument("--repeat", type=int, default=2, help="best of N runs per timing")
    parser.add_argument("--peak-rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    REPEAT = args.repeat
    torch.set_num_threads(args.threads)
    if args.peak_rss_child:
        p, width, depth, budget = map(int, args.peak_rss_child.split(","))
        print(fast_engine_once(p, width, depth, budget))
        return
    budget = parse_bytes(args.max_memory, "max_memory")
    p, width = (256, 128) if args.quick else (2048, 256)
    results = {"threads": args.threads, "torch": torch.__version__,
               "mlp": mlp_benchmark(p, width, 4, budget),
               }
    results["resnet"] = resnet_benchmark(args.quick, budget, results["mlp"]["matmul_gflops"] * 1e9)
    results["resnet18"] = resnet18_benchmark(args.quick, budget)
    results["transformer"] = transformer_benchmark(args.quick, budget)
    for name in ("mlp", "resnet", "resnet18", "transformer"):
        r = results[name]
        print(f"\n{r['model']}: {r['units']} units, P={r['probe']}")
        for method, seconds in r["seconds"].items():
            print(f"  {method:<11}{seconds:9.3f} s {r['units_per_s'][method]:10.0f} units/s")
        print("  " + ", ".join(f"{k} {v:.2f}x" for k, v in r["ratios"].items()))
        print("  max |diff| / max shock: " + ", ".join(f"{k} {v:.1e}" for k, v in r["max_rel_diff"].items()))
    m = results["mlp"]
    print(f"\nmlp: matmul {m['matmul_gflops']:.1f} GFLOP/s; fast engine peak RSS growth, fresh process: "
          + ", ".join(f"+{v:.0f} MB at {k}" for k, v in m["peak_rss_mb"].items()))
    t = results["transformer"]
    print(f"transformer: fast engine peak RSS growth +{t['peak_rss_mb']:.0f} MB under --max-memory "
          f"{t['max_memory_mb']:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
