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
  :func:`select_backend`. It picks ``"fft"`` for large kernels (from 7×7 on the development
  CPU), and the FFT's errors are those of the whole image (below): for inputs with outliers
  or non-finite values, ask for ``"xla"``.

Accuracy of ``"fft"``. Every output of an image carries the rounding of transforms over the
whole padded image, so its error scales with the image's largest values, not with the values
its window sees. For image n and output channel o, in the dtype's unit round-off u
(2⁻²⁴ for float32), with L the transform's points, K the kernel's taps and Cin the input
channels::

    max |ŷ − y| ≤ (32·log₂L + 2K + Cin + 10) · u · Σ_c ‖x_{n,c}‖₂ ‖w_{c,o}‖₁
                ≤ (32·log₂L + 2K + Cin + 10) · u · √P · max|x_n| · Σ_c ‖w_{c,o}‖₁

(P: the image's padded positions; the sum over c runs over the channels output o sees).
Derivation: each FFT of L points is accurate to about 16·u·log₂L of its input's 2-norm (the
norm-wise bound of Cooley–Tukey transforms with a margin for XLA's mixed radices 3, 5, 7); the
kernel's spectrum sums K taps, the channel contraction Cin products; Young's inequality bounds
‖y‖₂ by the same Σ_c ‖x_c‖₂ ‖w_{c,o}‖₁. Tested against float64 with an outlier pixel. So one
pixel of 1e30 moves outputs far from it by up to ~1e22, and one NaN or inf anywhere in an
image makes every output of that image NaN (``"xla"``: only those whose windows reach it).

All validation happens here, once, and raises ``ValueError``/``TypeError`` naming the argument.

On CPUs, compile code that differentiates these convolutions with :func:`cnnjax.jit` (or pass
:func:`cnnjax.parallel.compiler_options` to ``jax.jit``): jaxlib 0.10's XLA:CPU otherwise hands
them to YNNPACK, whose kernel gradients are about 10x slower at CNN sizes. cnnjax's own
training steps and benchmarks do this already.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from cnnjax.ops import args
from cnnjax.ops._fft import fft_conv
from cnnjax.ops._gemm import gemm_conv
from cnnjax.ops._winograd import winograd_conv
from cnnjax.ops._xla import xla_conv
from cnnjax.ops.args import ConvGeometry, PaddingLike, conv_geometry
from cnnjax.ops.cost import cheapest

BACKENDS = ("xla", "fft", "gemm", "winograd", "auto")


_IMPLS = {"xla": xla_conv, "fft": fft_conv, "gemm": gemm_conv, "winograd": winograd_conv}


def _winograd_ok(geom: ConvGeometry) -> bool:
    nd = len(geom.x_shape) - 2
    return (
        nd == 2
        and geom.w_shape[:2] == (3, 3)
        and geom.stride == (1, 1)
        and geom.dilation == (1, 1)
        and geom.groups == 1
    )


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
    args.check_operands(x, w, padding_mode)
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
        x = args.pad_input(x, pads, padding_mode)
        pads = ((0, 0),) * len(pads)
        geom = geom._replace(x_shape=tuple(x.shape), pads=pads)
    if backend == "auto":
        backend = cheapest(geom)
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
