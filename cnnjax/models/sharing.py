"""One small network, three kinds of hidden layer: what local connectivity and weight sharing
each contribute.

    input -> 3 hidden layers (ReLU) -> global average pooling -> linear classifier

with the hidden layers as

* ``"conv"``: 3×3 convolutions, 16 × ``width`` channels (local and shared);
* ``"local"``: 3×3 locally connected layers (local, not shared: a kernel per position);
* ``"dense"``: fully connected layers from the whole (H, W, C) map to a (H, W, 16 × ``width``)
  map (neither local nor shared).

Registered as ``sharing_conv``, ``sharing_local`` and ``sharing_dense``.

Every variant keeps the (H, W, width) maps, so the pooling and classifier are the same; only
the connectivity between maps changes. The dense variant's layers have (H·W)² as many weights
as a convolution's per channel pair, so keep the images small (16×16 gives 16.8M per hidden
layer at width 16). Intermediates: ``hidden1`` … ``hidden3``, ``pooled``, ``logits``.

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
    width: float = 1.0  # multiplies the 16 channels of every hidden map
    depth: int = 3
    backend: str = "xla"  # of the convolutions (cnnjax.ops.conv)
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        del train  # no dropout or BatchNorm: the layers alone are compared
        check_input(x, "SharingNet")
        if self.layer not in LAYERS:
            raise ValueError(f"`layer` must be one of {LAYERS}, got {self.layer!r}.")
        n, h, w, _ = x.shape
        if self.layer != "conv" and not self.is_initializing():
            self._check_size(x.shape)
        c = scaled(16, self.width)
        feats = {}
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for i in range(1, self.depth + 1):
            name = f"hidden{i}"
            if self.layer == "conv":
                x = Conv(c, 3, padding="SAME", backend=self.backend, name=name, **common)(x)
            elif self.layer == "local":
                x = LocallyConnected(c, 3, padding="SAME", name=name, **common)(x)
            else:
                flat = x.reshape(n, -1)
                x = nn.Dense(h * w * c, name=name, **common)(flat).reshape(n, h, w, c)
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
            got, want, what = (h, w), tuple(kernel.shape[:2]), "an output map of"
        else:
            got, want, what = h * w * cin, kernel.shape[0], "a number of inputs of"
        if got != want:
            raise ValueError(
                f"SharingNet(layer={self.layer!r}) keeps weights per position, so it accepts "
                f"only the image size it was initialised with; its weights expect {what} "
                f"{want} but a {h}x{w}x{cin} image gives {got}."
            )
