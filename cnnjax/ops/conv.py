"""The convolution front door: ``conv`` / ``conv2d`` with interchangeable backends.

Layouts: activations channels-last (N, *spatial, C), e.g. NHWC; kernels (*spatial, Cin/groups,
Cout), e.g. HWIO. What is computed is the cross-correlation that deep-learning frameworks call
convolution::

    out[n, i, o] = Σ_k Σ_c  x_padded[n, i·stride + k·dilation, g(o)·Cg + c] · w[k, c, o]

Backends compute the same function and are swapped with ``backend=``:

* ``"xla"``: ``lax.conv_general_dilated`` (XLA's own convolution; see :func:`xla_conv` for
  the CPU input gradient of strided layers);
* ``"fft"``: the Fourier path (:mod:`cnnjax.ops._fft`), cheap for large kernels;
* ``"gemm"``: im2col and one matrix product, with a backward pass written as matrix products
  (:mod:`cnnjax.ops._gemm`). Both it and ``"fft"`` write their backward passes out
  (``jax.custom_vjp``): reverse mode only, ``jax.jvp`` through them raises;
* ``"winograd"``: Winograd F(2×2, 3×3) minimal filtering for 3×3 stride-1 layers
  (:mod:`cnnjax.ops._winograd`);
* ``"auto"``: the cheapest backend under the cost model of :func:`conv_cost`; ask which with
  :func:`select_backend`.

All validation happens here, once, and raises ``ValueError``/``TypeError`` naming the argument.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from cnnjax.ops import _args
from cnnjax.ops._args import PaddingLike
from cnnjax.ops._fft import fast_length, fft_conv
from cnnjax.ops._gemm import gemm_conv, im2col_slices
from cnnjax.ops._winograd import winograd_conv

BACKENDS = ("xla", "fft", "gemm", "winograd", "auto")

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
    forward-mode differentiation still works). XLA:CPU computes that gradient as a convolution
    over the output gradient dilated with zeros, stride^2 times the work (a 3x3 stride-2
    layer, 128x32x32x96: 182 ms against 40 ms forward). Other platforms keep XLA's gradient,
    and so does bfloat16, for which the rule was not measured.
    """
    if groups == 1 and any(s > 1 for s in stride) and x.dtype == jnp.float32:
        return _strided_conv(x, w, tuple(pads), tuple(stride), tuple(dilation))
    return _lax_conv(x, w, pads, stride, dilation, groups)


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


_IMPLS = {"xla": xla_conv, "fft": fft_conv, "gemm": gemm_conv, "winograd": winograd_conv}


class ConvGeometry(NamedTuple):
    """A validated convolution problem: every argument in its explicit, per-axis form."""

    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int

    @property
    def out_shape(self) -> tuple[int, ...]:
        nd = len(self.x_shape) - 2
        spatial = [
            _args.out_size(n, k, s, d, p)
            for n, k, s, d, p in zip(
                self.x_shape[1:-1],
                self.w_shape[:nd],
                self.stride,
                self.dilation,
                self.pads,
                strict=True,
            )
        ]
        return (self.x_shape[0], *spatial, self.w_shape[-1])


