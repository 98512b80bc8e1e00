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

        # ml_collections' message looks like 'key\nDid you mean other instead of key?'.
        lines = [s for s in re.split(r"(?:\\+n|\n)", str(err)) if s.strip()]
        key = re.sub(r"[\\\"']", "", lines[0]).strip()
        hint = re.search(r"Did you mean \W*(\w+)", str(err))
        hint = f" (did you mean {hint.group(1)}?)" if hint else ""
        valid = ", ".join(sorted(default_config().keys()))
        sys.exit(f"error: unknown config key {key!r}{hint}; valid keys: {valid}.")
    except flags.Error as err:
        sys.exit(f"error: {err}")
