"""The assay of one model (SPEC S1-S5): references, utilities, lesions, and its tables. Compute only.

`assay_model` works on an in-memory model and data; `assay_checkpoint` on a loaded checkpoint,
probed on the held-out split of the task it was trained on last. Both return an `AssayResult`
holding the UnitTable and SummaryTable (DESIGN "Tables are the interface"). Many checkpoints, resume and failures are
pipeline/run.py's job.

Over 500 lines: the assay's stages (prepare, calibrate, lesion chunks, finish) and the result they fill, each a
function pipeline/shard.py also runs alone, so they share one request here; the result's save/plot/HTML methods
are the next to move out (pipeline/result.py).
"""

from __future__ import annotations

import html
import math
import platform
import warnings
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn

from resetassay.config import AssayConfig
from resetassay.data import AssayData, DataSpec, assay_data, dataset_items, example_inputs, joined_labels, pair
from resetassay.discovery import sequences
from resetassay.discovery.outputs import select_output
from resetassay.discovery.taps import discovery_route, tap_unit_layers
from resetassay.discovery.units import UnitLayer, unit_layers
from resetassay.errors import BadInputError, did_you_mean, one_line, warn_user
from resetassay.io.checkpoint import Checkpoint, load_checkpoint
from resetassay.io.rundir import StageClock, check_figures, write_failures, write_run, write_timings
from resetassay.lesion import LesionRequest, joint_shocks_of, unit_shocks_of
from resetassay.lesion.rank_precision import settle_pooled_ranks
from resetassay.lesion.reset import resettable_layers
from resetassay.lesion.sequential import DRAWS, PROBES_COLUMN, sequential_unit_shocks
from resetassay.lesion.shocks import lesioned_units, probe_logits
from resetassay.names import (
    CBP_RESET,
    FAILURE_COLUMNS,
    GXD_GREEDY,
    MANIFEST,
    NOTE_COLUMNS,
    ORACLE,
    SET_SELECTORS,
    TABLES,
    clamp_column,
    redraws_key,
    se_column,
    utility_column,
)
from resetassay.progress import Progress
from resetassay.scoring.calibration import calibration_stats
from resetassay.scoring.greedy import Picks, candidate_pool, greedy_selection
from resetassay.scoring.reference import unit_references
from resetassay.scoring.registry import (
    needed_ingredients,
    unit_scores,
    utility_seconds,
)
from resetassay.shapes import Lesion, Refs, Scores, Shocks, UnitChoice
from resetassay.stats.summary import checkpoint_summary, selections
from resetassay.stats.verdict import CHANCE_FACTOR, COST_STAGE, flag_notes, near_chance, reliability_flags

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from resetassay.report.render import Analysis

__all__ = [
    "AssayConfig", "AssayResult", "assay_model", "assay_checkpoint", "config_with", "CheckpointInputs",
    "checkpoint_inputs", "checkpoint_layers", "resolve_device", "versions", "Prepared", "prepare",
    "Calibration", "calibrate", "LesionChunk", "lesion_chunk", "finish", "progress_counter", "ProbeAtChance",
    "warn_if_at_chance",
]  # the notebook's names first, then the stages pipeline/shard.py runs one by one

SIZE_FIELDS = ("calib_size", "probe_size")  # errors about them are about the command, whichever data


class ProbeAtChance(UserWarning):
    """A model's labelled probe accuracy is near chance (the verdict's "probe at chance" flag, SPEC S5b): it is
    probably not probed on its own data. Issued once per assayed model (`assay_model`, `assay_checkpoint`, a
    sharded run's merge), except for a checkpoint saved before any training (step 0), which is at chance by
    design."""


def warn_if_at_chance(result: AssayResult, step: dict | None = None) -> None:
    """Warn (`ProbeAtChance`) when the labelled probe accuracy of `result`'s model is below CHANCE_FACTOR x chance;
    not for an untrained checkpoint (`step` all 0, e.g. {"task": 0})."""
    if step and not any(step.values()):
        return
    row = result.checkpoints.iloc[0]
    name, accuracy, n_classes = str(row["checkpoint"]), float(row["probe_accuracy"]), int(row["n_classes"])
    chance = near_chance(accuracy, n_classes)
    if chance is None:
        return
    warn_user(f"{name}: probe accuracy {accuracy:.1%} is near chance ({chance:.1%} for {n_classes} classes; "
              f"flagged below {CHANCE_FACTOR:g}× chance), so its shocks and rankings may not describe the model "
              "on its own data; likely causes: the wrong data (`data` mnist is plain MNIST, permuted-mnist the "
              "continual study's tasks), the wrong permutation task (`task`, `permutation_seed`), or a `data` "
              "the model was not trained on", ProbeAtChance)


CONFIG_FIELDS = tuple(f.name for f in fields(AssayConfig))


def config_with(config: AssayConfig | None, overrides: dict[str, object], caller: str) -> AssayConfig:
    """`config` (default: `AssayConfig()`) with the fields named in `overrides` replaced, validated again: how
    `run_assay` and `assay_model` take AssayConfig fields as keywords. A keyword that is no field, or a `config`
    that is no AssayConfig, is a TypeError naming it, as Python's own for an unknown keyword argument."""
    unknown = [k for k in overrides if k not in CONFIG_FIELDS]
    if unknown:
        raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}"
                        f"{did_you_mean(unknown, list(CONFIG_FIELDS))}; besides its own arguments it takes "
                        f"AssayConfig's fields as keywords: {', '.join(CONFIG_FIELDS)}")
    if config is None:
        return AssayConfig(**overrides)
    if not isinstance(config, AssayConfig):
        raise TypeError(f"{caller}(): config must be an AssayConfig, not {type(config).__name__}; pass a field as a "
                        "keyword instead (e.g. layers=[...])")
    return replace(config, **overrides)


