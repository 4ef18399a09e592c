"""The data a model is assayed and trained on (SPEC S1, S6, S9): the built-in permuted tasks (digits, MNIST,
Fashion-MNIST; the permuted grammar of `grammar.py`), the user's own data (a tensor file, an image folder or
archive, a Hugging Face datasets folder, a `module:factory`), which data a checkpoint is assayed on
(`DataSpec`, `data_spec`, `DataChoice`) and the seeded, disjoint calibration/probe split (`sources.py`).
"""

from resetassay.data.sources import (
    DATA_CHOICES,
    DEFAULT_SIZE,
    IMAGE_SIDE,
    NORMALIZE,
    PERMUTED,
    USER_SOURCES,
    AssayData,
    DataChoice,
    DataSpec,
    assay_data,
    data_spec,
    dataset_items,
    digits_arrays,
    example_inputs,
    factories_called_once,
    image_classes,
    image_tensor,
    joined_labels,
    mnist_arrays,
    pair,
    parse_normalize,
    permutation,
    read_idx,
    split_calibration_probe,
    split_indices,
    task_arrays,
    training_images,
)

__all__ = [
    "AssayData", "DATA_CHOICES", "DEFAULT_SIZE", "DataChoice", "DataSpec", "IMAGE_SIDE", "NORMALIZE", "PERMUTED",
    "USER_SOURCES", "assay_data", "data_spec", "dataset_items", "digits_arrays", "example_inputs",
    "factories_called_once", "image_classes", "image_tensor", "joined_labels", "mnist_arrays", "pair",
    "parse_normalize", "permutation", "read_idx", "split_calibration_probe", "split_indices", "task_arrays",
    "training_images",
]
