"""Convolution through the Fourier transform.

The correlation theorem: for real signals, correlation in space is a product with the complex
conjugate in frequency, ``x ⋆ w = F⁻¹( F(x) · conj(F(w)) )``. Computed with FFTs of length
``L ≥ n_padded``, the result is circular; positions ``0 .. n_padded - k_eff`` never wrap and are
exactly the VALID cross-correlation, so no further zero-padding is needed.

The backward pass is written out (``jax.custom_vjp``), in the same three steps. With ``G`` the
output gradient placed at the positions the forward pass kept (every ``stride``-th):

* input gradient: the circular *convolution* of ``G`` with the kernel, ``F⁻¹(F(G) · F(w))``,
  cropped to the input;
* kernel gradient: the circular correlation of the padded input with ``G``,
  ``F⁻¹(F(x) · conj(F(G)))``, evaluated at the kernel's taps only (:func:`kernel_taps`).

Choices that keep it fast on CPUs (each measured in ``experiments/perf_notes.md``):

* transforms run channels-first, over the trailing axes, the layout XLA's FFT wants;
* ``L`` is rounded up to a 7-smooth length (no prime factor above 7), which XLA's FFT
  transforms with its fast radices, without adding points that a coarser rounding would;
* the kernel's spectrum is one small matrix product per axis with the DFT matrix's columns at
  the kernel's taps (:func:`kernel_spectrum`), not an ``rfftn`` of the zero-padded, dilated
  kernel, and the kernel gradient is the transposed products, which return only the taps
  where an inverse FFT would compute all L positions and crop;
* the hand-written backward transforms ``G`` once and folds the inverse transform's scale and
  Hermitian weights into the small kernel-side matrices, where autodiff would multiply
  ``F(G)`` by them inside both channel contractions, once per channel.

Channels are contracted in the frequency domain, one complex multiply-add per
(frequency, Cin, Cout). Forward-mode differentiation (``jax.jvp``) is not defined for this
backend, as for ``gemm``; the ``xla`` backend supports both modes.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnnjax.ops import args


@functools.cache
def fast_length(n: int) -> int:
    """The smallest 7-smooth integer (2^a·3^b·5^c·7^d) that is at least ``n``."""
    m = max(n, 1)
    while True:
        r = m
        for p in (2, 3, 5, 7):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def _tap_dft(length: int, taps: int, dilation: int, half: bool) -> np.ndarray:
    """(frequencies, taps) conjugate DFT matrix ``exp(+2πi·f·k·dilation / length)``; all
    ``length`` frequencies, or the ``length // 2 + 1`` of a real FFT when ``half``."""
    freqs = length // 2 + 1 if half else length
    # Phases reduced modulo L in integers, so they stay exact before the float conversion.
    phase = np.outer(np.arange(freqs), np.arange(taps) * dilation) % length
    return np.exp(2j * np.pi * phase / length)


def kernel_spectrum(w, lengths, dilation):
    """``conj(rfftn(w dilated, s=lengths))`` over the trailing axes of ``w`` (Cg, Cout, *K).

    Tap ``k`` of axis ``a`` sits at position ``k·dilation[a]``, so each axis is one product
    with the (frequencies x K) columns of the conjugate DFT matrix that those positions pick.
    Returns complex64 (Cg, Cout, L_1, ..., L_nd // 2 + 1).
    """
    nd = len(lengths)
    y = w.astype(jnp.complex64)
    for a, (length, d) in enumerate(zip(lengths, dilation, strict=True)):
        dft = _tap_dft(length, w.shape[2 + a], d, half=a == nd - 1).astype(np.complex64)
        y = jnp.moveaxis(jnp.tensordot(y, dft, axes=([2 + a], [1])), -1, 2 + a)
    return y


def kernel_taps(z, lengths, dilation, kernel):
    """The real circular signal whose spectrum is ``z`` (…, L_1, ..., L_nd // 2 + 1), read at
    the taps ``k·dilation`` of a ``kernel``-sized window: ``irfftn(z, s=lengths)`` at those
    positions, as the transposed products of :func:`kernel_spectrum`.

    The half spectrum stands for the whole: every frequency of the last axis except 0 and
    L/2 has a mirror image, so it counts twice (the real part of the weighted sum).
    """
    nd = len(lengths)
    y = z
    # Last axis first: z arrives frequency-minor, so the first product needs no transpose.
    for a, (length, d, k) in reversed(list(enumerate(zip(lengths, dilation, kernel, strict=True)))):
        dft = _tap_dft(length, k, d, half=a == nd - 1) / length
        if a == nd - 1:
            weight = np.full(dft.shape[0], 2.0)
            weight[0] = 1.0
            if length % 2 == 0:
                weight[-1] = 1.0
            dft = dft * weight[:, None]
        axis = y.ndim - nd + a
        y = jnp.moveaxis(jnp.tensordot(y, dft.astype(np.complex64), axes=([axis], [0])), -1, axis)
    return jnp.real(y)


