"""Graph split for the fast lesion engine (DESIGN "The lesion engine", steps 1 and 3).

A lesion of unit layer L changes only the nodes that depend on L. `split_at` cuts a torch.fx
graph there: `upstream` computes, once per probe chunk, L's output and every tensor the rest
of the graph reads from before L (residual skips: the *frontier*); `downstream` recomputes only
what depends on L. Where L's only reader is a Linear/Conv2d consumer, the cut moves past it
(the consumer shortcut): a clamp changes that consumer's output by a rank-1 / one-input-channel
term, so the engine adds that term instead of recomputing the consumer.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import fx, nn


class SplitError(Exception):
    """The graph cannot be cut at a unit layer; the message says why (the engine falls back)."""


@dataclass
class Split:
    """The two halves of a model around one unit layer."""

    upstream: fx.GraphModule    # x (P, ...) -> (h (P, n, ...), start (P, ...), *frontier (P, ...))
    downstream: fx.GraphModule  # (start (R, ...), *frontier (R, ...)) -> logits (R, C)
    consumer: nn.Linear | nn.Conv2d | None  # skipped consumer when the shortcut applies
    n_frontier: int


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace `model` (a GraphModule is used as it is)."""
    if isinstance(model, fx.GraphModule):
        return model
    try:
        return fx.symbolic_trace(model)
    except Exception as err:  # fx raises many types for untraceable code
        raise SplitError(f"torch.fx cannot trace {type(model).__name__}: {str(err).splitlines()[0]}") from err


def _unit_node(graph: fx.Graph, target: str) -> fx.Node:
    nodes = [n for n in graph.nodes if n.op == "call_module" and n.target == target]
    if len(nodes) != 1:
        raise SplitError(f"unit layer {target} is called {len(nodes)} times in the traced graph")
    return nodes[0]


def _shortcut_consumer(gm: fx.GraphModule, node: fx.Node) -> nn.Linear | nn.Conv2d | None:
    """The Linear/Conv2d that is the unit layer's only reader, when the shortcut is exact."""
    users = list(node.users)
    if len(users) != 1 or users[0].op != "call_module" or users[0].args != (node,) or users[0].kwargs:
        return None
    module = gm.get_submodule(users[0].target)
    if isinstance(module, nn.Linear):
        return module
    if isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros":
        return module
    return None


def split_at(gm: fx.GraphModule, target: str, shortcut: bool = True) -> Split:
    """Cut `gm` at the call of module `target` (and past its consumer when `shortcut`)."""
    graph = gm.graph
    node = _unit_node(graph, target)
    consumer = _shortcut_consumer(gm, node) if shortcut else None
    start = next(iter(node.users)) if consumer is not None else node

    changed = {start}
    for n in graph.nodes:  # topological order
        if any(a in changed for a in n.all_input_nodes):
            changed.add(n)
    output = next(n for n in graph.nodes if n.op == "output")
    if output not in changed:
        raise SplitError(f"the logits do not depend on {target}")
    recomputed = [n for n in graph.nodes if n in changed and n is not start and n.op != "output"]
    frontier = list(dict.fromkeys(
        a for n in [*recomputed, output] for a in n.all_input_nodes
        if a not in changed and a.op != "get_attr"
    ))

    up = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in graph.nodes:
        if n.op == "output" or (n in changed and n is not start):
            continue
        env[n] = up.node_copy(n, lambda a: env[a])
    up.output((env[node], env[start], *[env[f] for f in frontier]))
    upstream = fx.GraphModule(gm, up)
    upstream.graph.eliminate_dead_code()
    upstream.recompile()

    down = fx.Graph()
    benv: dict[fx.Node, fx.Node] = {start: down.placeholder("start")}
    for i, f in enumerate(frontier):
        benv[f] = down.placeholder(f"frontier_{i}")

    def arg(a: fx.Node) -> fx.Node:
        if a not in benv:  # a parameter or buffer read directly (get_attr)
            benv[a] = down.node_copy(a, arg)
        return benv[a]

    for n in [*recomputed, output]:
        benv[n] = down.node_copy(n, arg)
    return Split(upstream, fx.GraphModule(gm, down), consumer, len(frontier))
