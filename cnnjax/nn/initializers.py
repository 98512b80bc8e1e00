"""Kernel initialisers beyond Flax's own, as ``init(key, shape, dtype) -> array`` functions.

Kernels are HWIO, so ``shape[:-2]`` are the spatial taps, ``shape[-2]`` the input channels
and ``shape[-1]`` the output channels.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]


def uniform_fan_in() -> Initializer:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = taps × input channels: PyTorch's
    default for ``nn.Conv2d`` and ``nn.Linear`` weights (Kaiming-uniform with a = sqrt(5))."""

    def init(key, shape, dtype=jnp.float32):
        bound = 1.0 / math.sqrt(math.prod(shape[:-1]))
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def with_std(std: float, base: Initializer | None = None) -> Initializer:
    """``base`` (default :func:`uniform_fan_in`) rescaled so that the drawn tensor's own
    standard deviation is ``std`` (airbench94_muon's head: ``w *= 1 / w.std()``)."""
    base = base or uniform_fan_in()

    def init(key, shape, dtype=jnp.float32):
        w = base(key, shape, dtype)
        return w * (std / jnp.std(w))

    return init


def partial_identity(base: Initializer | None = None) -> Initializer:
    """``base`` (default :func:`uniform_fan_in`) with its first ``min(Cin, Cout)`` output
    channels replaced by the identity ("dirac"): output channel i copies input channel i through
    the kernel's centre tap (index ``k // 2`` per axis) and ignores every other input channel.

    A convolution so initialised starts as a pass-through of its input channels plus fresh
    random features, which lets a deep stack of them train fast from the first step.
    """
    base = base or uniform_fan_in()

    def init(key, shape, dtype=jnp.float32):
        kernel = base(key, shape, dtype)
        *taps, cin, cout = shape
        n = min(cin, cout)
        centre = tuple(k // 2 for k in taps)
        identity = jnp.zeros((*taps, cin, n), dtype).at[(*centre, jnp.arange(n), jnp.arange(n))]
        return kernel.at[..., :n].set(identity.set(1))

    return init
