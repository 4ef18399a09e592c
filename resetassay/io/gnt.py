"""Continual backprop's state from the loss-of-plasticity code (`lop/algos/gnt.py`, class `GnT`) as resetassay's
per-unit state (SPEC S1, S2, S7): `gnt_state`, and `read_gnt` to read it from a file without running code.

`GnT` keeps its state in lists indexed by hidden layer: `ages[i]`, `mean_feature_act[i]` (the running mean of the
unit's activation, before bias correction), `bias_corrected_util[i]` (the utility it ranks units by), `util[i]`
(that utility before bias correction) and `accumulated_num_features_to_replace[i]` (a count per layer, not per unit,
so not read). Its hidden layer i is the output of `net[2 * i]` (a Linear) after its activation `net[2 * i + 1]`:
the i-th unit layer of the model in forward order, which is how `gnt_state` names them (`<layer>.age`,
`<layer>.reference`, `<layer>.utility`, the keys of `state.safetensors`). The reference is GnT's bias-corrected
mean `mean_feature_act / (1 - decay ** age)` (0 at age 0), as resetassay's own trainer stores it; the utility is
`bias_corrected_util`, else `util` corrected the same way.

Save the lists where GnT runs (a `torch.save` of a dict of lists of tensors loads with `weights_only=True`):

    torch.save({k: getattr(learner.gnt, k) for k in ("ages", "mean_feature_act", "bias_corrected_util")},
               "gnt.pt")

then `resetassay gnt-state gnt.pt --model pkg.mod:factory --out run/state.safetensors` (or `gnt_state` in Python)
writes the state beside the weights, where `resetassay run run/model.pt --model pkg.mod:factory` reads it
(`checkpoint.state_file`); give `maturity` GnT's `maturity_threshold` (its default is 20).
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from torch import nn

from resetassay.discovery.find import find_unit_layers
from resetassay.discovery.units import UnitLayer
from resetassay.errors import BadInputError, one_line

__all__ = ["GNT_KEYS", "gnt_state", "read_gnt"]

GNT_KEYS = ("ages", "mean_feature_act", "bias_corrected_util", "util")  # per-unit lists of GnT that are read
GNT_DECAY = 0.99  # GnT's default decay_rate
_FLAT = re.compile(r"^(" + "|".join(GNT_KEYS) + r")\.(\d+)$")  # a flat file's keys: ages.0, ages.1, ...


def read_gnt(path: str | Path) -> dict[str, list[torch.Tensor]]:
    """GnT's per-layer lists from `path`, never running code from it: a `torch.save` of a dict of lists (read with
    `weights_only=True`), or a safetensors or `.pt` file of flat tensors `ages.0`, `ages.1`, ...

    Returns:
        {"ages": [tensor per hidden layer], ...} for the keys of `GNT_KEYS` the file holds; "ages" is required.

    Raises:
        BadInputError: an unreadable file, one holding pickled objects (a whole GnT), or no `ages`.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise BadInputError(f"{path}: cannot read it ({err.strerror or err})") from err
    if path.suffix == ".safetensors":
        try:
            obj: object = load_safetensors(raw)
        except Exception as err:  # SafetensorError and friends: unreadable either way
            raise BadInputError(f"{path}: unreadable safetensors file ({one_line(err)})") from err
    else:
        try:
            obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        except Exception as err:  # the unpickler refuses an object (a whole GnT), or the bytes are not torch's
            raise BadInputError(
                f"{path}: not a file of GnT's lists that loads without running code ({one_line(err)[:200]}); save "
                "them as a dict: torch.save({k: getattr(gnt, k) for k in ('ages', 'mean_feature_act', "
                "'bias_corrected_util')}, 'gnt.pt')") from err
    if not isinstance(obj, Mapping):
        raise BadInputError(f"{path}: holds a {type(obj).__name__}, not a dict of GnT's lists (ages, ...)")
    return _lists(obj, str(path))


def _lists(obj: Mapping, source: str) -> dict[str, list[torch.Tensor]]:
    """GnT's lists from a dict of lists, or of flat tensors `ages.0`, ...; each entry a 1-d float64 tensor."""
    found: dict[str, list] = {key: list(obj[key]) for key in GNT_KEYS if isinstance(obj.get(key), list | tuple)}
    flat: dict[str, dict[int, object]] = {}
    for key, value in obj.items():
        match = _FLAT.match(str(key))
        if match and match[1] not in found:
            flat.setdefault(match[1], {})[int(match[2])] = value
    for key, by_index in flat.items():
        if sorted(by_index) != list(range(len(by_index))):
            raise BadInputError(f"{source}: {key}.<i> must count the hidden layers from 0, got "
                                f"{', '.join(f'{key}.{i}' for i in sorted(by_index))}")
        found[key] = [by_index[i] for i in range(len(by_index))]
    if "ages" not in found:
        raise BadInputError(f"{source}: no `ages` (GnT's per-layer lists: {', '.join(GNT_KEYS)}); it holds "
                            f"{', '.join(map(str, list(obj)[:6])) or 'nothing'}")
    out = {}
    for key, values in found.items():
        tensors = []
        for i, value in enumerate(values):
            tensor = torch.as_tensor(value).detach().cpu() if isinstance(value, torch.Tensor | list | tuple) else None
            if tensor is None or tensor.dim() != 1 or tensor.is_complex() or tensor.dtype == torch.bool:
                raise BadInputError(f"{source}: {key}[{i}] is not one number per unit of hidden layer {i}")
            tensors.append(tensor.double())
        if len(tensors) != len(found["ages"]):
            raise BadInputError(f"{source}: {key} has {len(tensors)} layers, ages {len(found['ages'])}")
        out[key] = tensors
    return out


