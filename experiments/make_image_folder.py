"""Writes a small ImageNet-shaped image folder (JPEGs of many sizes, ROOT/<split>/<class>/),
the data of ``experiments/configs/imagenet.py:quick``: the whole streaming path offline.

    python -m experiments.make_image_folder                  # the bundled digits, 10 classes
    python -m experiments.make_image_folder --source=.cache/cifar10-jpeg --per_class=100

``--source=digits`` (default) uses scikit-learn's digits (1,797 images; train, val and test
splits); a folder root uses the first ``--per_class`` images of each class of its ``train``
split, ``--val_fraction`` of them written to ``val``. Every image gets its own size: the
shorter side uniform in ``--shorter_side``, the aspect ratio between 3/4 and 4/3.
"""

from __future__ import annotations

import numpy as np
from absl import flags

from cnnjax import data
from cnnjax.data import folders
from experiments import _cli

FLAGS = flags.FLAGS
flags.DEFINE_string("out", ".cache/imagenet-quick", "Root of the folder to write.")
flags.DEFINE_string("source", "digits", '"digits" or the root of an image folder.')
flags.DEFINE_integer("per_class", 100, "Images per class taken from a folder source.")
flags.DEFINE_float("val_fraction", 0.1, "Share of a folder source's images written to val/.")
flags.DEFINE_list("shorter_side", ["80", "160"], "Range of every image's shorter side, pixels.")
flags.DEFINE_integer("seed", 0, "Seed of the sizes and of the val carve.")


def _from_folder(root: str, per_class: int, val_fraction: float, seed: int):
    index = folders.index_folder(root, splits=["train"])
    chosen: dict[int, list[str]] = {}
    for rel, label in index.files["train"]:
        if len(chosen.setdefault(label, [])) < per_class:
            chosen[label].append(rel)
    paths = [(rel, label) for label in sorted(chosen) for rel in chosen[label]]
    images = [folders.to_array(folders.open_image(f"{root}/{rel}"), None) for rel, _ in paths]
    labels = np.array([label for _, label in paths])
    train, val = data.carve_indices(len(labels), val_fraction, seed)
    pick = lambda rows: ([images[i] for i in rows], labels[rows])
    return {"train": pick(train), "val": pick(val)}, index.classes


def main(argv):
    del argv
    lo, hi = (int(v) for v in FLAGS.shorter_side)
    if FLAGS.source == "digits":
        digits = data.load_digits(32, val_fraction=0.1, seed=FLAGS.seed)
        names = {"train": "train", "validation": "val", "test": "test"}
        splits = {names[k]: (s.images, s.labels) for k, s in digits.splits.items()}
        classes = digits.class_names
    else:
        splits, classes = _from_folder(
            FLAGS.source, FLAGS.per_class, FLAGS.val_fraction, FLAGS.seed
        )
    written = folders.write_image_folder(
        FLAGS.out, splits, classes, shorter_side=(lo, hi), seed=FLAGS.seed
    )
    counts = ", ".join(f"{n} {split}" for split, n in written.items())
    print(f"wrote {counts} images of {len(classes)} classes to {FLAGS.out}")


if __name__ == "__main__":
    _cli.run_program(main, __doc__)
