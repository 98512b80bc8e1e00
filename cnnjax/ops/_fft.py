"""Convolution through the Fourier transform.

The correlation theorem: for real signals, correlation in space is a product with the complex
conjugate in frequency, ``x ⋆ w = F⁻¹( F(x) · conj(F(w)) )``. Computed with FFTs of length
``L ≥ n_padded``, the result is circular; positions ``0 .. n_padded - k_eff`` never wrap and are
exactly the VALID cross-correlation, so no further zero-padding is needed.

Two choices keep it fast on CPUs:

* transforms run channels-first, over the trailing axes, which is the layout XLA's FFT wants
  (transforming axes (1, 2) of NHWC data costs two extra transposes per call);
* ``L`` is rounded up to a 3-smooth length (2^a·3^b), where FFTs are faster than at lengths
  with large prime factors (78 = 2·3·13 is slower than 81 = 3^4).

A truncated-DFT matrix product for the (mostly zero) padded kernel was tried and measured no
faster than the FFT on a 2-core CPU, so the kernel is transformed by ``rfftn`` like the input.

Channels are contracted in the frequency domain, one complex multiply-add per
(frequency, Cin, Cout).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax


@functools.cache
def fast_length(n: int) -> int:
    """The smallest 3-smooth integer (2^a·3^b) that is at least ``n``."""
    best = 1 << (n - 1).bit_length()
    p3 = 1
    while p3 < best:
        m = p3
        while m < n:
            m *= 2
        best = min(best, m)
        p3 *= 3
    return best


def fft_conv(x, w, pads, stride, dilation, groups):
    """Cross-correlation of ``x`` (N, *S, Cin) with ``w`` (*K, Cin/groups, Cout) via rFFT.

    ``pads``: explicit zero padding ((lo, hi), ...) per spatial axis. The full-resolution result
    is subsampled for ``stride > 1``. Returns (N, *O, Cout) in ``x``'s dtype; the transforms run
    in float32 (XLA has no bfloat16 FFT).
    """
    nd = x.ndim - 2
    out_dtype = x.dtype
    x = x.astype(jnp.float32)
    n, cin, cout = x.shape[0], x.shape[-1], w.shape[-1]
    padded = [s + lo + hi for s, (lo, hi) in zip(x.shape[1:-1], pads, strict=True)]
    lengths = [fast_length(p) for p in padded]
    spatial = tuple(range(2, nd + 2))
    # Channels-first, zero padding up to the FFT length in the same pad.
    xc = jnp.moveaxis(x, -1, 1)
    widths = [(lo, m - p + hi) for (lo, hi), m, p in zip(pads, lengths, padded, strict=True)]
    xc = jnp.pad(xc, [(0, 0), (0, 0), *widths])
    xf = jnp.fft.rfftn(xc, axes=spatial)  # (N, Cin, *F)

    # Dilated kernel, channels-first: (Cin/g, Cout, *K_eff).
    wd = lax.pad(
        w.astype(jnp.float32), 0.0, [(0, 0, d - 1) for d in dilation] + [(0, 0, 0), (0, 0, 0)]
    )
    k_eff = wd.shape[:nd]
    wf = jnp.conj(jnp.fft.rfftn(jnp.moveaxis(wd, (nd, nd + 1), (0, 1)), s=lengths, axes=spatial))

    freq = xf.shape[2:]
    cg, og = cin // groups, cout // groups
    xf = xf.reshape(n, groups, cg, 1, *freq)
    wf = jnp.moveaxis(wf.reshape(cg, groups, og, *freq), 0, 1)  # (g, Cg, Og, *F)
    # Broadcast multiply-add over input channels: XLA fuses it into one loop over frequencies.
    yf = jnp.sum(xf * wf[None], axis=2).reshape(n, cout, *freq)
    y = jnp.fft.irfftn(yf, s=lengths, axes=spatial)

    out = [(m - ke) // st + 1 for m, ke, st in zip(padded, k_eff, stride, strict=True)]
    y = lax.slice(
        y,
        (0,) * (nd + 2),
        (n, cout, *[(o - 1) * st + 1 for o, st in zip(out, stride, strict=True)]),
        (1, 1, *stride),
    )
    return jnp.moveaxis(y, 1, -1).astype(out_dtype)
