"""One small network, three kinds of hidden layer: what local connectivity and weight sharing
each contribute.

    input -> 3 hidden layers, stride 2 (ReLU) -> global average pooling -> linear classifier

with the hidden layers as

* ``"conv"``: 3×3 convolutions, ``channels`` × ``width`` channels, 32 by default (local and
  shared);
* ``"local"``: 3×3 locally connected layers (local, not shared: a kernel per position);
* ``"dense"``: fully connected layers from the whole (H, W, C) map to the map a convolution
  would give, (⌈H/2⌉, ⌈W/2⌉, ``channels`` × ``width``) (neither local nor shared).

Registered as ``sharing_conv``, ``sharing_local`` and ``sharing_dense``, and
``sharing_conv_wide``: convolutions with 116 channels, which on 16×16 RGB images has about as
many parameters as ``sharing_local`` (247k against 243k), so that sharing can be compared at
equal width and at equal parameter count.

Every variant produces maps of the same shapes, so the pooling and classifier are the same;
only the connectivity between maps changes. Why stride 2: with stride 1, three 3×3 layers
see 7×7 pixels, so the convolutional variant's pooled features describe patches, not
the object, and it loses to the others for want of a view rather than of weights (measured
on digits: chance level at 30 % of the data). With stride 2 the third layer sees 15×15, all of
a 16×16 image. A dense layer has (H·W)²/(9·4) as many weights as a convolution per channel
pair, so keep the images small (16×16 gives 1.6M in the first hidden layer at width 1).
Intermediates: ``hidden1`` … ``hidden3``, ``pooled``, ``logits``.

Unlike the rest of the zoo, the ``local`` and ``dense`` variants accept only the image size
they were initialised with: their weights are per position. Another size raises a
``ValueError`` that says so.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax import ops
from cnnjax.models._common import check_input, keep, scaled
from cnnjax.nn import Conv, LocallyConnected

LAYERS = ("conv", "local", "dense")


class SharingNet(nn.Module):
    """The three-way network. ``__call__(x, train=False, return_features=False)``."""

    layer: str = "conv"
    num_classes: int = 10
    channels: int = 32  # of every hidden map, before `width`
    width: float = 1.0
    depth: int = 3
    stride: int = 2  # of every hidden layer; see the module docstring
    backend: str = "xla"  # of the convolutions (cnnjax.ops.conv)
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        del train  # no dropout or BatchNorm: the layers alone are compared
        check_input(x, "SharingNet")
        if self.layer not in LAYERS:
            raise ValueError(f"`layer` must be one of {LAYERS}, got {self.layer!r}.")
        n = x.shape[0]
        if self.layer != "conv" and not self.is_initializing():
            self._check_size(x.shape)
        c, s = scaled(self.channels, self.width), self.stride
        feats = {}
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for i in range(1, self.depth + 1):
            name = f"hidden{i}"
            if self.layer == "conv":
                x = Conv(c, 3, s, "SAME", backend=self.backend, name=name, **common)(x)
            elif self.layer == "local":
                x = LocallyConnected(c, 3, s, "SAME", name=name, **common)(x)
            else:
                h, w = -(-x.shape[1] // s), -(-x.shape[2] // s)  # SAME padding: ceil(H / s)
                x = nn.Dense(h * w * c, name=name, **common)(x.reshape(n, -1))
                x = x.reshape(n, h, w, c)
            x = keep(feats, name, nn.relu(x))
        pooled = keep(feats, "pooled", ops.global_avg_pool(x.astype(jnp.float32)))
        head = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=self.param_dtype)
        logits = keep(feats, "logits", head(pooled))
        return (logits, feats) if return_features else logits

    def _check_size(self, shape: tuple[int, ...]) -> None:
        """Name the size mismatch before Flax reports it as a parameter-shape error."""
        kernel = self.variables["params"]["hidden1"]["kernel"]
        _, h, w, cin = shape
        if self.layer == "local":
            got = (-(-h // self.stride), -(-w // self.stride))  # SAME padding: ceil(H / s)
            want, what = tuple(kernel.shape[:2]), "an output map of"
        else:
            got, want, what = h * w * cin, kernel.shape[0], "a number of inputs of"
        if got != want:
            raise ValueError(
                f"SharingNet(layer={self.layer!r}) keeps weights per position, so it accepts "
                f"only the image size it was initialised with; its weights expect {what} "
                f"{want} but a {h}x{w}x{cin} image gives {got}."
            )
