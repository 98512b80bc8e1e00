"""The main job (``make demo``): pooling versus strided convolution on the bundled digits.

    python -m experiments.demo [--out_dir=results/demo] [--seeds=2] [--epochs=E]

Trains the four model-C variants of the All-CNN paper (model_c and strided_cnn_c downsample
by max-pooling or by a strided last convolution; convpool_cnn_c and all_cnn_c add a 3×3
convolution that either precedes a max-pool or, strided, replaces it), two seeds each, on
scikit-learn's handwritten digits: offline, a few minutes on 2 CPU cores. Prints the table
and leaves it, the plots, the feature maps of model_c beside all_cnn_c and a receptive-field
drawing in ``--out_dir``.
"""

from __future__ import annotations

import os

from absl import app, flags

from experiments import _feature_maps, _pool_vs_stride, _runs
from experiments._cli import quiet_unless_verbose
from experiments.configs import pool_vs_stride as study_configs

FLAGS = flags.FLAGS
flags.DEFINE_string("out_dir", "results/demo", "Where the table and figures go.")
flags.DEFINE_integer("seeds", 2, "Seeds per variant.")
flags.DEFINE_string("variants", study_configs.C_VARIANTS, "Comma-separated model names.")
flags.DEFINE_float("epochs", None, "Epochs per run (default: the quick study's).")


def main(argv):
    del argv
    quiet_unless_verbose()
    config = study_configs.get_config("quick")
    config.out_dir, config.seeds, config.variants = FLAGS.out_dir, FLAGS.seeds, FLAGS.variants
    config.train.progress = False
    if FLAGS.epochs is not None:
        config.train.num_epochs = FLAGS.epochs
        config.train.warmup_epochs = min(config.train.warmup_epochs, FLAGS.epochs)
    records = _runs.train_runs(_pool_vs_stride.runs(config))
    out = _pool_vs_stride.write_outputs(config, records)
    pool = _pool_vs_stride.run_dir(config.out_dir, "model_c", config.train.learning_rate, 0)
    stride = _pool_vs_stride.run_dir(config.out_dir, "all_cnn_c", config.train.learning_rate, 0)
    figures = list(out["plots"])
    if os.path.isdir(pool) and os.path.isdir(stride):
        runs = [_feature_maps.run_features(w, 3) for w in (pool, stride)]
        figures.append(os.path.join(config.out_dir, "feature_maps_model_c_vs_all_cnn_c.png"))
        _feature_maps.draw(runs, figures[-1], channels=6)
    print("\n" + out["table"] + "\n")
    print(f"results in {os.path.abspath(config.out_dir)}:")
    for name in ["table.md", "table.csv", *map(os.path.basename, figures)]:
        print(f"  {name}")


if __name__ == "__main__":
    app.run(main)
