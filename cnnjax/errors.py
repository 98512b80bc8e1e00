"""The errors cnnjax raises for things a user can fix: bad configuration, unusable data or
checkpoints, a run that diverged. Each message says what was wrong and what to do.

Programs catch :class:`CnnjaxError` and print its message in one line; any other exception is a
bug and keeps its traceback. Argument errors of the ops (``ValueError``/``TypeError`` naming the
argument) are not among them: they are programming errors of the caller.
"""

from __future__ import annotations


class CnnjaxError(Exception):
    """Base class of the errors a user can act on; the message is the whole story."""


class ConfigError(CnnjaxError, ValueError):
    """A configuration field with a value outside what it accepts."""


class DataError(CnnjaxError, RuntimeError):
    """A dataset that cannot be found or prepared; the message says what to do."""


class CheckpointError(CnnjaxError, RuntimeError):
    """A checkpoint that cannot be restored or written."""


class NonFiniteLossError(CnnjaxError, FloatingPointError):
    """Training produced a NaN or infinite loss; the message names the step."""