@dataclass
class AssayResult:
    """The tables of an assay (DESIGN "Tables are the interface") and what run.json records.

    Attributes:
        units: UnitTable, one row per unit: checkpoint, layer, unit, mature, age, reference, one column per
            utility, `shock_<metric>` per metric (SPEC S1-S4): the shock of the config's intervention; with
            cbp-reset also `clamp_<metric>`, the clamp's.
        summary: SummaryTable, per checkpoint x utility x metric x scope (ALL or a layer): Spearman ρ,
            Shock@q, oracle Shock@q, gap, ratio, overlap, joint Shock@q (SPEC S5).
        notes: utilities not applicable to a layer, with the reason. checkpoints: one row per checkpoint
            (path, family, step, data and split, probe accuracy; from `assay_model`: its name and probe
            accuracy). config: the AssayConfig used.
        failures: checkpoints left out (checkpoint, path, kind, error). provenance: inputs, seeds, hashes.
        timings: seconds per stage of each checkpoint assayed by this call (not of those resumed).

    Example::

        >>> import resetassay as ra
        >>> result = ra.run_assay(["fixtures/silu_mlp/task2"], utilities=["gxd", "oracle"], metrics=["l1"],
        ...                       progress=False)
        >>> result.summary.query("scope == 'ALL'")[["utility", "spearman"]].round(2).values.tolist()
        [['gxd', 0.99], ['oracle', 1.0]]
    """

    units: pd.DataFrame
    summary: pd.DataFrame
    notes: pd.DataFrame
    checkpoints: pd.DataFrame
    config: AssayConfig
    failures: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FAILURE_COLUMNS))
    provenance: dict = field(default_factory=dict)
    timings: dict[str, dict[str, float]] = field(default_factory=dict)

    def __repr__(self) -> str:
        n = self.units["checkpoint"].nunique() if "checkpoint" in self.units else 0
        return (f"AssayResult({n} checkpoint{'s' if n != 1 else ''}, {len(self.units)} units, "
                f"{len(self.summary)} summary rows, {len(self.failures)} failed)")

    @cached_property
    def _analysis(self) -> Analysis:
        from resetassay.report.render import analyse  # the report's statistics, computed once per result

        return analyse(self.tables(), self.config.q, timings=self.timings)

    def _repr_html_(self) -> str:
        """In a notebook: the report's first screen (answer, ranking with intervals, models), no figures."""
        from resetassay.report.html import html_body

        if self.units.empty:
            return f"<p>{html.escape(repr(self))}</p>"
        return f"<p><code>{html.escape(repr(self))}</code></p>" + html_body(self._analysis.headline())

    def plot(self, *names: str) -> dict[str, Figure]:
        """The report's figures as matplotlib Figures (not saved, not shown by pyplot), by name: regret,
        spearman_heatmap, scatter_<metric>, shock_vs_step (3+ steps), layer_heatmap, block_spearman (transformers);
        all without `names`."""
        drawn = self._analysis.figures()
        unknown = [n for n in names if n not in drawn]
        if unknown:
            raise BadInputError(f"plot: no figure {', '.join(unknown)} for this result; choose from "
                                f"{', '.join(drawn)}")
        return {n: drawn[n] for n in names} if names else drawn

    def best(self, metric: str | None = None) -> pd.DataFrame:
        """The verdict at `metric` (default: the first measured; SPEC S5b): per model family and unit kind, the
        utilities indistinguishable from the best (the best first), one row each.

        Returns:
            A DataFrame with columns family, kind, metric, utility, regret (mean over checkpoints) with its 95%
            interval regret_low/regret_high, diff_low/diff_high (the interval of its regret minus the best's),
            balanced_rho with rho_low/rho_high, seconds (measured calibration seconds; NaN where not timed),
            best and cheapest (booleans: the lowest regret; the fewest seconds among the rows of its verdict),
            fails, and flags (the verdict's reliability flags, "" when none).

        Raises:
            BadInputError: `metric` was not measured.
        """
        metric = metric or self.config.metrics[0]
        if metric not in self.config.metrics:
            raise BadInputError(f"best: metric {metric!r} was not measured; choose from "
                                f"{', '.join(self.config.metrics)}", field="metrics")
        verdict = self._analysis.verdict
        chosen = verdict[(verdict["metric"] == metric) & verdict["indistinguishable"]]
        chosen = chosen.sort_values(["family", "kind", "best", "regret"], ascending=[True, True, False, True],
                                    kind="stable")
        columns = ["family", "kind", "metric", "utility", "regret", "regret_low", "regret_high", "diff_low",
                   "diff_high", "balanced_rho", "rho_low", "rho_high", "seconds", "best", "cheapest", "fails", "flags"]
        return chosen[columns].reset_index(drop=True)

    def tables(self) -> dict[str, pd.DataFrame]:
        """The tables a run directory holds, by name (names.TABLES)."""
        return {name: getattr(self, name) for name in TABLES}

    def save(self, out: str | Path, table_format: str = "csv", figures: str = "png",
             progress: Progress | None = None) -> Path:
        """Write the tables (as csv, or parquet: `table_format`), run.json, failures.csv (if any failed) and
        timings.json into `out`, then render report.md, report.html and figures (`figures`: png, svg or none;
        `progress`: see `report.render`); returns the path of report.md. A render that fails is a `ReportFailed`
        warning, not an error: the tables are written, and report.md says what failed."""
        from resetassay.report.render import ReportFailed, render

        check_figures(figures)
        info = {**_run_info(self.config), **self.provenance, "failures": self.failures.to_dict("records")}
        write_run(out, self.tables(), info, table_format)
        write_failures(out, self.failures)
        write_timings(out, {"checkpoints": self.timings})  # the report reads the greedy's seconds from it
        try:
            return render(out, figures=figures, progress=progress)
        except ReportFailed as err:
            warn_user(str(err))
            return Path(out) / "report.md"

    @staticmethod
    def concat(parts: list[dict[str, pd.DataFrame]], config: AssayConfig) -> AssayResult:
        """One result from the tables of several checkpoints, in their order."""
        def cat(name: str) -> pd.DataFrame:
            frames = [part[name] for part in parts]
            return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        return AssayResult(**{name: cat(name) for name in TABLES}, config=config)


