"""Parameter groups: which parameters a config's glob patterns select.

Parameters are named by their path in the Flax parameter tree joined with "/", e.g.
``block1_bn1/bias`` or ``whiten/kernel``; patterns use shell globs (``*_bn*/bias``). A config
names groups in a string of comma-separated ``pattern`` or ``pattern=value`` items, so that
they can be given on the command line (``--config.frozen=whiten/kernel``).
"""

from __future__ import annotations

import fnmatch
from typing import Any

import jax

from cnnjax.errors import ConfigError


def param_paths(params) -> Any:
    """A tree like ``params`` whose leaves are the parameters' "/"-joined paths."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "/".join(str(getattr(k, "key", k)) for k in path), params
    )


def parse_items(text: str, field: str, with_values: bool) -> tuple[tuple[str, float], ...]:
    """``"a=1,b=2"`` -> ((a, 1.0), (b, 2.0)); without values ``"a,b"`` -> ((a, 1.0), (b, 1.0))."""
    items = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        pattern, eq, value = item.partition("=")
        if with_values != bool(eq) or not pattern:
            form = "pattern=number" if with_values else "pattern (no value)"
            raise ConfigError(
                f"`config.{field}` takes comma-separated items of the form {form}; got {item!r}."
            )
        try:
            number = float(value) if with_values else 1.0
        except ValueError:
            raise ConfigError(f"`config.{field}`: {value!r} in {item!r} is not a number.") from None
        if number < 0:
            raise ConfigError(f"`config.{field}`: {item!r} must not be negative.")
        items.append((pattern.strip(), number))
    return tuple(items)


def lookup(path: str, items: tuple[tuple[str, float], ...]) -> float | None:
    """The value of the first pattern that matches ``path``, or None."""
    for pattern, value in items:
        if fnmatch.fnmatchcase(path, pattern):
            return value
    return None


def mask(params, items: tuple[tuple[str, float], ...]) -> Any:
    """A tree of bools like ``params``: True where some pattern matches."""
    return jax.tree.map(lambda p: lookup(p, items) is not None, param_paths(params))


def check_all_match(params, items: tuple[tuple[str, float], ...], field: str) -> None:
    """Raises ConfigError for a pattern that matches no parameter (a typo would otherwise
    silently train everything as usual)."""
    paths = jax.tree.leaves(param_paths(params))
    for pattern, _ in items:
        if not any(fnmatch.fnmatchcase(p, pattern) for p in paths):
            shown = ", ".join(paths[:12]) + (", ..." if len(paths) > 12 else "")
            raise ConfigError(
                f"`config.{field}`: the pattern {pattern!r} matches no parameter; the "
                f"parameters are named like {shown}."
            )
