"""The data a model is assayed and trained on (SPEC S1, S6, S9), one module per source: the built-in datasets and
their permuted tasks (`permuted.py`: digits, MNIST, Fashion-MNIST, named `mnist` as published and `permuted-mnist`
for the continual study's tasks, docs/data.md; `grammar.py`: the permuted grammar), the user's own data (a
tensor file, `tensor_files.py`; an image folder or archive, `images.py`; a Hugging Face datasets folder,
`hf_datasets.py`; a `module:factory`, `factories.py`; each yielding the `Examples` of `examples.py`), which data a
checkpoint is assayed on (`spec.py`: `DataSpec`, `DataChoice`), and in `sources.py` a source opened by its kind,
`data_spec` from the command line and the seeded, disjoint calibration/probe split.
"""

from resetassay.data.examples import dataset_items, joined_labels, pair
from resetassay.data.factories import factories_called_once
from resetassay.data.images import image_classes, image_tensor, training_images
from resetassay.data.permuted import digits_arrays, mnist_arrays, permutation, read_idx
from resetassay.data.sources import (
    AssayData,
    assay_data,
    data_spec,
    example_inputs,
    split_calibration_probe,
    split_indices,
    task_arrays,
)
from resetassay.data.spec import (
    DATA_CHOICES,
    DEFAULT_SIZE,
    IMAGE_SIDE,
    NORMALIZE,
    PERMUTED,
    PERMUTED_PREFIX,
    USER_SOURCES,
    DataChoice,
    DataSpec,
    data_name,
    parse_normalize,
)

__all__ = [
    "AssayData", "DATA_CHOICES", "DEFAULT_SIZE", "DataChoice", "DataSpec", "IMAGE_SIDE", "NORMALIZE", "PERMUTED",
    "PERMUTED_PREFIX", "USER_SOURCES", "assay_data", "data_name", "data_spec", "dataset_items", "digits_arrays",
    "example_inputs", "factories_called_once", "image_classes", "image_tensor", "joined_labels", "mnist_arrays",
    "pair", "parse_normalize", "permutation", "read_idx", "split_calibration_probe", "split_indices", "task_arrays",
    "training_images",
]