def versions() -> dict[str, str]:
    """The versions of what decides the numbers: resetassay, torch, captum, Python, and where each utility and shock
    metric the user registered comes from."""
    import captum

    from resetassay import __version__
    from resetassay.lesion.shocks import SHOCK_METRICS
    from resetassay.scoring.registry import UTILITIES

    return {"resetassay": __version__, "torch": torch.__version__, "captum": captum.__version__,
            "python": platform.python_version(),
            **({"utilities": dict(UTILITIES.sources)} if UTILITIES.sources else {}),
            **({"metrics": dict(SHOCK_METRICS.sources)} if SHOCK_METRICS.sources else {})}


def _run_info(config: AssayConfig) -> dict:
    """What run.json records of an assay: the config, the package versions and the device."""
    return {"config": asdict(config), "device": str(resolve_device(config.device)), "versions": versions()}


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInputError(f"`device` {name}: CUDA is not available here; use `device` cpu", field="device")
    if name != "cpu" and not name.startswith("cuda"):
        raise BadInputError(f"`device` {name!r}: choose auto, cpu or cuda", field="device")
    return torch.device(name)


def precision(config: AssayConfig, device: torch.device) -> AbstractContextManager:
    """The precision of the probe forwards (unlesioned and lesioned logits): fp32, or with `--dtype bf16|fp16`
    torch.autocast, which runs matmuls and convolutions in half precision and keeps the numerically sensitive ops
    in fp32. Calibration (references, utilities) always runs in fp32; shocks are summed in float64 (SPEC S4)."""
    if config.dtype == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if config.dtype == "bf16" else torch.float16)


