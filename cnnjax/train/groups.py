"""Parameter groups: which parameters a config's glob patterns select.

Parameters are named by their path in the Flax parameter tree joined with "/", e.g.
``block1_bn1/bias`` or ``whiten/kernel``; patterns use shell globs (``*_bn*/bias``). A config
names groups in a string of comma-separated ``pattern`` or ``pattern=value`` items, so that
they can be given on the command line (``--config.frozen=whiten/kernel``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any

import jax

from cnnjax.errors import ConfigError

Items = tuple[tuple[str, float], ...]

# The config's parameter-group fields and whether their items carry a value.
FIELDS = (
    ("frozen", False),
    ("lr_multipliers", True),
    ("train_epochs", True),
    ("muon_params", False),
)


@dataclasses.dataclass(frozen=True)
class ParamGroups:
    """A config's parameter-group fields, parsed once (:func:`parse_groups`): each a tuple of
    ``(glob pattern, value)`` in the config's order (value 1.0 where items carry none).

    Attributes:
      frozen: parameters that get no gradient and never change.
      lr_multipliers: the learning rate's multiple per group.
      train_epochs: the epoch at which a group stops training.
      muon_params: what Muon optimises (empty: every trainable convolution kernel).
    """

    frozen: Items = ()
    lr_multipliers: Items = ()
    train_epochs: Items = ()
    muon_params: Items = ()


def parse_groups(config) -> ParamGroups:
    """The config's group strings as :class:`ParamGroups`.

    Raises:
      ConfigError: an item that is not ``pattern`` or ``pattern=number`` as its field takes.
    """
    return ParamGroups(**{f: parse_items(config[f], f, values) for f, values in FIELDS})


def check_groups_match(params, parsed: ParamGroups) -> None:
    """Raises ConfigError for a pattern of any group field that matches no parameter."""
    for field, _ in FIELDS:
        check_all_match(params, getattr(parsed, field), field)


def param_paths(params) -> Any:
    """A tree like ``params`` whose leaves are the parameters' "/"-joined paths."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "/".join(str(getattr(k, "key", k)) for k in path), params
    )


def parse_items(text: str, field: str, with_values: bool) -> Items:
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


def lookup(path: str, items: Items) -> float | None:
    """The value of the first pattern that matches ``path``, or None."""
    for pattern, value in items:
        if fnmatch.fnmatchcase(path, pattern):
            return value
    return None


def mask(params, items: Items) -> Any:
    """A tree of bools like ``params``: True where some pattern matches."""
    return jax.tree.map(lambda p: lookup(p, items) is not None, param_paths(params))


def check_all_match(params, items: Items, field: str) -> None:
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
