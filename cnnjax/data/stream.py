"""Streaming input on grain: the host reads, decodes and augments; each step gets one batch.

The device-resident path (:mod:`cnnjax.data.pipeline`) keeps a whole split on every device.
This one keeps nothing but a list of examples: batches are decoded as they are needed, in
grain worker processes, so a split of any size trains on any number of hosts.

Which examples make batch ``s`` is a pure function of (seed, s), exactly as on the device
path: epoch ``e = s // steps_per_epoch`` is a permutation of the split keyed by (seed, e), and
the global batch is its ``s mod steps_per_epoch``-th run of ``batch_size`` examples (the
remainder of an epoch is dropped). Process ``p`` of ``P`` reads rows ``[p·b, (p+1)·b)`` of
it, ``b = batch_size / P``, so the global batch is the same whatever ``P`` is, and so are its
augmentation draws, which are made for the whole global batch from (seed, s) and sliced.
A grain iterator over steps ``0, 1, …`` is then the whole input state of a run: its
``get_state()`` goes into the checkpoint beside the train state.

Sources (random access: ``len``, ``example(i)`` → (Pillow image, label), ``subset(rows)``):
:class:`FolderSource` (``ROOT/<split>/<class>/<file>``, decoded in the workers by
:func:`cnnjax.data.folders.open_image`, as the device path decodes), :class:`TfdsSource` (a
prepared TFDS dataset through ``tfds.data_source``, ArrayRecord) and :class:`ArraySource`
(in-memory arrays: digits, a decoded cache).

Augmentation (``augment``): ``"crop_flip"``, the CIFAR recipe of the device path (resize to
``image_size`` as the device path decodes, random crop after padding, flips); ``"inception"``,
the Inception paper's random-resized crop (8–100 % of the area, aspect ratio 3/4–4/3, as in
torchvision) and flips, evaluated by resizing the shorter side to ``image_size / 0.875`` and
cropping the centre. The host draws the flips and the step applies them
(:func:`cnnjax.train.streamed_batch`; :func:`mirrored` does it on the host).
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
from collections.abc import Sequence

import numpy as np

from cnnjax.data import folders
from cnnjax.errors import DataError

AUGMENTS = ("crop_flip", "inception")
INCEPTION_AREA = (0.08, 1.0)
INCEPTION_RATIO = (3 / 4, 4 / 3)
CENTRE_FRACTION = 0.875  # evaluation: the centre crop's side over the resized shorter side
_ATTEMPTS = 10  # random-resized crop: tries before falling back to the centre


def _image_from_array(a: np.ndarray):
    from PIL import Image

    return Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)


class FolderSource:
    """The image files of one split of an image folder, decoded when read."""

    def __init__(self, root: str, entries: Sequence[tuple[str, int]], channels: int = 3):
        self.root, self.channels = root, channels
        self.paths = [rel for rel, _ in entries]
        self.labels = np.asarray([label for _, label in entries], np.int32)

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, i: int) -> str:
        return os.path.join(self.root, self.paths[i])

    def example(self, i: int):
        """(Pillow image, label) of example ``i``; raises :class:`BadImage` naming the file."""
        try:
            image = folders.open_image(self.name(i), self.channels)
        except (OSError, ValueError, SyntaxError) as err:  # what Pillow raises for bad files
            raise BadImage(self.name(i), str(err) or type(err).__name__) from None
        return image, int(self.labels[i])

    def subset(self, rows: np.ndarray) -> FolderSource:
        entries = [(self.paths[i], int(self.labels[i])) for i in rows]
        return FolderSource(self.root, entries, self.channels)


class ArraySource:
    """In-memory images (N, H, W, C) uint8 and labels (N,)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, name: str = "arrays"):
        self.images, self.labels, self._name = images, np.asarray(labels, np.int32), name
        self.channels = images.shape[-1]

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, i: int) -> str:
        return f"{self._name}[{i}]"

    def example(self, i: int):
        return _image_from_array(self.images[i]), int(self.labels[i])

    def subset(self, rows: np.ndarray) -> ArraySource:
        return ArraySource(self.images[rows], self.labels[rows], self._name)


