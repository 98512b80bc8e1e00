"""Pooling against strided convolution in the fast network (airbench94), with paired seeds
and shift invariance.

    python -m experiments.fast_study --config=fast_study         # 2 CPU cores, under 3 hours
    python -m experiments.fast_study --config=fast_study:gpu     # an accelerator
    python -m experiments.fast_study --config=fast_study:quick   # digits, minutes

Variants are ``downsample`` settings of ``airbench94``. Per variant: accuracy with and without
test-time augmentation, the paired difference to ``pool`` with a 95 % confidence interval,
parameters, FLOPs, the receptive field of the last spatial map, speed, and shift consistency
and shifted accuracy (measured once per run, kept in its ``translation.json``). Runs live in
``<out_dir>/runs/`` and are resumed or reused as in ``pool_vs_stride``. Writes ``table.md``,
``table.csv``, ``study.json`` and three plots to ``out_dir``.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from experiments import _fast_study, _runs
from experiments._cli import parse_flags, quiet_unless_verbose

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", "experiments/configs/fast_study.py", "Study config file[:variant]."
)


def main(argv):
    del argv
    quiet_unless_verbose()
    config = FLAGS.config
    _runs.print_results(_fast_study.write_outputs(config, _fast_study.train(config)))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
