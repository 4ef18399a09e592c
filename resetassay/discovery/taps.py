"""Unit layers of models we did not write, found by tracing them: torch.fx, else torch.export, else
forward hooks (SPEC S1, S3).

`tap_unit_layers(model, example)` returns a `TappedModel`: the model's graph (fx's, or export's
read back at fx's level) as a GraphModule that shares every parameter and buffer of the model,
under the same state-dict keys, with a `UnitTap` (an `nn.Identity`) after every activation call
site that has no module of its own.
Forward hooks (scoring/reference.py, scoring/calibration.py through captum, lesion/) then see each call site
exactly once per forward, and `TappedModel.unit_layer_specs()` declares the unit layers as the
zoo models do, so `units.unit_layers` works unchanged.

Unit-layer names (what `--layers` globs over and `resetassay inspect` lists):
- an activation module called once: its own path, `layers.0.act` (hooked directly, no tap);
- an activation module called n > 1 times (torchvision's BasicBlock calls one `self.relu`
  twice): one tap per call, `layer1.0.relu@0` ... `layer1.0.relu@{n-1}`, in forward order
  (fx's own `nn_module_stack` marks a repeated call with `@` the same way);
- a functional activation (`F.relu(x)`, `torch.tanh(x)`, `x.relu()`): `<scope>.<fn>@k`, with
  scope the innermost module whose forward makes the call (no prefix at the top level), fn the
  function's name without a trailing `_`, and k counting that function's calls in that scope.
Activations whose output only leaves the model (a final sigmoid) hold no hidden units; they
are skipped.

Producer and consumer are read off the graph with the zoo's conventions (models/zoo.py, SPEC S3):
the producer is the Linear/Conv2d that feeds the activation directly; through a BatchNorm it
is not applicable ("BatchNorm X rescales the producer's output (conv)"), nor through a
LayerNorm/GroupNorm or a residual add. The consumer is the single Linear/Conv2d reading the
units, also through dropout, pooling and a flatten that keeps channels contiguous (avgpool ->
flatten -> fc); several readers (a residual skip) make it not applicable, the note naming them.

torch.nn attention (`nn.MultiheadAttention`, `nn.TransformerEncoderLayer`, `nn.TransformerEncoder`) is
first swapped for unfused stand-ins sharing its parameters (attention.py): each set of attention heads
is then one unit layer `<attention>.heads` (one unit per head, SPEC S9), and the MLP neurons of an
encoder layer are its `activation`. Attention written by hand (a GPT block, a timm ViT) is found by
its names: a module with a head count (`num_heads`, `n_head`, ...) and an output projection (`proj`,
`c_proj`, `o_proj`, ...) gets a head tap `<attention>.heads` on that projection's input.

The model is traced as it is (in eval mode, since fx fixes `if self.training:` branches). Three
routes, tried in turn, each checked to reproduce the model's outputs on `example`:
1. **fx**: `torch.fx` symbolic tracing, leaves being torch.nn layers and activation modules.
2. **export**: where fx fails (shape-dependent control flow such as `if x.dim() == 2:`),
   `torch.export` (non-strict, batch size dynamic) records the model on `example`, specialising
   such branches; its aten graph is read back at fx's level: the ops of each call of a leaf
   module (the outermost one on the module stack export records per op) become one
   `call_module` node, and the aten ops left (`aten.relu_`, `aten.add_`, `aten.flatten`,
   `aten.view(x, [B, -1])`, pools) are read as the torch functions fx records, so names,
   producers and consumers follow the same rules. A leaf call reading two tensors cannot be
   read back: the route then fails.
3. **hooks**: where both fail (data-dependent control flow), a dry run on `example` counts the
   calls of every activation module; a module called once keeps its path, a module called n > 1
   times gets n taps named as above (`layer1.0.relu@0` ...), its k-th call in a forward going
   through tap k. Functional activations are not seen there, and producer and consumer are
   unknown.
A one-line warning says why a route was left (`routes=` forces some, for tests). The fast lesion
engine splits an export route's graph as it splits fx's; a hook-tapped model sends it to its
expanded-input path. `discovery_route(model)` says which route found the
unit layers: "declared" (the zoo), "fx", "export", "hooks", or "modules" (no example to count calls
on: the activation modules, a module called twice refused by `units.unit_layers`). A model in which
no unit layer is found is refused (BadInputError) rather than assayed with none.

Over 500 lines: the three routes (fx, export, hooks) share the call-site walk, the consumer analysis and the check
that the tapped model gives the model's outputs; one module keeps their fall-through order in one place.
"""

from __future__ import annotations

import copy
import io
import itertools
import logging
import operator
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr

import torch
import torch.nn.functional as F
from torch import fx, nn