class TfdsSource:
    """One split of a prepared TFDS dataset read through ``tfds.data_source`` (ArrayRecord:
    random access, no TensorFlow input pipeline); ``rows``: only those records."""

    def __init__(self, name: str, split: str, data_dir: str | None, rows=None, channels=3):
        self.dataset, self.split, self.data_dir, self.channels = name, split, data_dir, channels
        self._source = None
        self.rows = np.arange(len(self._open())) if rows is None else np.asarray(rows)

    def _open(self):
        if self._source is None:  # in a worker process too: TensorFlow kept off accelerators
            from cnnjax.data.sources import _tensorflow

            _tensorflow()
            import tensorflow_datasets as tfds

            self._source = tfds.data_source(
                self.dataset, split=self.split, data_dir=self.data_dir, download=False
            )
        return self._source

    def __getstate__(self):  # an open data source stays in the process that opened it
        return {**self.__dict__, "_source": None}

    def __len__(self) -> int:
        return len(self.rows)

    def name(self, i: int) -> str:
        return f"{self.dataset}/{self.split}[{int(self.rows[i])}]"

    def example(self, i: int):
        record = self._open()[int(self.rows[i])]
        image = np.asarray(record["image"], np.uint8)
        return _image_from_array(image if image.ndim == 3 else image[..., None]), int(
            record["label"]
        )

    def subset(self, rows: np.ndarray) -> TfdsSource:
        out = TfdsSource.__new__(TfdsSource)
        out.__dict__.update(self.__getstate__())
        out.rows = self.rows[rows]
        return out


class BadImage(DataError):
    """An example whose image cannot be decoded; ``path`` names it. Picklable, so that it
    reaches the training process from a worker as it was raised."""

    def __init__(self, path: str, reason: str):
        super().__init__(path, reason)
        self.path, self.reason = path, reason

    def __str__(self) -> str:
        return (
            f"cannot decode {self.path}: {self.reason}. Remove it, or set skip_bad_images=True "
            "to skip such files with a count."
        )


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """What the batches of a run are: which examples, at what size, augmented how.

    Attributes:
      num_examples: examples in the split; an epoch is ``num_examples // batch_size`` steps.
      batch_size: the global batch, over all processes.
      seed: batch order and augmentation derive from it and the step.
      image_size: the side of every image (None: the source's own, for arrays and folders of
        one size; ``"inception"`` needs it).
      augment: "crop_flip" or "inception" (module docstring); ``train=False``: none.
      crop_padding, crop_mode, flip, flip_mode: as the training config's fields.
      resize: images of another size than ``image_size`` are resized to it (it was
        configured); otherwise they are refused, naming the file.
      skip_bad: replace an image that cannot be decoded by the next example of the epoch's
        order (counted in the batch's ``"skipped"``) instead of stopping.
    """

    num_examples: int
    batch_size: int
    seed: int = 0
    image_size: int | None = None
    augment: str = "crop_flip"
    crop_padding: int = 0
    crop_mode: str = "zeros"
    flip: bool = False
    flip_mode: str = "random"
    resize: bool = True
    skip_bad: bool = False

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.batch_size


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


_ORDER, _AUGMENT, _FLIPS = 0, 1, 2  # the streams of random numbers a run draws from