def gnt_state(
    gnt: Mapping | object,
    model: nn.Module,
    example_inputs: torch.Tensor | None = None,
    *,
    input_shape: tuple[int, ...] | None = None,
    layers: list[str] | None = None,
    decay: float = GNT_DECAY,
) -> dict[str, torch.Tensor]:
    """A `GnT`'s state as per-unit state of `model`: `<layer>.age` (int64), `.reference` and `.utility` (float32),
    GnT's hidden layer i named as the i-th unit layer of `model` in forward order (module doc).

    Args:
        gnt: GnT's lists by hidden layer: a GnT object itself (`learner.gnt`), a dict such as `read_gnt` returns,
            or one with flat keys `ages.0`, ...
        model: the network GnT trained (e.g. loss-of-plasticity's `DeepFFNN`, whose `layers` GnT holds); only its
            architecture is read.
        example_inputs, input_shape: how to find its unit layers (`find_unit_layers`); neither: the input width of
            its first Linear, which GnT's networks start with.
        layers: globs over unit-layer names, when the model has unit layers GnT did not track.
        decay: GnT's `decay_rate` (default 0.99), for the bias correction of the mean and of `util`.

    Returns:
        The state, for `save_file(state, "state.safetensors")`, `assay_model(..., state=...)` or `resetassay run
        --state` (`data` fields as usual).

    Raises:
        BadInputError: GnT's lists and the model's unit layers differ in number or size (the message lists both),
            or ages that are not whole numbers >= 0.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> from resetassay.io.gnt import gnt_state
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> gnt = {"ages": [torch.tensor([0., 5., 9.])], "mean_feature_act": [torch.tensor([0., .5, .9])],
        ...        "bias_corrected_util": [torch.tensor([0., 1., 2.])]}
        >>> state = gnt_state(gnt, net)
        >>> sorted(state), state["1.age"].tolist()
        (['1.age', '1.reference', '1.utility'], [0, 5, 9])
    """
    lists = _lists(gnt if isinstance(gnt, Mapping) else {k: getattr(gnt, k) for k in GNT_KEYS if hasattr(gnt, k)},
                   "the GnT state")
    if not 0 < decay < 1:
        raise BadInputError(f"`decay` {decay}: GnT's decay_rate is in (0, 1), default 0.99", field="decay")
    if example_inputs is None and input_shape is None:
        first = next((m for m in model.modules() if isinstance(m, nn.Linear)), None)
        if first is None:
            raise BadInputError("`input_shape`: the model has no Linear to read its input width from; give the shape "
                                "of one input", field="input_shape")
        input_shape = (first.in_features,)
    found = find_unit_layers(model, example_inputs, input_shape=input_shape, layers=layers)
    _check_match(lists, found)
    state = {}
    for i, layer in enumerate(found):
        age = lists["ages"][i]
        if not bool((age.isfinite() & (age >= 0) & (age == age.floor())).all()):
            raise BadInputError(f"the GnT state: ages[{i}] must hold whole numbers >= 0")
        state[f"{layer.name}.age"] = age.long()
        if "mean_feature_act" in lists:
            state[f"{layer.name}.reference"] = _corrected(lists["mean_feature_act"][i], age, decay)
        if "bias_corrected_util" in lists:
            state[f"{layer.name}.utility"] = lists["bias_corrected_util"][i].float()
        elif "util" in lists:
            state[f"{layer.name}.utility"] = _corrected(lists["util"][i], age, decay)
    return state


def _corrected(ema: torch.Tensor, age: torch.Tensor, decay: float) -> torch.Tensor:
    """GnT's bias correction `ema / (1 - decay ** age)`, 0 for units of age 0 (never observed since a reset)."""
    seen = age > 0
    return torch.where(seen, ema / (1 - decay ** age.clamp(min=1)), torch.zeros_like(ema)).float()


def _check_match(lists: dict[str, list[torch.Tensor]], found: list[UnitLayer]) -> None:
    """GnT's hidden layers and the model's unit layers: as many, each as wide; else one line listing both."""
    widths = [len(t) for t in lists["ages"]]
    ours = [layer.n_units for layer in found]
    if widths != ours or any(len(t) != w for values in lists.values() for t, w in zip(values, widths, strict=True)):
        names = ", ".join(f"{layer.name} ({layer.n_units})" for layer in found)
        raise BadInputError(f"the GnT state has {len(widths)} hidden layers of {widths} units, the model "
                            f"{len(found)} unit layers: {names}; check `model`/`model_kwargs`, or select GnT's "
                            "layers with `layers`", field="layers" if len(widths) < len(found) else None)
