"""Pure JAX operations: convolution backends, correlation/convolution, pooling, dense-to-conv.

Activations are channels-last (N, *spatial, C); kernels are (*spatial, Cin // groups, Cout).
Nothing here knows about Flax.
"""

from cnnjax.ops import args
from cnnjax.ops._gemm import col2im, im2col
from cnnjax.ops.args import ConvGeometry, conv_geometry
from cnnjax.ops.bias import add_bias
from cnnjax.ops.conv import BACKENDS, conv, conv2d
from cnnjax.ops.cost import conv_cost, select_backend
from cnnjax.ops.dense import dense_to_conv
from cnnjax.ops.local import locally_connected2d
from cnnjax.ops.pooling import (
    avg_pool,
    binomial_filter,
    blur_pool,
    global_avg_pool,
    global_max_pool,
    lp_pool,
    max_pool,
)
from cnnjax.ops.signal import convolve2d, correlate2d

__all__ = [
    "BACKENDS",
    "ConvGeometry",
    "add_bias",
    "args",
    "avg_pool",
    "binomial_filter",
    "blur_pool",
    "col2im",
    "conv",
    "conv2d",
    "conv_cost",
    "conv_geometry",
    "convolve2d",
    "correlate2d",
    "dense_to_conv",
    "global_avg_pool",
    "global_max_pool",
    "im2col",
    "locally_connected2d",
    "lp_pool",
    "max_pool",
    "select_backend",
]