from resetassay.discovery.attention import HeadTap, unfused_attention
from resetassay.discovery.hooks import as_is, capture
from resetassay.discovery.outputs import model_name
from resetassay.discovery.transformers import transformers_taps
from resetassay.discovery.unit_tap import Declared, UnitTap
from resetassay.discovery.units import (
    ACTIVATION_TYPES,
    WEIGHTED,
    UnitLayerSpec,
    declared_specs,
    dense_weight,
    is_conv1d,
)
from resetassay.errors import BadInputError, warn_user

__all__ = ["tap_unit_layers", "discovery_route", "TappedModel", "hook_taps", "ROUTES"]

ACTIVATION_FUNCTIONS = frozenset({
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.leaky_relu_, F.elu, F.elu_,
    F.selu, F.selu_, torch.selu, F.celu, F.celu_, F.gelu, F.silu, F.mish, F.hardswish, F.softplus,
    F.prelu, torch.prelu, torch.tanh, torch.sigmoid,
})
ACTIVATION_METHODS = frozenset({"relu", "relu_", "tanh", "tanh_", "sigmoid", "sigmoid_"})
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
MIXING_NORMS = (nn.LayerNorm, nn.GroupNorm)
IDENTITY_IN_EVAL = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
POOLS = (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveMaxPool2d)
aten = torch.ops.aten
# the export route's graph holds aten ops: each activation op is named as fx names its torch function (relu_ -> relu)
ATEN_ACTIVATIONS = frozenset(getattr(aten, name).default for name in (
    "relu", "relu_", "relu6", "relu6_", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "selu_", "celu",
    "celu_", "gelu", "gelu_", "silu", "silu_", "mish", "mish_", "hardswish", "hardswish_", "softplus", "prelu",
    "tanh", "tanh_", "sigmoid", "sigmoid_") if hasattr(aten, name))
POOL_FUNCTIONS = frozenset({F.adaptive_avg_pool2d, F.avg_pool2d, F.max_pool2d, F.adaptive_max_pool2d,
                            aten.adaptive_avg_pool2d.default, aten.avg_pool2d.default, aten.max_pool2d.default})
ADDS = frozenset({operator.add, operator.iadd, torch.add, aten.add.Tensor, aten.add_.Tensor})
FLATTENS = frozenset({torch.flatten, aten.flatten.using_ints})


class TappedModel(fx.GraphModule):
    """A traced model with a `UnitTap` per shared or functional activation call site.

    Parameters and buffers are the original model's own tensors, under the same keys. The unit
    layers are read off the graph on every call, so a deep copy declares them too.
    """

    discovery_route = "fx"

    def unit_layer_specs(self) -> list[UnitLayerSpec]:
        """One spec per hidden activation call site and per set of attention heads, in forward order (SPEC S1, S3,
        S9)."""
        calls = Counter(n.target for n in self.graph.nodes if n.op == "call_module")
        specs = []
        for node in self.graph.nodes:
            module = _module(self, node)
            if isinstance(module, HeadTap):
                consumer, consumer_note = _consumer(self, node)
                specs.append(UnitLayerSpec(str(node.target), None, consumer, HEAD_NOTE, consumer_note,
                                           heads=module.n_heads))
                continue
            if isinstance(module, UnitTap):
                activation = node.args[0]
            elif isinstance(module, ACTIVATION_TYPES) and calls[node.target] == 1 and _hidden(node):
                activation = node
            else:
                continue
            producer, producer_note = _producer(self, _input(activation))
            consumer, consumer_note = _consumer(self, node)
            specs.append(UnitLayerSpec(str(node.target), producer, consumer, producer_note, consumer_note))
        return specs


class _Untappable(Exception):
    """The traced graph cannot stand in for the model; the message says why."""


HEAD_NOTE = "attention mixes the value projection over positions"


