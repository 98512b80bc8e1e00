"""airbench94 (Keller Jordan, 2024, arXiv 2404.00498): the fast CIFAR-10 network.

    whiten   2×2 convolution, C -> 2·2·2·C channels (3 -> 24), VALID, with bias; its kernel is
             set from the training images (``cnnjax.data.patch_whitening``) and then frozen
    GELU
    block×3  conv 3×3 -> downsample -> BatchNorm -> GELU -> conv 3×3 -> BatchNorm -> GELU,
             widths 64, 256, 256 (× ``width``)
    pool     max over the last map (airbench's 3×3 max-pool on its 3×3 map)
    head     linear, no bias; logits × ``logit_scale`` (1/9); airbench94_muon's head starts at
             standard deviation 1 (``head_std``) and scales by 1/256 (one over its width)

Convolutions have no bias and start as a partial identity (:func:`cnnjax.nn.initializers.
partial_identity`); BatchNorm has no scale (airbench freezes it at 1), momentum 0.6, eps 1e-12.
GELU is the exact (erf) form, as in PyTorch. ``downsample`` chooses what halves each block:

* ``"pool"``: 2×2 max-pool after the first convolution (the published network);
* ``"avgpool"``: 2×2 average pool instead;
* ``"stride"``: the first convolution itself has stride 2 (no pool);
* ``"extra_stride"``: an added 3×3 stride-2 convolution in place of the pool, as in All-CNN;
* ``"blurpool"``: the strided first convolution preceded by a fixed 3×3 binomial low-pass
  filter (:func:`cnnjax.ops.blur_pool`; anti-aliased downsampling, Zhang 2019).

Intermediates (``return_features=True``): ``whiten``, ``block1`` … ``block3`` (block outputs),
``down1`` … ``down3`` (after each downsampling), ``pooled``, ``logits``.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax import ops
from cnnjax.models._common import check_downsample, check_input, keep, scaled
from cnnjax.nn import Conv
from cnnjax.nn.initializers import partial_identity, uniform_fan_in, with_std

DOWNSAMPLE = ("pool", "avgpool", "stride", "extra_stride", "blurpool")
WIDTHS = (64, 256, 256)


class AirBench94(nn.Module):
    """airbench94. ``__call__(x, train=False, return_features=False)``; NHWC input, H, W ≥ 16
    (three halvings of the 2×2-whitened image must leave a map)."""

    num_classes: int = 10
    width: float = 1.0
    downsample: str = "pool"
    whiten_kernel: int = 2  # 2·k·k·C patch-whitening filters: 24 for RGB input
    logit_scale: float = 1 / 9
    head_std: float | None = None  # the head's initial weights rescaled to this std (None: fan-in)
    bn_momentum: float = 0.6
    bn_epsilon: float = 1e-12
    bn_axis_name: str | None = None  # pmap axis for cross-device BatchNorm statistics
    blur_padding: str = "reflect"  # "blurpool": the low-pass filter's padding mode
    backend: str = "xla"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        check_input(x, "AirBench94")
        check_downsample(self.downsample, DOWNSAMPLE)
        gelu = functools.partial(nn.gelu, approximate=False)
        conv = functools.partial(
            Conv,
            use_bias=False,
            backend=self.backend,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=partial_identity(),
        )
        norm = functools.partial(
            nn.BatchNorm,
            use_running_average=not train,
            axis_name=self.bn_axis_name if train else None,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            use_scale=False,
            param_dtype=self.param_dtype,
        )
        feats = {}
        k = self.whiten_kernel
        x = conv(
            2 * k * k * x.shape[-1],
            k,
            padding="VALID",
            use_bias=True,
            kernel_init=uniform_fan_in(),
            name="whiten",
        )(x)
        x = keep(feats, "whiten", gelu(x))
        for i, c in enumerate(WIDTHS, start=1):
            c = scaled(c, self.width)
            first_stride = 2 if self.downsample in ("stride", "blurpool") else 1
            if self.downsample == "blurpool":
                # Low-pass first, then the strided convolution samples.
                x = ops.blur_pool(x, stride=1, padding_mode=self.blur_padding)
            x = conv(c, 3, stride=first_stride, padding=1, name=f"block{i}_conv1")(x)
            if self.downsample == "pool":
                x = ops.max_pool(x, 2)
            elif self.downsample == "avgpool":
                x = ops.avg_pool(x, 2)
            elif self.downsample == "extra_stride":
                x = conv(c, 3, stride=2, padding=1, name=f"block{i}_down")(x)
            keep(feats, f"down{i}", x)
            x = gelu(norm(dtype=x.dtype, name=f"block{i}_bn1")(x))
            x = conv(c, 3, padding=1, name=f"block{i}_conv2")(x)
            x = keep(feats, f"block{i}", gelu(norm(dtype=x.dtype, name=f"block{i}_bn2")(x)))
        pooled = keep(feats, "pooled", ops.global_max_pool(x.astype(jnp.float32)))
        head = nn.Dense(
            self.num_classes,
            use_bias=False,
            dtype=jnp.float32,
            param_dtype=self.param_dtype,
            kernel_init=uniform_fan_in() if self.head_std is None else with_std(self.head_std),
            name="head",
        )
        logits = keep(feats, "logits", head(pooled) * self.logit_scale)
        return (logits, feats) if return_features else logits
