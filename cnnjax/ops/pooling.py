"""Pooling over the spatial axes of channels-last arrays (N, *spatial, C).

Windows may overlap (window > stride, e.g. 3×3 stride 2) and accept the padding vocabulary of
:func:`cnnjax.ops.conv`. Max pooling pads with −∞, so a padded position never wins. Its
gradient follows XLA's select-and-scatter: within each window the whole output gradient goes
to the *first* maximum in row-major order (first wins; ties are not split).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp
from jax import lax

from cnnjax.ops import args
from cnnjax.ops.args import PaddingLike


def _window_args(x, window, stride, padding, name="window"):
    args.check_float(x, "x")
    if jnp.ndim(x) < 3:
        raise ValueError(
            f"`x` must have rank >= 3 (N, *spatial, C), e.g. NHWC, got shape {jnp.shape(x)}."
        )
    nd = jnp.ndim(x) - 2
    win = args.as_tuple(window, nd, name)
    strides = win if stride is None else args.as_tuple(stride, nd, "stride")
    ones = (1,) * nd
    pads = args.normalize_padding(padding, x.shape[1:-1], win, strides, ones)
    args.check_window_fits(x.shape[1:-1], win, ones, pads, "pooling window", name)
    full = lambda t, fill: (fill, *t, fill)
    return full(win, 1), full(strides, 1), ((0, 0), *pads, (0, 0))


def max_pool(
    x: jnp.ndarray,
    window: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: PaddingLike = "VALID",
) -> jnp.ndarray:
    """Maximum over each window. ``x`` (N, *S, C) → (N, *S', C); ``stride`` defaults to ``window``.

    ``S' = floor((S + lo + hi − window) / stride) + 1``.
    """
    win, strides, pads = _window_args(x, window, stride, padding)
    return lax.reduce_window(x, -jnp.inf, lax.max, win, strides, pads)


def _sum_pool(x, win, strides, pads):
    return lax.reduce_window(x, 0.0, lax.add, win, strides, pads)


def avg_pool(
    x: jnp.ndarray,
    window: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: PaddingLike = "VALID",
    count_include_pad: bool = True,
) -> jnp.ndarray:
    """Mean over each window. ``x`` (N, *S, C) → (N, *S', C).

    With ``count_include_pad=False`` each window is divided by its number of real pixels, so
    border outputs are not darkened by the zero padding.
    """
    win, strides, pads = _window_args(x, window, stride, padding)
    total = _sum_pool(x, win, strides, pads)
    if count_include_pad:
        return total / jnp.asarray(math.prod(win), x.dtype)
    ones = jnp.ones((1, *x.shape[1:-1], 1), x.dtype)
    return total / _sum_pool(ones, win, strides, pads)


def lp_pool(
    x: jnp.ndarray,
    p: float,
    window: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: PaddingLike = "VALID",
) -> jnp.ndarray:
    """Power-average pooling ``(Σ_window |x|^p)^(1/p)``: p = 1 is sum pooling, p → ∞ max pooling.

    ``x`` (N, *S, C) → (N, *S', C).
    """
    if not p > 0:
        raise ValueError(f"`p` must be positive, got {p!r}.")
    win, strides, pads = _window_args(x, window, stride, padding)
    powered = jnp.abs(x) ** jnp.asarray(p, x.dtype)
    return _sum_pool(powered, win, strides, pads) ** jnp.asarray(1.0 / p, x.dtype)


def _check_global(x):
    args.check_float(x, "x")
    if jnp.ndim(x) < 3:
        raise ValueError(
            f"`x` must have rank >= 3 (N, *spatial, C), e.g. NHWC, got shape {jnp.shape(x)}."
        )
    return tuple(range(1, jnp.ndim(x) - 1))


def global_avg_pool(x: jnp.ndarray) -> jnp.ndarray:
    """Mean over all spatial positions: (N, *S, C) → (N, C). Makes a network size-agnostic."""
    return jnp.mean(x, axis=_check_global(x))


def global_max_pool(x: jnp.ndarray) -> jnp.ndarray:
    """Maximum over all spatial positions: (N, *S, C) → (N, C)."""
    return jnp.max(x, axis=_check_global(x))