class TrainBatches:
    """``batch(step)``: this process's rows of global batch ``step``, decoded and augmented.

    Picklable (grain sends it to its worker processes); returns ``{"image": (b, H, W, C)
    uint8, "label": (b,) int32, "flip": (b,) bool, "step": int64, "skipped": int64}``: the
    images cropped, and which of them the step mirrors (:func:`mirrored` on the host; a
    strided copy costs the host more than anything but decoding, the device nothing).
    """

    def __init__(self, source, spec: StreamSpec, process_index: int = 0, process_count: int = 1):
        if spec.batch_size % process_count:
            raise DataError(
                f"`batch_size`={spec.batch_size} must be divisible by the number of processes "
                f"({process_count})."
            )
        self.source, self.spec = source, spec
        self.rows = slice(process_index * spec.batch_size // process_count, None)
        self.local = spec.batch_size // process_count
        self._epoch, self._order, self._base_flips = -1, None, None

    def base_flips(self) -> np.ndarray:
        """``flip_mode="alternating"``: each example's flip of the even epochs (the odd ones
        flip it back), drawn once for the run."""
        if self._base_flips is None:
            rng = _rng(self.spec.seed, _FLIPS)
            self._base_flips = rng.random(self.spec.num_examples) < 0.5
        return self._base_flips

    def order(self, epoch: int) -> np.ndarray:
        """The permutation of the split that epoch ``epoch`` reads in order."""
        if epoch != self._epoch:
            n = self.spec.num_examples
            self._epoch, self._order = epoch, _rng(self.spec.seed, _ORDER, epoch).permutation(n)
        return self._order

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        spec = self.spec
        epoch, i = divmod(int(step), spec.steps_per_epoch)
        start = i * spec.batch_size + self.rows.start
        positions = np.arange(start, start + self.local)
        order = self.order(epoch)
        draws = _draws(spec, _rng(spec.seed, _AUGMENT, step), self.rows.start, self.local)
        if spec.flip and spec.flip_mode == "alternating":
            draws["flips"] = self.base_flips()[order[positions]] ^ (epoch % 2 == 1)
        images, labels, skipped = [], [], 0
        for row, pos in enumerate(positions):
            (im, label), index, tries = _read(self.source, order, pos, spec.skip_bad)
            skipped += tries
            labels.append(label)
            name, channels = self.source.name(index), self.source.channels
            if spec.augment == "inception":
                crop = random_resized_crop(im, spec.image_size, draws["crop"][row])
                images.append(folders.to_array(crop, None, channels))
            else:
                images.append(_at_size(im, name, spec.image_size, spec.resize, channels))
        if spec.augment == "crop_flip":
            images = pad_crop(np.stack(images), draws["offsets"], spec.crop_padding, spec.crop_mode)
        return {
            "image": np.stack(images),
            "label": np.asarray(labels, np.int32),
            "flip": draws["flips"],
            "step": np.int64(step),
            "skipped": np.int64(skipped),
        }


def mirrored(batch: dict) -> np.ndarray:
    """A batch's images with the flips applied: what the step trains on, before normalising."""
    flips = batch["flip"][:, None, None, None]
    return np.where(flips, batch["image"][:, :, ::-1], batch["image"])


def _read(source, order: np.ndarray, pos: int, skip_bad: bool):
    """The example at ``order[pos]``; with ``skip_bad``, the first decodable one after it.

    Returns ((image, label), its index, how many were skipped)."""
    for tries in range(len(order)):
        index = int(order[(pos + tries) % len(order)])
        try:
            return source.example(index), index, tries
        except BadImage:
            if not skip_bad:
                raise
    raise DataError(f"no image of {source.name(0)}'s split can be decoded.")


def _draws(spec: StreamSpec, rng: np.random.Generator, first: int, count: int) -> dict:
    """The augmentation draws of the whole global batch, rows ``[first, first + count)``."""
    n = spec.batch_size
    out = {"flips": rng.random(n) < 0.5 if spec.flip else np.zeros(n, bool)}
    if spec.augment == "crop_flip":
        out["offsets"] = rng.integers(0, 2 * spec.crop_padding + 1, (n, 2))
    else:
        out["crop"] = rng.random((n, _ATTEMPTS, 4))
    return {k: v[first : first + count] for k, v in out.items()}


def _at_size(im, name: str, image_size: int, resize: bool, channels: int) -> np.ndarray:
    """The image at ``image_size`` square: as it is when it has that size, resized (as the
    device path decodes) when ``resize``, else refused naming the file ``name``."""
    if im.size == (image_size, image_size):
        return folders.to_array(im, None, channels)
    if not resize:
        raise DataError(
            f"images of different sizes: {name} is {im.width}x{im.height} while the first is "
            f"{image_size}x{image_size}; set `image_size` to resize them all."
        )
    return folders.to_array(im, image_size, channels)


def pad_crop(x: np.ndarray, offsets: np.ndarray, padding: int, mode: str = "zeros") -> np.ndarray:
    """Crops of a batch ``x`` (N, H, W, C) padded by ``padding`` (zeros, or ``"reflect"``: the
    mirror image without the edge), image ``i`` at ``offsets[i]`` (dy, dx) in [0, 2·padding]:
    the host version of :func:`cnnjax.data.apply_augment`'s crops, as a list of N (H, W, C)
    views (stack them)."""
    if padding == 0:
        return list(x)
    _, h, w, _ = x.shape
    widths = [(0, 0), (padding, padding), (padding, padding), (0, 0)]
    padded = np.pad(x, widths, mode="reflect") if mode == "reflect" else np.pad(x, widths)
    return [p[dy : dy + h, dx : dx + w] for p, (dy, dx) in zip(padded, offsets, strict=True)]


def crop_box(width: int, height: int, uniforms: np.ndarray) -> tuple[int, int, int, int]:
    """The random-resized crop of a ``width`` × ``height`` image: (left, top, right, bottom).

    ``uniforms`` (attempts, 4) in [0, 1) choose, per attempt, the area fraction in
    :data:`INCEPTION_AREA`, the aspect ratio log-uniform in :data:`INCEPTION_RATIO` and the
    position; the first attempt that fits is taken, else the centre crop of the largest
    window whose ratio lies in that range (torchvision's rule)."""
    area = width * height
    lo, hi = math.log(INCEPTION_RATIO[0]), math.log(INCEPTION_RATIO[1])
    for u_area, u_ratio, u_x, u_y in uniforms:
        target = area * (INCEPTION_AREA[0] + u_area * (INCEPTION_AREA[1] - INCEPTION_AREA[0]))
        ratio = math.exp(lo + u_ratio * (hi - lo))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(u_x * (width - w + 1)), int(u_y * (height - h + 1))
            return left, top, left + w, top + h
    ratio = width / height
    if ratio < INCEPTION_RATIO[0]:
        w, h = width, round(width / INCEPTION_RATIO[0])
    elif ratio > INCEPTION_RATIO[1]:
        w, h = round(height * INCEPTION_RATIO[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def random_resized_crop(im, size: int, uniforms: np.ndarray):
    """The Inception crop of a Pillow image, resized (bilinear) to ``size`` × ``size``."""
    from PIL import Image

    return im.resize((size, size), Image.BILINEAR, box=crop_box(*im.size, uniforms))


def centre_crop(im, size: int):
    """Evaluation view of the Inception recipe: the shorter side resized to
    ``round(size / 0.875)``, then the central ``size`` × ``size``."""
    from PIL import Image

    width, height = im.size
    short = round(size / CENTRE_FRACTION)
    scale = short / min(width, height)
    w, h = max(size, round(width * scale)), max(size, round(height * scale))
    im = im.resize((w, h), Image.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def eval_view(im, name: str, spec: StreamSpec, channels: int) -> np.ndarray:
    """The un-augmented view of an example: what evaluation sees and statistics are
    estimated on."""
    if spec.augment == "inception":
        return folders.to_array(centre_crop(im, spec.image_size), None, channels)
    return _at_size(im, name, spec.image_size, spec.resize, channels)


class EvalBatches:
    """``batch(k)``: this process's rows of evaluation batch ``k`` of ``batch_size`` (global);
    every example once over all processes, the last batch padded (label −1, zero image)."""

    def __init__(self, source, batch_size: int, spec: StreamSpec, process_index=0, process_count=1):
        self.source, self.batch_size, self.spec = source, batch_size, spec
        self.local = batch_size // process_count
        self.first = process_index * self.local

    def __len__(self) -> int:
        return -(-len(self.source) // self.batch_size)

    def __call__(self, k: int) -> dict[str, np.ndarray]:
        size, channels = self.spec.image_size, self.source.channels
        images = np.zeros((self.local, size, size, channels), np.uint8)
        labels = -np.ones(self.local, np.int32)
        start = int(k) * self.batch_size + self.first
        for row, index in enumerate(range(start, min(start + self.local, len(self.source)))):
            im, labels[row] = self.source.example(index)
            images[row] = eval_view(im, self.source.name(index), self.spec, channels)
        return {"image": images, "label": labels}


def _grain():
    import grain
    from absl import flags

    # grain reads its settings from absl flags; an absl program has parsed them, anywhere
    # else (a notebook, a test) their defaults are what it should read.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return grain


def _leave_interrupts_to_the_parent(index: int, count: int) -> None:
    """Ctrl-C reaches every process of the terminal's group; a worker that died of it would
    end the run before the training process saves its checkpoint, so workers ignore SIGINT
    and are ended by the training process when it closes the stream."""
    del index, count
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def default_workers() -> int:
    """Input worker processes when the config leaves ``input_workers`` unset: one core is
    left to the training process, at most eight are used."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def batches(fn, first: int, stop: int, workers: int, state: dict | None = None, threads: int = 1):
    """A grain iterator over ``fn(first), fn(first + 1), …, fn(stop − 1)``, in order.

    Each element is made in one of ``workers`` processes (0: in this one), by ``threads``
    threads there, and resumed from ``state`` (a ``get_state()`` of the same pipeline) when
    given. Close it when done: that ends the worker processes."""
    grain = _grain()
    ds = grain.MapDataset.range(first, stop).map(fn)
    # Few threads per process: the workers are the parallelism, and more threads would
    # compete with XLA for the same cores.
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2))
    if workers:
        options = grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2)
        ds = ds.mp_prefetch(options, worker_init_fn=_leave_interrupts_to_the_parent)
    iterator = iter(ds)
    if state is not None:
        iterator.set_state(state)
    return iterator


def next_batch(iterator) -> dict:
    """The next element of a :func:`batches` iterator; a worker process that died (killed,
    out of memory) is one sentence instead of grain's traceback."""
    try:
        return next(iterator)
    except RuntimeError as err:
        if "terminated unexpectedly" not in str(err):
            raise
        raise DataError(
            f"an input worker process died ({str(err).split('. ')[0].lower()}); the last "
            "checkpoint is kept: run the same command again to resume, with fewer "
            "`input_workers` if memory ran out."
        ) from None


def split_bytes(num_examples: int, image_shape: tuple[int, ...]) -> int:
    """Bytes of a split decoded as uint8."""
    return num_examples * math.prod(image_shape)


@dataclasses.dataclass
class StreamDataset:
    """A dataset whose splits are sources, read as they are streamed (no pixel in memory).

    ``image_size`` is the side every example is read at; ``resize``: whether images of
    another size are resized to it (``image_size`` was configured) or refused.
    """

    name: str
    num_classes: int
    splits: dict
    image_size: int
    channels: int
    resize: bool
    class_names: tuple[str, ...] = ()
    source: str = ""
    fingerprint: str = ""

    @property
    def image_shape(self) -> tuple[int, ...]:
        return (self.image_size, self.image_size, self.channels)

    def summary(self) -> str:
        sizes = ", ".join(f"{k} {len(v):,}" for k, v in self.splits.items())
        return (
            f"{self.name}: {self.num_classes} classes, images {self.image_shape}, {sizes} "
            f"(streamed: {self.source})"
        )


def open_stream(
    name: str,
    *,
    data_dir: str | None = None,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    train_fraction: float = 1.0,
    skip_bad: bool = False,
) -> StreamDataset:
    """``digits``, ``imagefolder`` (root in ``data_dir``) or a prepared TFDS dataset as
    sources: the same splits, held-out examples and training subset as
    :func:`cnnjax.data.load_dataset` and ``train_fraction`` select, nothing decoded."""
    from cnnjax.data._types import carve_indices, subset_indices

    if name == "digits":
        from cnnjax.data.digits import load_digits

        data = load_digits(image_size or 32, val_fraction, seed)
        splits = {k: ArraySource(s.images, s.labels, f"digits/{k}") for k, s in data.splits.items()}
        digest = _arrays_digest(data.splits.values())
        out = StreamDataset("digits", 10, splits, image_size or 32, 1, False, data.class_names)
        out.source, out.fingerprint = "in-memory arrays", f"digits:{digest}"
    elif name == "imagefolder":
        out = _open_folder(data_dir, image_size, skip_bad)
    else:
        out = _open_tfds(name, data_dir, image_size)
    for alias in ("val", "valid"):
        if alias in out.splits and "validation" not in out.splits:
            out.splits["validation"] = out.splits.pop(alias)
    train = out.splits.get("train")
    if train is not None and "validation" not in out.splits and val_fraction > 0:
        rest, val = carve_indices(len(train), val_fraction, seed)
        out.splits["train"], out.splits["validation"] = train.subset(rest), train.subset(val)
    if train is not None and train_fraction < 1.0:
        train = out.splits["train"]
        out.splits["train"] = train.subset(subset_indices(len(train), train_fraction, seed))
    return out


def _arrays_digest(splits) -> str:
    import hashlib

    digest = hashlib.sha256()
    for s in splits:
        digest.update(np.ascontiguousarray(s.images).tobytes())
        digest.update(np.ascontiguousarray(s.labels).tobytes())
    return digest.hexdigest()[:24]


def _open_folder(root: str, image_size: int | None, skip_bad: bool) -> StreamDataset:
    index = folders.index_folder(root, skip_bad=skip_bad)
    splits = {name: FolderSource(root, entries) for name, entries in index.files.items()}
    size, resize = image_size, image_size is not None
    if size is None:  # the first image sets the size every other one must have
        first = next(iter(splits.values()))
        im, _ = first.example(0)
        if im.width != im.height:
            raise DataError(
                f"{first.name(0)} is {im.width}x{im.height}: streamed images are square; set "
                "`image_size` to resize them."
            )
        size = im.width
    out = StreamDataset(f"imagefolder:{root}", len(index.classes), splits, size, 3, resize)
    out.class_names, out.source = index.classes, f"image files under {root}"
    out.fingerprint = f"folder:{index.fingerprint()}"
    return out


def _open_tfds(name: str, data_dir: str | None, image_size: int | None) -> StreamDataset:
    from cnnjax.data.sources import _tensorflow

    _tensorflow()  # hidden from accelerators before TFDS imports it
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # TFDS raises several types for unknown names
        raise DataError(f"TFDS does not know the dataset {name!r}: {err}") from None
    where = data_dir or "~/tensorflow_datasets"
    if not builder.is_prepared():
        raise DataError(
            f"TFDS dataset {name!r} is not prepared in {where}. Streaming reads a prepared "
            f"dataset: `tfds build {name} --data_dir={where} --file_format=array_record`."
        )
    file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
    if "array_record" not in file_format:
        raise DataError(
            f"TFDS dataset {name!r} in {where} is stored as {file_format}; streaming needs "
            f"random access: rebuild it with `tfds build {name} --data_dir={where} "
            '--file_format=array_record`, or set `input="device"`.'
        )
    image = builder.info.features["image"]
    h, w, channels = image.shape
    if image_size is None and (h is None or h != w):
        raise DataError(
            f"the images of TFDS dataset {name!r} have shape {image.shape}; set `image_size` "
            "to stream them at one size."
        )
    splits = {s: TfdsSource(name, s, data_dir, channels=channels) for s in builder.info.splits}
    label = builder.info.features["label"]
    size, resize = image_size or h, image_size is not None
    out = StreamDataset(name, label.num_classes, splits, size, channels, resize)
    out.class_names, out.source = tuple(label.names), f"TFDS ArrayRecord in {where}"
    sizes = ",".join(f"{k}={v.num_examples}" for k, v in sorted(builder.info.splits.items()))
    out.fingerprint = f"tfds:{name}:{builder.info.version}:{sizes}"
    return out


def sample_images(source, count: int, seed: int, spec: StreamSpec) -> np.ndarray:
    """(n, H, W, C) uint8: the evaluation views of a fixed-seed sample of ``count`` examples
    (all of them when the split is smaller), in row order."""
    rows = np.sort(np.random.default_rng(seed).permutation(len(source))[:count])
    views = []
    for i in rows:
        im, _ = source.example(int(i))
        views.append(eval_view(im, source.name(int(i)), spec, source.channels))
    return np.stack(views)
