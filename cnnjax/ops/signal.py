"""The mathematical operations: correlation and (true, kernel-flipping) convolution.

For functions on the plane,

    (x ⋆ k)(t) = ∫∫ x(t + τ) k(τ) dτ          correlation: slide k over x as it is;
    (x ∗ k)(t) = ∫∫ x(t − τ) k(τ) dτ          convolution: slide k *reflected* over x.

On a pixel grid the integrals become sums, and
``convolve2d(x, k) == correlate2d(x, k[::-1, ::-1])``.
Deep-learning "convolution" (:func:`cnnjax.ops.conv2d`) is the correlation: a learned kernel
does not care whether it is stored flipped. Convolution is commutative and associative;
correlation is neither, which is why signal processing prefers convolution.

``mode`` follows ``scipy.signal``: "full" (every overlap, (H + kh − 1, W + kw − 1)), "same"
(centred, (H, W)) or "valid" (complete overlaps only, (H − kh + 1, W − kw + 1)). For even
kernels "same" centres as scipy does, so ``convolve2d(x, k, "same")`` is the flipped-kernel
correlation shifted by one pixel.
"""

from __future__ import annotations

import jax.numpy as jnp

from cnnjax.ops import args
from cnnjax.ops.conv import conv2d

MODES = ("full", "same", "valid")


def _pads(kernel, mode: str, flipped: bool):
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}.")
    pads = []
    for k in kernel:
        if mode == "full":
            pads.append((k - 1, k - 1))
        elif mode == "valid":
            pads.append((0, 0))
        else:
            lo = -(-(k - 1) // 2) if flipped else (k - 1) // 2
            pads.append((lo, k - 1 - lo))
    return tuple(pads)


def _as_nhwc(x, k):
    """Brings ``x`` to NHWC and ``k`` to an HWIO kernel (plus groups); returns an un-batcher."""
    args.check_float(x, "x")
    args.check_float(k, "k")
    kr = jnp.ndim(k)
    xr = jnp.ndim(x)
    if kr not in (2, 4):
        raise ValueError(
            f"`k` must have rank 2 (kh, kw) or 4 (kh, kw, Cin, Cout), got shape {jnp.shape(k)}."
        )
    if xr == 2:
        if kr != 2:
            raise ValueError("a single-channel image `x` (H, W) needs a kernel `k` (kh, kw).")
        return x[None, :, :, None], k[:, :, None, None], 1, lambda y: y[0, :, :, 0]
    if xr not in (3, 4):
        raise ValueError(
            f"`x` must have rank 2 (H, W), 3 (H, W, C) or 4 (N, H, W, C), got {jnp.shape(x)}."
        )
    x4 = x[None] if xr == 3 else x
    unbatch = (lambda y: y[0]) if xr == 3 else (lambda y: y)
    c = x4.shape[-1]
    if kr == 2:  # the same 2-d kernel applied to each channel on its own (depthwise)
        w = jnp.broadcast_to(k[:, :, None, None], (*k.shape, 1, c))
        return x4, w, c, unbatch
    return x4, k, 1, unbatch


def correlate2d(x: jnp.ndarray, k: jnp.ndarray, mode: str = "full") -> jnp.ndarray:
    """2-d cross-correlation ``out[t] = Σ_τ x[t + τ] k[τ]`` (the integral: module docstring).

    Shapes: ``x`` (H, W) with ``k`` (kh, kw); or ``x`` (H, W, C) / (N, H, W, C) with ``k``
    (kh, kw), applied to every channel separately, or ``k`` (kh, kw, Cin, Cout), summed over
    input channels (a deep-learning layer). Returns the same layout with spatial size set by
    ``mode``.
    """
    x4, w, groups, unbatch = _as_nhwc(x, k)
    pads = _pads(w.shape[:2], mode, flipped=False)
    return unbatch(conv2d(x4, w, padding=pads, groups=groups))


def convolve2d(x: jnp.ndarray, k: jnp.ndarray, mode: str = "full") -> jnp.ndarray:
    """2-d convolution ``out[t] = Σ_τ x[t − τ] k[τ]``: correlation with the kernel flipped in space.

    Same shapes and modes as :func:`correlate2d`.
    """
    x4, w, groups, unbatch = _as_nhwc(x, k)
    pads = _pads(w.shape[:2], mode, flipped=True)
    return unbatch(conv2d(x4, w[::-1, ::-1], padding=pads, groups=groups))
