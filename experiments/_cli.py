"""Shared absl plumbing for the experiment programs."""

from __future__ import annotations

import os
import re
import sys
from typing import NoReturn

from absl import app, flags, logging


def fail(err: BaseException | str) -> NoReturn:
    """Exits with ``error: <message>``, one line, and status 1.

    ``os._exit`` rather than ``sys.exit``: Orbax's late callbacks (:func:`_mute_closed_loop`)
    can still arrive while the interpreter shuts down, and ending the process at once gives
    them nothing to print into. Skipping the shutdown loses nothing: the caller's ``with``
    blocks (checkpoint managers, the workdir lock) exited while the exception travelled up,
    and the streams are flushed first.
    """
    print(f"error: {err}", file=sys.stderr)
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def _mute_closed_loop(unraisable) -> None:
    """When a checkpoint cannot be read, Orbax closes its asyncio loop while TensorStore's
    threads still hold reads; each late completion raises "Event loop is closed" as an
    unraisable exception, before and after the error reaches the program. Those are muted;
    any other unraisable exception is still reported."""
    err = unraisable.exc_value
    if not (isinstance(err, RuntimeError) and "loop is closed" in str(err)):
        sys.__unraisablehook__(unraisable)


def quiet_unless_verbose() -> None:
    """Quiet library logs (Orbax logs every file it renames at INFO) unless --verbosity is set,
    and Orbax's closed-loop noise always."""
    sys.unraisablehook = _mute_closed_loop
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def _config_path(arg: str) -> str:
    """``--config=airbench`` or ``--config=airbench.py:quick`` names a file of
    ``experiments/configs`` from any directory; an existing path is left alone."""
    flag, _, value = arg.partition("=")
    path, colon, variant = value.partition(":")
    if os.path.exists(path):
        return arg
    name = path if path.endswith(".py") else f"{path}.py"
    candidate = os.path.join(CONFIGS, os.path.basename(name))
    return f"{flag}={candidate}{colon}{variant}" if os.path.exists(candidate) else arg


def run_program(main, doc: str) -> None:
    """``app.run`` for a program that is also an installed command: absl's ``--help`` prints
    the *main module's* docstring, and an installed command's main module is pip's wrapper,
    which has none, so the program's own ``doc`` is put there first."""
    sys.modules["__main__"].__doc__ = doc
    app.run(main, flags_parser=parse_flags)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with one-line errors: an unknown ``--config.<key>`` lists the valid
    keys (ml_collections raises a chain of KeyError/AttributeError otherwise), and a config
    file that is missing or rejects its argument (``:qiuck``) says so. ``--config_help``
    prints every ``--config.*`` field with its default and meaning, and exits."""
    if "--config_help" in argv:
        from cnnjax.train.config import describe_fields

        print(describe_fields())
        sys.exit(0)
    argv = [_config_path(a) if a.startswith("--config=") else a for a in argv]
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
        # A config file that raises is reported by ml_collections with its whole traceback
        # inside the message; its last line is the one that says what is wrong.
        lines = [line for line in str(err).splitlines() if line.strip()]
        if any(line.startswith("Traceback") for line in lines):
            sys.exit(f"error: --config: {lines[-1].split(': ', 1)[-1]}")
        sys.exit(f"error: {err}")
    except (ValueError, OSError) as err:  # from loading the config file
        sys.exit(f"error: --config: {err}")
