"""Quiet library logs (Orbax logs every file it renames at INFO) unless --verbosity is given."""

from absl import flags, logging


def quiet_unless_verbose() -> None:
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
