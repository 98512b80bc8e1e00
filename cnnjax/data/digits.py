"""The handwritten digits bundled with scikit-learn: real data that needs no network.

1,797 grey-scale 8×8 images of the digits 0-9 (UCI optical recognition of handwritten
digits), resized to ``image_size`` and stored as uint8. A fixed-seed 20 % is held out as the
``test`` split; ``validation`` is carved from the rest.
"""

from __future__ import annotations

import numpy as np

from cnnjax.data._types import Dataset, Split, carve_validation


def load_digits(image_size: int = 32, val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    from PIL import Image
    from sklearn.datasets import load_digits as sk_load

    raw = sk_load()
    images = (raw.images / 16.0 * 255.0).round().astype(np.uint8)  # (1797, 8, 8), 0..16 -> 0..255
    if image_size != 8:
        images = np.stack(
            [
                np.asarray(Image.fromarray(im).resize((image_size, image_size), Image.BILINEAR))
                for im in images
            ]
        )
    images = images[..., None]
    labels = raw.target.astype(np.int32)
    order = np.random.default_rng(12345).permutation(len(labels))  # fixed test split
    n_test = len(labels) // 5
    test, rest = np.sort(order[:n_test]), np.sort(order[n_test:])
    splits = {"train": Split(images[rest], labels[rest]), "test": Split(images[test], labels[test])}
    if val_fraction > 0:
        splits["train"], splits["validation"] = carve_validation(
            splits["train"], val_fraction, seed
        )
    return Dataset("digits", 10, splits, class_names=tuple(str(d) for d in range(10)))
