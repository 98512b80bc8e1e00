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
from jax.custom_derivatives import linear_call

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

    The derivative has the values of ``reduce_window``'s (select-and-scatter) but not its cost
    on XLA:CPU (``experiments/perf_notes.md``): each window's elements are compared one after
    another over strided slices of the padded input, keeping the first maximum.
    """
    win, strides, pads = _window_args(x, window, stride, padding)
    if math.prod(win) > _MAX_UNROLLED:
        return lax.reduce_window(x, -jnp.inf, lax.max, win, strides, pads)
    return _window_max(x, win, strides, pads)


# Windows up to this many elements get the unrolled derivative (one strided slice per
# element); larger ones (global pooling written as a window) keep select-and-scatter.
_MAX_UNROLLED = 64


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _window_max(x, win, strides, pads):
    # The primal is reduce_window, so that jaxpr analyses (receptive fields) see a window.
    return lax.reduce_window(x, -jnp.inf, lax.max, win, strides, pads)


def _offsets(x, win, strides, pads, fill):
    """Per window offset (row-major), one strided slice of the padded ``x`` holding that
    offset's element of every window: shape (N, *S', C) each, ``prod(window)`` of them."""
    xp = lax.pad(x, jnp.asarray(fill, x.dtype), [(lo, hi, 0) for lo, hi in pads])
    out = [(n - k) // s + 1 for n, k, s in zip(xp.shape, win, strides, strict=True)]
    views = []
    for offset in itertools.product(*(range(k) for k in win)):
        limit = [o + (m - 1) * s + 1 for o, m, s in zip(offset, out, strides, strict=True)]
        views.append(lax.slice(xp, offset, limit, strides))
    return views


@_window_max.defjvp
def _window_max_jvp(win, strides, pads, primals, tangents):
    # Each window's elements are compared in turn; a strictly greater one (or a NaN, which max
    # propagates) replaces the best, so the first maximum wins, as in select-and-scatter, and
    # its offset is kept. The tangent is the winning offset's (``_select``); the gradient, its
    # transpose, is written by hand (``_scatter``) because JAX's own transpose (a padded array
    # per offset) does not fuse inside a network: 0.95 of GoogLeNet-small's 2.8 s step.
    (x,), (t,) = primals, tangents
    values = _offsets(x, win, strides, pads, -jnp.inf)
    best, first = values[0], jnp.zeros(values[0].shape, jnp.int8)
    for i, v in enumerate(values[1:], 1):
        take = (v > best) | jnp.isnan(v)
        best, first = jnp.where(take, v, best), jnp.where(take, jnp.int8(i), first)
    select = functools.partial(_select, win, strides, pads)
    scatter = functools.partial(_scatter, win, strides, pads, x.shape)
    return best, linear_call(select, scatter, first, t)


def _select(win, strides, pads, first, t):
    """The tangent of each window's winning element: (N, *S, C) -> (N, *S', C)."""
    slopes = _offsets(t, win, strides, pads, 0)
    return sum(jnp.where(first == i, dv, 0) for i, dv in enumerate(slopes))


def _scatter(win, strides, pads, shape, first, g):
    """The transpose of :func:`_select`: each output gradient back to its window's winner,
    (N, *S', C) -> (N, *S, C), as a sum of one slice per offset (a gather, which fuses).

    Input position q of the padded input receives g[w] from every window w with w·s + o = q
    whose winner is offset o. Dilating ``g`` (and ``first``) by the stride puts g[w] at w·s;
    padding by k − 1 on both sides then makes that term the slice starting at k − 1 − o."""
    padded = [n + lo + hi for n, (lo, hi) in zip(shape, pads, strict=True)]
    config = [
        (k - 1, k - 1 + p - ((m - 1) * s + k), s - 1)  # the ragged end needs the extra hi
        for k, s, p, m in zip(win, strides, padded, g.shape, strict=True)
    ]
    g_wide = lax.pad(g, jnp.zeros((), g.dtype), config)
    first_wide = lax.pad(first, jnp.int8(-1), config)  # -1: no offset wins a dilation hole
    total = 0
    for i, offset in enumerate(itertools.product(*(range(k) for k in win))):
        start = [k - 1 - o for k, o in zip(win, offset, strict=True)]
        limit = [a + p for a, p in zip(start, padded, strict=True)]
        won = lax.slice(first_wide, start, limit) == i
        total = total + jnp.where(won, lax.slice(g_wide, start, limit), 0)
    lows = [lo for lo, _ in pads]
    return lax.slice(total, lows, [lo + n for lo, n in zip(lows, shape, strict=True)])


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
