"""Hugging Face `transformers` language models: their MLP neurons and attention heads, declared by module names
(SPEC S9).

Their forwards (caches, rotary embeddings, mask builders) defeat torch.fx, and the per-head tensor exists only as
the input of the attention's output projection. `transformers_taps(model)` finds, in any block of a
`transformers.PreTrainedModel`:
- attention modules: a module whose class name holds "Attention" with an output projection child (`o_proj`,
  `c_proj`, `out_proj` or `dense`, a Linear or GPT-2's Conv1D), its heads `in_features / head_dim` (or
  `num_heads`); their unit layer `<attention>.heads`, one unit per head, consumer the projection;
- MLP modules: a module whose class name holds "MLP" with an output projection child (`down_proj`, `c_proj`,
  `fc2`, `dense_4h_to_h`, `fc_out`); the neurons are the projection's input, `<mlp>.neurons`: the activation's
  output (GPT-2), or for a gated MLP (`gate_proj` beside `up_proj`, Llama, Mistral, Qwen2, ...) the product
  `act(gate(x)) * up(x)`; producer the input projection (`c_fc`, `fc1`, `up_proj`, `dense_h_to_4h`, `fc_in`)
  where there is one.
It returns a copy of the model sharing every parameter and buffer (same state-dict keys), each projection's
input routed through a tap module (a forward pre-hook), with `unit_layer_specs()` declaring them, or None when
the model is not a `transformers` model or holds no such module. Only these units are declared: the activation
module inside an MLP is not a unit layer of its own (one name per set of units). The fast engine cannot split
these models (fx): their lesions take its expanded-input path.
"""

from __future__ import annotations

import copy
import itertools
import sys

from torch import nn

from resetassay.discovery.attention import HeadTap
from resetassay.discovery.outputs import model_name, unwrapped
from resetassay.discovery.unit_tap import Declared, UnitTap
from resetassay.discovery.units import WEIGHTED, UnitLayerSpec, dense_weight, is_conv1d
from resetassay.errors import BadInputError

ATTENTION_OUT = ("o_proj", "c_proj", "out_proj", "dense")
MLP_OUT = ("down_proj", "c_proj", "fc2", "dense_4h_to_h", "fc_out")
MLP_IN = ("c_fc", "fc1", "up_proj", "dense_h_to_4h", "fc_in")


class _ThroughTap:
    """Forward pre-hook of a projection: its input goes through `tap` first (an object, so a deep copy of the
    model routes through its own tap)."""

    def __init__(self, tap: nn.Module):
        self.tap = tap

    def __call__(self, _module: nn.Module, args: tuple) -> tuple:
        return (self.tap(args[0]), *args[1:])


def _is_transformers_model(model: nn.Module) -> bool:
    """Whether `model` is a Hugging Face `transformers` model (without importing transformers)."""
    library = sys.modules.get("transformers")
    return library is not None and isinstance(unwrapped(model), library.PreTrainedModel)


def _child(module: nn.Module, names: tuple[str, ...]) -> tuple[str, nn.Module] | None:
    for name in names:
        child = getattr(module, name, None)
        if isinstance(child, WEIGHTED) or (child is not None and is_conv1d(child)):
            return name, child
    return None


def _n_heads(attention: nn.Module, projection: nn.Module) -> int:
    width = dense_weight(projection).shape[1]
    head_dim = getattr(attention, "head_dim", None)
    n = width // head_dim if isinstance(head_dim, int) and head_dim > 0 else getattr(attention, "num_heads", None)
    if not isinstance(n, int) or n < 1 or width % n:
        raise BadInputError(f"{type(attention).__name__}: cannot tell how many heads its output projection reads "
                            f"({width} features); give the model a unit_layer_specs() method")
    return n


def _sites(model: nn.Module) -> list[tuple[str, str, str, UnitLayerSpec]]:
    """(module path, tap field, projection field, spec) of every attention and MLP module, in module order."""
    sites = []
    for path, module in model.named_modules():
        kind = type(module).__name__
        if "Attention" in kind and (out := _child(module, ATTENTION_OUT)):
            heads = _n_heads(module, out[1])
            spec = UnitLayerSpec(f"{path}.heads", None, f"{path}.{out[0]}",
                                 producer_note="attention mixes the value projection over positions", heads=heads)
            sites.append((path, "heads", out[0], spec))
        elif "MLP" in kind and (out := _child(module, MLP_OUT)):
            gated = _child(module, ("gate_proj",)) is not None
            source = None if gated else _child(module, MLP_IN)
            note = ("gated MLP: each neuron is act(gate) * up, two producers" if gated
                    else "" if source else f"no input projection among {', '.join(MLP_IN)}")
            spec = UnitLayerSpec(f"{path}.neurons", f"{path}.{source[0]}" if source else None, f"{path}.{out[0]}",
                                 producer_note=note)
            sites.append((path, "neurons", out[0], spec))
    return sites


def transformers_taps(model: nn.Module) -> nn.Module | None:
    """A copy of a `transformers` model sharing its parameters and buffers, its heads and MLP neurons tapped and
    declared (module docstring); None for other models or when no attention/MLP module is recognised."""
    if not _is_transformers_model(model):
        return None
    sites = _sites(model)
    if not sites:
        return None
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    tapped = copy.deepcopy(model, memo)
    for path, field, projection, spec in sites:
        owner = tapped.get_submodule(path)
        if hasattr(owner, field):
            raise BadInputError(f"{path}.{field} already exists in {model_name(model)}: cannot tap its units; "
                                "give the model a unit_layer_specs() method")
        tap = HeadTap(spec.heads) if spec.heads else UnitTap()
        owner.add_module(field, tap)
        getattr(owner, projection).register_forward_pre_hook(_ThroughTap(tap))
    tapped.unit_layer_specs = Declared([spec for *_, spec in sites])
    tapped.discovery_route = "transformers"
    return tapped