class _Plan(NamedTuple):
    """Static geometry of one FFT convolution, per spatial axis where a tuple."""

    pads: tuple[tuple[int, int], ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    sizes: tuple[int, ...]  # input
    kernel: tuple[int, ...]
    lengths: tuple[int, ...]  # FFT
    out: tuple[int, ...]


def fft_conv(x, w, pads, stride, dilation, groups):
    """Cross-correlation of ``x`` (N, *S, Cin) with ``w`` (*K, Cin/groups, Cout) via rFFT.

    ``pads``: explicit zero padding ((lo, hi), ...) per spatial axis. The full-resolution result
    is subsampled for ``stride > 1``. Returns (N, *O, Cout) in ``x``'s dtype; the transforms run
    in float32 (XLA has no bfloat16 FFT).
    """
    nd = x.ndim - 2
    sizes, kernel = x.shape[1:-1], w.shape[:nd]
    padded = [s + lo + hi for s, (lo, hi) in zip(sizes, pads, strict=True)]
    plan = _Plan(
        pads=tuple(map(tuple, pads)),
        stride=tuple(stride),
        dilation=tuple(dilation),
        groups=groups,
        sizes=tuple(sizes),
        kernel=tuple(kernel),
        lengths=tuple(fast_length(p) for p in padded),
        out=tuple(
            args.out_size(*axis) for axis in zip(sizes, kernel, stride, dilation, pads, strict=True)
        ),
    )
    y = _fft_conv(x.astype(jnp.float32), w.astype(jnp.float32), plan)
    return y.astype(x.dtype)


def _forward(x, w, plan: _Plan):
    nd = x.ndim - 2
    n, cin, cout = x.shape[0], x.shape[-1], w.shape[-1]
    spatial = tuple(range(2, nd + 2))
    # Channels-first, zero padding up to the FFT length in the same pad.
    widths = [
        (lo, m - s - lo) for (lo, _), m, s in zip(plan.pads, plan.lengths, plan.sizes, strict=True)
    ]
    xc = jnp.pad(jnp.moveaxis(x, -1, 1), [(0, 0), (0, 0), *widths])
    xf = jnp.fft.rfftn(xc, axes=spatial)  # (N, Cin, *F)
    wf = kernel_spectrum(jnp.moveaxis(w, (nd, nd + 1), (0, 1)), plan.lengths, plan.dilation)

    freq = xf.shape[2:]
    groups = plan.groups
    cg, og = cin // groups, cout // groups
    xf = xf.reshape(n, groups, cg, 1, *freq)
    wf = jnp.moveaxis(wf.reshape(cg, groups, og, *freq), 0, 1)  # (g, Cg, Og, *F)
    # Broadcast multiply-add over input channels: XLA fuses it into one loop over frequencies.
    yf = jnp.sum(xf * wf[None], axis=2).reshape(n, cout, *freq)
    y = jnp.fft.irfftn(yf, s=plan.lengths, axes=spatial)
    limit = [(o - 1) * s + 1 for o, s in zip(plan.out, plan.stride, strict=True)]
    y = lax.slice(y, (0,) * (nd + 2), (n, cout, *limit), (1, 1, *plan.stride))
    return jnp.moveaxis(y, 1, -1), (xf, wf)


def _backward(plan: _Plan, res, g):
    xf, wf = res  # (N, g, Cg, 1, *F), (g, Cg, Og, *F)
    nd = g.ndim - 2
    n, groups, cg, og = xf.shape[0], plan.groups, xf.shape[2], wf.shape[2]
    spatial = tuple(range(2, nd + 2))
    # G: the output gradient at the positions the forward pass kept, zero elsewhere.
    config = [(0, 0, 0)] * 2 + [
        (0, m - (o - 1) * s - 1, s - 1)
        for m, o, s in zip(plan.lengths, plan.out, plan.stride, strict=True)
    ]
    gc = lax.pad(jnp.moveaxis(g, -1, 1), jnp.zeros((), g.dtype), config)
    gf = jnp.fft.rfftn(gc, axes=spatial)
    freq = gf.shape[2:]
    gf = gf.reshape(n, groups, 1, og, *freq)

    # Input gradient: G convolved with the kernel, F(w) = conj(wf).
    dxf = jnp.sum(gf * jnp.conj(wf)[None], axis=3).reshape(n, groups * cg, *freq)
    dx = jnp.fft.irfftn(dxf, s=plan.lengths, axes=spatial)
    lo = [p[0] for p in plan.pads]
    dx = lax.slice(
        dx, (0, 0, *lo), (n, groups * cg, *[a + s for a, s in zip(lo, plan.sizes, strict=True)])
    )
    # Kernel gradient: padded input correlated with G, read at the kernel's taps.
    z = jnp.sum(xf * jnp.conj(gf), axis=0)  # (g, Cg, Og, *F)
    z = jnp.moveaxis(z, 0, 1).reshape(cg, groups * og, *freq)
    dw = kernel_taps(z, plan.lengths, plan.dilation, plan.kernel)  # (Cg, Cout, *K)
    return jnp.moveaxis(dx, 1, -1), jnp.moveaxis(dw, (0, 1), (nd, nd + 1))


def _primal(x, w, plan):
    return _forward(x, w, plan)[0]


_fft_conv = jax.custom_vjp(_primal, nondiff_argnums=(2,))
_fft_conv.defvjp(_forward, _backward)
