"""Locally connected layers: a convolution's local receptive fields without its weight sharing.

A convolution makes two separate claims: each output reads a small neighbourhood of the input
(local connectivity), and every position uses the same weights (weight sharing). A locally
connected layer keeps the first and drops the second: output position (i, j) has its own
kernel. With every position's kernel equal it is exactly :func:`cnnjax.ops.conv2d`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

from cnnjax.ops import args
from cnnjax.ops.args import PaddingLike


def locally_connected2d(
    x: jnp.ndarray,
    w: jnp.ndarray,
    *,
    stride: int | Sequence[int] = 1,
    padding: PaddingLike = "SAME",
    dilation: int | Sequence[int] = 1,
    padding_mode: str = "zeros",
) -> jnp.ndarray:
    """``out[n, i, j, o] = Σ_{a, b, c} x_pad[n, i·s + a·d, j·s + b·d, c] · w[i, j, a, b, c, o]``.

    Args:
      x: input (N, H, W, Cin), floating point.
      w: one kernel per output position, (H', W', kh, kw, Cin, Cout), ``x``'s dtype.
      stride, padding, dilation, padding_mode: as in :func:`cnnjax.ops.conv2d`; they fix the
        output size (H', W'), which ``w`` must match.

    Returns:
      (N, H', W', Cout).

    The patches are gathered once, position-major ((H', W', N, kh·kw·Cin), one copy of the
    input per kernel tap), and every position is one matrix product with its own kernel.
    """
    if jnp.ndim(x) != 4:
        raise ValueError(f"`x` must have rank 4 (NHWC), got shape {tuple(jnp.shape(x))}.")
    if jnp.ndim(w) != 6:
        raise ValueError(
            f"`w` must have rank 6 (H', W', kh, kw, Cin, Cout): one kernel per output "
            f"position, got shape {tuple(jnp.shape(w))}."
        )
    args.check_operands(x, w, padding_mode)
    oh, ow, kh, kw, cin, cout = w.shape
    geom = args.conv_geometry(
        x.shape, (kh, kw, cin, cout), stride=stride, padding=padding, dilation=dilation
    )
    out = geom.out_shape[1:3]
    if (oh, ow) != tuple(out):
        raise ValueError(
            f"`w` holds kernels for {oh}x{ow} output positions, but `x` {tuple(x.shape)} with "
            f"this stride, padding and dilation gives {out[0]}x{out[1]}; `w` must have shape "
            f"({out[0]}, {out[1]}, {kh}, {kw}, {cin}, {cout})."
        )
    xp = jnp.transpose(args.pad_input(x, geom.pads, padding_mode), (1, 2, 0, 3))
    (sh, sw), (dh, dw) = geom.stride, geom.dilation
    n = x.shape[0]
    # One gather writes the patches position-major, (H', W', N, kh, kw, Cin), in their final
    # order; slicing per tap and stacking would hold every tap and then the stack (two copies).
    rows = (np.arange(oh)[:, None] * sh + np.arange(kh)[None, :] * dh).reshape(oh, 1, 1, kh, 1)
    cols_ = (np.arange(ow)[:, None] * sw + np.arange(kw)[None, :] * dw).reshape(1, ow, 1, 1, kw)
    batch = np.arange(n).reshape(1, 1, n, 1, 1)
    cols = xp[rows, cols_, batch].reshape(oh, ow, n, kh * kw * cin)
    y = lax.dot_general(
        cols, w.reshape(oh, ow, kh * kw * cin, cout), (((3,), (2,)), ((0, 1), (0, 1)))
    )  # (H', W', N, Cout)
    return jnp.transpose(y, (2, 0, 1, 3))
