"""Convolution as one matrix multiplication (im2col), with a hand-written backward pass.

Forward: gather every receptive-field patch into a row of ``cols`` (M = N·∏O rows,
∏K·Cin columns), then ``out = cols · W`` with ``W`` the kernel flattened to (∏K·Cin, Cout).
Backward, with ``E`` the output gradient flattened to (M, Cout):

* weight gradient ``dW = colsᵀ · E``;
* input gradient ``dx = col2im(E · Wᵀ)``: every patch row is scattered back, and added, to the
  pixels it was read from.

Feature groups turn both products into batched products, one per group.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnnjax.ops import args


def _out_sizes(sizes, kernel, stride, dilation):
    """Output lengths of a VALID window over ``sizes`` (padding is applied before)."""
    return tuple(
        args.out_size(n, k, s, d, (0, 0))
        for n, k, s, d in zip(sizes, kernel, stride, dilation, strict=True)
    )


def _offsets(kernel):
    return list(itertools.product(*(range(k) for k in kernel)))


def im2col(x, kernel, stride, dilation, pads=None):
    """Patches of ``x`` (N, *S, C) as an array (N, *O, ∏K, C), kernel offsets in row-major order.

    One gather with constant indices ``o·stride + k·dilation - lo`` per axis. ``pads``: zero
    padding ((lo, hi), ...) per spatial axis, applied inside the gather: indices outside the
    input are clamped and their values replaced by zeros (padding a copy first made XLA fuse
    the pad into a slow gather inside the backward pass). XLA:CPU emits the gather as a plain
    copy loop; stacking the ∏K strided slices is slower, because XLA:CPU's concatenate writes
    the interleaved (∏K, C) rows slowly (``experiments/perf_notes.md``).
    """
    nd = x.ndim - 2
    n, sizes, c = x.shape[0], x.shape[1:-1], x.shape[-1]
    pads = pads or ((0, 0),) * nd
    padded = [s + lo + hi for s, (lo, hi) in zip(sizes, pads, strict=True)]
    out = _out_sizes(padded, kernel, stride, dilation)
    # Index arrays broadcast to (N, *O, *K): axis a's is (1,..,O_a,..,1, 1,..,K_a,..,1). The
    # batch axis is indexed too, so the gather writes rows in their final order (slicing it
    # would make XLA gather batch-minor and transpose afterwards).
    index = [np.arange(n).reshape([n] + [1] * (2 * nd))]
    inside = np.ones([1] * (2 * nd + 1), bool)
    for a, (o, k, st, d, (lo, _), s) in enumerate(
        zip(out, kernel, stride, dilation, pads, sizes, strict=True)
    ):
        shape = [1] * (2 * nd + 1)
        shape[1 + a], shape[1 + nd + a] = o, k
        pos = (np.arange(o)[:, None] * st + np.arange(k)[None, :] * d - lo).reshape(shape)
        inside = inside & (pos >= 0) & (pos < s)
        index.append(np.clip(pos, 0, s - 1))
    patches = x[tuple(index)]  # (N, *O, *K, C)
    if not inside.all():
        patches = jnp.where(inside[..., None], patches, jnp.zeros((), x.dtype))
    return patches.reshape(n, *out, -1, c)


def im2col_slices(x, kernel, stride, dilation):
    """:func:`im2col` built from ∏K strided slices, stacked.

    Slower to run than the gather, but JAX transposes it into :func:`col2im`'s sum of pads
    (the gather transposes into a scatter-add), so it is the form for linear maps that reverse
    mode transposes, such as the tangent rule of strided ``xla`` convolutions.
    """
    nd = x.ndim - 2
    n, c = x.shape[0], x.shape[-1]
    out = _out_sizes(x.shape[1:-1], kernel, stride, dilation)
    patches = []
    for off in _offsets(kernel):
        start = [o * d for o, d in zip(off, dilation, strict=True)]
        limit = [s0 + (o - 1) * st + 1 for s0, o, st in zip(start, out, stride, strict=True)]
        patches.append(lax.slice(x, (0, *start, 0), (n, *limit, c), (1, *stride, 1)))
    return jnp.stack(patches, axis=nd + 1)


def col2im(cols, sizes, kernel, stride, dilation):
    """Adjoint of :func:`im2col`: sums patch values (N, *O, ∏K, C) back into (N, *S, C).

    Each kernel offset is one ``lax.pad`` (interior padding undoes the stride), so the
    scatter-add is a sum of shifted, dilated copies and never a serial scatter.
    """
    nd = len(sizes)
    out = cols.shape[1 : nd + 1]
    zero = jnp.zeros((), cols.dtype)
    total = None
    for i, off in enumerate(_offsets(kernel)):
        config = [(0, 0, 0)]
        for o, d, m, st, n in zip(off, dilation, out, stride, sizes, strict=True):
            lo = o * d
            config.append((lo, n - (lo + (m - 1) * st + 1), st - 1))
        config.append((0, 0, 0))
        part = lax.pad(cols[(slice(None),) * (nd + 1) + (i,)], zero, config)
        total = part if total is None else total + part
    return total


def _grouped(cols, w, groups):
    """Patches and kernel as matrices: (M, ∏K·Cin) and (∏K·Cin, Cout), or per group
    (g, M, ∏K·Cg) and (g, ∏K·Cg, Og). One group stays 2-d, the fastest dot XLA has."""
    kp = cols.shape[-2]
    cin, cout = cols.shape[-1], w.shape[-1]
    m = cols.size // (kp * cin)
    if groups == 1:
        return cols.reshape(m, kp * cin), w.reshape(kp * cin, cout)
    a = cols.reshape(m, kp, groups, cin // groups).transpose(2, 0, 1, 3)
    a = a.reshape(groups, m, kp * (cin // groups))
    b = w.reshape(kp, cin // groups, groups, cout // groups).transpose(2, 0, 1, 3)
    b = b.reshape(groups, kp * (cin // groups), cout // groups)
    return a, b


def _per_group(e, groups):
    """Output-shaped (..., Cout) gradient as (M, Cout) or (g, M, Og)."""
    cout = e.shape[-1]
    if groups == 1:
        return e.reshape(-1, cout)
    return e.reshape(-1, groups, cout // groups).transpose(1, 0, 2)


def _ungroup(y, groups):
    """(M, Cout) or (g, M, Og) back to (M, Cout)."""
    return y if groups == 1 else y.transpose(1, 0, 2).reshape(y.shape[1], -1)


def _matmul(a, b, dtype):
    return jnp.matmul(a, b, preferred_element_type=jnp.float32).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _gemm_conv(x, w, pads, stride, dilation, groups):
    """Cross-correlation of ``x`` (N, *S, Cin), zero-padded by ``pads``, with ``w``."""
    return _forward(x, w, pads, stride, dilation, groups)[0]


def _forward(x, w, pads, stride, dilation, groups):
    nd = x.ndim - 2
    kernel = w.shape[:nd]
    cols = im2col(x, kernel, stride, dilation, pads)
    out_shape = cols.shape[: nd + 1]
    a, b = _grouped(cols, w, groups)
    y = _ungroup(_matmul(a, b, x.dtype), groups).reshape(*out_shape, w.shape[-1])
    return y, (a, b, x.shape, w.shape)


def _bwd(pads, stride, dilation, groups, res, g_out):
    a, b, x_shape, w_shape = res
    nd = len(x_shape) - 2
    kernel = w_shape[:nd]
    kp, cg, cout = len(_offsets(kernel)), w_shape[-2], w_shape[-1]
    e = _per_group(g_out, groups)
    # Weight gradient: dW = colsᵀ · E (one product per group).
    dw = _matmul(jnp.swapaxes(a, -1, -2), e, b.dtype)
    if groups > 1:  # (g, ∏K·Cg, Og) -> (∏K, Cg, g·Og)
        dw = dw.reshape(groups, kp, cg, cout // groups).transpose(1, 2, 0, 3)
    dw = dw.reshape(w_shape)
    # Input gradient: col2im(E · Wᵀ), summed into the padded input and cropped.
    dcols = _matmul(e, jnp.swapaxes(b, -1, -2), a.dtype)
    if groups > 1:  # (g, M, ∏K·Cg) -> (M, ∏K, g·Cg)
        dcols = dcols.reshape(groups, -1, kp, cg).transpose(1, 2, 0, 3)
    dcols = dcols.reshape(x_shape[0], *g_out.shape[1:-1], kp, groups * cg)
    padded = [s + lo + hi for s, (lo, hi) in zip(x_shape[1:-1], pads, strict=True)]
    dx = col2im(dcols, padded, kernel, stride, dilation)
    start = [lo for lo, _ in pads]
    limit = [lo + s for lo, s in zip(start, x_shape[1:-1], strict=True)]
    dx = lax.slice(dx, (0, *start, 0), (x_shape[0], *limit, x_shape[-1]))
    return dx, dw


_gemm_conv.defvjp(_forward, _bwd)


def gemm_conv(x, w, pads, stride, dilation, groups):
    """im2col convolution of ``x`` (N, *S, Cin) with explicit zero ``pads``; see module doc."""
    return _gemm_conv(x, w, tuple(map(tuple, pads)), tuple(stride), tuple(dilation), groups)
