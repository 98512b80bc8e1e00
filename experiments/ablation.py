"""The fast recipe's ablation table: each piece removed in turn, as the airbench paper reports.

    python -m experiments.ablation --config=experiments/configs/ablation.py:cpu

Every (ablation, seed) is an ordinary, resumable run in ``<out_dir>/runs/<name>_seed<s>``
(a run whose config changed is set aside and trained again). Writes ``table.md`` and
``table.csv``: validation accuracy with and without test-time augmentation (the full recipe's
row without TTA is the "no TTA" ablation), the change against the full recipe, and the
training time.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from experiments import _ablation, _runs
from experiments._cli import parse_flags, quiet_unless_verbose

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", "experiments/configs/ablation.py:cpu", "Ablation config file[:variant]."
)


def main(argv):
    del argv
    quiet_unless_verbose()
    config = FLAGS.config
    results = _ablation.run_ablations(config)
    table = _runs.write_table(config.out_dir, _ablation.HEADER, _ablation.table_rows(results))
    _runs.print_results(dict(table=table, out_dir=config.out_dir, plots=[]))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
