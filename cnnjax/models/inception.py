"""Inception networks for small images.

``SmallInception``: the CIFAR-10 network of Zhang et al. (2017, "Understanding deep learning
requires rethinking generalization", appendix), built from conv-BN-ReLU modules:

* Inception(a, b) = concat(1×1 conv a, 3×3 conv b);
* Downsample(c) = concat(3×3 stride-2 conv c, 3×3 stride-2 max-pool);
* Conv(96) → Inc(32,32) → Inc(32,48) → Down(80) → Inc(112,48) → Inc(96,64) → Inc(80,80)
  → Inc(48,96) → Down(96) → Inc(176,160) ×2 → global mean pool → Dense(classes).

``GoogLeNetSmall``: a GoogLeNet-style network for 32×32 inputs from the v1 module
(:class:`cnnjax.nn.Inception`) with the paper's inception(3a), (3b) and (4a) widths:
3×3 conv 192 → 3a (256) → 3b (480) → downsample → 4a (512) → downsample → global average
pool → dropout 40 % → Dense(classes).

With ``downsample="stride"`` every max-pool is replaced by a 3×3 stride-2 conv that keeps the
channel count.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from cnnjax import ops
from cnnjax.models._common import (
    check_downsample,
    check_input,
    conv_settings,
    downsample_layer,
    keep,
    scaled,
)
from cnnjax.nn import INCEPTION_INPUT_CONVS as INPUT_CONVS
from cnnjax.nn import ConvBNAct, Inception

ZHANG_LAYOUT = (
    ("inc", 32, 32),
    ("inc", 32, 48),
    ("down", 80),
    ("inc", 112, 48),
    ("inc", 96, 64),
    ("inc", 80, 80),
    ("inc", 48, 96),
    ("down", 96),
    ("inc", 176, 160),
    ("inc", 176, 160),
)

# GoogLeNet Table 1: (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj).
GOOGLENET_WIDTHS = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
}


class SmallInception(nn.Module):
    """Zhang et al.'s small Inception. Intermediates: ``stem``, ``inc1``…``inc8``,
    ``down1``, ``down2``, ``pooled``, ``logits``."""

    num_classes: int = 10
    width: float = 1.0
    batch_norm: bool = True
    bn_axis_name: str | None = None  # pmap axis for cross-device BatchNorm statistics
    downsample: str = "pool"
    backend: str = "xla"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        check_input(x, "SmallInception")
        check_downsample(self.downsample)
        feats = {}

        def cba(c, k, stride=1, name=None):
            pad = "SAME" if stride == 1 else 1
            return ConvBNAct(
                scaled(c, self.width),
                k,
                stride,
                pad,
                name=name,
                **conv_settings(self),
            )

        x = keep(feats, "stem", cba(96, 3, name="stem")(x, train))
        n_inc = n_down = 0
        for spec in ZHANG_LAYOUT:
            if spec[0] == "inc":
                n_inc += 1
                a = cba(spec[1], 1, name=f"inc{n_inc}_1x1")(x, train)
                b = cba(spec[2], 3, name=f"inc{n_inc}_3x3")(x, train)
                x = keep(feats, f"inc{n_inc}", jnp.concatenate([a, b], axis=-1))
            else:
                n_down += 1
                conv = cba(spec[1], 3, stride=2, name=f"down{n_down}_conv")(x, train)
                other = downsample_layer(
                    x,
                    kind=self.downsample,
                    name=f"down{n_down}_stride",
                    train=train,
                    **conv_settings(self),
                )
                x = jnp.concatenate([conv, other.astype(conv.dtype)], axis=-1)
                keep(feats, f"down{n_down}", x)
        pooled = keep(feats, "pooled", ops.global_avg_pool(x.astype(jnp.float32)))
        logits = nn.Dense(
            self.num_classes, dtype=jnp.float32, param_dtype=self.param_dtype, name="head"
        )(pooled)
        keep(feats, "logits", logits)
        return (logits, feats) if return_features else logits


class Reader(NamedTuple):
    """A layer that reads an Inception module's output: its kernel's parameter path, stride
    and padding (a 2-d kernel is a dense classifier over the globally pooled channels)."""

    kernel: tuple[str, ...]
    stride: int
    padding: int


class InceptionSite(NamedTuple):
    """An Inception module of a network: ``name`` (its parameter scope), ``module`` (an
    unbound :class:`cnnjax.nn.Inception` with its widths: ``module.branch_channels(b)``) and
    ``readers``, the layers that read its output."""

    name: str
    module: Inception
    readers: tuple[Reader, ...]


_GOOGLENET_SMALL_STAGES = (("3a", "3b"), ("4a",))


class GoogLeNetSmall(nn.Module):
    """GoogLeNet-style network for small images. Intermediates: ``stem``, ``inception3a``,
    ``inception3b``, ``down1``, ``inception4a``, ``down2``, ``pooled``, ``logits``."""

    num_classes: int = 10
    width: float = 1.0
    batch_norm: bool = True
    bn_axis_name: str | None = None  # pmap axis for cross-device BatchNorm statistics
    dropout: float = 0.4
    downsample: str = "pool"
    backend: str = "xla"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def inception_sites(self) -> tuple[InceptionSite, ...]:
        """The network's Inception modules in order, each with the layers that read it: the
        next module's four input convolutions, the strided convolution ending a stage
        (``downsample="stride"``; a pooled stage end is read by what follows the pool), or
        the classifier."""
        names = [n for stage in _GOOGLENET_SMALL_STAGES for n in stage]
        ends = {stage[-1]: s for s, stage in enumerate(_GOOGLENET_SMALL_STAGES, start=1)}
        sites = []
        for i, n in enumerate(names):
            if n in ends and self.downsample == "stride":
                readers = (Reader((f"down{ends[n]}", "conv", "kernel"), 2, 1),)
            elif i + 1 < len(names):
                after = f"inception{names[i + 1]}"
                readers = tuple(Reader((after, c, "conv", "kernel"), 1, 0) for c in INPUT_CONVS)
            else:
                readers = (Reader(("head", "kernel"), 1, 0),)
            widths = (scaled(c, self.width) for c in GOOGLENET_WIDTHS[n])
            module = Inception(*widths, parent=None)  # a description, not a submodule
            sites.append(InceptionSite(f"inception{n}", module, readers))
        return tuple(sites)

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        check_input(x, "GoogLeNetSmall")
        check_downsample(self.downsample)
        feats = {}
        common = conv_settings(self)
        x = ConvBNAct(scaled(192, self.width), 3, name="stem", **common)(x, train)
        keep(feats, "stem", x)
        for s, names in enumerate(_GOOGLENET_SMALL_STAGES, start=1):
            for name in names:
                widths = [scaled(c, self.width) for c in GOOGLENET_WIDTHS[name]]
                x = Inception(*widths, name=f"inception{name}", **common)(x, train)
                keep(feats, f"inception{name}", x)
            x = downsample_layer(
                x,
                kind=self.downsample,
                name=f"down{s}",
                train=train,
                **conv_settings(self),
            )
            keep(feats, f"down{s}", x)
        pooled = keep(feats, "pooled", ops.global_avg_pool(x.astype(jnp.float32)))
        pooled = nn.Dropout(self.dropout, deterministic=not train)(pooled)
        logits = nn.Dense(
            self.num_classes, dtype=jnp.float32, param_dtype=self.param_dtype, name="head"
        )(pooled)
        keep(feats, "logits", logits)
        return (logits, feats) if return_features else logits
