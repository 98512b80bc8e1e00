"""Which Inception branch the next layer trusts: three measures per module and branch.

    python -m experiments.inception_branches --config=inception_branches:quick
    python -m experiments.inception_branches --workdir=RUN   # a finished googlenet_small run

Writes ``branches.md``, ``branches.csv``, ``branches.json`` and ``branches.png`` (module ×
branch heat maps of the three measures of :mod:`experiments._inception_branches`) to
``out_dir`` (``--out_dir=`` or ``--config.out_dir=``; with ``--workdir`` and no ``--out_dir``,
beside the run).
"""

from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

from experiments import _inception_branches, _runs
from experiments._cli import fail, parse_flags, quiet_unless_verbose

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", "experiments/configs/inception_branches.py:quick", "Config file[:variant]."
)
flags.DEFINE_string(
    "out_dir", None, "Where the runs, table and figures go (default: the config's out_dir)."
)
flags.DEFINE_string("workdir", None, "A finished googlenet_small run to analyse (default: train).")


def main(argv):
    del argv
    quiet_unless_verbose()
    from cnnjax.errors import CnnjaxError

    config = FLAGS.config
    if FLAGS.out_dir:
        config.out_dir = FLAGS.out_dir
    workdir = FLAGS.workdir
    try:
        branches = _inception_branches.check_branches(config.branches)
    except ValueError as err:
        fail(err)
    try:
        if workdir is None:
            workdir = os.path.join(config.out_dir, "run")
            _runs.train_runs([_runs.Run(config.train.model, workdir, config.train)])
        train, engine, state, split = _runs.held_out(workdir)
    except CnnjaxError as err:
        fail(err)
    if train.model != "googlenet_small":
        fail(f"{workdir} trained {train.model!r}; this analysis reads googlenet_small's modules.")
    n = min(config.eval_images, len(split))
    model = engine.fns.model
    images, labels = _runs.subset(split, n)
    report = _inception_branches.analyse(
        model, state, images, labels, engine.fns.cfg.norm, branches
    )
    # Beside the analysed run unless an out_dir was asked for.
    out_dir = workdir if FLAGS.workdir and not FLAGS.out_dir else config.out_dir
    accuracy = f"accuracy on {n} held-out images: {100 * report['accuracy']:.1f} %"
    table = _runs.write_table(
        out_dir, _inception_branches.HEADER, _inception_branches.table_rows(report),
        name="branches", preface=f"{accuracy}\n\n",
    )  # fmt: skip
    _runs.write_json(os.path.join(out_dir, "branches.json"), report)
    _inception_branches.plot(report, os.path.join(out_dir, "branches.png"))
    print(f"{accuracy}\n\n{table}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
