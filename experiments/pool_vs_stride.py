"""Does a strided convolution replace max-pooling? (the ``cnnjax-study`` command)

    python -m experiments.pool_vs_stride --config=experiments/configs/pool_vs_stride.py:quick
    python -m experiments.pool_vs_stride --config=experiments/configs/pool_vs_stride.py:cpu \
        --config.seeds=3 --config.variants=model_c,all_cnn_c
    python -m experiments.pool_vs_stride --config=experiments/configs/pool_vs_stride.py:imagenet

The All-CNN study (variants are models, as in the paper's Table 3) and the same question for
ResNet-18 at ImageNet shape (``:imagenet``; variants are its ``downsample`` settings). The
fast network's study, with paired differences and shift invariance, is
``experiments/fast_study.py``. Every (variant, learning rate, seed) is an ordinary training
run in its own workdir under ``<out_dir>/runs/``, so an interrupted study resumes where it
stopped and finished runs are not repeated; a run whose config changed since it ran is set
aside and trained again. Writes to ``out_dir``: ``table.md``, ``table.csv``, ``study.json``
and PNG plots.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from experiments import _pool_vs_stride, _runs
from experiments._cli import quiet_unless_verbose, run_program

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", "experiments/configs/pool_vs_stride.py:quick", "Study config file[:variant]."
)


def main(argv):
    del argv
    quiet_unless_verbose()
    config = FLAGS.config
    records = _runs.train_runs(_pool_vs_stride.runs(config))
    _runs.print_results(_pool_vs_stride.write_outputs(config, records))


def run():
    """The ``cnnjax-study`` command."""
    run_program(main, __doc__)


if __name__ == "__main__":
    run()
