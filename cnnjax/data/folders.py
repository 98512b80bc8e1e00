"""Image folders, ``ROOT/<split>/<class>/<image>``, read with Pillow.

The layout is checked before anything is decoded, and every problem is one sentence that names
the folder or file: a missing split level (``ROOT/<class>/``), an empty class folder, a training
split with a single class, a file that cannot be decoded (or, with ``skip_bad_images``, a
warning and a count), images of different sizes without ``image_size``. Hidden folders and
files (``.ipynb_checkpoints``, ``.DS_Store``) are ignored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from cnnjax.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclasses.dataclass(frozen=True)
class FolderIndex:
    """What an image folder holds: class names (label order) and, per split, the image files
    (paths relative to the root) with their labels."""

    root: str
    classes: tuple[str, ...]
    files: dict[str, list[tuple[str, int]]]
    skipped: tuple[str, ...] = ()  # image names that point nowhere (dangling links), skipped

    def fingerprint(self) -> str:
        """A digest of exactly the files the index lists: each one's relative path, size and
        modification time (a renamed class, an added or re-encoded image changes it; a hidden
        file or a link that points nowhere does not)."""
        digest = hashlib.sha256(repr(self.classes).encode())
        for split in sorted(self.files):
            for rel, label in self.files[split]:
                stat = os.stat(os.path.join(self.root, rel))
                digest.update(f"|{rel}|{label}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        return digest.hexdigest()


def _visible(names):
    return sorted(n for n in names if not n.startswith("."))


def _images_in(folder: str) -> list[str]:
    """Image files of ``folder``; a name that points nowhere (a dangling link) is included,
    for :func:`index_folder` to name or skip."""
    return [
        n
        for n in _visible(os.listdir(folder))
        if n.lower().endswith(IMAGE_EXTENSIONS)
        and (os.path.isfile(os.path.join(folder, n)) or _dangling(os.path.join(folder, n)))
    ]


def _dangling(path: str) -> bool:
    return os.path.islink(path) and not os.path.exists(path)


def _subfolders(folder: str) -> list[str]:
    return [n for n in _visible(os.listdir(folder)) if os.path.isdir(os.path.join(folder, n))]


def index_folder(
    root: str,
    splits: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    skip_bad: bool = False,
) -> FolderIndex:
    """Checks ``root``'s layout and lists its images (``splits``: only these split folders).

    ``classes`` fixes the label order (a trained run's); by default it is the sorted class
    folders of ``train`` (or of every split, when there is no ``train``). A link that points
    nowhere is named in a DataError, or with ``skip_bad`` left out and counted
    (``index.skipped``).
    """
    if not root or not os.path.isdir(root):
        raise DataError(
            f"image folder {root!r} does not exist; expected <root>/<split>/<class>/*.jpg|png "
            "(set `data_dir` to the root)."
        )
    split_names = _subfolders(root)
    if not split_names:
        raise DataError(f"image folder {root!r} has no split folders such as {root}/train/.")
    for split in split_names:
        if _images_in(os.path.join(root, split)):
            raise DataError(
                f"{os.path.join(root, split)} holds images directly, so {root} looks like a "
                f"split, not the root: the layout is ROOT/<split>/<class>/<image> (e.g. "
                f"ROOT/train/cat/0001.jpg)."
            )
    if splits is not None:
        missing = [s for s in splits if s not in split_names]
        if missing:
            raise DataError(
                f"image folder {root!r} has no {missing[0]!r} split (it has {split_names})."
            )
        split_names = list(splits)
    found = {s: _subfolders(os.path.join(root, s)) for s in split_names}
    if "train" in found and len(found["train"]) < 2:
        raise DataError(
            f"{os.path.join(root, 'train')} has {len(found['train'])} class folder(s): a "
            "classifier needs at least two classes."
        )
    if classes is None:
        classes = found["train"] if "train" in found else sorted(set().union(*found.values()))
    classes = tuple(classes)
    files: dict[str, list[tuple[str, int]]] = {}
    skipped: list[str] = []
    for split, names in found.items():
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise DataError(
                f"{os.path.join(root, split)} has class folders {unknown} that are not among "
                f"the classes {list(classes)}."
            )
        files[split] = []
        for name in names:
            images = _images_in(os.path.join(root, split, name))
            if not images:
                raise DataError(
                    f"class folder {os.path.join(root, split, name)} holds no images "
                    f"({', '.join(IMAGE_EXTENSIONS)}); remove it or add its images."
                )
            label = classes.index(name)
            for f in images:
                rel = os.path.join(split, name, f)
                if _dangling(os.path.join(root, rel)):
                    skipped.append(rel)
                else:
                    files[split].append((rel, label))
    if skipped and not skip_bad:
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise DataError(
            f"{os.path.join(root, skipped[0])}{more} is a link to a file that does not exist. "
            "Remove it, or set skip_bad_images=True to skip such files with a count."
        )
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} link(s) to files that do not exist, e.g. "
            f"{os.path.join(root, skipped[0])}.",
            stacklevel=2,
        )
    return FolderIndex(root, classes, files, tuple(skipped))


def open_image(path: str, channels: int = 3):
    """The image at ``path`` as a loaded Pillow image in mode RGB (``channels=3``) or L (1).

    Baseline and progressive JPEGs in YCbCr or grey are decoded by libjpeg-turbo through
    simplejpeg, the same library Pillow decodes them with, so the pixels are identical
    (tested), but without Pillow's marker parsing in Python: 11 against 130 µs a 32 × 32
    CIFAR image (``experiments/perf_notes.md``). Every other file, and any JPEG simplejpeg
    will not take, is Pillow's.

    Raises OSError/ValueError/SyntaxError, what Pillow raises for a file it cannot decode."""
    from PIL import Image

    with open(path, "rb") as f:
        data = f.read()
    array = _libjpeg(data, channels)
    if array is not None:
        return Image.fromarray(array if channels == 3 else array[..., 0])
    mode = "L" if channels == 1 else "RGB"
    with Image.open(io.BytesIO(data)) as im:
        if im.mode in _WIDE_MODES:
            return _scaled(im).convert(mode)
        if im.mode == mode:  # convert() would copy it
            im.load()
            return im
        return im.convert(mode)


# Grey images of more than 8 bits: Pillow's convert() would clip them to 0..255 (a 16-bit PNG
# reads as white, a float TIFF as black), so they are scaled to 8 bits first.
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _scaled(im):
    """A 16-bit, 32-bit integer or float grey image as 8 bits (mode L), keeping what the
    pixels mean: 16-bit (0..65535) divided by 257 and rounded, so 0 and 65535 stay black and
    white; 32-bit integers likewise when they lie in 0..65535; floats in [0, 1] times 255,
    rounded. Anything else is refused, naming the file and its mode: its range is unknown."""
    from PIL import Image

    a = np.asarray(im)
    if im.mode.startswith("I") and a.size and 0 <= a.min() and a.max() <= 65535:
        return Image.fromarray(np.rint(a.astype(np.float64) / 257.0).astype(np.uint8))
    if im.mode == "F" and np.isfinite(a).all() and a.size and 0 <= a.min() and a.max() <= 1:
        return Image.fromarray(np.rint(a.astype(np.float64) * 255.0).astype(np.uint8))
    low, high = (a.min(), a.max()) if a.size else (0, 0)
    expected = "0..65535" if im.mode.startswith("I") else "[0, 1]"
    raise ValueError(
        f"mode {im.mode} with values in [{low}, {high}]; cnnjax reads such images when they lie "
        f"in {expected} (convert it to 8-bit PNG or JPEG)"
    )


def _libjpeg(data: bytes, channels: int) -> np.ndarray | None:
    """A JPEG decoded as Pillow would decode it (H, W, channels), or None to leave it to
    Pillow: not a JPEG, damaged (Pillow names the error), CMYK, or a colour JPEG asked for in
    grey (Pillow converts the RGB pixels to luma; libjpeg would return its Y channel)."""
    import simplejpeg

    if data[:2] != b"\xff\xd8":
        return None
    try:
        _, _, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace == "Gray":
            grey = simplejpeg.decode_jpeg(data, colorspace="GRAY")
            return np.repeat(grey, channels, axis=-1) if grey.ndim == 3 else None
        if colorspace == "YCbCr" and channels == 3:
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
    except ValueError:  # damaged or truncated (strict: libjpeg's warnings too)
        return None
    return None


def to_array(im, image_size: int | None, channels: int = 3) -> np.ndarray:
    """A Pillow image as (H, W, channels) uint8, first resized to ``image_size`` square
    (bilinear) when given: the one resize both input paths use, so they see the same pixels."""
    from PIL import Image

    if image_size:
        im = im.resize((image_size, image_size), Image.BILINEAR)
    return np.asarray(im, np.uint8).reshape(im.height, im.width, channels)


def _decode(path: str, image_size: int | None, channels: int):
    try:
        return to_array(open_image(path, channels), image_size, channels), None
    except (OSError, ValueError, SyntaxError) as err:  # what Pillow raises for bad files
        return None, str(err) or type(err).__name__


def read_split(
    index: FolderIndex,
    split: str,
    image_size: int | None,
    skip_bad: bool = False,
    channels: int = 3,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Decodes one split: (images (N, H, W, channels) uint8, labels (N,), number of files
    skipped). ``channels``: 3 (RGB) or 1 (grey)."""
    entries = index.files[split]
    paths = [os.path.join(index.root, rel) for rel, _ in entries]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        decode = lambda p: _decode(p, image_size, channels)
        decoded = list(pool.map(decode, paths, chunksize=256))
    good, bad = [], []
    for (array, error), path, (_, label) in zip(decoded, paths, entries, strict=True):
        if error is None:
            good.append((array, path, label))
        else:
            bad.append((path, error))
    if bad and not skip_bad:
        path, error = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(
            f"cannot decode {path}{more}: {error}. Remove it, or set skip_bad_images=True to "
            "skip such files with a warning."
        )
    if bad:
        warnings.warn(
            f"skipped {len(bad)} image(s) that cannot be decoded, e.g. {bad[0][0]}.", stacklevel=2
        )
    if not good:
        raise DataError(f"{os.path.join(index.root, split)} holds no images that can be decoded.")
    shapes = [a.shape for a, _, _ in good]
    common = max(set(shapes), key=shapes.count)
    for array, path, _ in good:
        if array.shape != common:
            raise DataError(
                f"images of different sizes: {path} is {array.shape[1]}x{array.shape[0]} while "
                f"most are {common[1]}x{common[0]}; set `image_size` to resize them all."
            )
    images = np.stack([a for a, _, _ in good])
    return images, np.asarray([label for _, _, label in good], np.int32), len(bad)


def write_image_folder(
    root: str,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    *,
    shorter_side: tuple[int, int] = (80, 160),
    seed: int = 0,
    quality: int = 90,
) -> dict[str, int]:
    """Writes ``ROOT/<split>/<class>/<index>.jpg`` from arrays, ImageNet-shaped: every image
    resized (bicubic) to its own random size, the shorter side uniform in ``shorter_side`` and
    the aspect ratio log-uniform in [3/4, 4/3], as photographs vary.

    ``splits``: name -> (images (N, H, W, C) uint8 with C = 1 or 3, labels (N,) into
    ``class_names``). Returns the number of images written per split. A small real folder to
    exercise the streaming path (random crops of images of many sizes) without a download.
    """
    from PIL import Image

    lo, hi = shorter_side
    if not 1 <= lo <= hi:
        raise ValueError(f"`shorter_side` must be (lo, hi) with 1 <= lo <= hi, got {shorter_side}.")
    rng = np.random.default_rng(seed)
    written = {}
    for split, (images, labels) in splits.items():
        for name in class_names:
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            side = int(rng.integers(lo, hi + 1))
            ratio = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
            size = (round(side * ratio), side) if ratio >= 1 else (side, round(side / ratio))
            pixels = image[..., 0] if image.shape[-1] == 1 else image
            picture = Image.fromarray(pixels).convert("RGB").resize(size, Image.BICUBIC)
            path = os.path.join(root, split, class_names[int(label)], f"{i:06d}.jpg")
            picture.save(path, quality=quality)
        written[split] = len(labels)
    return written
