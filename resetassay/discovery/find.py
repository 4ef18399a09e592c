"""The unit layers of a model as the assay finds them, in one call (SPEC S1, S9): `find_unit_layers`.

It chains what `pipeline/assay.py` runs before an assay: the logits picked out of a structured output
(`outputs.select_output`), the model tapped where it does not declare its unit layers (`taps.tap_unit_layers`: the
zoo's declaration, Hugging Face module names, torch.fx, torch.export or forward hooks), and the layers resolved on two
examples (`units.unit_layers`). So the names it lists are those `--layers` and `AssayConfig.layers` glob over.
"""

from __future__ import annotations

import torch
from torch import nn

from resetassay.discovery.outputs import select_output
from resetassay.discovery.taps import tap_unit_layers
from resetassay.discovery.units import UnitLayer, unit_layers
from resetassay.errors import BadInputError, one_line

__all__ = ["find_unit_layers"]


def find_unit_layers(
    model: nn.Module,
    example_inputs: torch.Tensor | None = None,
    *,
    input_shape: tuple[int, ...] | None = None,
    layers: list[str] | None = None,
    output: str | None = None,
) -> list[UnitLayer]:
    """The unit layers of `model`, in forward order: where its units live, their kind and count, and the Linear/Conv2d
    that writes (producer) and reads (consumer) them (SPEC S1, S3, S9).

    The model is put in eval mode and run on two examples: the first two of `example_inputs`, or two seeded random
    inputs of `input_shape`. A model that declares its unit layers (the resetassay zoo) keeps them; another is traced
    as the assay traces it (torch.fx, else torch.export, else forward hooks, with a warning saying why), so the
    names are those `AssayConfig.layers` (`--layers`) selects from. Each `UnitLayer.module` is the module whose output
    holds the units: the model's own activation module where it has one called once, else a tap of the traced copy
    the assay runs, which shares the model's parameters. To lesion such layers with `unit_shocks`, find them on that
    copy and lesion it: `tapped = resetassay.discovery.tap_unit_layers(model, x)`, then
    `find_unit_layers(tapped, x)` (a model that declares its layers, as `tapped` does, is used as it is).

    Args:
        model: any `nn.Module` whose forward takes a batch `(B, ...)` and returns logits (or a tuple, dict or
            object holding them: `output`).
        example_inputs: a batch `(B, ...)` the model reads, on its device (token ids for a language model).
        input_shape: instead of `example_inputs`, the shape of one example, e.g. `(3, 32, 32)`: float inputs drawn
            from a seeded normal distribution.
        layers: globs over unit-layer names (as `AssayConfig.layers`): only the layers matching one.
        output: the path of the logits in a structured output (as `AssayConfig.output`), e.g. `"logits"`.

    Returns:
        A list of `UnitLayer`: `name`, `kind` ("linear", "conv", "token" or "head"), `n_units`, `producer` and
        `consumer` (None, with the reason in `producer_note` / `consumer_note`, where not well defined).

    Raises:
        TypeError: neither or both of `example_inputs` and `input_shape`.
        BadInputError: the model cannot read the inputs, no unit layer is found, `layers` matches none, or
            `output` selects no logits.

    Example::

        >>> import torch, resetassay as ra
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        >>> [(layer.name, layer.kind, layer.n_units) for layer in ra.find_unit_layers(net, input_shape=(4,))]
        [('1', 'linear', 16)]
        >>> mlp = ra.load_checkpoint("fixtures/silu_mlp/task2").model   # a zoo MLP: its layers are declared
        >>> [layer.name for layer in ra.find_unit_layers(mlp, torch.zeros(2, 64))]
        ['layers.0.act', 'layers.1.act', 'layers.2.act']
        >>> [layer.name for layer in ra.find_unit_layers(mlp, input_shape=(64,), layers=["layers.2.*"])]
        ['layers.2.act']
    """
    if (example_inputs is None) == (input_shape is None):
        raise TypeError("find_unit_layers() takes example_inputs or input_shape: give one of them")
    if input_shape is not None:
        x = torch.randn((2, *input_shape), generator=torch.Generator().manual_seed(0))
        device = next((p.device for p in model.parameters()), x.device)
        x = x.to(device)
    else:
        x = torch.as_tensor(example_inputs)[:2]
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    except Exception as err:  # the user's forward: any failure means these inputs do not fit it
        given = "input_shape" if input_shape is not None else "example_inputs"
        raise BadInputError(f"{type(model).__name__} cannot read {given} of shape {tuple(x.shape)} "
                            f"({one_line(err)}); give a batch shaped as the model takes it") from err
    tapped = tap_unit_layers(select_output(model, output, x), x)
    return unit_layers(tapped, x, layers)
