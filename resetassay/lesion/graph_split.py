"""The graph split of the fast lesion engine, and BatchNorm folding (DESIGN "The lesion engine", steps 1, 3).

A lesion of unit layer L changes only the nodes that depend on L. `split_at` cuts a torch.fx
graph there: `upstream` computes, once per probe chunk, L's output and every tensor the rest
of the graph reads from before L (residual skips: the *frontier*); `downstream` recomputes only
what depends on L. Every reader of L that is a Linear/Conv2d taking L alone is cut off too (the
consumer shortcut): a clamp changes that consumer's output by a rank-1 / one-input-channel term,
which the engine adds instead of recomputing the consumer. L's other readers (a residual add,
pooling, ...) get the clamped output itself.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import fx, nn

from resetassay.discovery.outputs import model_name


class SplitError(Exception):
    """The graph cannot be cut at a unit layer; the message says why (the engine falls back)."""


@dataclass
class Split:
    """The two halves of a model around one unit layer.

    `starts[j]` says what the j-th downstream input is: a skipped consumer (its output, to be
    corrected by the clamp's term) or None (the unit layer's output, to be clamped).
    """

    upstream: fx.GraphModule    # x (P, ...) -> (h (P, n, ...), *start values (P, ...), *frontier (P, ...))
    downstream: fx.GraphModule  # (*start values (R, ...), *frontier (R, ...)) -> logits (R, C)
    starts: list[nn.Linear | nn.Conv2d | None]


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace `model` and, in eval mode, fold each Conv2d->BatchNorm2d pair into one op.

    The folded graph computes the same function (to float rounding) with one op less per pair;
    the model itself is not changed.
    """
    if getattr(model, "discovery_route", None) in ("hooks", "transformers"):  # fx would bypass the hooks' taps
        raise SplitError(f"the unit layers of {model_name(model)} are tapped by forward hooks")
    try:
        gm = model if isinstance(model, fx.GraphModule) else fx.symbolic_trace(model)
    except Exception as err:  # fx raises many types for untraceable code
        raise SplitError(f"torch.fx cannot trace {model_name(model)}: {str(err).splitlines()[0]}") from err
    if model.training:
        return gm
    return _fold_batchnorm(gm)


def _fold_batchnorm(gm: fx.GraphModule) -> fx.GraphModule:
    """A GraphModule sharing `gm`'s modules except each Conv2d->BatchNorm2d pair, replaced by one
    folded Conv2d copy (eval mode: BatchNorm is a per-channel affine map)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    pairs = [
        (n.args[0], n) for n in gm.graph.nodes
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.BatchNorm2d)
        and isinstance(n.args[0], fx.Node) and n.args[0].op == "call_module" and len(n.args[0].users) == 1
        and isinstance(gm.get_submodule(n.args[0].target), nn.Conv2d)
        and gm.get_submodule(n.target).track_running_stats
    ]
    if not pairs:
        return gm
    folded = fx.GraphModule(gm, copy.deepcopy(gm.graph))  # new module tree, same leaf modules
    nodes = {n.name: n for n in folded.graph.nodes}
    for conv, bn in pairs:
        parent, _, leaf = conv.target.rpartition(".")
        fused = fuse_conv_bn_eval(gm.get_submodule(conv.target), gm.get_submodule(bn.target))
        setattr(folded.get_submodule(parent) if parent else folded, leaf, fused)
        nodes[bn.name].replace_all_uses_with(nodes[conv.name])
        folded.graph.erase_node(nodes[bn.name])
    folded.recompile()
    return folded


def _unit_node(graph: fx.Graph, target: str) -> fx.Node:
    nodes = [n for n in graph.nodes if n.op == "call_module" and n.target == target]
    if len(nodes) != 1:
        raise SplitError(f"unit layer {target} is called {len(nodes)} times in the traced graph")
    return nodes[0]


SHORTCUT_TYPES = (nn.Linear, nn.Conv2d)


def _shortcut_module(gm: fx.GraphModule, user: fx.Node, node: fx.Node,
                     types: tuple[type[nn.Module], ...]) -> nn.Linear | nn.Conv2d | None:
    """The Linear/Conv2d module (of `types`) that `user` calls on `node` alone, when the shortcut is exact."""
    if user.op != "call_module" or user.args != (node,) or user.kwargs:
        return None
    module = gm.get_submodule(user.target)
    if not isinstance(module, types):
        return None
    if isinstance(module, nn.Linear):
        return module
    if isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros":
        return module
    return None


def split_at(gm: fx.GraphModule, target: str, shortcut: tuple[type[nn.Module], ...] = SHORTCUT_TYPES) -> Split:
    """Cut `gm` at the call of module `target`, and past its readers of the `shortcut` types."""
    graph = gm.graph
    node = _unit_node(graph, target)
    readers = {u: _shortcut_module(gm, u, node, shortcut) for u in node.users}
    start_nodes = [u for u, m in readers.items() if m is not None]
    if any(m is None for m in readers.values()):
        start_nodes.append(node)
    starts = [readers.get(n) for n in start_nodes]

    changed = set(start_nodes)
    for n in graph.nodes:  # topological order
        if any(a in changed for a in n.all_input_nodes):
            changed.add(n)
    output = next(n for n in graph.nodes if n.op == "output")
    if output not in changed:
        raise SplitError(f"the logits do not depend on {target}")
    recomputed = [n for n in graph.nodes if n in changed and n not in start_nodes and n.op != "output"]
    frontier = list(dict.fromkeys(
        a for n in [*recomputed, output] for a in n.all_input_nodes
        if a not in changed and a.op != "get_attr"
    ))

    up = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in graph.nodes:
        if n.op == "output" or (n in changed and n not in start_nodes):
            continue
        env[n] = up.node_copy(n, lambda a: env[a])
    up.output((env[node], *[env[s] for s in start_nodes], *[env[f] for f in frontier]))
    upstream = fx.GraphModule(gm, up)  # every node kept is an output or feeds one: no dead code

    down = fx.Graph()
    benv: dict[fx.Node, fx.Node] = {s: down.placeholder(f"start_{i}") for i, s in enumerate(start_nodes)}
    for i, f in enumerate(frontier):
        benv[f] = down.placeholder(f"frontier_{i}")

    def arg(a: fx.Node) -> fx.Node:
        if a not in benv:  # a parameter or buffer read directly (get_attr)
            benv[a] = down.node_copy(a, arg)
        return benv[a]

    for n in [*recomputed, output]:
        benv[n] = down.node_copy(n, arg)
    return Split(upstream, fx.GraphModule(gm, down), starts)
