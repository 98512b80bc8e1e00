"""The All-CNN family of Springenberg et al. (2015), "Striving for Simplicity".

Three base models (Table 1) and four variants of each (Table 2):

=============  ======================================  ==========================
variant        what happens at each downsampling        name
=============  ======================================  ==========================
model          3×3 max-pool, stride 2                   ``model_{a,b,c}``
strided        the block's last conv gets stride 2      ``strided_cnn_{a,b,c}``
convpool       an extra 3×3 conv, then max-pool         ``convpool_cnn_{a,b,c}``
all-cnn        the extra 3×3 conv has stride 2          ``all_cnn_{a,b,c}``
=============  ======================================  ==========================

so the variants are the 2×2 grid {extra conv or not} × {pool or stride}; ``downsample``
moves along the second axis. Every layer is a convolution with ReLU; dropout 20 % on the input
and 50 % after each downsampling; the head is 3×3 conv 192 (VALID, 8×8 → 6×6), 1×1 conv 192,
1×1 conv ``num_classes``, global average pooling. ``activation`` swaps ReLU for a smooth
function such as GELU.

Intermediate activations (``return_features=True``): ``conv1`` … ``convN`` (every
convolution, strided ones included), ``down1``/``down2`` (the output of each downsampling
step), ``class_map`` (N, h, w, classes) and ``logits``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax import ops
from cnnjax.models._common import (
    activation_fn,
    check_downsample,
    check_input,
    conv_settings,
    keep,
    scaled,
)
from cnnjax.nn import ConvBNAct

# (kernel, channels) of the two blocks that precede each downsampling step (Table 1).
BASES = {
    "a": ([(5, 96)], [(5, 192)]),
    "b": ([(5, 96), (1, 96)], [(5, 192), (1, 192)]),
    "c": ([(3, 96), (3, 96)], [(3, 192), (3, 192)]),
}


class AllCNN(nn.Module):
    """All-CNN family member. ``__call__(x, train=False, return_features=False)``.

    Input (N, H, W, C) with H, W ≥ 28 (the VALID 3×3 head needs a 3×3 map after two
    halvings); output logits (N, num_classes), float32 (float64 when the layers compute in it).
    """

    base: str = "c"
    extra_conv: bool = False
    downsample: str = "pool"
    num_classes: int = 10
    width: float = 1.0
    dropout: float = 0.5
    input_dropout: float = 0.2
    batch_norm: bool = False
    bn_axis_name: str | None = None  # pmap axis for cross-device BatchNorm statistics
    head_relu: bool = True
    activation: str = "relu"  # any name in cnnjax.models.ACTIVATIONS; the paper uses ReLU
    backend: str = "xla"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        check_input(x, "AllCNN")
        check_downsample(self.downsample)
        if self.base not in BASES:
            raise ValueError(f"`base` must be one of {sorted(BASES)}, got {self.base!r}.")
        act = activation_fn(self.activation)
        feats = {}
        count = 0

        def conv(x, k, c, stride=1, padding=None, relu=True, name=None):
            nonlocal count
            count += 1
            name = name or f"conv{count}"
            y = ConvBNAct(
                c,
                k,
                stride,
                k // 2 if padding is None else padding,
                activation=act if relu else None,
                name=name,
                **conv_settings(self),
            )(x, train)
            return keep(feats, name, y)

        x = nn.Dropout(self.input_dropout, deterministic=not train)(x)
        for stage, block in enumerate(BASES[self.base], start=1):
            layers = [(k, scaled(c, self.width)) for k, c in block]
            if self.extra_conv:
                layers.append((3, layers[-1][1]))
            for i, (k, c) in enumerate(layers):
                last = i == len(layers) - 1
                x = conv(x, k, c, stride=2 if last and self.downsample == "stride" else 1)
            if self.downsample == "pool":
                x = ops.max_pool(x, 3, 2, 1)
            keep(feats, f"down{stage}", x)
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        c = scaled(192, self.width)
        x = conv(x, 3, c, padding="VALID")
        x = conv(x, 1, c)
        x = conv(x, 1, self.num_classes, relu=self.head_relu, name="class_map")
        # Logits in at least float32 (bfloat16 maps are averaged in float32; float64 stays).
        x = x.astype(jnp.float64 if x.dtype == jnp.float64 else jnp.float32)
        logits = keep(feats, "logits", jnp.mean(x, axis=(1, 2)))
        return (logits, feats) if return_features else logits
