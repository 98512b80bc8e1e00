"""Per-channel bias addition whose gradient accumulates in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def add_bias(y: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
    """``y + bias`` for ``y`` (..., C) and ``bias`` (C,), in ``y``'s dtype.

    The bias gradient sums the output gradient over every leading axis. Autodiff of a plain
    ``y + bias`` in bfloat16 sums in bfloat16, which XLA:CPU emulates by rounding after every
    addition (slow, and less accurate); here the sum accumulates in float32 and is rounded once.
    """
    return y + bias.astype(y.dtype)


def _fwd(y, bias):
    return add_bias(y, bias), bias  # the bias only lends its dtype to the backward pass


def _bwd(bias, g):
    axes = tuple(range(g.ndim - 1))
    return g, jnp.sum(g, axis=axes, dtype=jnp.float32).astype(bias.dtype)


add_bias.defvjp(_fwd, _bwd)
