"""`--data FOLDER` written by Hugging Face `datasets`' `save_to_disk` (SPEC S1)."""

from __future__ import annotations

from pathlib import Path

import torch

from resetassay.data.examples import HF_INPUTS, HF_LABELS, Examples, _checked
from resetassay.data.images import HELD_OUT_NAMES, _decode_image, _image_stack, image_tensor
from resetassay.errors import BadInputError, one_line


def _hf_examples(path: Path, size: int | None, mean: tuple | None, std: tuple | None) -> Examples:
    """The rows of a `save_to_disk` folder (of a DatasetDict: its split named test, val, ..., or its only one):
    inputs from the first column named as in HF_INPUTS (an image column is decoded as the image source does,
    resized and normalised alike), labels from the first named as in HF_LABELS (none: unlabelled data)."""
    try:
        import datasets
    except ImportError as err:
        raise BadInputError(f"{path}: a Hugging Face datasets folder needs the datasets package; pip install "
                            f"'resetassay[datasets]' ({one_line(err)})", field="data") from err
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:
        raise BadInputError(f"{path}: datasets cannot load it ({one_line(err)})", field="data") from err
    where = str(path)
    if isinstance(loaded, datasets.DatasetDict):
        names = list(loaded)
        split = next((n for held in HELD_OUT_NAMES for n in names if n.lower() == held), None)
        split = split or (names[0] if len(names) == 1 else None)
        if split is None:
            raise BadInputError(f"{path}: splits {', '.join(names)}, none named {', '.join(HELD_OUT_NAMES)}; save "
                                "the split to assay on by itself", field="data")
        loaded, where = loaded[split], f"{path} (split {split})"
    columns = loaded.column_names
    x_col = next((c for c in HF_INPUTS if c in columns), None)
    y_col = next((c for c in HF_LABELS if c in columns), None)
    if x_col is None:
        raise BadInputError(f"{where}: no input column ({', '.join(HF_INPUTS)}); its columns are "
                            f"{', '.join(columns)}", field="data")
    if len(loaded) == 0:
        raise BadInputError(f"{where}: no examples", field="data")
    image = isinstance(loaded.features[x_col], datasets.Image)
    if image:
        loaded = loaded.cast_column(x_col, datasets.Image(decode=False))  # raw bytes, decoded as the image source does
    elif size is not None or mean is not None:
        raise BadInputError(f"{where}: `image_size` and `normalize` apply to an image column; {x_col} is not one",
                            field="image_size" if size is not None else "normalize")

    def take(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = loaded.select(idx.tolist())
        if image:
            x = image_tensor(_image_stack([_decode_image(item["bytes"] or Path(item["path"]).read_bytes(),
                                                         f"{where} row {i}", size)
                                           for i, item in zip(idx.tolist(), rows[x_col], strict=True)], where),
                             mean, std)
        else:
            x = rows.with_format("numpy")[x_col]
        return _checked(x, rows.with_format("numpy")[y_col] if y_col else None, where)

    return Examples(path.name, len(loaded), take, {"columns": ", ".join(c for c in (x_col, y_col) if c)})
