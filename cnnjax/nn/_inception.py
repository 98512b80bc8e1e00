"""The GoogLeNet v1 Inception module (Szegedy et al., 2015)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax import ops
from cnnjax.nn._layers import ConvBNAct

BRANCHES = ("1x1", "3x3", "5x5", "pool")  # in the order they are concatenated
# The convolutions that read a module's input (the pool projection after its 3x3 max-pool).
INPUT_CONVS = ("branch1x1", "branch3x3_reduce", "branch5x5_reduce", "pool_proj")


class Inception(nn.Module):
    """Four parallel branches concatenated along channels (NHWC in, NHWC out, same H and W):

    1. 1×1 convolution, ``c1`` channels;
    2. 1×1 reduction to ``c3_reduce``, then 3×3 convolution, ``c3`` channels;
    3. 1×1 reduction to ``c5_reduce``, then a real 5×5 convolution, ``c5`` channels;
    4. 3×3 max-pool with stride 1, then 1×1 projection, ``pool_proj`` channels.

    Output channels: ``c1 + c3 + c5 + pool_proj`` (GoogLeNet's inception(3a): 64, 96→128,
    16→32, 32 gives 256). The 1×1 reductions are what make the module affordable: they
    compress channels before the expensive 3×3 and 5×5 convolutions.
    """

    c1: int
    c3_reduce: int
    c3: int
    c5_reduce: int
    c5: int
    pool_proj: int
    batch_norm: bool = False
    bn_axis_name: str | None = None  # pmap axis for cross-device BatchNorm statistics
    backend: str = "xla"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @property
    def features(self) -> int:
        return self.c1 + self.c3 + self.c5 + self.pool_proj

    def branch_channels(self, branch: str) -> slice:
        """The channels of ``branch`` ("1x1", "3x3", "5x5" or "pool") in the module's output:
        what the next layer reads from that branch (no parameters needed, so an unbound
        module built with the same widths answers too)."""
        if branch not in BRANCHES:
            raise ValueError(
                f"`branch` must be one of {', '.join(BRANCHES)} (an Inception module's "
                f"branches), got {branch!r}."
            )
        widths = dict(zip(BRANCHES, (self.c1, self.c3, self.c5, self.pool_proj), strict=True))
        start = sum(widths[b] for b in BRANCHES[: BRANCHES.index(branch)])
        return slice(start, start + widths[branch])

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, return_branches: bool = False):
        """(N, H, W, C) -> (N, H, W, ``features``); with ``return_branches`` also a dict of the
        four branch outputs keyed by :data:`BRANCHES`, whose concatenation (in that order,
        :meth:`branch_channels`) is the output: what the next layer reads, branch by branch."""

        def block(features, kernel, name):
            return ConvBNAct(
                features,
                kernel,
                batch_norm=self.batch_norm,
                bn_axis_name=self.bn_axis_name,
                backend=self.backend,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=name,
            )

        b1 = block(self.c1, 1, "branch1x1")(x, train)
        b3 = block(self.c3_reduce, 1, "branch3x3_reduce")(x, train)
        b3 = block(self.c3, 3, "branch3x3")(b3, train)
        b5 = block(self.c5_reduce, 1, "branch5x5_reduce")(x, train)
        b5 = block(self.c5, 5, "branch5x5")(b5, train)
        bp = ops.max_pool(x, 3, 1, "SAME")
        bp = block(self.pool_proj, 1, "pool_proj")(bp, train).astype(b1.dtype)
        out = jnp.concatenate([b1, b3, b5, bp], axis=-1)
        if return_branches:
            return out, {"1x1": b1, "3x3": b3, "5x5": b5, "pool": bp}
        return out
