"""First-layer filters and feature maps at each downsampling stage of trained runs.

    python -m experiments.feature_maps --workdir=runs/model_c
    python -m experiments.feature_maps --workdir=runs/model_c --workdir2=runs/all_cnn_c

With two workdirs (say a pooling and a strided run) the figures are side by side. Writes
``feature_maps.png`` (to ``--out``, default: the first workdir) and prints its path.
"""

from __future__ import annotations

import os

from absl import app, flags

from experiments import _feature_maps
from experiments._cli import quiet_unless_verbose

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Workdir of a trained run.")
flags.DEFINE_string("workdir2", None, "Optional second run, shown beside the first.")
flags.DEFINE_integer("num_images", 3, "Validation images to show.")
flags.DEFINE_integer("channels", 6, "Feature maps shown per stage.")
flags.DEFINE_string("out", None, "Output PNG (default: <workdir>/feature_maps.png).")


def main(argv):
    del argv
    quiet_unless_verbose()
    runs = [_feature_maps.run_features(FLAGS.workdir, FLAGS.num_images)]
    if FLAGS.workdir2:
        runs.append(_feature_maps.run_features(FLAGS.workdir2, FLAGS.num_images))
    path = FLAGS.out or os.path.join(FLAGS.workdir, "feature_maps.png")
    _feature_maps.draw(runs, path, FLAGS.channels)
    print(f"wrote {path}")


if __name__ == "__main__":
    flags.mark_flag_as_required("workdir")
    app.run(main)
