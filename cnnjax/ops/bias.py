"""Per-channel bias addition whose gradient accumulates in float32."""

from __future__ import annotations

import jax.numpy as jnp


def add_bias(y: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
    """``y + bias`` for ``y`` (..., C) and ``bias`` (C,), in ``y``'s dtype.

    The bias gradient sums the output gradient over every leading axis. Autodiff of a plain
    ``y + bias.astype(y.dtype)`` in bfloat16 sums in bfloat16, which XLA:CPU emulates by
    rounding after every addition (slow, and less accurate). Here the bias is broadcast in
    float32 and only then cast, so the transposed program (the gradient) casts the output
    gradient to float32 first and sums there, rounding once. The forward values are the same.
    """
    full = jnp.broadcast_to(bias.astype(jnp.float32), y.shape)
    return y + full.astype(y.dtype)
