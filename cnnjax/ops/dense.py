"""Fully connected layers as convolutions.

A Dense layer that reads a flattened k×k×C feature map is a k×k VALID convolution with C input
channels: both take the same dot product of the same weights with the same pixels, as long as
the flattening is row-major over (k, k, C) (NHWC, what ``x.reshape(n, -1)`` does). Every later
Dense layer is a 1×1 convolution. Converted, the classifier slides over larger inputs and
returns a map of class scores, one per k×k window (stride = the network's total stride).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp


def dense_to_conv(
    kernels: Sequence[jnp.ndarray], feature_shape: Sequence[int]
) -> list[jnp.ndarray]:
    """Turns Dense kernels into equivalent convolution kernels (HWIO).

    Args:
      kernels: Dense kernels ``[(k·k·C, F1), (F1, F2), ...]``; the first one reads a flattened
        (k, k, C) map.
      feature_shape: (k, k, C), the shape of one flattened feature map (no batch axis).

    Returns:
      ``[(k, k, C, F1), (1, 1, F1, F2), ...]``: apply them with VALID padding, stride 1, and the
      Dense biases unchanged.
    """
    feature_shape = tuple(int(v) for v in feature_shape)
    if len(feature_shape) != 3:
        raise ValueError(f"`feature_shape` must be (k, k, C), got {feature_shape}.")
    if not kernels:
        raise ValueError("`kernels` must hold at least one Dense kernel.")
    size = feature_shape[0] * feature_shape[1] * feature_shape[2]
    out, fan_in = [], size
    for i, w in enumerate(kernels):
        if jnp.ndim(w) != 2 or w.shape[0] != fan_in:
            raise ValueError(
                f"`kernels[{i}]` must have shape ({fan_in}, features), got {jnp.shape(w)}."
            )
        shape = (*feature_shape, w.shape[1]) if i == 0 else (1, 1, *w.shape)
        out.append(jnp.reshape(w, shape))
        fan_in = w.shape[1]
    return out
