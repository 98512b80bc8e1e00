"""Datasets (digits, TFDS, image folders), preprocessing and the on-device input pipeline.

Importing this package does not import TensorFlow; loading a TFDS or image-folder dataset does.
"""

from cnnjax.data import folders
from cnnjax.data._types import Dataset, Split, carve_indices, carve_validation, subset_indices
from cnnjax.data.digits import load_digits
from cnnjax.data.pipeline import (
    alternating_flips,
    apply_augment,
    augment,
    augment_params,
    batch_indices,
    normalize,
)
from cnnjax.data.preprocess import (
    Normalization,
    fit_zca,
    global_contrast_normalize,
    patch_whitening,
    preprocess,
    standardization,
)
from cnnjax.data.sources import load_dataset, load_image_folder, load_tfds
from cnnjax.errors import DataError

__all__ = [
    "DataError",
    "Dataset",
    "Normalization",
    "Split",
    "alternating_flips",
    "apply_augment",
    "augment",
    "augment_params",
    "batch_indices",
    "carve_indices",
    "carve_validation",
    "fit_zca",
    "folders",
    "global_contrast_normalize",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "load_tfds",
    "normalize",
    "patch_whitening",
    "preprocess",
    "standardization",
    "subset_indices",
]