def _set_tensors(data: object, size: int | None, generator: torch.Generator, which: str,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of the calibration or probe set (`which`) from a tuple of tensors, inputs alone (unlabelled: y is
    `NO_LABEL`), a map-style Dataset of items or an iterable of batches (a DataLoader): `(x, y)` tuples, inputs
    alone or dicts such as `{"pixel_values": x, "labels": y}` (`data.pair`). With `size` (`calib_size`,
    `probe_size`), a seeded sample of that many examples, drawn from `generator` as `--probe-data` draws (SPEC S1);
    a Dataset fetches only the items drawn."""
    from torch.utils.data import Dataset, IterableDataset

    where = f"the {which} data"
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset) and hasattr(data, "__len__"):
        x, y = dataset_items(data, _chosen(len(data), size, generator, which).tolist(), where)
        return x, torch.full((len(x),), sequences.NO_LABEL) if y is None else y
    if isinstance(data, torch.Tensor) or (isinstance(data, tuple | list) and len(data) == 2
                                          and isinstance(data[0], torch.Tensor)):
        batches = [pair(data, where)]
    else:
        batches = [pair(b, where) for b in data]
    xs = [torch.as_tensor(x) for x, _ in batches]
    if not xs:
        raise BadInputError(f"{where}: no batches")
    y = joined_labels([y for _, y in batches], where)
    x = torch.cat(xs)
    y = torch.full((len(x),), sequences.NO_LABEL) if y is None else y
    chosen = _chosen(len(x), size, generator, which)
    return (x, y) if len(chosen) == len(x) else (x[chosen], y[chosen])


def _chosen(n: int, size: int | None, generator: torch.Generator, which: str) -> torch.Tensor:
    """The sorted indices of a seeded sample of `size` of `n` examples; all of them without a size (or when the
    size is all there is, as after the command line's split)."""
    if size is None or size == n:
        return torch.arange(n)
    field = "calib_size" if which == "calibration" else "probe_size"
    if size > n:
        raise BadInputError(f"`{field}` {size} exceeds the {n} examples of the {which} data; ask for at most {n}",
                            field=field)
    return torch.randperm(n, generator=generator)[:size].sort().values


def attach_state(layers: list[UnitLayer], state: dict[str, torch.Tensor], source: str = "the unit state") -> None:
    """Give each layer its stored ages, reference and tracked utility from a checkpoint's state (SPEC S1, S2, S7); a
    value with another number of units than the layer is an error naming `source` (the state file) and the key."""
    for layer in layers:
        for key in (f"{layer.name}.age", f"{layer.name}.reference", f"{layer.name}.utility"):
            value = state.get(key)
            if value is not None and tuple(value.shape) != (layer.n_units,):
                raise BadInputError(f"{source}: {key} has shape {tuple(value.shape)}, but {layer.name} has "
                                    f"{layer.n_units} units; regenerate the checkpoint")
        layer.ages = state.get(f"{layer.name}.age")
        layer.stored_reference = state.get(f"{layer.name}.reference")
        layer.stored_utility = state.get(f"{layer.name}.utility")


def sample_units(layers: list[UnitLayer], per_layer: int | None, seed: int) -> UnitChoice | None:
    """At most `per_layer` units of each layer, drawn without replacement and sorted (`--units-per-layer`),
    seeded by `seed` and the layer's name; None (every unit) when `per_layer` is None."""
    if per_layer is None:
        return None
    return {layer.name: torch.from_numpy(np.sort(np.random.default_rng([seed, zlib.crc32(layer.name.encode())])
                                                 .choice(layer.n_units, per_layer, replace=False)))
            for layer in layers if layer.n_units > per_layer}


def _unit_table(name: str, layers: list[UnitLayer], refs: Refs, scores: Scores, shocks: Shocks,
                maturity: int, units: UnitChoice | None = None, clamp: Shocks | None = None) -> pd.DataFrame:
    """One row per lesioned unit (all, or those of `units`), in layer and unit order; `clamp`: the clamp's shocks
    beside a cbp-reset's (`clamp_<metric>`)."""
    frames = []
    for layer in layers:
        n = layer.n_units
        cols = {
            "checkpoint": [name] * n,
            "layer": [layer.name] * n,
            "kind": [layer.kind] * n,
            "unit": list(range(n)),
            "mature": layer.mature(maturity).tolist(),
            "age": layer.ages.tolist() if layer.ages is not None else [math.nan] * n,
            "reference": refs[layer.name].double().cpu().view(n, -1).mean(1).tolist(),  # a head: its vector mean
        }
        for utility, per_layer in scores.items():
            values = per_layer.get(layer.name)
            cols[utility] = values.double().tolist() if values is not None else [math.nan] * n
        frame = pd.DataFrame(cols).iloc[lesioned_units(layer, units).numpy()].reset_index(drop=True)
        for metric, per_layer in shocks.items():
            frame[f"shock_{metric}"] = per_layer[layer.name].tolist()
        for metric, per_layer in (clamp or {}).items():
            frame[clamp_column(metric)] = per_layer[layer.name].tolist()
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


LESION_CHUNK = 256  # units per lesion work item: chunks never depend on the number of ranks (shard.py)


@dataclass
class Prepared:
    """One model made ready for the assay (SPEC S1): on its device in eval mode, its logits selected, its unit
    layers found and given their stored state, the data as tensors and the unlesioned probe logits `base`."""

    name: str
    model: nn.Module
    layers: list[UnitLayer]
    config: AssayConfig
    calib_x: torch.Tensor
    calib_y: torch.Tensor
    probe_x: torch.Tensor
    probe_y: torch.Tensor
    base: torch.Tensor
    clock: StageClock
    unresettable: dict[str, str] = field(default_factory=dict)  # with cbp-reset: layers left out, with the reason

    @property
    def maturity(self) -> int:
        """The training step the units' ages are counted at: `config.maturity`, else 0."""
        return self.config.maturity if self.config.maturity is not None else 0

    @cached_property
    def chosen(self) -> UnitChoice | None:
        """The units lesioned one by one: every unit, or a seeded sample (`--units-per-layer`)."""
        return sample_units(self.layers, self.config.units_per_layer, self.config.seed)

    def chunks(self) -> list[LesionChunk]:
        """The lesion work items of this model, layer by layer: at most LESION_CHUNK units each, in unit order."""
        return [LesionChunk(layer.name, i // size, units[i:i + size])
                for layer in self.layers for units in [lesioned_units(layer, self.chosen)]
                for size in [self._chunk_size(len(units))] for i in range(0, len(units), size)]

    def _chunk_size(self, n_units: int) -> int:
        """LESION_CHUNK units; a sequential run's whole layer (its stopping rule reads the layer's bottom-k set)."""
        return LESION_CHUNK if self.config.sequential is None else max(1, n_units)


@dataclass(frozen=True)
class LesionChunk:
    """One lesion work item (DESIGN "Beyond one machine"): `units` of `layer`, each clamped alone."""

    layer: str
    index: int
    units: torch.Tensor


@dataclass
class Calibration:
    """What the calibration set gives a model (SPEC S2, S3): references, utility scores and the utilities that do
    not apply to a layer, with the reason."""

    refs: Refs
    scores: Scores
    not_applicable: dict[tuple[str, str], str]


def prepare(model: nn.Module, calib: object, probe: object, config: AssayConfig, name: str = "model",
            state: dict[str, torch.Tensor] | None = None) -> Prepared:
    """Make `model` ready for the assay: move it, select its logits, find its unit layers (discovery/), attach their
    stored state and compute the probe logits, refused when not finite."""
    device = resolve_device(config.device)
    generator = torch.Generator().manual_seed(config.seed)  # the calibration's sample first, as --probe-data draws
    calib_x, calib_y = _set_tensors(calib, config.calib_size, generator, "calibration")
    probe_x, probe_y = _set_tensors(probe, config.probe_size, generator, "probe")
    _check_shapes(calib_x, probe_x, name)
    if sequences.unlabelled(calib_y) and config.target == "label":
        warn_user(f"{name}: the calibration data has no labels: gxd, gxi and loss_gradient follow the model's "
                  "predicted class (as with `target` predicted)")
        config = replace(config, target="predicted")
    model = model.to(device).eval()
    padded = [x for x in (calib_x, probe_x) if sequences.padding_mask(x) is not None]
    if padded:  # token ids carrying PAD (SPEC S9): the model sees real ids and, where it takes one, the mask
        model = sequences.padded_tokens(model, padded)
    _first_forward(model, calib_x[:2].to(device), name)
    model = select_output(model, config.output, calib_x[:2].to(device))
    model = tap_unit_layers(model, calib_x[:2].to(device))
    found = unit_layers(model, calib_x[:2].to(device), config.layers)
    unresettable: dict[str, str] = {}
    if config.intervention == CBP_RESET:  # only the layers CBP's reset can write (SPEC S7), the others get a note
        found, unresettable = resettable_layers(model, found, name)
    attach_state(found, state or {}, f"{name}/state.safetensors")
    clock = StageClock()
    with clock("probe logits"), precision(config, device):
        base = probe_logits(model, probe_x, config.batch_size)
    if not torch.isfinite(base).all():
        raise FloatingPointError(f"{name}: the model gives NaN/Inf logits on the probe set; check its weights "
                                 "(a diverged training run?)")
    _check_positions(base, probe_x, name)
    _check_labels(base.shape[-1], {"calibration": calib_y, "probe": probe_y}, name)
    return Prepared(name, model, found, config, calib_x, calib_y, probe_x, probe_y, base, clock, unresettable)


def _check_positions(logits: torch.Tensor, x: torch.Tensor, name: str | Path) -> None:
    """Token ids `(B, T)` give logits at every position `(B, T, V)`; a model that returns the last position's alone
    (nanoGPT's `forward(idx)` without targets: `(B, 1, V)`) is a one-line error naming the fix (SPEC S9)."""
    if x.dtype.is_floating_point or x.dim() != 2 or logits.dim() != 3 or logits.shape[1] == x.shape[1]:
        return
    raise BadInputError(f"{name}: the model returns logits for the last position only ({tuple(logits.shape)} for "
                        f"token ids {tuple(x.shape)}; nanoGPT's forward(idx) does so without targets); resetassay "
                        "needs every position's logits: name in `model` a wrapper whose forward calls it with "
                        "targets (e.g. model(idx, targets=idx)[0]), or pick full-sequence logits with `output`",
                        field="model")


def _first_forward(model: nn.Module, x: torch.Tensor, name: str | Path) -> None:
    """Run `model` on two examples before anything else: inputs it cannot read (another channel count, size or
    feature width than it was built for) are a one-line error naming the shape, not a traceback from deep inside.
    A model with no `forward` of its own (nets that define `predict` instead) is named as such, not as a shape."""
    if type(model).forward is nn.Module.forward:
        methods = [m for m in ("predict", "infer", "logits") if callable(getattr(model, m, None))]
        wrap = f"a Module whose forward calls {methods[0]}" if methods else "a Module whose forward returns the logits"
        raise BadInputError(f"{name}: {type(model).__name__} has no forward(); resetassay calls model(x): wrap it, "
                            f"e.g. {wrap}, and name that factory in `model`", field="model")
    try:
        with torch.no_grad():
            model(x)
    except Exception as err:
        raise BadInputError(f"{name}: the model cannot read inputs of shape {tuple(x.shape[1:])} per example "
                            f"({one_line(err)}); give data shaped as the model takes it "
                            "(channels, `image_size`, features), or check `model`") from err


def _check_shapes(calib_x: torch.Tensor, probe_x: torch.Tensor, name: str) -> None:
    """Calibration and probe inputs of one shape per example (token sequences may differ in length)."""
    for what, x in (("calibration", calib_x), ("probe", probe_x)):
        if len(x) == 0:
            raise BadInputError(f"{name}: the {what} set is empty; give it examples (`calib_size`, `probe_size`)")
    if calib_x.dtype.is_floating_point and calib_x.shape[1:] != probe_x.shape[1:]:
        raise BadInputError(f"{name}: calibration inputs are {tuple(calib_x.shape[1:])} per example but probe inputs "
                            f"{tuple(probe_x.shape[1:])}; give both sets in one shape (`probe`)")


def _check_labels(n_outputs: int, labels: dict[str, torch.Tensor], name: str) -> None:
    """A classifier's labels index its logits: each below the number of outputs (NO_LABEL: unlabelled data)."""
    for what, y in labels.items():
        if y.dim() == 1 and len(y) and int(y.max()) >= n_outputs:
            raise BadInputError(f"{name}: the {what} labels go up to {int(y.max())} but the model gives "
                                f"{n_outputs} logits; give labels 0..{n_outputs - 1} (classes the model has)")


def calibration_targets(p: Prepared) -> torch.Tensor:
    """The targets y of gxd, gxi and loss_gradient on the calibration set: its labels, or with `--target predicted`
    the model's own class (next token) (SPEC S3)."""
    if p.config.target == "predicted":
        return sequences.predicted_targets(probe_logits(p.model, p.calib_x, p.config.batch_size), p.calib_y)
    return p.calib_y


def calibrate(p: Prepared, progress: Progress | None = None) -> Calibration:
    """References and utility scores of every unit on the calibration set (SPEC S2, S3)."""
    config, calib_y = p.config, calibration_targets(p)
    ranked = [u for u in config.utilities if u not in SET_SELECTORS]  # a set selector runs in `finish`
    with p.clock("references"):
        refs = unit_references(p.model, p.layers, p.calib_x, config.reference, config.batch_size)
    passes: dict[str, float] = {}
    with p.clock("utilities"):
        advance = progress_counter(progress, f"calibration {p.name}", len(p.calib_x))
        stats = calibration_stats(p.model, p.layers, p.calib_x, calib_y, refs, needed_ingredients(ranked),
                                  config.batch_size, config.seed, advance, config.max_classes, passes)
        scores, na = unit_scores(ranked, p.layers, stats)
    p.clock.seconds |= {COST_STAGE.format(u): s for u, s in utility_seconds(ranked, passes).items()}
    return Calibration(refs, scores, na | {(CBP_RESET, layer): why for layer, why in p.unresettable.items()})


def lesion_chunk(p: Prepared, cal: Calibration, chunk: LesionChunk,
                 advance: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
    """Shock `(len(chunk.units),)` of each unit of one work item alone, per metric (SPEC S4); with cbp-reset, the
    reset's, and the clamp's under `clamp_<metric>`; sequential (S4b), the SE and probes used beside each shock, the
    units each utility of `cal.scores` would reset measured on every probe example."""
    layer = next(layer for layer in p.layers if layer.name == chunk.layer)
    config = p.config
    request = lesion_request(p.model, [layer], cal.refs, p.probe_x, p.probe_y, p.base, config,
                             units={layer.name: chunk.units}, advance=advance)
    with p.clock("lesions"), precision(config, p.base.device):
        if config.sequential is None:
            shocks = {m: per_layer[layer.name] for m, per_layer in unit_shocks_of(request).items()}
        else:
            scores = [s[layer.name][chunk.units] for s in cal.scores.values() if layer.name in s]
            seq = sequential_unit_shocks(request, config.sequential, config.q, config.seed,
                                         utilities={layer.name: torch.stack(scores).double().cpu()} if scores else None,
                                         mature={layer.name: layer.mature(p.maturity)[chunk.units].cpu()})
            shocks = {m: per_layer[layer.name] for m, per_layer in seq.shocks.items()}
            shocks |= {se_column(m): per_layer[layer.name] for m, per_layer in seq.se.items()}
            shocks |= {redraws_key(m): per_layer[layer.name] for m, per_layer in seq.redraws.items()}
            shocks[PROBES_COLUMN] = seq.probes[layer.name].double()
        if config.intervention == CBP_RESET:  # the clamp's shocks, kept beside the reset's
            clamp = unit_shocks_of(replace(request, intervention="clamp"))
            shocks |= {clamp_column(m): per_layer[layer.name] for m, per_layer in clamp.items()}
    return shocks


def _settle_pooled_ranks(p: Prepared, cal: Calibration, units: pd.DataFrame, redraws: dict[str, torch.Tensor]
                         ) -> None:
    """A sequential run (SPEC S4b): the early-stopped units the pooled Spearman ρ of some utility needs to be within
    `rank_precision` of the exact run's, measured on the whole probe set (`settle_pooled_ranks`, reading each
    estimate's `redraws[metric]` `(rows, DRAWS)`); `units` updated in place."""
    config = p.config

    def exact(chosen: dict[str, torch.Tensor]) -> Shocks:
        layers = [layer for layer in p.layers if layer.name in chosen]
        request = lesion_request(p.model, layers, cal.refs, p.probe_x, p.probe_y, p.base, config, units=chosen)
        with precision(config, p.base.device):
            return unit_shocks_of(request)

    ranked = [u for u in config.utilities if u not in (ORACLE, *SET_SELECTORS)]
    with p.clock("lesions"):
        settle_pooled_ranks(units, ranked, config.metrics, config.rank_precision, config.sequential, exact,
                            len(p.probe_x), redraws)


def lesion_request(model: nn.Module, layers: list[UnitLayer], refs: Refs, probe_x: torch.Tensor,
                   probe_y: torch.Tensor | None, base: torch.Tensor, config: AssayConfig, **more: object
                   ) -> LesionRequest:
    """The lesions of `layers` on the probe set as `config` asks (engine, intervention, seed, budgets); `more`: the
    other fields of `LesionRequest` (units, advance)."""
    return LesionRequest(model, layers, refs, probe_x, config.metrics, base=base, targets=probe_y,
                         engine=config.engine, intervention=config.intervention, seed=config.seed,
                         batch_size=config.batch_size, max_memory=config.max_memory, **more)


def finish(p: Prepared, cal: Calibration, shocks: list[dict[str, torch.Tensor]]) -> AssayResult:
    """The tables of one model from its calibration and the shocks of its chunks (in `p.chunks()` order): the
    UnitTable, joint lesions and the SummaryTable (SPEC S4, S5)."""
    config, chunks = p.config, p.chunks()

    def joined(key: str) -> dict[str, torch.Tensor]:
        return {layer.name: torch.cat([s[key] for c, s in zip(chunks, shocks, strict=True) if c.layer == layer.name]
                                      or [torch.zeros(0, dtype=torch.float64)]) for layer in p.layers}

    clamp = {m: joined(clamp_column(m)) for m in config.metrics} if config.intervention == CBP_RESET else None
    units = _unit_table(p.name, p.layers, cal.refs, cal.scores, {m: joined(m) for m in config.metrics}, p.maturity,
                        p.chosen, clamp)
    if config.sequential is not None:  # sequential probes (SPEC S4b): probes used and SE per unit
        units[PROBES_COLUMN] = _column(joined(PROBES_COLUMN), p.layers).astype(np.int64)
        for m in config.metrics:
            units[se_column(m)] = _column(joined(se_column(m)), p.layers)
        redraws = {m: joined(redraws_key(m)) for m in config.metrics}
        _settle_pooled_ranks(p, cal, units, {m: torch.cat([r[layer.name].reshape(-1, DRAWS) for layer in p.layers])
                                             for m, r in redraws.items()})
    sets = {}
    if GXD_GREEDY in config.utilities:
        with p.clock("greedy"):
            sets[GXD_GREEDY] = greedy_selection(p.model, p.layers, cal.refs, p.calib_x, calibration_targets(p),
                                                candidate_pool(units), config.q, config.greedy_every,
                                                config.batch_size)
    with p.clock("joint lesions"), precision(config, p.base.device):
        joint = (_joint_shock_at_q(p.model, p.layers, cal.refs, units, (p.probe_x, p.probe_y), p.base, config, sets)
                 if config.joint else {})
    notes = pd.DataFrame([{"checkpoint": p.name, "utility": u, "layer": lay, "reason": why}
                          for (u, lay), why in cal.not_applicable.items()], columns=NOTE_COLUMNS)
    target = p.config.target + (" (no labels)" if sequences.unlabelled(p.calib_y) else "")
    accuracy = pd.DataFrame([{"checkpoint": p.name, "probe_accuracy": sequences.accuracy(p.base, p.probe_y),
                              "n_classes": int(p.base.shape[-1]), "target": target}])
    with p.clock("summary"):
        summary = checkpoint_summary(units, config.utilities, config.metrics, config.q, joint, sets)
        notes = pd.concat([notes, flag_notes(reliability_flags(units, summary, accuracy, config.q))],
                          ignore_index=True)
    return AssayResult(units, summary, notes, accuracy, config, timings={p.name: p.clock.seconds})


def _column(per_layer: dict[str, torch.Tensor], layers: list[UnitLayer]) -> np.ndarray:
    """Values per layer as one UnitTable column, in the table's layer and unit order."""
    return torch.cat([per_layer[layer.name] for layer in layers]).numpy()


def assay_model(
    model: nn.Module,
    calib: object,
    probe: object,
    config: AssayConfig | None = None,
    *,
    name: str = "model",
    state: dict[str, torch.Tensor] | None = None,
    progress: Progress | None = None,
    **overrides: object,
) -> AssayResult:
    """Assay an in-memory model: score every unit on `calib`, lesion each alone on `probe` (SPEC S1-S5).

    Args:
        model: any classifier `(B, ...) -> (B, C)` (or returning a tuple, dict or object holding the logits:
            `config.output` picks them, discovery/outputs.py); traced with torch.fx to find its unit layers
            (discovery/taps.py) unless it declares them (the zoo). Moved to `config.device`, put in eval mode.
        calib, probe: disjoint data, each an `(x, y)` pair of tensors, inputs alone (unlabelled data: the
            targets are the predicted class), a map-style Dataset of items or an iterable of batches (a
            DataLoader); items and batches may be dicts in Hugging Face's style. `config.calib_size` /
            `probe_size` take a seeded sample of each (as `--probe-data` does). `probe`'s labels only give the
            probe accuracy reported beside the shocks.
        config: the assay settings (default `AssayConfig()`: the default utilities, L1 and KL).
        name: the checkpoint column of the tables. state: per-unit `<layer>.age` / `.reference` tensors.
        progress: called as `progress("lesions <name>", done, total)` while lesions run.
        **overrides: any AssayConfig field, as in `run_assay` (e.g. `utilities=["gxd"]`, `layers=["layers.*.act"]`,
            globs over unit-layer names as `--layers`): replaces that field of `config` (or of `AssayConfig()`).

    Returns:
        An `AssayResult` with `units`, `summary` and `notes`; `checkpoints` holds `name` and the probe accuracy.

    Raises:
        BadInputError: a config value out of range, no layer matches, an empty set, a stored reference missing, ...
        FloatingPointError: the model gives NaN/Inf logits on the probe set.
        TypeError: a keyword that is no AssayConfig field (the message names it), or a `config` that is no
            AssayConfig.

    Example::

        >>> import torch, resetassay as ra
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
        >>> result = ra.assay_model(net, (x[:32], y[:32]), (x[32:], y[32:]), utilities=["gxd", "oracle"],
        ...                         metrics=["l1"])
        >>> sorted(result.units["layer"].unique()), len(result.units)
        (['1'], 8)
        >>> result.summary.query("scope == 'ALL'")["utility"].tolist()
        ['gxd', 'oracle']
    """
    result = _assay(model, calib, probe, config_with(config, overrides, "assay_model"), name, state, progress)
    warn_if_at_chance(result)
    return result


def _assay(model: nn.Module, calib: object, probe: object, config: AssayConfig, name: str,
           state: dict[str, torch.Tensor] | None, progress: Progress | None) -> AssayResult:
    """`assay_model`'s stages, one after another in this process, without its warning."""
    p = prepare(model, calib, probe, config, name, state)
    cal = calibrate(p, progress)
    chunks = p.chunks()
    lesions = sum(len(c.units) for c in chunks) * (2 if config.intervention == CBP_RESET else 1)  # reset, clamp
    advance = progress_counter(progress, f"lesions {name}", lesions)
    return finish(p, cal, [lesion_chunk(p, cal, chunk, advance) for chunk in chunks])


def progress_counter(progress: Progress | None, task: str, total: int) -> Callable[[int], None] | None:
    """An `advance(k)` callback that reports `task`'s running count to `progress` (None without one)."""
    if progress is None:
        return None
    done = 0

    def advance(k: int) -> None:
        nonlocal done
        done += k
        progress(task, done, total)

    return advance


def _joint_shock_at_q(model: nn.Module, layers: list[UnitLayer], refs: Refs, units: pd.DataFrame,
                      probe: tuple[torch.Tensor, torch.Tensor], base: torch.Tensor, config: AssayConfig,
                      sets: dict[str, Picks]) -> dict[tuple[str, str], float]:
    """Joint Shock@q (SPEC S5): clamp (or reset) each utility's whole selection (a set selector's: its set of
    `sets`) at once, all in one batch."""
    keys: list[tuple[str, str]] = []
    lesions: list[Lesion] = []
    for utility in config.utilities:
        for metric in config.metrics if utility == ORACLE else config.metrics[:1]:
            column = utility_column(utility, metric)
            chosen = sets.get(utility) or (selections(units, column, config.q) if column in units else {})
            if chosen:
                keys.append((utility, metric))
                lesions.append({name: torch.as_tensor(v) for name, v in chosen.items()})
    if not lesions:
        return {}
    values = joint_shocks_of(lesion_request(model, layers, refs, probe[0], probe[1], base, config), lesions)
    out: dict[tuple[str, str], float] = {}
    for i, (utility, metric) in enumerate(keys):
        for m in [metric] if utility == ORACLE else config.metrics:
            out[(utility, m)] = float(values[m][i])
    return out


def assay_checkpoint(
    ckpt: Checkpoint,
    config: AssayConfig | None = None,
    data: DataSpec | None = None,
    progress: Progress | None = None,
    **overrides: object,
) -> AssayResult:
    """Assay one loaded checkpoint on the held-out split of the task it was trained on last (or `data`), as
    `run_assay` assays each checkpoint it finds, without resume or failure handling (SPEC S1-S5).

    Args:
        ckpt: a checkpoint from `load_checkpoint`.
        config: the assay settings (default `AssayConfig()`); its seed draws the calibration/probe split, and a
            maturity recorded by the checkpoint applies where the config sets none.
        data: the data to assay it on instead of its own record (`data_spec`).
        progress: called as `progress(task, done, total)` while calibration and lesions run.
        **overrides: any AssayConfig field, as in `run_assay` (e.g. `utilities=["gxd"]`).

    Returns:
        An `AssayResult` whose `checkpoints` row holds the checkpoint's path, family, step, data and split.

    Raises:
        BadInputError: the checkpoint records no data and `data` is None, its data cannot be loaded, or an error
            of `assay_model`.
        FloatingPointError: the model gives NaN/Inf logits on the probe set.
        TypeError: a keyword that is no AssayConfig field (the message names it).

    Example::

        >>> import resetassay as ra
        >>> ckpt = ra.load_checkpoint("fixtures/silu_mlp/task2")
        >>> result = ra.assay_checkpoint(ckpt, utilities=["gxd", "oracle"], metrics=["l1"], calib_size=200,
        ...                              probe_size=200)
        >>> result.checkpoints[["checkpoint", "family", "step", "split_calib_size"]].values.tolist()
        [['task2', 'mlp-silu@digits', 2, 200]]
    """
    inputs = checkpoint_inputs(ckpt, config_with(config, overrides, "assay_checkpoint"), data)
    result = _assay(ckpt.model, inputs.calib, inputs.probe, inputs.config, ckpt.info.name, ckpt.state, progress)
    result.checkpoints = inputs.row(result.checkpoints)
    warn_if_at_chance(result, ckpt.info.step)
    return result


@dataclass
class CheckpointInputs:
    """What assaying one checkpoint needs besides its model: its data split, its spec and the config, with the
    maturity the checkpoint records when the config sets none."""

    ckpt: Checkpoint
    spec: DataSpec
    split: AssayData
    config: AssayConfig

    @property
    def calib(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The calibration inputs and labels."""
        return self.split.calib_x, self.split.calib_y

    @property
    def probe(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The probe inputs and labels."""
        return self.split.probe_x, self.split.probe_y

    def prepare(self) -> Prepared:
        """The checkpoint's model made ready for the assay (`prepare`)."""
        return prepare(self.ckpt.model, self.calib, self.probe, self.config, self.ckpt.info.name, self.ckpt.state)

    def row(self, measured: pd.DataFrame) -> pd.DataFrame:
        """The checkpoint's row of checkpoints.csv: path, family, step, data and split, and what the assay
        `measured` (its AssayResult's checkpoints row): the probe accuracy and the target the gradients followed."""
        info = self.ckpt.info
        return pd.DataFrame([{
            "checkpoint": info.name, "path": str(info.path), "family": info.family, "factory": info.factory,
            "step": _step_value(info.step), "train_seed": info.meta.get("seed"),
            **{f"data_{k}": v for k, v in self.spec.to_dict().items()},
            **{f"split_{k}": v for k, v in self.split.provenance.items()},
            "probe_accuracy": measured["probe_accuracy"].iloc[0], "n_classes": measured["n_classes"].iloc[0],
            "target": measured["target"].iloc[0],
        }])


def checkpoint_inputs(ckpt: Checkpoint, config: AssayConfig, data: DataSpec | None = None) -> CheckpointInputs:
    """The data split of a checkpoint's own data record (or `data`), seeded by the config (SPEC S1)."""
    spec = data or ckpt.info.data
    if spec is None:
        raise BadInputError(f"{ckpt.info.path}: no data recorded for this checkpoint; pass `data`")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            split: AssayData = assay_data(spec, config.calib_size, config.probe_size, config.seed)
        except BadInputError as err:
            if data is not None or err.field in SIZE_FIELDS:
                raise
            # the checkpoint's own data record, not a field the user gave: this checkpoint fails, the others go on
            raise BadInputError(f"{ckpt.info.path / MANIFEST}: its data record cannot be loaded ({err}); fix the "
                                "record, or pass `data`/`data_dir`") from err
    for w in caught:
        warn_user(w.message, w.category)
    if config.maturity is None and "maturity" in ckpt.info.meta:
        config = replace(config, maturity=int(ckpt.info.meta["maturity"]))
    return CheckpointInputs(ckpt, spec, split, config)


def checkpoint_layers(
    path: str | Path,
    patterns: list[str] | None = None,
    model: str | None = None,
    model_kwargs: dict | None = None,
    data: DataSpec | None = None,
    output: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    seq_len: int | None = None,
) -> tuple[list[UnitLayer], str]:
    """The unit layers of one checkpoint, resolved on two of its held-out examples (or, with `input_shape`, two
    seeded random inputs of that shape; with `seq_len`, two seeded random token sequences of that length over the
    vocabulary of the model's first embedding: no data needed), and the route that found them
    (`taps.discovery_route`: declared, fx, export, transformers, hooks or modules)."""
    given = [field for field, value in (("input_shape", input_shape), ("seq_len", seq_len), ("data", data))
             if value is not None]
    if len(given) > 1:
        raise BadInputError(f"{' and '.join(f'`{g}`' for g in given)}: give one (the examples come from either)",
                            field=given[0])
    ckpt = load_checkpoint(path, model=model, model_kwargs=model_kwargs)
    if seq_len is not None:
        embedding = next((m for m in ckpt.model.modules() if isinstance(m, nn.Embedding)), None)
        if embedding is None:
            raise BadInputError("`seq_len`: the model has no nn.Embedding to take token ids; give `input_shape`",
                                field="seq_len")
        x = torch.randint(0, embedding.num_embeddings, (2, seq_len), generator=torch.Generator().manual_seed(0))
    elif input_shape is not None:
        x = torch.randn((2, *input_shape), generator=torch.Generator().manual_seed(0))
    else:
        spec = data or ckpt.info.data
        if spec is None:
            raise BadInputError(f"{path}: no data recorded for this checkpoint; pass `data`, or `input_shape` "
                                "(e.g. 3,32,32) to list its unit layers without data", field="data")
        x = example_inputs(spec, 2)
    net = ckpt.model.eval()
    if sequences.padding_mask(x) is not None:  # padded token ids: the model sees them as `run` shows them (SPEC S9)
        net = sequences.padded_tokens(net, [x])
    try:
        _first_forward(net, x, path)
    except BadInputError as err:  # made-up inputs: the field that shaped them is at fault
        if (input_shape is None and seq_len is None) or err.field == "model":
            raise
        cause = one_line(err.__cause__) if err.__cause__ else str(err)
        if seq_len is not None:
            raise BadInputError(f"`seq_len` {seq_len}: the model does not take token ids of shape {tuple(x.shape)} "
                                f"({cause})", field="seq_len") from err
        raise BadInputError(f"`input_shape` {','.join(map(str, input_shape))}: the model does not take inputs of "
                            f"shape {tuple(x.shape)} ({cause})", field="input_shape") from err
    tapped = tap_unit_layers(select_output(net, output, x), x)
    return unit_layers(tapped, x, patterns), discovery_route(tapped)


def _step_value(step: dict) -> int | float:
    """One number for "how far along training": the task, else the epoch, else the step; a whole number as an int
    (checkpoints.csv writes `2`, not `2.0`)."""
    for key in ("task", "epoch", "step"):
        if key in step:
            value = float(step[key])
            return int(value) if value.is_integer() else value
    return math.nan
