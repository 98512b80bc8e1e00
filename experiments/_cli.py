"""Shared absl plumbing for the experiment programs."""

from __future__ import annotations

import re
import sys

from absl import flags, logging


def quiet_unless_verbose() -> None:
    """Quiet library logs (Orbax logs every file it renames at INFO) unless --verbosity is set."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that turns an unknown ``--config.<key>`` into a one-line error listing
    the valid keys (ml_collections raises a chain of KeyError/AttributeError otherwise)."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as err:
        from cnnjax.train import default_config

        key = re.sub(r"[\"']", "", str(err))
        valid = ", ".join(sorted(default_config().keys()))
        sys.exit(f"error: unknown config key {key!r}; valid keys: {valid}.")
    except flags.Error as err:
        sys.exit(f"error: {err}")
