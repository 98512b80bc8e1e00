"""Flax Linen modules: thin parameter holders around :mod:`cnnjax.ops`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax import ops
from cnnjax.ops.args import PaddingLike

Initializer = Callable[..., jnp.ndarray]
# He initialisation: keeps activation variance constant through ReLU layers without BatchNorm.
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")


class _Window(nn.Module):
    """The attributes :class:`Conv` and :class:`LocallyConnected` share, in one place."""

    features: int
    kernel_size: int | Sequence[int] = 3
    stride: int | Sequence[int] = 1
    padding: PaddingLike = "SAME"
    dilation: int | Sequence[int] = 1
    padding_mode: str = "zeros"
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Initializer = he_normal
    bias_init: Initializer = nn.initializers.zeros

    def _checked(self, x: jnp.ndarray) -> tuple[int, int]:
        """Checks ``x`` is NHWC and returns the kernel's (kh, kw)."""
        if jnp.ndim(x) != 4:
            raise ValueError(f"`x` must have rank 4 (NHWC), got shape {jnp.shape(x)}.")
        return ops.args.as_tuple(self.kernel_size, 2, "kernel_size")


class Conv(_Window):
    """2-d convolution layer (cross-correlation) on NHWC input; kernel HWIO.

    Attributes:
      features: output channels.
      kernel_size: int or (kh, kw).
      stride, padding, dilation, groups, padding_mode, backend: as in :func:`cnnjax.ops.conv2d`.
      use_bias: add a learned bias per output channel.
      dtype: computation dtype (e.g. ``jnp.bfloat16``); None computes in the input's dtype.
      param_dtype: dtype of the stored parameters.
    """

    groups: int = 1
    backend: str = "xla"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """(N, H, W, Cin) -> (N, H', W', features)."""
        kh, kw = self._checked(x)
        cin = x.shape[-1]
        if cin % self.groups:
            raise ValueError(f"`groups`={self.groups} must divide the input channels ({cin}).")
        kernel = self.param(
            "kernel",
            self.kernel_init,
            (kh, kw, cin // self.groups, self.features),
            self.param_dtype,
        )
        dtype = self.dtype or x.dtype
        y = ops.conv2d(
            x.astype(dtype),
            kernel.astype(dtype),
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            padding_mode=self.padding_mode,
            backend=self.backend,
        )
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            y = ops.add_bias(y, bias)
        return y


class LocallyConnected(_Window):
    """A convolution's local receptive fields without weight sharing: every output position
    has its own kernel (:func:`cnnjax.ops.locally_connected2d`). NHWC in and out.

    Attributes:
      features: output channels.
      kernel_size, stride, padding, dilation, padding_mode: as in :class:`Conv`.
      use_bias: a learned bias per output position and channel, (H', W', features).

    The kernel's shape, (H', W', kh, kw, Cin, features), follows from the input's size at
    initialisation; the layer then accepts only that size.
    """

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """(N, H, W, Cin) -> (N, H', W', features)."""
        kh, kw = self._checked(x)
        geom = ops.args.conv_geometry(
            x.shape,
            (kh, kw, x.shape[-1], self.features),
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
        )
        oh, ow = geom.out_shape[1:3]

        def init(key, shape, dtype):
            # Each position's kernel is initialised like a convolution kernel (same fan-in).
            keys = jax.random.split(key, oh * ow)
            per_position = jax.vmap(lambda k: self.kernel_init(k, shape[2:], dtype))(keys)
            return per_position.reshape(shape)

        kernel = self.param(
            "kernel", init, (oh, ow, kh, kw, x.shape[-1], self.features), self.param_dtype
        )
        dtype = self.dtype or x.dtype
        y = ops.locally_connected2d(
            x.astype(dtype),
            kernel.astype(dtype),
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            padding_mode=self.padding_mode,
        )
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (oh, ow, self.features), self.param_dtype)
            y = y + bias.astype(y.dtype)
        return y


class MaxPool(nn.Module):
    """Max pooling (no parameters); see :func:`cnnjax.ops.max_pool`."""

    window: int | Sequence[int] = 2
    stride: int | Sequence[int] | None = None
    padding: PaddingLike = "VALID"

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return ops.max_pool(x, self.window, self.stride, self.padding)


class AvgPool(nn.Module):
    """Average pooling (no parameters); see :func:`cnnjax.ops.avg_pool`."""

    window: int | Sequence[int] = 2
    stride: int | Sequence[int] | None = None
    padding: PaddingLike = "VALID"
    count_include_pad: bool = True

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return ops.avg_pool(x, self.window, self.stride, self.padding, self.count_include_pad)


class GlobalAvgPool(nn.Module):
    """(N, H, W, C) -> (N, C): the head that lets a network accept any input size."""

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return ops.global_avg_pool(x)


class ConvBNAct(nn.Module):
    """Convolution, optional BatchNorm, activation: the building block of the model zoo.

    With ``batch_norm`` the convolution has no bias (BatchNorm's shift replaces it).
    ``__call__(x, train)``: BatchNorm uses batch statistics and updates its running averages
    (collection ``batch_stats``) when ``train`` is True. ``bn_scale_init``: zeros makes the
    block start as the zero function (the last BatchNorm of a residual branch, Goyal et al.).
    """

    features: int
    kernel_size: int | Sequence[int] = 3
    stride: int | Sequence[int] = 1
    padding: PaddingLike = "SAME"
    batch_norm: bool = False
    bn_axis_name: str | None = None  # pmap axis for cross-device BatchNorm statistics
    activation: Callable[[jnp.ndarray], jnp.ndarray] | None = nn.relu
    backend: str = "xla"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Initializer = he_normal
    bn_scale_init: Initializer = nn.initializers.ones

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = Conv(
            self.features,
            self.kernel_size,
            self.stride,
            self.padding,
            use_bias=not self.batch_norm,
            backend=self.backend,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=self.kernel_init,
            name="conv",
        )(x)
        if self.batch_norm:
            # Flax's BatchNorm subtracts float32 statistics from bfloat16 activations by design
            # (the result is cast back to `dtype`); allowed even where promotion is strict.
            with jax.numpy_dtype_promotion("standard"):
                x = self._batch_norm(x, train)
        return self.activation(x) if self.activation is not None else x

    def _batch_norm(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        return nn.BatchNorm(
            use_running_average=not train,
            axis_name=self.bn_axis_name if train else None,
            momentum=0.9,
            epsilon=1e-5,
            dtype=x.dtype,  # the convolution's computation dtype, whatever param_dtype is
            param_dtype=self.param_dtype,
            scale_init=self.bn_scale_init,
            name="bn",
        )(x)
