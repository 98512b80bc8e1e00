"""Train a model: ``python -m experiments.train --config=CONFIG_FILE[:arg] --workdir=DIR``.

Any config field can be overridden: ``--config.model=model_c --config.learning_rate=0.01``;
``--config_help`` lists every field with its default and what it means.
Running the same command again resumes from the latest checkpoint in ``--workdir``.
Multi-host: ``--coordinator_address=host:port --num_processes=N --process_id=i`` (or the
``CNNJAX_*`` environment variables, see ``cnnjax.parallel.initialize_distributed``).
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from cnnjax import parallel
from experiments._cli import fail, quiet_unless_verbose, run_program

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. experiments/configs/allcnn.py:quick."
)
flags.DEFINE_string("workdir", None, "Directory of the run (checkpoints, metrics, config).")
flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's id.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_unless_verbose()
    parallel.initialize_distributed(
        FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
    )
    from cnnjax.errors import CnnjaxError
    from cnnjax.train import train_and_evaluate

    try:
        train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except CnnjaxError as err:  # the user's to fix; anything else is a bug and keeps its trace
        fail(err)


def run():
    """The ``cnnjax-train`` command."""
    run_program(main, __doc__)


if __name__ == "__main__":
    run()