class _Tracer(fx.Tracer):
    """fx's default leaves (torch.nn modules) plus every activation module, subclasses included, and head taps."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (*ACTIVATION_TYPES, HeadTap)) or super().is_leaf_module(m, module_qualified_name)


ROUTES = ("fx", "export", "hooks")


def tap_unit_layers(model: nn.Module, example: torch.Tensor | None = None,
                    routes: tuple[str, ...] = ROUTES) -> nn.Module:
    """A model whose unit layers are all hookable, one call site each (SPEC S1).

    Returns `model` itself when it declares its unit layers (the zoo), else a `TappedModel`
    sharing its parameters, checked to give the model's outputs on `example (B, ...)` when one
    is given: its graph traced by torch.fx, or, where fx fails, exported by torch.export on
    `example` (warning why, in one line); where both fail, a copy of `model` sharing its
    parameters with its activation modules tapped by forward hooks, the warning saying both whys.
    `routes`: which of "fx", "export", "hooks" may be taken (always tried in that order; tests
    force one); with no route left, BadInputError says why each failed. Raises BadInputError
    when no unit layer is found.
    """
    if hasattr(model, "unit_layer_specs"):
        return model
    tapped = _tap_unit_layers(model, example, routes)
    _say_untapped_attention(model, tapped)
    return tapped


def _attention_modules(model: nn.Module) -> list[str]:
    """The paths of the outermost attention modules of `model` (a torch.nn MultiheadAttention, or a class whose
    name says Attention), a nested one (BERT's BertSelfAttention in BertAttention) counted with its parent."""
    paths: list[str] = []
    for path, module in model.named_modules():
        if not path or not (isinstance(module, nn.MultiheadAttention) or "Attention" in type(module).__name__):
            continue  # the model itself is never one (a class named AttentionNet)
        if not any(path.startswith(p + ".") for p in paths):
            paths.append(path)
    return paths


def _say_untapped_attention(model: nn.Module, tapped: nn.Module) -> None:
    """A warning when some attention modules got no head tap: their heads are not assayed, and the user is told why
    (the route taken, or no head count and output projection recognised), never silently (SPEC S9)."""
    attention = _attention_modules(model)
    if not attention:
        return
    heads = [path for path, module in tapped.named_modules() if isinstance(module, HeadTap)]
    specs = getattr(tapped, "unit_layer_specs", None)
    declared = [spec.module for spec in specs() if getattr(spec, "heads", None)] if callable(specs) else []
    found = heads + declared
    untapped = [p for p in attention if not any(h == p or h.startswith(p + ".") for h in found)]
    if not untapped:
        return
    route = discovery_route(tapped)
    if route == "hooks":
        reason = ("torch.fx and torch.export could not trace the model (the warning above says why), and forward "
                  "hooks tap activation modules only")
    else:
        reason = (f"the {route} route recognised no head count (e.g. n_head, num_heads) with an output projection "
                  "called once in them")
    shown = ", ".join(untapped[:3]) + (", ..." if len(untapped) > 3 else "")
    warn_user(f"{model_name(model)}: attention heads not found in {len(untapped)} attention module(s) "
              f"({shown}): {reason}; only their other units are assayed")


def _tap_unit_layers(model: nn.Module, example: torch.Tensor | None, routes: tuple[str, ...]) -> nn.Module:
    if (declared := transformers_taps(model)) is not None:
        if example is not None:
            _check_outputs(declared, model, example)
        return declared
    if unknown := set(routes) - set(ROUTES):
        raise ValueError(f"unknown discovery routes {sorted(unknown)}; expected some of {ROUTES}")
    name, failures = model_name(model), []
    unfused = unfused_attention(model)  # torch.nn attention, op by op: its heads visible (attention.py)
    for route in ("fx", "export"):
        if route not in routes or (route == "export" and example is None):
            continue
        try:
            graph = _Tracer().trace(unfused) if route == "fx" else _exported_graph(unfused, example)
            tapped = _tapped(unfused, graph)
            if example is not None:
                _check_outputs(tapped, model, example)
                if route == "export":
                    _check_outputs(tapped, model, torch.cat([example, example[:1]]))  # any batch size
        except Exception as err:  # tracing runs the user's forward on proxies; any failure means "cannot trace"
            failures.append(f"{ROUTE_NAMES[route]} cannot trace it ({_first_line(err)})")
            continue
        tapped.discovery_route = route
        if failures:
            warn_user(f"{name}: {failures[0]}; its unit layers were found by torch.export on the example "
                      "batch instead")
        _require_units(tapped, f"no hidden activation module or function call is in its {route} graph")
        return tapped
    why = "; ".join(failures) or "no route tried"
    if "hooks" not in routes:
        raise BadInputError(f"{name}: {why}")
    return _by_hooks(unfused, example, f"{name}: {why}")


ROUTE_NAMES = {"fx": "torch.fx", "export": "torch.export"}


def _first_line(err: BaseException) -> str:
    if isinstance(err, _Untappable):
        return str(err)
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"


def discovery_route(model: nn.Module) -> str:
    """How the unit layers of a model returned by `tap_unit_layers` were found: "declared" (by the
    model, the zoo), "fx" (traced graph), "export" (torch.export's graph), "hooks" (forward hooks
    counting calls), or "modules" (its activation modules, calls not counted)."""
    route = getattr(model, "discovery_route", None)
    if isinstance(route, str):
        return route
    return "declared" if hasattr(model, "unit_layer_specs") else "modules"


def _require_units(model: nn.Module, seen: str) -> None:
    if not declared_specs(model):
        raise BadInputError(
            f"no unit layer found in {model_name(model)}: {seen}; give it activation modules "
            "(nn.ReLU) or calls (F.relu) in a forward of its own, or a unit_layer_specs() method"
        )


# --- the export route: torch.export's graph, read back as a module-level graph -------------------

def _exported_graph(model: nn.Module, example: torch.Tensor) -> fx.Graph:
    """The graph torch.export (non-strict, batch size dynamic) records of `model` on `example`, rewritten at the
    fx route's level (SPEC S1): the aten ops of each call of a leaf module (the outermost module on a node's module
    stack that `_Tracer.is_leaf_module` calls a leaf: torch.nn layers and activations) become one `call_module`
    node; the rest (functional activations, adds, views) is kept as exported, the helpers below reading its aten
    ops as fx's torch functions. Shape-dependent branches (`if x.dim() == 2:`) are specialised to the example's
    shapes; the batch size is left dynamic (the example is doubled if it holds one row: export fixes sizes 1)."""
    from torch.export import Dim

    example = example if len(example) > 1 else torch.cat([example, example])
    dynamic = ({0: Dim.AUTO},) if hasattr(Dim, "AUTO") else None  # older torch: static; the check then fails
    with _torch_quiet():
        exported = torch.export.export(model, (example,), strict=False, dynamic_shapes=dynamic).module()
    modules = dict(model.named_modules())
    leaf = _Tracer()
    groups: list[tuple[tuple[str, ...] | None, str, list[fx.Node]]] = []  # (call, module path, nodes)
    for node in exported.graph.nodes:
        if node.op == "call_module" and node.target == "_guards_fn":
            continue
        stack = list((node.meta.get("nn_module_stack") or {}).items())
        depth, path = next(((i, p) for i, (_, (p, _)) in enumerate(stack) if p and p in modules
                            and leaf.is_leaf_module(modules[p], p)), (None, ""))
        call = tuple(key for key, _ in stack[:depth + 1]) if depth is not None else None  # keys carry @k
        if call is not None and groups and groups[-1][0] == call:
            groups[-1][2].append(node)
        elif call is not None and any(g[0] == call for g in groups):
            raise _Untappable(f"the ops of a call of module {path} are not contiguous in the exported graph")
        else:
            groups.append((call, path, [node]))
    graph, env = fx.Graph(), {}
    for call, path, members in groups:
        if call is None:
            for node in members:
                env[node] = graph.node_copy(node, lambda n: env[n])
            continue
        inside = set(members)
        inputs = list(dict.fromkeys(a for n in members for a in n.all_input_nodes if a not in inside
                                    and a.op != "get_attr" and not _is_symbolic(a)))
        outputs = [n for n in members if any(u not in inside for u in n.users)]
        if len(inputs) != 1 or len(outputs) != 1:
            raise _Untappable(f"a call of module {path} reads {len(inputs)} tensor(s) and gives {len(outputs)} "
                              "in the exported graph (one each can be read back)")
        env[outputs[0]] = graph.call_module(path, (env[inputs[0]],))
        env[outputs[0]].meta["nn_module_stack"] = dict(members[0].meta["nn_module_stack"])
    output = next(n for n in graph.nodes if n.op == "output")
    values = output.args[0]
    if not (isinstance(values, tuple | list) and len(values) == 1):
        raise _Untappable("the exported graph returns more than one tensor (pick the logits with `output`)")
    output.args = (values[0],)  # export returns a flat tuple; the model returns the tensor itself
    for node in reversed(graph.nodes):  # parameters and sizes only the collapsed calls read
        if (node.op == "get_attr" or _is_symbolic(node)) and not node.users:
            graph.erase_node(node)
    return graph


@contextmanager
def _torch_quiet() -> Iterator[None]:
    """Meanwhile torch logs nothing below CRITICAL and prints nothing to stderr (a failed export prints the graph
    it traced so far): why the route failed is said in our one-line warning."""
    log = logging.getLogger("torch")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        with redirect_stderr(io.StringIO()):
            yield
    finally:
        log.setLevel(level)


def _is_symbolic(node: fx.Node) -> bool:
    """Whether an exported node is a size (`sym_size`), not a tensor: a module recomputes the sizes it reads."""
    return isinstance(node.meta.get("val"), torch.SymInt | torch.SymFloat | torch.SymBool | int | float | bool)


# --- the hook route: models fx cannot trace -------------------------------------------------


HOOK_NOTE = "found by forward hooks: producer/consumer not traced"


class _CallDispatch:
    """Forward hook of an activation module called n > 1 times: its k-th call in a forward goes
    through `taps[k]`, so hooks on that tap see (and may replace) that call's output alone.

    An object rather than a closure, so that a deep copy of the model dispatches to its own taps.
    """

    def __init__(self, name: str, taps: list[UnitTap]):
        self.name, self.taps, self.calls = name, taps, 0

    def __call__(self, _module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        k, n = self.calls, len(self.taps)
        if k >= n:
            raise BadInputError(
                f"module {self.name} is called more than the {n} times per forward it was called on the "
                "example batch (another branch of forward?): its calls cannot be told apart; "
                "give each call its own module, or use inputs shaped like the example"
            )
        self.calls = k + 1
        return self.taps[k](output)


class _ResetCalls:
    """Forward pre-hook of the model: every forward counts the calls of each module from 0."""

    def __init__(self, dispatchers: list[_CallDispatch]):
        self.dispatchers = dispatchers

    def __call__(self, _module: nn.Module, _inputs: tuple) -> None:
        for d in self.dispatchers:
            d.calls = 0


def _by_hooks(model: nn.Module, example: torch.Tensor | None, why: str) -> nn.Module:
    """The hook route, or `model` itself (its activation modules) when it cannot be taken."""
    if example is None:
        return _fall_back(model, f"{why}; no example batch to count calls on")
    try:
        tapped = hook_taps(model, example)
        _check_outputs(tapped, model, example)
    except _Untappable as also:
        return _fall_back(model, f"{why}; nor by forward hooks: {also}")
    warn_user(
        f"{why}; unit layers are its activation modules, tapped by forward hooks: functional "
        "activations are not seen, producers and consumers are unknown")
    _require_units(tapped, "no activation module is called in its forward (fx cannot trace it, so calls "
                           "of functions such as F.relu are not seen)")
    return tapped


def hook_taps(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of `model` sharing its parameters and buffers (same state-dict keys), with a
    `UnitTap` at `path@k` for the k-th call of every activation module called n > 1 times on
    `example (B, ...)`, and `unit_layer_specs()` declaring one unit layer per hidden call.

    Its forward gives the model's outputs; a later forward calling a module more than n times
    raises BadInputError rather than mixing its calls.
    """
    modules = {}
    for name, module in model.named_modules():
        if isinstance(module, ACTIVATION_TYPES):
            modules.setdefault(module, name)
    activations = {name: module for module, name in modules.items()}
    with capture(model, activations, keep=as_is, every_call=True) as seen, torch.no_grad():
        result = model(example)
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in activations}
    order: list[tuple[str, int]] = []  # (name, k): the k-th call of the module, in forward order
    for name, out in seen.calls:
        order.append((name, len(outputs[name])))
        outputs[name].append(out)
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    try:
        tapped = copy.deepcopy(model, memo)
    except Exception as err:  # any attribute of the user's model may refuse to be copied
        raise _Untappable(f"the model cannot be copied ({type(err).__name__}: {err})") from err
    dispatchers = []
    for name, calls in outputs.items():
        if len(calls) > 1:
            taps = [UnitTap() for _ in calls]
            for k, tap in enumerate(taps):
                _add_hook_tap(tapped, f"{name}@{k}", tap)
            dispatchers.append(_CallDispatch(name, taps))
            tapped.get_submodule(name).register_forward_hook(dispatchers[-1])
    if dispatchers:
        tapped.register_forward_pre_hook(_ResetCalls(dispatchers))
    specs = []
    for name, k in order:
        out = outputs[name][k]
        if out is result:  # only leaves the model (a final sigmoid): no hidden units
            continue
        label = f"{name}@{k}" if len(outputs[name]) > 1 else name
        specs.append(UnitLayerSpec(label, None, None, producer_note=HOOK_NOTE, consumer_note=HOOK_NOTE))
    tapped.unit_layer_specs = Declared(specs)
    tapped.discovery_route = "hooks"
    return tapped


def _fall_back(model: nn.Module, why: str) -> nn.Module:
    warn_user(
        f"{why}; unit layers are its activation modules instead: functional activations are not "
        "seen and a module called more than once is refused")
    _require_units(model, "it has no activation module (fx cannot trace it, so calls of functions such "
                          "as F.relu are not seen)")
    return model


def _add_hook_tap(tapped: nn.Module, name: str, tap: UnitTap) -> None:
    path, _, field = name.rpartition(".")
    parent = tapped.get_submodule(path)
    if hasattr(parent, field):
        raise _Untappable(f"cannot tap {name}: the name is already taken in {path or 'the model'}")
    parent.add_module(field, tap)


def _tapped(model: nn.Module, graph: fx.Graph) -> TappedModel:
    """The GraphModule of `graph` with a tap after every call site that needs one, and a head tap before the output
    projection of every attention-like module (`_head_sites`)."""
    gm = TappedModel(model, graph, model_name(model))
    for node, name in _tap_sites(gm):
        _add_tap_module(gm, model, name)
        with gm.graph.inserting_after(node):
            tap = gm.graph.call_module(name, (node,))
        node.replace_all_uses_with(tap, delete_user_cb=lambda user, tap=tap: user is not tap)
    for node, name, heads in _head_sites(gm, model):
        _add_tap_module(gm, model, name, HeadTap(heads))
        source = node.args[0]
        with gm.graph.inserting_before(node):
            tap = gm.graph.call_module(name, (source,))
        node.replace_input_with(source, tap)
    gm.graph.lint()
    gm.recompile()
    _share_state(gm, model)
    return gm


HEAD_COUNTS = ("num_heads", "n_heads", "n_head", "num_attention_heads", "nhead")
HEAD_PROJECTIONS = ("proj", "o_proj", "out_proj", "out_lin", "c_proj", "dense", "wo", "to_out")


def _head_sites(gm: fx.GraphModule, model: nn.Module) -> list[tuple[fx.Node, str, int]]:
    """(output projection call, tap name `<attention>.heads`, heads) of every attention-like module of `model`: an
    int head count (`HEAD_COUNTS`) and a Linear/Conv1D child among `HEAD_PROJECTIONS`, called once, whose inputs
    split evenly into the heads (SPEC S9: the heads are the input of the attention's output projection). One already
    tapped (the unfused torch.nn attention of attention.py) is left as it is."""
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    sites = []
    for path, module in model.named_modules():
        heads = next((getattr(module, a) for a in HEAD_COUNTS if type(getattr(module, a, None)) is int), 0)
        if heads < 1:
            continue
        for owner, field in _projection_candidates(model, path, module):
            child, target = getattr(owner[1], field, None), f"{owner[0]}.{field}" if owner[0] else field
            if not isinstance(child, nn.Module) or not (isinstance(child, nn.Linear) or is_conv1d(child)) \
                    or calls[target] != 1 or dense_weight(child).shape[1] % heads:
                continue
            node = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == target)
            if node.args and isinstance(node.args[0], fx.Node) and not isinstance(_module(gm, node.args[0]), HeadTap):
                sites.append((node, f"{path}.heads" if path else "heads", heads))
            break
    return sites


def _projection_candidates(model: nn.Module, path: str, module: nn.Module
                           ) -> list[tuple[tuple[str, nn.Module], str]]:
    """((owner path, owner), field) where an attention's output projection may be: among its own children, else
    in its parent's `output` (BERT: BertSelfAttention's heads are read by BertAttention.output.dense)."""
    candidates = [((path, module), field) for field in HEAD_PROJECTIONS]
    if path:
        parent_path = path.rpartition(".")[0]
        output = getattr(model.get_submodule(parent_path), "output", None)
        if isinstance(output, nn.Module) and output is not module:
            out_path = f"{parent_path}.output" if parent_path else "output"
            candidates += [((out_path, output), field) for field in HEAD_PROJECTIONS]
    return candidates


def _tap_sites(gm: fx.GraphModule) -> list[tuple[fx.Node, str]]:
    """(activation node, tap name) for every hidden call site without a module of its own."""
    module_calls = Counter(n.target for n in gm.graph.nodes if isinstance(_module(gm, n), ACTIVATION_TYPES))
    seen_modules: Counter[str] = Counter()
    seen_functions: Counter[tuple[str, str]] = Counter()
    sites = []
    for node in gm.graph.nodes:
        if isinstance(_module(gm, node), ACTIVATION_TYPES):
            k = seen_modules[node.target]
            seen_modules[node.target] += 1
            name = f"{node.target}@{k}" if module_calls[node.target] > 1 else None
        else:
            label = _function_label(node)
            if label is None:
                continue
            scope = _scope(node)
            k = seen_functions[(scope, label)]
            seen_functions[(scope, label)] += 1
            name = f"{scope}.{label}@{k}" if scope else f"{label}@{k}"
        if name is not None and _hidden(node):
            sites.append((node, name))
    return sites


def _function_label(node: fx.Node) -> str | None:
    """`relu` for F.relu / torch.relu_ / x.relu() / aten.relu_, ...; None for anything else."""
    if node.op == "call_function" and (node.target in ACTIVATION_FUNCTIONS or node.target in ATEN_ACTIVATIONS):
        return _function_name(node.target).rstrip("_")
    if node.op == "call_method" and node.target in ACTIVATION_METHODS:
        return str(node.target).rstrip("_")
    return None


def _scope(node: fx.Node) -> str:
    """Path of the innermost module whose forward made this call ("" at the top level)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    key, value = list(stack.items())[-1]
    return value[0] if isinstance(value, tuple) else key.split("@")[0]  # torch < 2.1 stored the type only


def _add_tap_module(gm: fx.GraphModule, model: nn.Module, name: str, tap: nn.Module | None = None) -> None:
    """Register `tap` (a UnitTap by default) at path `name` of `gm`, never inside a module of `model` itself."""
    path, _, field = name.rpartition(".")
    try:
        parent = gm.get_submodule(path)
    except AttributeError:
        parent = None  # no module of the graph lives there yet: add_submodule creates the path
    if parent is not None:
        try:
            own = model.get_submodule(path)
        except AttributeError:
            own = None
        if parent is own and path:
            raise _Untappable(f"cannot tap {name}: {path} is called as a whole, its calls are not visible")
        if hasattr(parent, field):
            raise _Untappable(f"cannot tap {name}: the name is already taken in {path or 'the model'}")
    gm.add_submodule(name, tap if tap is not None else UnitTap())


def _share_state(gm: fx.GraphModule, model: nn.Module) -> None:
    """Make `gm.state_dict()` hold exactly `model`'s tensors under `model`'s keys.

    fx copies only what the forward reads and registers every tensor attribute it reads as a
    persistent buffer; parameters the forward never reads are attached back, and buffers the
    model does not save are made non-persistent.
    """
    theirs = model.state_dict(keep_vars=True)
    for key in sorted(theirs.keys() - gm.state_dict(keep_vars=True).keys()):
        _attach(gm, model, key)
    for key in sorted(gm.state_dict(keep_vars=True).keys() - theirs.keys()):
        path, _, field = key.rpartition(".")
        owner = gm.get_submodule(path)
        if field not in dict(owner.named_buffers(recurse=False)):
            raise _Untappable(f"the traced graph holds a parameter {key} the model does not save")
        owner.register_buffer(field, getattr(owner, field), persistent=False)
    ours = gm.state_dict(keep_vars=True)
    if ours.keys() != theirs.keys() or any(ours[k] is not theirs[k] for k in theirs):
        raise _Untappable("the traced graph cannot share the model's state dict")


def _attach(gm: fx.GraphModule, model: nn.Module, key: str) -> None:
    """Attach `model`'s tensor `key` (or the first module on its path the graph lacks) to `gm`."""
    *path, field = key.split(".")
    ours, theirs = gm, model
    for item in path:
        theirs = getattr(theirs, item)
        if not isinstance(getattr(ours, item, None), nn.Module):
            setattr(ours, item, theirs)
            return
        ours = getattr(ours, item)
    tensor = getattr(theirs, field)
    if isinstance(tensor, nn.Parameter):
        ours.register_parameter(field, tensor)
    else:
        ours.register_buffer(field, tensor)


def _check_outputs(tapped: nn.Module, model: nn.Module, example: torch.Tensor) -> None:
    """The traced graph must give the model's outputs (rtol 1e-5, atol 1e-6) on `example`."""
    with torch.no_grad():
        want, got = model(example), tapped(example)
    if not (isinstance(want, torch.Tensor) and isinstance(got, torch.Tensor)) or want.shape != got.shape:
        raise _Untappable("the traced graph does not return the model's output tensor")
    if not torch.allclose(got, want, rtol=1e-5, atol=1e-6, equal_nan=True):
        gap = (got - want).abs().max().item()
        raise _Untappable(f"the traced graph does not reproduce the model's outputs (max |diff| {gap:.3g})")


# --- reading producer and consumer off the graph (SPEC S3) ---------------------------------


def _module(gm: fx.GraphModule, node: object) -> nn.Module | None:
    if isinstance(node, fx.Node) and node.op == "call_module":
        return gm.get_submodule(str(node.target))
    return None


def _input(node: fx.Node) -> object:
    """The tensor an activation (module, function or method) is applied to."""
    return node.args[0] if node.args else node.kwargs.get("input")


def _hidden(node: fx.Node) -> bool:
    """Whether the call's output is read inside the model (not only returned)."""
    return any(user.op != "output" for user in node.users)


def _is_add(node: object) -> bool:
    if not isinstance(node, fx.Node):
        return False
    return (node.op == "call_function" and node.target in ADDS) or (
        node.op == "call_method" and node.target in ("add", "add_"))


def _describe(gm: fx.GraphModule, node: object) -> str:
    """A short name for what a node is: a module path, 'a residual add', a function name."""
    if not isinstance(node, fx.Node):
        return repr(node)
    if node.op in ("call_module", "get_attr"):
        return str(node.target)
    if _is_add(node):
        return "a residual add"
    if node.op == "placeholder":
        return "the model input"
    if node.op == "output":
        return "the model output"
    return _function_name(node.target)


def _function_name(target: object) -> str:
    """`relu_` for torch.relu_ and aten.relu_.default (export's ops are named by their packet), ..."""
    packet = getattr(target, "overloadpacket", None)
    return str(getattr(packet or target, "__name__", target))


def _skip_identities(gm: fx.GraphModule, node: object) -> object:
    """Walk back through modules that are the identity in eval mode."""
    while _is_identity(_module(gm, node)):
        node = node.args[0]
    return node


def _is_identity(module: nn.Module | None) -> bool:
    """Identity in eval mode (dropout, nn.Identity), our own taps excepted: they name a unit layer."""
    return isinstance(module, IDENTITY_IN_EVAL) and not isinstance(module, UnitTap)


def _producer(gm: fx.GraphModule, node: object) -> tuple[str | None, str]:
    """The Linear/Conv2d whose outputs the activation reads, or None and why not."""
    node = _skip_identities(gm, node)
    module = _module(gm, node)
    if isinstance(module, WEIGHTED):
        return str(node.target), ""
    if isinstance(module, BATCH_NORMS):
        source = _describe(gm, _skip_identities(gm, node.args[0]))
        return None, f"BatchNorm {node.target} rescales the producer's output ({source})"
    if isinstance(module, MIXING_NORMS):
        source = _describe(gm, _skip_identities(gm, node.args[0]))
        return None, f"{type(module).__name__} {node.target} mixes the outputs of {source}"
    if _is_add(node):
        terms = [_describe(gm, _skip_identities(gm, a)) for a in node.args[:2]]
        return None, f"residual add: {terms[0]} plus {terms[1]}"
    return None, f"produced by {_describe(gm, node)}, not by a Linear/Conv2d"


def _keeps_units(gm: fx.GraphModule, node: fx.Node, source: fx.Node) -> bool:
    """Whether `node` maps units to its outputs channel by channel (pool, flatten(1), dropout)."""
    if not node.args or node.args[0] is not source:
        return False
    module = _module(gm, node)
    if _is_identity(module) or isinstance(module, POOLS):
        return True
    if isinstance(module, nn.Flatten):
        return module.start_dim == 1 and module.end_dim == -1
    if node.op == "call_function" and node.target in POOL_FUNCTIONS:
        return True
    if (node.op == "call_function" and node.target in FLATTENS) or (
            node.op == "call_method" and node.target == "flatten"):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return start == 1 and end == -1
    if node.op == "call_method" and node.target in ("view", "reshape"):
        return len(node.args) == 3 and _is_batch_size(node.args[1]) and node.args[2] == -1
    if node.op == "call_function" and node.target in (aten.view.default, aten.reshape.default):  # export: (x, [B, -1])
        shape = node.args[1] if len(node.args) == 2 else ()
        return len(shape) == 2 and _is_batch_size(shape[0]) and shape[1] == -1
    return False


def _is_batch_size(node: object) -> bool:
    """`x.size(0)` or `x.shape[0]` in the graph (export: `aten.sym_size.int(x, 0)`)."""
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_function" and node.target == aten.sym_size.int:
        return node.args[1:] == (0,)
    if node.op == "call_method" and node.target == "size":
        return node.args[1:] == (0,) or node.kwargs.get("dim") == 0
    return (node.op == "call_function" and node.target is operator.getitem and node.args[1] == 0
            and isinstance(node.args[0], fx.Node) and node.args[0].op == "call_function"
            and node.args[0].target is getattr and node.args[0].args[1] == "shape")


def _is_shape_query(node: fx.Node, source: fx.Node) -> bool:
    """`source.size(...)`, `source.shape` or `aten.sym_size(source, ...)`: reads the shape, not the values."""
    if not node.args or node.args[0] is not source:
        return False
    return ((node.op == "call_method" and node.target in ("size", "dim"))
            or (node.op == "call_function" and node.target is getattr and node.args[1:] == ("shape",))
            or (node.op == "call_function" and node.target in (aten.sym_size.int, aten.sym_size.default)))


def _value_users(node: fx.Node) -> list[fx.Node]:
    """The users of `node` that read its values: `out.view(out.size(0), -1)` has one reader, the view."""
    return [user for user in node.users if not _is_shape_query(user, node)]


def _consumer(gm: fx.GraphModule, site: fx.Node) -> tuple[str | None, str]:
    """The single Linear/Conv2d reading the units at `site`, or None and who reads them."""
    source, users = site, _value_users(site)
    while len(users) == 1 and _keeps_units(gm, users[0], source):
        source, users = users[0], _value_users(users[0])
    if len(users) == 1 and isinstance(_module(gm, users[0]), WEIGHTED):
        return str(users[0].target), ""
    readers = " and by ".join(_describe(gm, u) for u in users)
    if len(users) == 1:
        return None, f"read by {readers}, not by a Linear/Conv2d"
    return None, f"read by {readers}"