def conv_geometry(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: PaddingLike = "SAME",
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    nd: int | None = None,
) -> ConvGeometry:
    """Validates shapes and arguments and returns their explicit form; raises on bad input."""
    x_shape, w_shape = tuple(x_shape), tuple(w_shape)
    if nd is None:
        nd = len(x_shape) - 2
        if nd < 1:
            raise ValueError(f"`x` must have rank >= 3 (N, *spatial, C), got shape {x_shape}.")
    layout = {1: "NWC", 2: "NHWC", 3: "NDHWC"}.get(nd, f"N, {nd} spatial dims, C")
    klayout = {1: "WIO", 2: "HWIO", 3: "DHWIO"}.get(nd, f"{nd} spatial dims, I, O")
    if len(x_shape) != nd + 2:
        raise ValueError(f"`x` must have rank {nd + 2} ({layout}), got shape {x_shape}.")
    if len(w_shape) != nd + 2:
        raise ValueError(f"`w` must have rank {nd + 2} ({klayout}), got shape {w_shape}.")
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"`groups` must be a positive int, got {groups!r}.")
    cin, cin_g, cout = x_shape[-1], w_shape[-2], w_shape[-1]
    if cin % groups:
        raise ValueError(f"`groups`={groups} must divide the input channels of `x` ({cin}).")
    if cout % groups:
        raise ValueError(f"`groups`={groups} must divide the output channels of `w` ({cout}).")
    if cin_g * groups != cin:
        raise ValueError(
            f"channel mismatch: `x` has {cin} input channels but `w` expects "
            f"{cin_g} x groups({groups}) = {cin_g * groups} (kernel in-channels x groups)."
        )
    if any(k < 1 for k in w_shape[:nd]) or min(x_shape) < 1:
        raise ValueError(f"empty input or kernel: `x` {x_shape}, `w` {w_shape}.")
    stride_t = _args.as_tuple(stride, nd, "stride")
    dilation_t = _args.as_tuple(dilation, nd, "dilation")
    kernel = w_shape[:nd]
    pads = _args.normalize_padding(padding, x_shape[1:-1], kernel, stride_t, dilation_t)
    _args.check_window_fits(x_shape[1:-1], kernel, dilation_t, pads, "dilated kernel", "w")
    return ConvGeometry(x_shape, w_shape, pads, stride_t, dilation_t, groups)


# Cost model of the "auto" backend, in units of "direct-convolution multiply-adds".
# An FFT of n real points costs about 2.5·n·log2(n) flops, and the frequency-domain channel
# contraction one complex multiply-add per (frequency, Cin, Cout); both run at a lower flop
# rate than the blocked direct convolution, which FFT_PENALTY accounts for. The kernel's
# spectrum is one small complex matrix product per axis (4 real multiply-adds per complex one).
# FFT_PENALTY was fitted to experiments/conv_backends.py on a 2-core x86 CPU (8x64x64, 16->16,
# forward + backward): the measured crossover lies between k=7 (FFT 1.07x slower) and k=9 (FFT
# 2.4x faster); the switch falls between them for penalties from 9.8 to 14.9, and 12 is
# halfway (geometrically).
FFT_PENALTY = 12.0


def conv_cost(geom: ConvGeometry) -> dict[str, float]:
    """Estimated cost of the "xla" and "fft" backends for a validated problem, in units of
    direct-convolution multiply-adds (see the constants above)."""
    nd = len(geom.x_shape) - 2
    n, cin = geom.x_shape[0], geom.x_shape[-1]
    cout, cin_g = geom.w_shape[-1], geom.w_shape[-2]
    out = geom.out_shape
    kernel = list(geom.w_shape[:nd])
    direct = n * math.prod(out[1:-1]) * math.prod(kernel) * cin_g * cout
    lengths = [
        fast_length(s + lo + hi) for s, (lo, hi) in zip(geom.x_shape[1:-1], geom.pads, strict=True)
    ]
    p = math.prod(lengths)
    freqs = p // lengths[-1] * (lengths[-1] // 2 + 1)
    transforms = 2.5 * p * math.log2(max(p, 2)) / 2 * (n * cin + n * cout)
    spectrum, dims = 0, kernel  # kernel_spectrum: axis a maps K_a taps to its frequencies
    for a, length in enumerate(lengths):
        f = length // 2 + 1 if a == nd - 1 else length
        spectrum += math.prod(dims) * f
        dims = [*dims[:a], f, *dims[a + 1 :]]
    contraction = 4 * n * freqs * cin_g * cout
    # The spectrum's products run at the rate of the direct convolution: no penalty.
    fft = FFT_PENALTY * (transforms + contraction) + 4 * cin_g * cout * spectrum
    return {"xla": float(direct), "fft": float(fft)}


def _cheapest(geom: ConvGeometry) -> str:
    costs = conv_cost(geom)
    return "fft" if costs["fft"] < costs["xla"] else "xla"


def _winograd_ok(geom: ConvGeometry) -> bool:
    nd = len(geom.x_shape) - 2
    return (
        nd == 2
        and geom.w_shape[:2] == (3, 3)
        and geom.stride == (1, 1)
        and geom.dilation == (1, 1)
        and geom.groups == 1
    )


