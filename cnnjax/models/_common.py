"""Pieces shared by the model zoo: feature recording, widths, dropout, downsampling."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax import ops
from cnnjax.nn import ConvBNAct

DOWNSAMPLE = ("pool", "stride")
# Activations by name, so configs and overrides can choose one with a string.
ACTIVATIONS = {"relu": nn.relu, "gelu": nn.gelu, "silu": nn.silu, "elu": nn.elu}


def scaled(channels: int, width: float) -> int:
    """Channel count scaled by a width multiplier (at least 1)."""
    return max(1, round(channels * width))


def check_input(x: jnp.ndarray, model: str) -> None:
    if jnp.ndim(x) != 4:
        raise ValueError(
            f"`x` for {model} must be a batch of images (N, H, W, C), got shape {jnp.shape(x)}."
        )
    ops.args.check_float(x, "x")


def check_downsample(value: str, allowed: tuple[str, ...] = DOWNSAMPLE, model: str = "") -> None:
    if value not in allowed:
        family = f" for {model}" if model else ""
        raise ValueError(f"`downsample`{family} must be one of {allowed}, got {value!r}.")


def check_min_size(x: jnp.ndarray, smallest: int, model: str, why: str) -> None:
    """Refuses images smaller than ``smallest`` pixels on a side, saying ``why``."""
    h, w = x.shape[1:3]
    if min(h, w) < smallest:
        raise ValueError(
            f"{model} takes images of at least {smallest}x{smallest} pixels ({why}); got {h}x{w}."
        )


def activation_fn(name: str):
    """The activation function called ``name`` (one of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"`activation` must be one of {tuple(ACTIVATIONS)}, got {name!r}.")
    return ACTIVATIONS[name]


def keep(features: dict[str, jnp.ndarray], name: str, x: jnp.ndarray) -> jnp.ndarray:
    """Records a named intermediate activation (dicts keep computation order) and passes it on."""
    features[name] = x
    return x


def conv_settings(model) -> dict[str, Any]:
    """The ConvBNAct arguments every zoo model forwards to its convolutions."""
    return dict(
        batch_norm=model.batch_norm,
        bn_axis_name=model.bn_axis_name,
        backend=model.backend,
        dtype=model.dtype,
        param_dtype=model.param_dtype,
    )


def downsample_layer(
    x: jnp.ndarray, *, kind: str, name: str, train: bool, pool: str = "max", **conv: Any
) -> jnp.ndarray:
    """Halves H and W (to ``ceil(H / 2)``): ``kind`` "pool", a 3×3 stride-2 pool; "stride", a
    learned 3×3 stride-2 convolution in its place that keeps the channels (``conv``: ConvBNAct
    arguments, see :func:`conv_settings`); "blurpool", Zhang's (2019) anti-aliased max-pool, a
    3×3 stride-1 max-pool then a binomial low-pass filter sampled at stride 2
    (:func:`cnnjax.ops.blur_pool`).

    All use one pixel of padding on each side, so 32 -> 16 -> 8 for every choice.
    """
    if kind == "pool":
        fn = ops.max_pool if pool == "max" else ops.avg_pool
        return fn(x, 3, 2, 1)
    if kind == "blurpool":
        return ops.blur_pool(ops.max_pool(x, 3, 1, 1), stride=2)
    return ConvBNAct(x.shape[-1], 3, 2, 1, name=name, **conv)(x, train)
