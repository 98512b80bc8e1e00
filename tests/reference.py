"""Independent float64 NumPy references (plain loops over kernel offsets and windows)."""

import itertools
import math

import numpy as np

from cnnjax.ops import _fft


def _pad_index(n, lo, hi, mode):
    """Source index of every padded position along one axis (-1 for a zero)."""
    idx = np.arange(-lo, n + hi)
    if mode == "zeros":
        return np.where((idx >= 0) & (idx < n), idx, -1)
    if mode == "reflect":
        return np.pad(np.arange(n), (lo, hi), mode="reflect")
    return np.pad(np.arange(n), (lo, hi), mode="wrap")


def pad(x, pads, mode="zeros"):
    """Pads the spatial axes of (N, H, W, C) float64 data."""
    x = np.asarray(x, np.float64)
    out = x
    for axis, (lo, hi) in enumerate(pads, start=1):
        idx = _pad_index(x.shape[axis], lo, hi, mode)
        taken = np.take(out, np.maximum(idx, 0), axis=axis)
        shape = [1] * out.ndim
        shape[axis] = len(idx)
        out = np.where((idx >= 0).reshape(shape), taken, 0.0)
    return out


def unpad_adjoint(dxp, shape, pads, mode="zeros"):
    """Adjoint of :func:`pad`: accumulates padded-domain gradients onto the source pixels."""
    out = np.asarray(dxp, np.float64)
    for axis, (lo, hi) in enumerate(pads, start=1):
        idx = _pad_index(shape[axis], lo, hi, mode)
        moved = np.moveaxis(out, axis, 0)
        acc = np.zeros((shape[axis], *moved.shape[1:]))
        keep = idx >= 0
        np.add.at(acc, idx[keep], moved[keep])
        out = np.moveaxis(acc, 0, axis)
    return out


def conv2d(x, w, pads, stride, dilation, groups, mode="zeros"):
    """out[n,i,j,o] = Σ_{a,b,c} xp[n, i·sh + a·dh, j·sw + b·dw, g·Cg + c] · w[a,b,c,o]."""
    xp = pad(x, pads, mode)
    w = np.asarray(w, np.float64)
    kh, kw, cg, cout = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    ho = (xp.shape[1] - (kh - 1) * dh - 1) // sh + 1
    wo = (xp.shape[2] - (kw - 1) * dw - 1) // sw + 1
    og = cout // groups
    out = np.zeros((x.shape[0], ho, wo, cout))
    for g in range(groups):
        for a, b in itertools.product(range(kh), range(kw)):
            patch = xp[
                :,
                a * dh : a * dh + (ho - 1) * sh + 1 : sh,
                b * dw : b * dw + (wo - 1) * sw + 1 : sw,
                g * cg : (g + 1) * cg,
            ]
            out[..., g * og : (g + 1) * og] += patch @ w[a, b, :, g * og : (g + 1) * og]
    return out


def conv2d_grads(x, w, gout, pads, stride, dilation, groups, mode="zeros"):
    """Gradients of Σ conv2d(x, w)·gout with respect to x and w, by the adjoint loops."""
    xp = pad(x, pads, mode)
    w = np.asarray(w, np.float64)
    gout = np.asarray(gout, np.float64)
    kh, kw, cg, cout = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    ho, wo = gout.shape[1:3]
    og = cout // groups
    dxp = np.zeros_like(xp)
    dw_ = np.zeros_like(w)
    for g in range(groups):
        go = gout[..., g * og : (g + 1) * og]
        for a, b in itertools.product(range(kh), range(kw)):
            sl = (
                slice(None),
                slice(a * dh, a * dh + (ho - 1) * sh + 1, sh),
                slice(b * dw, b * dw + (wo - 1) * sw + 1, sw),
                slice(g * cg, (g + 1) * cg),
            )
            dw_[a, b, :, g * og : (g + 1) * og] = np.einsum("nijc,nijo->co", xp[sl], go)
            dxp[sl] += go @ w[a, b, :, g * og : (g + 1) * og].T
    return unpad_adjoint(dxp, x.shape, pads, mode), dw_


