"""GoogLeNet (Inception v1) as Szegedy et al. (2015) built it for ImageNet, Table 1.

At 224×224: 7×7/2 convolution (64) → 3×3/2 max-pool → 1×1 (64) and 3×3 (192) convolutions →
3×3/2 max-pool → inception 3a, 3b → max-pool → 4a … 4e → max-pool → 5a, 5b → 7×7 average pool
(a global average pool, so other sizes work) → dropout 40 % → linear. Every convolution is
followed by ReLU. The paper's local response normalisation is left out, as in torchvision
and in most reimplementations since batch normalisation; ``batch_norm=True`` adds BatchNorm
after every convolution (the common modern variant; the paper had none).

The two auxiliary classifiers on the outputs of 4a and 4d (5×5/3 average pool, 1×1 convolution
128, fully connected 1024, dropout 70 %, linear) exist when ``aux_logits`` is True. In training
their logits are recorded in the ``aux_logits`` collection as ``aux1_logits`` and
``aux2_logits`` (``model.apply(..., train=True, mutable=["aux_logits", ...])``) and the
training step adds 0.3 × their losses (``config.aux_loss_weight``); at evaluation they are not
computed.

``downsample`` changes the four 3×3/2 max-pools between stages: ``"pool"`` (the paper),
``"stride"`` (a 3×3/2 convolution keeping the channels, with ReLU) or ``"blurpool"`` (3×3
max-pool at stride 1, then a binomial low-pass sampled at stride 2; Zhang, 2019).
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
    conv_settings,
    downsample_layer,
    keep,
    scaled,
)
from cnnjax.nn import ConvBNAct, Inception

DOWNSAMPLE = ("pool", "stride", "blurpool")
# Table 1, per module: (#1×1, #3×3 reduce, #3×3, #5×5 reduce, #5×5, pool proj); None marks the
# stride-2 max-pool between stages.
TABLE1 = (
    ("3a", (64, 96, 128, 16, 32, 32)),
    ("3b", (128, 128, 192, 32, 96, 64)),
    None,
    ("4a", (192, 96, 208, 16, 48, 64)),
    ("4b", (160, 112, 224, 24, 64, 64)),
    ("4c", (128, 128, 256, 24, 64, 64)),
    ("4d", (112, 144, 288, 32, 64, 64)),
    ("4e", (256, 160, 320, 32, 128, 128)),
    None,
    ("5a", (256, 160, 320, 32, 128, 128)),
    ("5b", (384, 192, 384, 48, 128, 128)),
)
AUX_AFTER = {"4a": "aux1", "4d": "aux2"}  # module -> the head reading its output
# The auxiliary heads' 5×5 average pool reads the 1/16-scale map (ceil(size / 16) pixels).
AUX_MIN_SIZE = 65


class AuxClassifier(nn.Module):
    """The paper's auxiliary head: (N, H, W, C) -> (N, classes); its fully connected layer
    reads the whole pooled map (4×4×128 = 2,048 values at 224 px)."""

    num_classes: int
    width: float = 1.0
    dropout: float = 0.7
    conv: dict[str, Any] | None = None  # ConvBNAct arguments

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = ops.avg_pool(x, 5, 3)
        x = ConvBNAct(scaled(128, self.width), 1, name="conv", **(self.conv or {}))(x, train)
        x = x.astype(jnp.float32).reshape(x.shape[0], -1)
        # Float32 like the main classifier, parameters stored as the convolutions' are.
        dense = dict(
            dtype=jnp.float32, param_dtype=(self.conv or {}).get("param_dtype", jnp.float32)
        )
        x = nn.relu(nn.Dense(scaled(1024, self.width), name="fc", **dense)(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="head", **dense)(x)


class GoogLeNet(nn.Module):
    """GoogLeNet (Table 1). Intermediates: ``conv1``, ``pool1``, ``conv2``, ``pool2``,
    ``inception3a`` … ``inception5b`` with ``pool3`` and ``pool4`` between stages, ``pooled``,
    ``logits``."""

    num_classes: int = 1000
    width: float = 1.0
    batch_norm: bool = False
    aux_logits: bool = True
    dropout: float = 0.4
    aux_dropout: float = 0.7
    downsample: str = "pool"
    bn_axis_name: str | None = None  # pmap axis for cross-device BatchNorm statistics
    backend: str = "xla"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        check_input(x, "GoogLeNet")
        check_downsample(self.downsample, DOWNSAMPLE, "GoogLeNet")
        # The heads are built at initialisation too, so that the parameters exist for training.
        heads = self.aux_logits and (train or self.is_initializing())
        if heads:
            check_min_size(
                x,
                AUX_MIN_SIZE,
                "GoogLeNet with aux_logits",
                "the auxiliary heads' 5x5 pool reads the 1/16-scale map; "
                "aux_logits=False takes 32 px",
            )
        check_min_size(x, 32, "GoogLeNet", "it downsamples by 32")
        conv = conv_settings(self)
        feats = {}

        def down(x, name):
            return keep(
                feats,
                name,
                downsample_layer(x, kind=self.downsample, name=name, train=train, **conv),
            )

        x = keep(
            feats,
            "conv1",
            ConvBNAct(scaled(64, self.width), 7, 2, 3, name="conv1", **conv)(x, train),
        )
        x = down(x, "pool1")
        x = ConvBNAct(scaled(64, self.width), 1, name="conv2_reduce", **conv)(x, train)
        x = keep(
            feats, "conv2", ConvBNAct(scaled(192, self.width), 3, name="conv2", **conv)(x, train)
        )
        x = down(x, "pool2")
        pools = iter(("pool3", "pool4"))
        for row in TABLE1:
            if row is None:
                x = down(x, next(pools))
                continue
            name, widths = row
            widths = [scaled(c, self.width) for c in widths]
            x = Inception(*widths, name=f"inception{name}", **conv)(x, train)
            keep(feats, f"inception{name}", x)
            if heads and name in AUX_AFTER:
                aux = AuxClassifier(
                    self.num_classes, self.width, self.aux_dropout, conv, name=AUX_AFTER[name]
                )(x, train)
                if train:
                    self.sow("aux_logits", f"{AUX_AFTER[name]}_logits", aux)
        pooled = keep(feats, "pooled", ops.global_avg_pool(x.astype(jnp.float32)))
        pooled = nn.Dropout(self.dropout, deterministic=not train)(pooled)
        logits = nn.Dense(
            self.num_classes, dtype=jnp.float32, param_dtype=self.param_dtype, name="head"
        )(pooled)
        keep(feats, "logits", logits)
        return (logits, feats) if return_features else logits
