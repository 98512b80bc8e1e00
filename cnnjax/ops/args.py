"""Argument normalisation and validation shared by the front doors of ops, nn and models.

Every check raises ``ValueError`` or ``TypeError`` with a sentence that names the argument
and says what was expected, so users never see an XLA stack trace for a shape mistake.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

PaddingLike = str | int | Sequence[int] | Sequence[tuple[int, int]]
Pads = tuple[tuple[int, int], ...]

PADDING_STRINGS = ("SAME", "VALID")
PADDING_MODES = ("zeros", "reflect", "circular")


def as_tuple(value: int | Sequence[int], nd: int, name: str) -> tuple[int, ...]:
    """Returns ``value`` as ``nd`` positive ints; ``name`` is used in the error message."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        out = (int(value),) * nd
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != nd or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
        ):
            raise ValueError(
                f"`{name}` must be an int or a sequence of {nd} ints (one per spatial "
                f"dimension), got {value!r}."
            )
        out = tuple(int(v) for v in value)
    else:
        raise ValueError(f"`{name}` must be an int or a sequence of {nd} ints, got {value!r}.")
    if any(v <= 0 for v in out):
        raise ValueError(f"`{name}` must be positive in every dimension, got {value!r}.")
    return out


def check_float(x, name: str) -> None:
    """Raises ``TypeError`` unless ``x`` has a floating-point dtype."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"`{name}` must have a floating-point dtype (float32, bfloat16, ...), got {dtype}; "
            f"cast it first, e.g. {name}.astype(jnp.float32)."
        )


def check_operands(x, w, padding_mode: str) -> None:
    """The checks every windowed product (``conv``, ``locally_connected2d``) makes of its input
    ``x``, its weights ``w`` and its ``padding_mode``, with one set of messages."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"`padding_mode` must be one of {PADDING_MODES}, got {padding_mode!r}.")
    check_float(x, "x")
    check_float(w, "w")
    if jnp.result_type(x) != jnp.result_type(w):
        raise TypeError(
            f"`x` and `w` must share a dtype, got {jnp.result_type(x)} and "
            f"{jnp.result_type(w)}; cast one of them."
        )


def same_pads(sizes, kernel, stride, dilation) -> Pads:
    """The TensorFlow/XLA "SAME" rule: output size ceil(n / s), extra padding at the end."""
    pads = []
    for n, k, s, d in zip(sizes, kernel, stride, dilation, strict=True):
        k_eff = (k - 1) * d + 1
        out = -(-n // s)
        total = max((out - 1) * s + k_eff - n, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def normalize_padding(padding: PaddingLike, sizes, kernel, stride, dilation) -> Pads:
    """Turns any accepted padding spelling into explicit ``((lo, hi), ...)`` per spatial dim.

    Accepted: "SAME", "VALID", an int, one int per spatial dim, or ``((lo, hi), ...)``.
    """
    nd = len(sizes)
    if isinstance(padding, str):
        key = padding.upper()
        if key == "SAME":
            return same_pads(sizes, kernel, stride, dilation)
        if key == "VALID":
            return ((0, 0),) * nd
        raise ValueError(
            f"`padding` must be 'SAME', 'VALID', an int, {nd} ints or {nd} (lo, hi) pairs; "
            f"got the unknown string {padding!r}."
        )
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        pads = ((int(padding), int(padding)),) * nd
    elif isinstance(padding, Sequence) and len(padding) == nd:
        if all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in padding):
            pads = tuple((int(p), int(p)) for p in padding)
        elif all(isinstance(p, Sequence) and len(p) == 2 for p in padding):
            pads = tuple((int(lo), int(hi)) for lo, hi in padding)
        else:
            raise ValueError(
                f"`padding` must be {nd} ints or {nd} (lo, hi) pairs, got {padding!r}."
            )
    else:
        raise ValueError(
            f"`padding` must be 'SAME', 'VALID', an int, {nd} ints or {nd} (lo, hi) pairs; "
            f"got {padding!r}."
        )
    if any(lo < 0 or hi < 0 for lo, hi in pads):
        raise ValueError(f"`padding` must be non-negative, got {padding!r}.")
    return pads


def out_size(n: int, k: int, s: int, d: int, pad: tuple[int, int]) -> int:
    """Output length of a window op along one axis (floor division, like XLA)."""
    return (n + pad[0] + pad[1] - ((k - 1) * d + 1)) // s + 1


def check_window_fits(sizes, kernel, dilation, pads, what: str, name: str) -> None:
    for axis, (n, k, d, (lo, hi)) in enumerate(zip(sizes, kernel, dilation, pads, strict=True)):
        k_eff = (k - 1) * d + 1
        if k_eff > n + lo + hi:
            raise ValueError(
                f"`{name}` is larger than the padded input along spatial axis {axis}: "
                f"the {what} spans {k_eff} pixels but the input has {n} pixels plus "
                f"{lo + hi} of padding. Use a smaller {name}, more padding or a larger input."
            )


def pad_input(x: jnp.ndarray, pads: Pads, mode: str) -> jnp.ndarray:
    """Pads the spatial axes of a channels-last array with zeros, reflection or wrap-around."""
    if mode not in PADDING_MODES:
        raise ValueError(f"`padding_mode` must be one of {PADDING_MODES}, got {mode!r}.")
    widths = [(0, 0), *pads, (0, 0)]
    if mode == "zeros":
        return jnp.pad(x, widths)
    if mode == "reflect":
        for axis, (lo, hi) in enumerate(pads):
            n = x.shape[axis + 1]
            if max(lo, hi) >= n:
                raise ValueError(
                    f"`padding_mode='reflect'` needs padding smaller than the input along "
                    f"spatial axis {axis} ({n} pixels), got ({lo}, {hi})."
                )
        return jnp.pad(x, widths, mode="reflect")
    for axis, (lo, hi) in enumerate(pads):
        n = x.shape[axis + 1]
        if max(lo, hi) > n:
            raise ValueError(
                f"`padding_mode='circular'` needs padding no larger than the input along "
                f"spatial axis {axis} ({n} pixels), got ({lo}, {hi})."
            )
    return jnp.pad(x, widths, mode="wrap")


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
            out_size(n, k, s, d, p)
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
    stride_t = as_tuple(stride, nd, "stride")
    dilation_t = as_tuple(dilation, nd, "dilation")
    kernel = w_shape[:nd]
    pads = normalize_padding(padding, x_shape[1:-1], kernel, stride_t, dilation_t)
    check_window_fits(x_shape[1:-1], kernel, dilation_t, pads, "dilated kernel", "w")
    return ConvGeometry(x_shape, w_shape, pads, stride_t, dilation_t, groups)
