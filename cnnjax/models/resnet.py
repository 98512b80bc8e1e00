"""ResNet-18/34/50 (He et al., 2016) in torchvision's layout, version 1.5.

Stem: 7×7 stride-2 convolution (64) → BatchNorm → ReLU → 3×3 stride-2 max-pool. Then four
stages of 64, 128, 256 and 512 channels; every stage but the first halves the size in its first
block. ResNet-18 and -34 stack basic blocks (two 3×3 convolutions; 2-2-2-2 and 3-4-6-3
blocks), ResNet-50 bottlenecks (1×1 reduce, 3×3, 1×1 expanding ×4; 3-4-6-3) with the stride in
the 3×3 convolution (v1.5, as torchvision and flax's ImageNet example). A 1×1 convolution with
BatchNorm projects the shortcut wherever the shape changes. Global average pool → Dense.

Initialisation as in flax's ImageNet example: LeCun-normal kernels, and the last BatchNorm of
every residual branch with zero scale (``zero_init_residual``), so each block starts as the
identity. At 1,000 classes the parameter counts equal torchvision's: 11,689,512 (ResNet-18),
21,797,672 (ResNet-34) and 25,557,032 (ResNet-50).

``downsample`` (the pooling-versus-stride question; parameters, FLOPs and receptive fields of
each in the README):

* ``"standard"``: torchvision's network: the stem max-pools, the stages stride.
* ``"pool"``: pooling only: each stage's first block reads its input through a 3×3 stride-2
  max-pool and runs at stride 1 (same parameters, fewer FLOPs).
* ``"stride"``: strided convolutions only: the stem's max-pool is replaced by a 3×3 stride-2
  convolution with BatchNorm and ReLU (64 channels; 36,992 more parameters).
* ``"blurpool"``: anti-aliased (Zhang, 2019): the stem max-pools at stride 1 and blurs at
  stride 2, and every strided convolution reads a blurred (binomial low-pass) input.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax import ops
from cnnjax.models._common import (
    check_downsample,
    check_input,
    check_min_size,
    downsample_layer,
    keep,
    scaled,
)
from cnnjax.nn import ConvBNAct

DOWNSAMPLE = ("standard", "pool", "stride", "blurpool")
# depth -> (bottleneck blocks?, blocks per stage)
LAYOUTS = {18: (False, (2, 2, 2, 2)), 34: (False, (3, 4, 6, 3)), 50: (True, (3, 4, 6, 3))}
# flax's default kernel initialiser, the one its ImageNet example keeps.
lecun_normal = nn.initializers.lecun_normal()


class ResNetBlock(nn.Module):
    """One residual block, (N, H, W, C) -> (N, ceil(H / stride), ceil(W / stride), out).

    ``bottleneck``: 1×1 (``filters``) → 3×3 (``filters``, ``stride``) → 1×1 (4 × ``filters``);
    otherwise 3×3 (``filters``, ``stride``) → 3×3 (``filters``). ``blur``: every strided
    convolution reads a blurred copy of its input (:func:`cnnjax.ops.blur_pool`).
    """

    filters: int
    stride: int = 1
    bottleneck: bool = False
    blur: bool = False
    zero_init_residual: bool = True
    conv: dict[str, Any] | None = None  # ConvBNAct arguments shared by every convolution

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        conv = dict(self.conv or {})

        def strided(y):
            return ops.blur_pool(y, stride=1) if self.blur and self.stride > 1 else y

        last_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        if self.bottleneck:
            out = 4 * self.filters
            y = ConvBNAct(self.filters, 1, name="conv1", **conv)(x, train)
            y = ConvBNAct(self.filters, 3, self.stride, 1, name="conv2", **conv)(strided(y), train)
            y = ConvBNAct(out, 1, activation=None, bn_scale_init=last_scale, name="conv3", **conv)(
                y, train
            )
        else:
            out = self.filters
            y = ConvBNAct(self.filters, 3, self.stride, 1, name="conv1", **conv)(strided(x), train)
            y = ConvBNAct(
                out, 3, 1, 1, activation=None, bn_scale_init=last_scale, name="conv2", **conv
            )(y, train)
        shortcut = x
        if self.stride > 1 or x.shape[-1] != out:
            shortcut = ConvBNAct(out, 1, self.stride, 0, activation=None, name="proj", **conv)(
                strided(x), train
            )
        return nn.relu(y + shortcut.astype(y.dtype))


class ResNet(nn.Module):
    """ResNet-``depth`` (18, 34 or 50). Intermediates: ``stem``, ``pool1``, ``stage1`` …
    ``stage4``, ``pooled``, ``logits``."""

    depth: int = 50
    num_classes: int = 1000
    width: float = 1.0
    downsample: str = "standard"
    zero_init_residual: bool = True
    bn_axis_name: str | None = None  # pmap axis for cross-device BatchNorm statistics
    backend: str = "xla"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        name = f"ResNet-{self.depth}"
        check_input(x, name)
        check_downsample(self.downsample, DOWNSAMPLE, name)
        # Five halvings: smaller images leave the last stage nothing but padding to sample.
        check_min_size(x, 32, name, "it downsamples by 32")
        bottleneck, blocks = LAYOUTS[self.depth]
        conv = dict(
            batch_norm=True,
            bn_axis_name=self.bn_axis_name,
            backend=self.backend,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=lecun_normal,
        )
        feats = {}
        x = ConvBNAct(scaled(64, self.width), 7, 2, 3, name="stem", **conv)(x, train)
        keep(feats, "stem", x)
        kind = "pool" if self.downsample == "standard" else self.downsample
        x = downsample_layer(x, kind=kind, name="stem_down", train=train, **conv)
        keep(feats, "pool1", x)
        for i, n in enumerate(blocks):
            for j in range(n):
                first = i > 0 and j == 0
                if first and self.downsample == "pool":
                    x = ops.max_pool(x, 3, 2, 1)
                x = ResNetBlock(
                    scaled(64 * 2**i, self.width),
                    stride=2 if first and self.downsample != "pool" else 1,
                    bottleneck=bottleneck,
                    blur=self.downsample == "blurpool",
                    zero_init_residual=self.zero_init_residual,
                    conv=conv,
                    name=f"stage{i + 1}_block{j + 1}",
                )(x, train)
            keep(feats, f"stage{i + 1}", x)
        pooled = keep(feats, "pooled", ops.global_avg_pool(x.astype(jnp.float32)))
        logits = nn.Dense(
            self.num_classes,
            dtype=jnp.float32,
            param_dtype=self.param_dtype,
            kernel_init=lecun_normal,
            name="head",
        )(pooled)
        keep(feats, "logits", logits)
        return (logits, feats) if return_features else logits
