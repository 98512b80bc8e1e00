"""Throughput of the streaming input pipeline against tf.data doing the same work, and how long
a streamed training run waits for its input.

    python -m experiments.bench_input --data_dir=.cache/cifar10-jpeg

For each worker count (``--workers``, default 0, 1, 2) and two workloads, images per second
of decoding, augmenting and batching (``--batch`` images a batch), median of ``--repeats``
timed passes over ``--batches`` batches each, after one untimed batch (worker start-up), with
every file read once before (the page cache warm for both):

* ``32px crop_flip``: the folder's JPEGs as they are (CIFAR-10, 32 × 32), padded by 4, a
  random crop and a random flip, as the CIFAR recipes do;
* ``224px inception``: the same images resized once to 256 × 256 JPEGs (``--large_images`` of
  them, written to ``--scratch``), then the Inception random-resized crop to 224 and a flip.

cnnjax's pipeline is :func:`cnnjax.data.stream.batches` over :class:`TrainBatches` (grain;
libjpeg-turbo through simplejpeg, Pillow's resize; ``workers`` processes, 0: one background
thread). tf.data reads the same files with
``tf.io.decode_jpeg`` (``tf.image.decode_and_crop_jpeg`` and ``sample_distorted_bounding_box``
for the Inception crop, as flax's ImageNet example does) with ``max(1, workers)`` parallel
calls in a private thread pool of that size.

Last, ``--train_steps`` steps of all_cnn_c (width 0.5, batch 128) on the folder streamed at
32 px with one worker: the fraction of the training wall time the step spent waiting for its
batch (``input_wait_seconds`` / ``train_seconds`` of the run).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np
from absl import app, flags

from experiments._bench import markdown_table
from experiments._cli import quiet_unless_verbose

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", ".cache/cifar10-jpeg", "Image folder root (<root>/train/...).")
flags.DEFINE_list("workers", ["0", "1", "2"], "Worker counts to measure.")
flags.DEFINE_integer("batch", 256, "Images per batch.")
flags.DEFINE_integer("batches", 20, "Batches per timed pass.")
flags.DEFINE_integer("repeats", 3, "Timed passes (the median is reported).")
flags.DEFINE_integer("large_images", 3000, "Images resized to 256 px for the 224 px workload.")
flags.DEFINE_string("scratch", ".cache/bench_input", "Where the 256 px copies are written.")
flags.DEFINE_integer("train_steps", 60, "Steps of the streamed training run (0: skip it).")


def _files(root: str, limit: int | None = None):
    from cnnjax.data import folders

    entries = folders.index_folder(root).files["train"]
    order = np.random.default_rng(0).permutation(len(entries))[:limit]
    return [(os.path.join(root, entries[i][0]), entries[i][1]) for i in np.sort(order)]


def _large_folder(root: str, count: int, scratch: str) -> str:
    """``count`` images of ``root`` resized to 256 × 256 (bilinear, JPEG quality 90), once."""
    from PIL import Image

    out = os.path.join(scratch, f"large{count}")
    done = os.path.join(out, ".complete")
    if os.path.exists(done):
        return out
    for path, label in _files(root, count):
        folder = os.path.join(out, "train", str(label))
        os.makedirs(folder, exist_ok=True)
        with Image.open(path) as im:
            large = im.convert("RGB").resize((256, 256), Image.BILINEAR)
        large.save(os.path.join(folder, os.path.basename(path)), quality=90)
    open(done, "w").close()
    return out


def _warm(root: str) -> None:
    """Reads every file once, so that no pipeline pays for the first read from disk."""
    for path, _ in _files(root):
        with open(path, "rb") as f:
            f.read()


def _rate(next_batch, batch: int) -> float:
    """Images per second: the median over repeats of ``FLAGS.batches`` batches."""
    next_batch()  # start-up: workers spawn, files open
    seconds = []
    for _ in range(FLAGS.repeats):
        begun = time.perf_counter()
        for _ in range(FLAGS.batches):
            next_batch()
        seconds.append(time.perf_counter() - begun)
    return FLAGS.batches * batch / statistics.median(seconds)


def grain_rate(root: str, augment: str, workers: int) -> float:
    from cnnjax.data import stream

    data = stream.open_stream(
        "imagefolder", data_dir=root, image_size=224 if augment == "inception" else None
    )
    source = data.splits["train"]
    spec = stream.StreamSpec(
        num_examples=len(source),
        batch_size=FLAGS.batch,
        image_size=data.image_size,
        augment=augment,
        crop_padding=4,
        flip=True,
        resize=data.resize,
    )
    steps = (FLAGS.repeats * FLAGS.batches + 1) * 2
    iterator = stream.batches(stream.TrainBatches(source, spec), 0, steps, workers)
    try:
        return _rate(lambda: stream.next_batch(iterator), FLAGS.batch)
    finally:
        iterator.close()


def tf_rate(root: str, augment: str, workers: int) -> float:
    from cnnjax.data.sources import _tensorflow

    tf = _tensorflow()
    files = _files(root)
    paths, labels = [p for p, _ in files], [label for _, label in files]
    calls = max(1, workers)

    def crop_flip(path, label):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        image = tf.pad(image, [[4, 4], [4, 4], [0, 0]])
        image = tf.image.random_crop(image, [32, 32, 3])
        return tf.image.random_flip_left_right(image), label

    def inception(path, label):
        data = tf.io.read_file(path)
        shape = tf.io.extract_jpeg_shape(data)
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            shape,
            bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
            min_object_covered=0.0,
            aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(0.08, 1.0),
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        window = tf.stack([begin[0], begin[1], size[0], size[1]])
        image = tf.io.decode_and_crop_jpeg(data, window, channels=3)
        image = tf.cast(tf.image.resize(image, [224, 224], "bilinear") + 0.5, tf.uint8)
        return tf.image.random_flip_left_right(image), label

    ds = tf.data.Dataset.from_tensor_slices((paths, labels)).shuffle(len(paths), seed=0)
    ds = ds.repeat().map(crop_flip if augment == "crop_flip" else inception, calls)
    ds = ds.batch(FLAGS.batch).prefetch(2)
    options = tf.data.Options()
    options.threading.private_threadpool_size = calls
    iterator = iter(ds.with_options(options))
    return _rate(lambda: [t.numpy() for t in next(iterator)], FLAGS.batch)


def wait_fraction(root: str, steps: int) -> tuple[float, float]:
    """(fraction of training wall time spent waiting for input, training img/s) of a
    streamed all_cnn_c run at 32 px with one worker."""
    from cnnjax.train import train_and_evaluate
    from experiments.configs import allcnn

    config = allcnn.get_config("cpu")
    config.update(
        dict(
            data_dir=root,
            input="stream",
            input_workers=1,
            progress=False,
            val_fraction=0.02,
            warmup_epochs=0.0,
        )
    )
    config.num_epochs = steps * config.batch_size / (len(_files(root)) * 0.98)
    with tempfile.TemporaryDirectory() as workdir:
        results = train_and_evaluate(config, workdir)
    train_seconds = results["train_seconds"]
    return results["input_wait_seconds"] / train_seconds, steps * config.batch_size / train_seconds


def main(argv):
    del argv
    quiet_unless_verbose()
    large = _large_folder(FLAGS.data_dir, FLAGS.large_images, FLAGS.scratch)
    for root in (FLAGS.data_dir, large):
        _warm(root)
    rows = []
    for name, root, augment in (
        ("32px crop_flip", FLAGS.data_dir, "crop_flip"),
        ("224px inception", large, "inception"),
    ):
        for workers in map(int, FLAGS.workers):
            ours, theirs = grain_rate(root, augment, workers), tf_rate(root, augment, workers)
            rows.append([name, workers, f"{ours:,.0f}", f"{theirs:,.0f}", f"{ours / theirs:.2f}"])
            print(" | ".join(map(str, rows[-1])), flush=True)
    print(markdown_table(["workload", "workers", "cnnjax img/s", "tf.data img/s", "ratio"], rows))
    if FLAGS.train_steps:
        waited, rate = wait_fraction(FLAGS.data_dir, FLAGS.train_steps)
        print(
            f"all_cnn_c (width 0.5, batch 128) streamed at 32 px, 1 worker, {FLAGS.train_steps} "
            f"steps: waited for input {100 * waited:.2f} % of the training time ({rate:.0f} img/s)"
        )


if __name__ == "__main__":
    app.run(main)
