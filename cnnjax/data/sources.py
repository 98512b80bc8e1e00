"""Dataset sources: scikit-learn digits, TFDS by name, and image folders.

TensorFlow is imported only here, lazily, and is hidden from accelerators: JAX owns them.
Nothing is ever downloaded unless ``download=True``: offline, an unprepared TFDS dataset
fails at once with instructions instead of retrying for minutes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np

from cnnjax.data import folders
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


def _finish(name, num_classes, splits: dict[str, Split], val_fraction, seed, classes=()):
    """The dataset, with ``val``/``valid`` named ``validation`` and, when there is no
    validation split, one carved from train (a dataset without train is for evaluation)."""
    for alias in VALIDATION_NAMES[1:]:
        if alias in splits and "validation" not in splits:
            splits["validation"] = splits.pop(alias)
    if "validation" not in splits and "train" in splits and val_fraction > 0:
        splits["train"], splits["validation"] = carve_validation(
            splits["train"], val_fraction, seed
        )
    return Dataset(name, num_classes, splits, class_names=tuple(classes))


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
    if "train" not in splits:
        raise DataError(f"dataset {name!r} has no 'train' split (found {sorted(splits)}).")
    return _finish(name, num_classes, splits, val_fraction, seed, features["label"].names)


def load_image_folder(
    root: str,
    *,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    cache_dir: str | None = None,
    skip_bad: bool = False,
    splits: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    channels: int = 3,
) -> Dataset:
    """``<root>/<split>/<class>/<image>``, decoded with Pillow (:mod:`cnnjax.data.folders`
    checks the layout and names any bad file).

    ``splits``: only these split folders (e.g. ``["test"]`` to evaluate, with ``classes`` the
    trained run's label order); ``channels``: 3 (RGB) or 1 (grey). Decoded arrays are cached
    as ``.npz`` in ``cache_dir`` (default: ``$CNNJAX_CACHE_DIR`` or ``~/.cache/cnnjax``;
    ``""`` turns the cache off), keyed by what defines the data: the folder's path, every
    file's relative path, size and modification time (so class and split names too),
    ``image_size`` and the other arguments. A second run starts in seconds; any change to the
    files decodes them again, and a failed read caches nothing. ``dataset.source`` says which
    happened.
    """
    index = folders.index_folder(root, splits, classes, skip_bad)
    key = f"{image_size}|{skip_bad}|{channels}|{sorted(index.files)}|{index.classes}"
    cache = _cache_path(index, key, cache_dir) if cache_dir != "" else None
    if cache is not None and os.path.exists(cache):
        with np.load(cache) as f:
            loaded = {n: Split(f[f"{n}_images"], f[f"{n}_labels"]) for n in index.files}
        source = f"decoded images from the cache {cache}"
    else:
        loaded, skipped = {}, len(index.skipped)
        for name in index.files:
            images, labels, bad = folders.read_split(index, name, image_size, skip_bad, channels)
            loaded[name], skipped = Split(images, labels), skipped + bad
        source = "decoded from the image files" + (f", {skipped} skipped" if skipped else "")
        if cache is not None:
            arrays = {
                f"{n}_{k}": getattr(s, k) for n, s in loaded.items() for k in ("images", "labels")
            }
            os.makedirs(os.path.dirname(cache), exist_ok=True)
            tmp = f"{cache}.{os.getpid()}.tmp.npz"  # written whole, then renamed: never torn
            np.savez(tmp, **arrays)
            os.replace(tmp, cache)
            source += f", cached in {cache}"
    dataset = _finish(
        f"imagefolder:{root}", len(index.classes), loaded, val_fraction, seed, index.classes
    )
    dataset.source = source
    return dataset


CACHE_VERSION = 3  # bump when the cached arrays change meaning


def cache_dir_default() -> str:
    """Where decoded image folders are cached: ``$CNNJAX_CACHE_DIR`` or ``~/.cache/cnnjax``."""
    return os.environ.get("CNNJAX_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "cnnjax"
    )


def _cache_path(index: folders.FolderIndex, key: str, cache_dir: str | None) -> str:
    """The cache file of an image folder: keyed by what defines the arrays, the files the
    index lists (:meth:`FolderIndex.fingerprint`) among them."""
    text = f"v{CACHE_VERSION}|{os.path.abspath(index.root)}|{key}|{index.fingerprint()}"
    name = f"imagefolder-{hashlib.sha256(text.encode()).hexdigest()[:24]}.npz"
    return os.path.join(cache_dir or cache_dir_default(), name)


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    download: bool = False,
    cache: bool = True,
    skip_bad: bool = False,
) -> Dataset:
    """``digits``, ``imagefolder`` (root in ``data_dir``) or any TFDS image-classification name."""
    if name == "digits":
        return load_digits(image_size or 32, val_fraction, seed)
    if name == "imagefolder":
        return load_image_folder(
            data_dir,
            image_size=image_size,
            val_fraction=val_fraction,
            seed=seed,
            cache_dir=None if cache else "",
            skip_bad=skip_bad,
        )
    return load_tfds(
        name,
        data_dir=data_dir,
        image_size=image_size,
        val_fraction=val_fraction,
        seed=seed,
        download=download,
    )
