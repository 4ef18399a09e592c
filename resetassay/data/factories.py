"""`--data pkg.mod:factory` (SPEC S1): the examples a user's function returns, called once per run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from resetassay.data.examples import Examples, _checked, dataset_items, joined_labels, pair
from resetassay.data.spec import DataSpec
from resetassay.errors import BadInputError, one_line
from resetassay.io.imports import import_named_module

_FACTORY_RESULTS: dict[tuple, object] | None = None  # a factory's examples, kept only inside `factories_called_once`


@contextmanager
def factories_called_once() -> Iterator[None]:
    """Within the block (one run over many checkpoints), each data factory with the same kwargs is called once;
    outside, every use calls it again. Files are cached by their path, mtime and size, but a factory's result has no
    such stamp: kept across calls, a notebook that changed what the factory returns would get the old data back."""
    global _FACTORY_RESULTS
    outer, _FACTORY_RESULTS = _FACTORY_RESULTS, {} if _FACTORY_RESULTS is None else _FACTORY_RESULTS
    try:
        yield
    finally:
        _FACTORY_RESULTS = outer


def _factory_examples(spec: DataSpec) -> Examples:
    """The examples `spec.factory(**spec.factory_kwargs)` returns (imported from the working folder too):
    (x, y) tensors, an indexable Dataset of (x, y) items (fetched by index) or an iterable of (x, y) batches."""
    key = (spec.factory, json.dumps(spec.factory_kwargs, sort_keys=True, default=repr))
    if _FACTORY_RESULTS is None:
        return _call_factory(spec.factory, spec.factory_kwargs or {})
    if key not in _FACTORY_RESULTS:
        _FACTORY_RESULTS[key] = _call_factory(spec.factory, spec.factory_kwargs or {})
    return _FACTORY_RESULTS[key]


def _call_factory(name: str, kwargs: dict) -> Examples:
    module_name, _, attr = name.partition(":")
    target: object = import_named_module(module_name, f"`data` {name}", "data")
    for part in attr.split("."):
        if not hasattr(target, part):
            raise BadInputError(f"`data` {name}: {module_name} has no attribute {attr!r}", field="data")
        target = getattr(target, part)
    if not callable(target):
        raise BadInputError(f"`data` {name}: {attr} is not callable", field="data")
    try:
        made = target(**kwargs)
    except Exception as err:
        raise BadInputError(f"`data` {name}: the factory failed ({one_line(err)})", field="data") from err
    return _factory_result(made, name)


MAX_ITERATED_EXAMPLES = 500_000  # what a factory's iterable may yield: an endless generator stops here, refused


def _finite_batches(made: object, what: str) -> list[tuple[object, object]]:
    """The (x, y) batches of an iterable, refused once they pass MAX_ITERATED_EXAMPLES (an endless generator would
    never end); a batch of unknown size counts as one example."""
    batches, count = [], 0
    for batch in iter(made):  # type: ignore[call-overload]
        batches.append(pair(batch, what))
        count += len(batches[-1][0]) if hasattr(batches[-1][0], "__len__") else 1
        if count > MAX_ITERATED_EXAMPLES:
            raise BadInputError(f"{what}: yielded more than {MAX_ITERATED_EXAMPLES:,} examples without ending; "
                                "return a finite iterable, a Dataset with a length, or (x, y) tensors",
                                field="data")
    return batches


def _factory_result(made: object, name: str) -> Examples:
    from torch.utils.data import DataLoader, Dataset, IterableDataset, SequentialSampler

    what = f"`data` {name}"
    if isinstance(made, dict | torch.Tensor | np.ndarray) or (
            isinstance(made, tuple | list) and len(made) == 2 and not isinstance(made[0], tuple | list)):
        x, y = _checked(*pair(made, what), what)  # a dict: one batch (iterating it would walk its keys)
        return Examples(name, len(x), lambda idx: (x[idx], y[idx]), {})
    if isinstance(made, Dataset) and not isinstance(made, IterableDataset) and hasattr(made, "__len__"):
        dataset = made

        def take(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            try:
                xs, ys = dataset_items(dataset, idx.tolist(), what)
            except BadInputError:
                raise
            except Exception as err:
                raise BadInputError(f"{what}: its Dataset items must be (x, y) pairs of a tensor and an integer "
                                    f"label ({one_line(err)})", field="data") from err
            return _checked(xs, ys, what)

        if len(dataset) == 0:
            raise BadInputError(f"{what}: no examples", field="data")
        return Examples(name, len(dataset), take, {})
    if isinstance(made, DataLoader) and not isinstance(made.sampler, SequentialSampler) and \
            not isinstance(made.dataset, IterableDataset):
        raise BadInputError(f"{what}: its DataLoader shuffles; make it with shuffle=False (resetassay draws the "
                            "seeded split itself)", field="data")
    try:
        batches = _finite_batches(made, what)
        if not batches:
            raise ValueError("no batches")
        xs = [torch.as_tensor(x) for x, _ in batches]
        x, y = torch.cat(xs), joined_labels([y for _, y in batches], what)
    except BadInputError:
        raise
    except Exception as err:
        raise BadInputError(f"{what}: must return (x, y) tensors, a Dataset of (x, y) items or an iterable of "
                            f"(x, y) batches, got {type(made).__name__} ({one_line(err)})", field="data") from err
    x, y = _checked(x, y, what)
    return Examples(name, len(x), lambda idx: (x[idx], y[idx]), {})
