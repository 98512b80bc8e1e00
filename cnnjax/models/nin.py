"""Network in Network (Lin, Chen & Yan, 2014), the CIFAR-10 configuration.

Three "mlpconv" blocks (a spatial convolution followed by two 1×1 convolutions, i.e. a small
MLP shared across pixels), 3×3 stride-2 pooling (max, then average, as in the authors' CIFAR
model) with 50 % dropout between blocks, and global average pooling over the last block's
``num_classes`` maps instead of fully connected layers.

Intermediate activations: ``block{i}_conv{j}``, ``down1``, ``down2``, ``class_map``, ``logits``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.models._common import (
    check_downsample,
    check_input,
    conv_settings,
    downsample_layer,
    keep,
    scaled,
)
from cnnjax.nn import ConvBNAct

BLOCKS = ([(5, 192), (1, 160), (1, 96)], [(5, 192), (1, 192), (1, 192)], [(3, 192), (1, 192)])


class NiN(nn.Module):
    """Network in Network. ``__call__(x, train=False, return_features=False)``; input H, W ≥ 5."""

    num_classes: int = 10
    width: float = 1.0
    dropout: float = 0.5
    batch_norm: bool = False
    bn_axis_name: str | None = None  # pmap axis for cross-device BatchNorm statistics
    downsample: str = "pool"
    backend: str = "xla"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        check_input(x, "NiN")
        check_downsample(self.downsample)
        feats = {}
        common = conv_settings(self)
        for b, block in enumerate(BLOCKS, start=1):
            layers = [(k, scaled(c, self.width)) for k, c in block]
            if b == len(BLOCKS):
                layers.append((1, self.num_classes))
            for j, (k, c) in enumerate(layers, start=1):
                name = "class_map" if b == len(BLOCKS) and j == len(layers) else f"block{b}_conv{j}"
                x = keep(feats, name, ConvBNAct(c, k, name=name, **common)(x, train))
            if b < len(BLOCKS):
                x = downsample_layer(
                    x,
                    kind=self.downsample,
                    name=f"down{b}",
                    train=train,
                    pool="max" if b == 1 else "avg",
                    **conv_settings(self),
                )
                keep(feats, f"down{b}", x)
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        logits = keep(feats, "logits", jnp.mean(x.astype(jnp.float32), axis=(1, 2)))
        return (logits, feats) if return_features else logits