def select_backend(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: PaddingLike = "SAME",
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> str:
    """The backend ``backend="auto"`` would use for these shapes (cheapest by :func:`conv_cost`).

    Only "xla" and "fft" are candidates: the gemm and Winograd backends exist to show the
    algorithms and to be measured; XLA's convolution beats them at the sizes measured in
    experiments/conv_backends.py and experiments/bench_train.py (gemm only at 1x1).
    """
    geom = conv_geometry(
        x_shape, w_shape, stride=stride, padding=padding, dilation=dilation, groups=groups
    )
    return _cheapest(geom)


def conv(
    x: jnp.ndarray,
    w: jnp.ndarray,
    *,
    stride: int | Sequence[int] = 1,
    padding: PaddingLike = "SAME",
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    backend: str = "xla",
) -> jnp.ndarray:
    """N-d cross-correlation ("convolution" in deep learning), channels-last.

    Args:
      x: input (N, *spatial, Cin), floating point.
      w: kernel (*kernel_spatial, Cin // groups, Cout), same dtype as ``x``.
      stride: an int or one int per spatial dim.
      padding: "SAME" (output size ceil(n / stride)), "VALID", an int, one int per spatial dim,
        or explicit ((lo, hi), ...).
      dilation: kernel dilation, an int or one per spatial dim.
      groups: feature groups; ``groups == Cin`` with ``Cin // groups == 1`` is depthwise.
      padding_mode: "zeros", "reflect" (mirror without repeating the edge) or "circular".
      backend: "xla", "fft", "gemm", "winograd" or "auto".

    Returns:
      (N, *out_spatial, Cout) with ``out = floor((n + lo + hi - dilation·(k-1) - 1) / stride) + 1``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}.")
    if padding_mode not in _args.PADDING_MODES:
        raise ValueError(
            f"`padding_mode` must be one of {_args.PADDING_MODES}, got {padding_mode!r}."
        )
    _args.check_float(x, "x")
    _args.check_float(w, "w")
    if jnp.result_type(x) != jnp.result_type(w):
        raise TypeError(
            f"`x` and `w` must share a dtype, got {jnp.result_type(x)} and "
            f"{jnp.result_type(w)}; cast one of them."
        )
    geom = conv_geometry(
        jnp.shape(x),
        jnp.shape(w),
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
    )
    pads = geom.pads
    if padding_mode != "zeros":
        x = _args.pad_input(x, pads, padding_mode)
        pads = ((0, 0),) * len(pads)
        geom = geom._replace(x_shape=tuple(x.shape), pads=pads)
    if backend == "auto":
        backend = _cheapest(geom)
    elif backend == "winograd" and not _winograd_ok(geom):
        raise ValueError(
            "`backend='winograd'` implements F(2x2, 3x3): it needs a 2-d 3x3 kernel with "
            f"stride 1, dilation 1 and groups 1, got kernel {geom.w_shape[:-2]}, "
            f"stride {geom.stride}, dilation {geom.dilation}, groups {geom.groups}."
        )
    return _IMPLS[backend](x, w, pads, geom.stride, geom.dilation, geom.groups)


def conv2d(
    x: jnp.ndarray,
    w: jnp.ndarray,
    *,
    stride: int | Sequence[int] = 1,
    padding: PaddingLike = "SAME",
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    backend: str = "xla",
) -> jnp.ndarray:
    """2-d cross-correlation: ``x`` (N, H, W, Cin), ``w`` (kh, kw, Cin // groups, Cout).

    Returns (N, H', W', Cout). See :func:`conv` for every argument.
    """
    if jnp.ndim(x) != 4:
        raise ValueError(f"`x` must have rank 4 (NHWC), got shape {tuple(jnp.shape(x))}.")
    if jnp.ndim(w) != 4:
        raise ValueError(f"`w` must have rank 4 (HWIO), got shape {tuple(jnp.shape(w))}.")
    return conv(
        x,
        w,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        padding_mode=padding_mode,
        backend=backend,
    )
