"""Dataset sources: scikit-learn digits, TFDS by name, and image folders through TFDS.

TensorFlow is imported only here, lazily, and is hidden from accelerators: JAX owns them.
Nothing is ever downloaded unless ``download=True``: offline, an unprepared TFDS dataset
fails at once with instructions instead of retrying for minutes.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from cnnjax.data._types import Dataset, Split, carve_validation
from cnnjax.data.digits import load_digits
from cnnjax.errors import DataError

VALIDATION_NAMES = ("validation", "val", "valid")


def _tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # input decoding only; never take a GPU from JAX
    return tf


def _to_numpy(ds, image_size: int | None, what: str) -> Split:
    tf = _tensorflow()
    import tensorflow_datasets as tfds

    if image_size:
        size = (image_size, image_size)
        ds = ds.map(
            lambda x, y: (tf.cast(tf.image.resize(x, size, antialias=True) + 0.5, tf.uint8), y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    images, labels = [], []
    try:
        for x, y in tfds.as_numpy(ds.batch(1024).prefetch(2)):
            images.append(x)
            labels.append(y)
    except tf.errors.InvalidArgumentError as err:
        raise DataError(
            f"the images of {what} do not share one size; set `image_size` to resize them "
            f"({str(err).splitlines()[0]})."
        ) from None
    if not images:
        raise DataError(f"{what} holds no images.")
    return Split(np.concatenate(images), np.concatenate(labels))


def _read_splits(builder, image_size: int | None, what: str, names=None) -> dict[str, Split]:
    """Every split of a TFDS builder (``names`` when it has no split metadata) as arrays."""
    splits = {}
    for split in names or list(builder.info.splits):
        ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
        splits[split] = _to_numpy(ds, image_size, f"{what}/{split}")
    return splits


def _finish(name, num_classes, splits: dict[str, Split], val_fraction, seed) -> Dataset:
    for alias in VALIDATION_NAMES[1:]:
        if alias in splits and "validation" not in splits:
            splits["validation"] = splits.pop(alias)
    if "train" not in splits:
        raise DataError(f"dataset {name!r} has no 'train' split (found {sorted(splits)}).")
    if "validation" not in splits:
        splits["train"], splits["validation"] = carve_validation(
            splits["train"], val_fraction, seed
        )
    return Dataset(name, num_classes, splits)


def load_tfds(
    name: str,
    *,
    data_dir: str | None = None,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    download: bool = False,
) -> Dataset:
    """A TFDS dataset, e.g. ``cifar10``, as in-memory uint8 arrays."""
    _tensorflow()
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # TFDS raises several types for unknown names
        raise DataError(f"TFDS does not know the dataset {name!r}: {err}") from None
    if not builder.is_prepared():
        if not download:
            where = data_dir or "~/tensorflow_datasets"
            raise DataError(
                f"TFDS dataset {name!r} is not prepared in {where}. Prepare it once with "
                f"network access: `tfds build {name} --data_dir={where}` or rerun with "
                f"`--config.download=True`; offline, point `--config.dataset=imagefolder "
                f"--config.data_dir=<root>` at an image folder instead."
            )
        builder.download_and_prepare()
    features = builder.info.features
    num_classes = features["label"].num_classes
    # Builders without split metadata (e.g. under tfds.testing.mock_data) get the usual two.
    names = list(builder.info.splits) or ["train", "test"]
    splits = _read_splits(builder, image_size, name, names)
    return _finish(name, num_classes, splits, val_fraction, seed)


def load_image_folder(
    root: str,
    *,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    cache_dir: str | None = None,
) -> Dataset:
    """``<root>/<split>/<class>/*.jpg|png`` through TFDS ``ImageFolder``.

    Decoded arrays are cached as ``.npz`` in ``cache_dir`` (default ``~/.cache/cnnjax``), keyed
    by the folder's path, file count and ``image_size``, so a second run starts in seconds.
    """
    if not root or not os.path.isdir(root):
        raise DataError(
            f"image folder {root!r} does not exist; expected <root>/<split>/<class>/*.jpg|png "
            "(set `data_dir` to the root)."
        )
    split_dirs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not split_dirs:
        raise DataError(f"image folder {root!r} has no split folders such as {root}/train/.")
    count = sum(len(files) for _, _, files in os.walk(root))
    key = hashlib.sha1(f"{os.path.abspath(root)}|{count}|{image_size}".encode()).hexdigest()[:16]
    cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "cnnjax")
    cache = os.path.join(cache_dir, f"imagefolder-{key}.npz")
    if os.path.exists(cache):
        with np.load(cache) as f:
            names = [n[: -len("_images")] for n in f.files if n.endswith("_images")]
            splits = {n: Split(f[f"{n}_images"], f[f"{n}_labels"]) for n in names}
            num_classes = int(f["num_classes"])
    else:
        _tensorflow()
        import tensorflow_datasets as tfds

        builder = tfds.ImageFolder(root)
        num_classes = builder.info.features["label"].num_classes
        splits = _read_splits(builder, image_size, root)
        os.makedirs(cache_dir, exist_ok=True)
        arrays = {
            f"{n}_{k}": getattr(s, k) for n, s in splits.items() for k in ("images", "labels")
        }
        tmp = cache + ".tmp.npz"
        np.savez(tmp, num_classes=num_classes, **arrays)
        os.replace(tmp, cache)
    return _finish(f"imagefolder:{root}", num_classes, splits, val_fraction, seed)


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    download: bool = False,
) -> Dataset:
    """``digits``, ``imagefolder`` (root in ``data_dir``) or any TFDS image-classification name."""
    if name == "digits":
        return load_digits(image_size or 32, val_fraction, seed)
    if name == "imagefolder":
        return load_image_folder(
            data_dir, image_size=image_size, val_fraction=val_fraction, seed=seed
        )
    return load_tfds(
        name,
        data_dir=data_dir,
        image_size=image_size,
        val_fraction=val_fraction,
        seed=seed,
        download=download,
    )
