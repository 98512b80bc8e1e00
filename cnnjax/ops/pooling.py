"""Pooling over the spatial axes of channels-last arrays (N, *spatial, C).

Windows may overlap (window > stride, e.g. 3×3 stride 2) and accept the padding vocabulary of
:func:`cnnjax.ops.conv`. Max pooling pads with −∞, so a padded position never wins. Its
gradient follows XLA's select-and-scatter: within each window the whole output gradient goes
to the *first* maximum in row-major order (first wins; ties are not split).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
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

    Non-overlapping windows without padding (``stride == window``, e.g. 2×2 stride 2) have a
    faster derivative with the same values: the input is cut into its windows by a reshape and
    each window's elements are compared one after another, keeping the first maximum, where
    XLA:CPU's select-and-scatter (``reduce_window``'s gradient) is slow
    (``experiments/perf_notes.md``).
    """
    win, strides, pads = _window_args(x, window, stride, padding)
    if win == strides and not any(lo or hi for lo, hi in pads):
        return _tiled_max(x, win[1:-1])
    return lax.reduce_window(x, -jnp.inf, lax.max, win, strides, pads)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _tiled_max(x, window):
    # The primal is reduce_window, so that jaxpr analyses (receptive fields) see a window.
    dims = (1, *window, 1)
    return lax.reduce_window(x, -jnp.inf, lax.max, dims, dims, "VALID")


def _tiles(x, window):
    """The elements of each non-overlapping tile of (N, *S, C), one array (N, *O, C) per
    offset in row-major order (a ragged end is dropped)."""
    n, sizes, c = x.shape[0], x.shape[1:-1], x.shape[-1]
    out = [s // k for s, k in zip(sizes, window, strict=True)]
    x = x[(slice(None), *(slice(0, o * k) for o, k in zip(out, window, strict=True)))]
    shape = [n]
    for o, k in zip(out, window, strict=True):
        shape += [o, k]
    tiles = x.reshape(*shape, c)  # (N, O1, K1, O2, K2, ..., C)
    views = []
    for offset in itertools.product(*(range(k) for k in window)):
        index = [slice(None)]
        for k in offset:
            index += [slice(None), k]
        views.append(tiles[tuple(index)])
    return views


@_tiled_max.defjvp
def _tiled_max_jvp(window, primals, tangents):
    # Compare each tile's elements in turn; a strictly greater one (or a NaN, which max
    # propagates) replaces the best, so the first maximum wins and its tangent is carried.
    (x,), (t,) = primals, tangents
    values, slopes = _tiles(x, window), _tiles(t, window)
    best, slope = values[0], slopes[0]
    for v, dv in zip(values[1:], slopes[1:], strict=True):
        take = (v > best) | jnp.isnan(v)
        best, slope = jnp.where(take, v, best), jnp.where(take, dv, slope)
    return best, slope


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


def binomial_filter(size: int) -> np.ndarray:
    """The ``size``-tap binomial low-pass filter, normalised to sum 1 (3: [1, 2, 1] / 4)."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"`size` must be a positive int, got {size!r}.")
    taps = np.array([math.comb(size - 1, k) for k in range(size)], np.float64)
    return taps / taps.sum()


def blur_pool(
    x: jnp.ndarray, stride: int | Sequence[int] = 2, size: int = 3, padding_mode: str = "reflect"
) -> jnp.ndarray:
    """Anti-aliased downsampling (Zhang, 2019): a fixed binomial low-pass filter, then
    subsampling by ``stride``. ``x`` (N, *S, C) → (N, ceil(S / stride), C).

    Every channel is filtered separately with the separable ``size``-tap binomial filter
    (:func:`binomial_filter` along each axis), over "SAME" padding in ``padding_mode``
    ("reflect", "zeros" or "circular"), and every ``stride``-th output is kept. With
    ``stride=1`` it only blurs: a following stride-2 convolution then samples a signal whose
    frequencies above the new Nyquist limit were removed, which makes the network's output
    less sensitive to one-pixel shifts than a plain stride-2 convolution.
    """
    args.check_float(x, "x")
    if jnp.ndim(x) < 3:
        raise ValueError(f"`x` must have rank >= 3 (N, *spatial, C), got shape {jnp.shape(x)}.")
    nd = jnp.ndim(x) - 2
    strides = args.as_tuple(stride, nd, "stride")
    taps = binomial_filter(size)
    outs = [-(-n // s) for n, s in zip(x.shape[1:-1], strides, strict=True)]
    totals = [
        max((o - 1) * s + size - n, 0) for o, s, n in zip(outs, strides, x.shape[1:-1], strict=True)
    ]
    x = args.pad_input(x, [(t // 2, t - t // 2) for t in totals], padding_mode)
    # One axis at a time, as weighted sums of strided slices: elementwise work that XLA fuses,
    # where the same filter as a depthwise convolution (feature_group_count = C) was slow on
    # XLA:CPU (perf_notes, "blur_pool").
    for axis, (o, s) in enumerate(zip(outs, strides, strict=True), start=1):
        x = sum(
            float(t) * lax.slice_in_dim(x, k, k + (o - 1) * s + 1, s, axis)
            for k, t in enumerate(taps)
        )
    return x


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
