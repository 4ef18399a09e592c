"""What decides an assay's numbers: `AssayConfig`, each field declared once with its type, default and help (SPEC S1-S5;
docs/design.md "Fields, not flags").

Importing it loads no torch, so the command line builds `resetassay run`'s flags from it at once; the names it
validates (utilities, metrics) are checked against the registries, imported when a config is made.
"""

from __future__ import annotations

from dataclasses import dataclass

from resetassay.errors import BadInputError
from resetassay.fields import names, option, parse_bytes
from resetassay.names import (
    ENGINES,
    GXD_GREEDY,
    INTERVENTIONS,
    PRECISIONS,
    REFERENCES,
    SET_SELECTORS,
    Engine,
    Intervention,
    Precision,
    ReferenceKind,
)

TARGETS = ("label", "predicted")  # the class y of gxd/gxi/loss_gradient: the data's label or the model's prediction


def default_utilities() -> list[str]:
    """The default of `utilities`: every built-in utility but the costly opt-in ones (scoring/registry.py)."""
    from resetassay.scoring.registry import default_utilities as registered

    return registered()


@dataclass
class AssayConfig:
    """Everything that decides an assay's numbers (recorded in run.json); each field is a flag of `resetassay run`,
    generated from its declaration here (docs/design.md "Fields, not flags").

    Every field is validated on creation, in one place: an unknown utility, metric or engine, or a q outside (0, 1],
    is a `BadInputError` naming the field. Lists also take comma-separated text ("gxd,activation") and
    `max_memory` a size ("2GB"), as on the command line. `run_assay` and `assay_model` take these fields as
    keywords too. Each field's help is declared with it (`dataclasses.fields(AssayConfig)[i].metadata["help"]`;
    `resetassay run --help` prints them all).

    Raises:
        BadInputError: a name that is not registered (`list_utilities()`, `list_metrics()`), a value out of range,
            or settings that do not go together (gxd_greedy without joint lesions or the clamp).

    Example::

        >>> import resetassay as ra
        >>> config = ra.AssayConfig(utilities="gxd,oracle", metrics=["l1"], q=0.1, max_memory="2GB")
        >>> config.utilities, config.reference, config.engine, config.max_memory
        (['gxd', 'oracle'], 'calibration-mean', 'fast', 2000000000)
        >>> ra.AssayConfig(q=2)  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        ...
        resetassay.errors.BadInputError: `q` 2: must be in (0, 1]
    """

    utilities: list[str] = option(default_factory=default_utilities, help=(
        "Utilities to score and rank (default: every built-in but the costly gxd_ig and gxd2, and gxd_greedy, the "
        "greedy set-aware selector: each only when named)."))
    metrics: list[str] = option(default_factory=lambda: ["l1", "kl"], help="Shock metrics (default: l1,kl).")
    layers: list[str] | None = option(None, help="Globs over unit-layer names (default: every unit layer).")
    reference: ReferenceKind = option("calibration-mean", help="calibration-mean, stored or zero (SPEC S2).")
    calib_size: int | None = option(None, help="Calibration examples (default 2048).")
    probe_size: int | None = option(None, help="Probe examples (default 2048).")
    seed: int = option(0, help="Seed of the data split and the random utility.")
    q: float = option(0.05, help="Fraction of units reset for Shock@q.")
    maturity: int | None = option(None, help="Units with age <= this are not ranked.")
    batch_size: int = option(512, help="Examples per forward.")
    device: str = option("auto", help="auto, cpu or cuda.")
    joint: bool = option(True, help="Also measure joint Shock@q.")
    engine: Engine = option("fast", help="fast (graph split, batched lesions) or plain (one forward per unit, the "
                            "reference).")
    max_memory: int | str | None = option(None, help=(
        "Activation memory per lesion chunk in bytes, or a size such as 512MB, 2GB (default 1GB on CPU, half the "
        "free GPU memory)."))
    units_per_layer: int | None = option(None, help=(
        "Lesion at most N units per layer, sampled with `seed` (a quick look at a big model)."))
    output: str | None = option(None, help=(
        "Where the logits are in what the model returns: a dotted path of keys, attributes and indices (logits, 0, "
        "out.1); default: the output itself when a tensor, else its logits field or first tensor."))
    max_classes: int = option(100, help=(
        "gxd_all applies to models with at most this many outputs (a language model: its vocabulary); one backward "
        "pass each."))
    target: str = option("label", help=(
        "The class whose logit gxd, gxi and loss_gradient follow: label (the data's) or predicted (the model's own)."))
    intervention: Intervention = option("clamp", help=(
        "clamp (h <- r, weights unchanged, SPEC S4) or cbp-reset (CBP's reset of the weights, SPEC S7; the clamp's "
        "shocks kept as clamp_<metric>)."))
    dtype: Precision = option("fp32", help=(
        "Precision of the probe forwards: fp32, or bf16/fp16 under torch.autocast (faster on GPUs; calibration "
        "stays fp32; see docs \"Precision\")."))
    greedy_every: int | None = option(None, help=(
        "gxd_greedy: units each layer picks between two recomputations of GXD (default: a quarter of its k, at most "
        "4 rounds; scoring/greedy.py)."))
    sequential: float | None = option(None, help=(
        "Sequential probes at this confidence, e.g. 0.95 (SPEC S4b): units are lesioned on a growing share of the "
        "probe set until their layer's bottom-k set is settled; default: exact, every unit on every probe."))
    rank_precision: float = option(0.01, help=(
        "With `sequential`: the units needed for each utility's pooled Spearman ρ to be within this of the exact "
        "run's, at the same confidence, are measured on every probe example (SPEC S4b); 2: none."))

    def __post_init__(self) -> None:  # noqa: C901 — one flat check per field, in the order of the fields
        self.utilities, self.metrics = names(self.utilities, "utilities"), names(self.metrics, "metrics")
        self.layers = names(self.layers, "layers")
        if isinstance(self.max_memory, str):
            self.max_memory = parse_bytes(self.max_memory, "max_memory")
        for name, listed in (("utilities", self.utilities), ("metrics", self.metrics)):
            if not listed:
                raise BadInputError(f"`{name}`: empty; name at least one", field=name)
            repeated = sorted({n for n in listed if listed.count(n) > 1})
            if repeated:
                raise BadInputError(f"`{name}`: {', '.join(repeated)} given twice; name each once", field=name)
        from resetassay.lesion.shocks import check_metrics
        from resetassay.scoring.registry import check_utilities

        check_utilities([u for u in self.utilities if u not in SET_SELECTORS])
        check_metrics(self.metrics)
        if self.engine not in ENGINES:
            raise BadInputError(f"`engine` {self.engine!r}: choose from {', '.join(ENGINES)}", field="engine")
        if not 0 < self.q <= 1:  # False for NaN too
            raise BadInputError(f"`q` {self.q}: must be in (0, 1]", field="q")
        for name, value, low in (("batch_size", self.batch_size, 1), ("calib_size", self.calib_size, 1),
                                 ("probe_size", self.probe_size, 1), ("maturity", self.maturity, 0),
                                 ("max_memory", self.max_memory, 1), ("units_per_layer", self.units_per_layer, 1),
                                 ("max_classes", self.max_classes, 1), ("greedy_every", self.greedy_every, 1)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
                raise BadInputError(f"`{name}` {value!r}: must be a whole number >= {low}", field=name)
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise BadInputError(f"`seed` {self.seed!r}: must be a whole number in [0, 2**32)", field="seed")
        if self.output is not None and (not isinstance(self.output, str) or not self.output.strip(". ")):
            raise BadInputError(f"`output` {self.output!r}: give a key, attribute or index path such as logits or 0",
                                field="output")
        if self.target not in TARGETS:
            raise BadInputError(f"`target` {self.target!r}: choose {' or '.join(TARGETS)}", field="target")
        if self.reference not in REFERENCES:
            raise BadInputError(f"`reference` {self.reference!r}: choose from {', '.join(REFERENCES)}",
                                field="reference")
        if self.dtype not in PRECISIONS:
            raise BadInputError(f"`dtype` {self.dtype!r}: choose from {', '.join(PRECISIONS)}", field="dtype")
        if self.intervention not in INTERVENTIONS:
            raise BadInputError(f"`intervention` {self.intervention!r}: choose from {', '.join(INTERVENTIONS)}",
                                field="intervention")
        if self.sequential is not None and (isinstance(self.sequential, bool)
                                            or not isinstance(self.sequential, int | float)
                                            or not 0 < self.sequential <= 1):
            raise BadInputError(f"`sequential` {self.sequential!r}: must be a confidence in (0, 1], e.g. 0.95",
                                field="sequential")
        if (isinstance(self.rank_precision, bool) or not isinstance(self.rank_precision, int | float)
                or not 0 < self.rank_precision <= 2):
            raise BadInputError(f"`rank_precision` {self.rank_precision!r}: must be in (0, 2], e.g. 0.01 (2: the "
                                "bottom-k sets only)", field="rank_precision")
        self._check_greedy()

    def _check_greedy(self) -> None:
        """gxd_greedy is judged by its joint Shock@q and conditions on the clamp (SPEC S5): it needs joint lesions
        and the clamp; `--greedy-every` applies only to it."""
        if GXD_GREEDY not in self.utilities:
            if self.greedy_every is not None:
                raise BadInputError(f"`greedy_every` applies only with {GXD_GREEDY} among `utilities`; add it",
                                    field="greedy_every")
            return
        if not self.joint:
            raise BadInputError(f"`utilities` {GXD_GREEDY}: a set selector is measured by its joint Shock@q; drop "
                                "`joint`=False", field="utilities")
        if self.intervention != "clamp":
            raise BadInputError(f"`utilities` {GXD_GREEDY}: it conditions GXD on the clamp, so it needs "
                                f"`intervention` clamp, not {self.intervention}", field="utilities")