def pool2d(x, window, stride, pads, kind, count_include_pad=True):
    """Max or average pooling by a loop over output positions (padding never wins a max)."""
    x = np.asarray(x, np.float64)
    n, h, wd, c = x.shape
    (kh, kw), (sh, sw) = window, stride
    (pt, pb), (pl, pr) = pads
    fill = -np.inf if kind == "max" else 0.0
    xp = np.full((n, h + pt + pb, wd + pl + pr, c), fill)
    xp[:, pt : pt + h, pl : pl + wd] = x
    real = np.zeros(xp.shape[1:3])
    real[pt : pt + h, pl : pl + wd] = 1
    ho = (xp.shape[1] - kh) // sh + 1
    wo = (xp.shape[2] - kw) // sw + 1
    out = np.zeros((n, ho, wo, c))
    for i, j in itertools.product(range(ho), range(wo)):
        win = xp[:, i * sh : i * sh + kh, j * sw : j * sw + kw]
        if kind == "max":
            out[:, i, j] = win.max(axis=(1, 2))
        else:
            count = (
                kh * kw
                if count_include_pad
                else real[i * sh : i * sh + kh, j * sw : j * sw + kw].sum()
            )
            out[:, i, j] = win.sum(axis=(1, 2)) / count
    return out


U32 = 2.0**-24  # float32's unit round-off


def gamma(terms: int) -> float:
    """Higham's γ_n = n·u / (1 − n·u) for float32: a sum of n products computed in any order,
    with or without fused multiply-adds, is within γ_n · Σ|aᵢ bᵢ| of the exact sum (Higham,
    "Accuracy and Stability of Numerical Algorithms", §3.1)."""
    return terms * U32 / (1 - terms * U32)


def fft_factor(points: int, taps: int, channels: int) -> float:
    """The FFT backend's documented error factor (``cnnjax.ops.conv``): its error is at most
    ``(32·log₂L + 2K + C + 10) · u · Σ_c ‖signal_c‖₂ ‖kernel_c‖₁`` for transforms of L points,
    K taps and C channels."""
    return (32 * np.log2(points) + 2 * taps + channels + 10) * U32


def grouped_norms(x_norms, w, groups):
    """Σ_c x_norms[n, c] · ‖w[..., c, o]‖₁ over the channels c that output o sees: (N, Cout)."""
    cg, cout = w.shape[-2:]
    og = cout // groups
    w_norms = np.abs(np.asarray(w, np.float64)).sum(axis=tuple(range(w.ndim - 2)))  # (Cg, Cout)
    out = np.zeros((x_norms.shape[0], cout))
    for g in range(groups):
        out[:, g * og : (g + 1) * og] = (
            x_norms[:, g * cg : (g + 1) * cg] @ w_norms[:, g * og : (g + 1) * og]
        )
    return out


def fft_points(padded_shape, w_shape, dilation):
    """An upper bound on the FFT backend's transform points: each padded axis plus the
    kernel's extent, rounded up to a length the FFT is fast at."""
    sizes = zip(padded_shape, w_shape, dilation, strict=True)
    return math.prod(_fft.fast_length(n + d * (k - 1)) for n, k, d in sizes)


def conv_bound(backend, x, w, pads, stride, dilation, groups, mode="zeros"):
    """How far a float32 convolution may lie from the exact one, derived, not measured.

    Direct sums (xla, gemm): Higham's γ_K times the convolution of |x| with |w|, K = taps x
    channels per group, output by output. FFT: the bound ``ops.conv`` documents, per image and
    output channel (its proof holds for any algorithm whose error is a fixed multiple of the
    same norms, so Winograd's fixed 4x4 transforms, entries 0, ±1/2, ±1, fall under it too)."""
    *k, cg, _ = w.shape
    if backend in ("xla", "gemm"):
        terms = math.prod(k) * cg
        absolute = conv2d(np.abs(x), np.abs(w), pads, stride, dilation, groups, mode)
        return gamma(terms) * absolute
    xp = pad(x, pads, mode)
    norms = grouped_norms(np.sqrt((xp**2).sum(axis=(1, 2))), w, groups)
    points = fft_points(xp.shape[1:3], k, dilation)
    return fft_factor(points, math.prod(k), x.shape[-1]) * norms[:, None, None, :]


def assert_within(got, want, bound):
    error = np.abs(np.asarray(got, np.float64) - want)
    assert (error <= bound).all(), (
        f"error up to {np.max(error / np.maximum(bound, 1e-300)):.2f}x the bound"
    )
