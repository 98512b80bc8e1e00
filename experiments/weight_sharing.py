"""Local connectivity and weight sharing, measured apart.

    python -m experiments.weight_sharing --config=experiments/configs/weight_sharing.py:quick

Trains every (variant, training fraction, seed) as an ordinary, resumable run under
``<out_dir>/runs/`` and writes ``table.md``, ``table.csv``, ``accuracy_vs_data.png`` and
``accuracy_vs_shift.png``: parameters and FLOPs per image, held-out accuracy (mean ± std over
seeds) at each training-set size, and, for the runs on all the data, accuracy when every
held-out image is moved by 0-4 px.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from experiments import _runs, _weight_sharing
from experiments._cli import parse_flags, quiet_unless_verbose

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", "experiments/configs/weight_sharing.py:quick", "Config file[:variant]."
)
flags.DEFINE_string(
    "out_dir", None, "Where the runs, table and figures go (default: the config's out_dir)."
)


def main(argv):
    del argv
    quiet_unless_verbose()
    config = FLAGS.config
    if FLAGS.out_dir:
        config.out_dir = FLAGS.out_dir
    records = _weight_sharing.run_all(config)
    header, rows = _weight_sharing.summarize(config, records)
    table = _runs.write_table(config.out_dir, header, rows)
    plots = _weight_sharing.plot(config, records)
    _runs.print_results(dict(table=table, out_dir=config.out_dir, plots=plots))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
