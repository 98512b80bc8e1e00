"""The ``xla`` backend: ``lax.conv_general_dilated``, with 1×1 convolutions, convolutions onto
tiny maps on CPUs and a CPU input gradient for strided layers written as matrix products (why:
``experiments/perf_notes.md``)."""

from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from cnnjax.ops._gemm import im2col_slices

_XLA_SPECS = {
    1: ("NWC", "WIO", "NWC"),
    2: ("NHWC", "HWIO", "NHWC"),
    3: ("NDHWC", "DHWIO", "NDHWC"),
}


def _lax_conv(x, w, pads, stride, dilation, groups):
    nd = x.ndim - 2
    if nd not in _XLA_SPECS:
        raise ValueError(f"the 'xla' backend supports 1 to 3 spatial dims, got {nd}.")
    return lax.conv_general_dilated(
        x,
        w,
        window_strides=stride,
        padding=pads,
        rhs_dilation=dilation,
        dimension_numbers=_XLA_SPECS[nd],
        feature_group_count=groups,
    )


def xla_conv(x, w, pads, stride, dilation, groups):
    """``lax.conv_general_dilated`` on channels-last input with explicit zero ``pads``.

    Float32 strided convolutions (groups 1) get their input gradient on CPUs as the gemm
    backend's ``col2im(E · Wᵀ)``, the transpose of a JVP rule built on ``im2col_slices`` (so
    forward-mode differentiation still works): XLA:CPU computes that gradient as a convolution
    over the output gradient dilated with zeros, stride^2 times the work. Other platforms keep
    XLA's gradient, and so does bfloat16, for which the rule was not measured.

    Float32 convolutions whose output is at most 2 pixels along every spatial axis (the last
    stage of an ImageNet network at 32–64 px) run on CPUs as one im2col product, and so do
    their gradients: XLA:CPU's convolution takes 0.8 s where the product takes 10 ms
    (64 × 2 × 2 × 512, 3×3; perf_notes.md).
    """
    if groups == 1 and all(k == 1 for k in w.shape[:-2]) and _unit(pads, stride):
        # A 1×1 convolution is a matrix product over channels. As a product, its forward and
        # backward pass run 4× faster on XLA:CPU (96 → 32 channels at 32×32, batch 128:
        # 30 against 132 ms; perf_notes.md); on a GPU it is one GEMM either way.
        return _pointwise(x, w.reshape(w.shape[-2:]))
    if (
        groups == 1
        and x.dtype == jnp.float32
        and _tiny_output(x.shape, w.shape, pads, stride, dilation)
    ):
        product = functools.partial(_im2col_product, pads=pads, stride=stride, dilation=dilation)
        conv = functools.partial(_lax_conv, pads=pads, stride=stride, dilation=dilation, groups=1)
        return lax.platform_dependent(x, w, cpu=product, default=conv)
    if groups == 1 and any(s > 1 for s in stride) and x.dtype == jnp.float32:
        return _strided_conv(x, w, tuple(pads), tuple(stride), tuple(dilation))
    return _lax_conv(x, w, pads, stride, dilation, groups)


def _tiny_output(x_shape, w_shape, pads, stride, dilation, most: int = 2) -> bool:
    """Whether every spatial axis of the output has at most ``most`` pixels."""
    sizes = zip(x_shape[1:-1], w_shape[:-2], pads, stride, dilation, strict=True)
    return all((n + lo + hi - d * (k - 1) - 1) // s + 1 <= most for n, k, (lo, hi), s, d in sizes)


def _im2col_product(x, w, pads, stride, dilation):
    """The convolution as im2col (stacked strided slices) times the kernel matrix."""
    xp = jnp.pad(x, [(0, 0), *pads, (0, 0)])
    cols = im2col_slices(xp, w.shape[:-2], stride, dilation)  # (N, *O, ∏K, Cin)
    cols = cols.reshape(*cols.shape[:-2], -1)  # the spatial axes kept, for receptive fields
    return _pointwise(cols, w.reshape(-1, w.shape[-1]))


@jax.custom_jvp
def _pointwise(x, w):
    """(N, *S, Cin) · (Cin, Cout): a 1×1 convolution as a product over channels."""
    return lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def _pointwise_jvp(primals, tangents):
    # The kernel's tangent term is written on the input flattened to 2-d, so that reverse mode
    # transposes it into one plain product for the kernel gradient: the contraction over
    # (N, H, W) of the 4-d form ran 6x slower on XLA:CPU (64 -> 256 channels at 56x56, batch 32:
    # 195 against 31 ms; perf_notes.md). The primal stays 4-d, which keeps the spatial axes
    # visible to the receptive-field analysis.
    x, w = primals
    x_dot, w_dot = tangents
    y = _pointwise(x, w)
    parts = []
    if not isinstance(x_dot, SymbolicZero):
        parts.append(_pointwise(x_dot, w))
    if not isinstance(w_dot, SymbolicZero):
        parts.append((x.reshape(-1, x.shape[-1]) @ w_dot).reshape(y.shape))
    return y, functools.reduce(operator.add, parts)


_pointwise.defjvp(_pointwise_jvp, symbolic_zeros=True)


def _unit(pads, stride) -> bool:
    """No padding and stride 1 (dilation does not matter for a 1-element kernel)."""
    return all(s == 1 for s in stride) and not any(lo or hi for lo, hi in pads)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _strided_conv(x, w, pads, stride, dilation):
    return _lax_conv(x, w, pads, stride, dilation, 1)


def _strided_jvp(pads, stride, dilation, primals, tangents):
    # A JVP rule (not a VJP) keeps forward-mode (jax.jvp, jax.hessian) working. Reverse mode
    # transposes the tangent map: the kernel part into XLA's kernel gradient, the input part,
    # on CPUs an im2col product of stacked slices, into col2im(E · Wᵀ), a sum of pads. A
    # tangent that is symbolically zero (e.g. the input images) contributes no work at all.
    x, w = primals
    x_dot, w_dot = tangents
    conv = functools.partial(_lax_conv, pads=pads, stride=stride, dilation=dilation, groups=1)

    def im2col_product(x_dot, w):
        xp = jnp.pad(x_dot, [(0, 0), *pads, (0, 0)])
        cols = im2col_slices(xp, w.shape[:-2], stride, dilation)  # (N, *O, ∏K, Cin)
        out = cols.shape[:-2]  # (N, *O)
        y = cols.reshape(-1, cols.shape[-2] * cols.shape[-1]) @ w.reshape(-1, w.shape[-1])
        return y.reshape(*out, w.shape[-1])

    parts = []  # one term per tangent that is not symbolically zero
    if not isinstance(x_dot, SymbolicZero):
        parts.append(lax.platform_dependent(x_dot, w, cpu=im2col_product, default=conv))
    if not isinstance(w_dot, SymbolicZero):
        parts.append(conv(x, w_dot))
    return conv(x, w), functools.reduce(operator.add, parts)


_strided_conv.defjvp(_strided_jvp, symbolic_zeros=True)
