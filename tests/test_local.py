"""Locally connected layers against a float64 loop over positions, and against conv2d."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import nn, ops


def _reference(x, w, stride, pads, dilation):
    """float64, one output position at a time: (output, gradient map) for a linear test."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    oh, ow, kh, kw, _, _ = w.shape
    xp = np.pad(x, ((0, 0), *pads, (0, 0)))
    out = np.zeros((x.shape[0], oh, ow, w.shape[-1]))
    for i, j, a, b in itertools.product(range(oh), range(ow), range(kh), range(kw)):
        patch = xp[:, i * stride[0] + a * dilation[0], j * stride[1] + b * dilation[1]]
        out[:, i, j] += patch @ w[i, j, a, b]
    return out


def _grads(x, w, g, stride, pads, dilation):
    """float64 gradients of sum(out · g) by the same loop, written out."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    oh, ow, kh, kw, _, _ = w.shape
    xp = np.pad(x, ((0, 0), *pads, (0, 0)))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for i, j, a, b in itertools.product(range(oh), range(ow), range(kh), range(kw)):
        r, c = i * stride[0] + a * dilation[0], j * stride[1] + b * dilation[1]
        dw[i, j, a, b] += xp[:, r, c].T @ g[:, i, j]
        dxp[:, r, c] += g[:, i, j] @ w[i, j, a, b].T
    (top, bottom), (left, right) = pads
    return dxp[:, top : xp.shape[1] - bottom, left : xp.shape[2] - right], dw


CASES = [
    # (x shape, kernel, stride, padding, dilation)
    ((2, 6, 5, 3), (3, 3), (1, 1), "VALID", (1, 1)),
    ((2, 7, 6, 2), (3, 2), (2, 1), "SAME", (1, 1)),
    ((1, 9, 9, 2), (2, 3), (1, 2), ((1, 2), (0, 1)), (2, 1)),
]


@pytest.mark.parametrize("x_shape, kernel, stride, padding, dilation", CASES)
def test_locally_connected_matches_a_loop_over_positions(
    x_shape, kernel, stride, padding, dilation
):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    geom = ops.conv_geometry(
        x_shape, (*kernel, x_shape[-1], 4), stride=stride, padding=padding, dilation=dilation
    )
    oh, ow = geom.out_shape[1:3]
    w = rng.standard_normal((oh, ow, *kernel, x_shape[-1], 4)).astype(np.float32)
    f = lambda x, w: ops.locally_connected2d(
        x, w, stride=stride, padding=padding, dilation=dilation
    )
    y = f(x, w)
    want = _reference(x, w, geom.stride, geom.pads, geom.dilation)
    # Against float64 loops: every output and gradient entry here is a float32 sum of at most
    # 36 products (kh * kw * channels), whose rounding error is below 36 * 2**-24 = 2.1e-6 of
    # the largest magnitude involved; 1e-5 leaves a factor of 5.
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    g = rng.standard_normal(y.shape)
    dx, dw = jax.grad(lambda x, w: jnp.sum(f(x, w) * g), argnums=(0, 1))(x, w)
    want_dx, want_dw = _grads(x, w, g, geom.stride, geom.pads, geom.dilation)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-5 * np.abs(want_dx).max())
    np.testing.assert_allclose(dw, want_dw, rtol=1e-5, atol=1e-5 * np.abs(want_dw).max())


def test_shared_kernels_make_it_a_convolution():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    k = rng.standard_normal((3, 3, 3, 5)).astype(np.float32)
    w = np.broadcast_to(k, (4, 4, 3, 3, 3, 5))  # the same kernel at every position
    local = ops.locally_connected2d(x, w, stride=2, padding="SAME")
    np.testing.assert_allclose(local, ops.conv2d(x, k, stride=2, padding="SAME"), atol=1e-5)


def test_forward_materialises_one_copy_of_the_patches():
    x = jnp.zeros((8, 32, 32, 64))
    w = jnp.zeros((32, 32, 3, 3, 64, 64))
    f = lambda x, w: ops.locally_connected2d(x, w, padding="SAME")
    memory = jax.jit(f).lower(x, w).compile().memory_analysis()
    patches = 8 * 32 * 32 * 9 * 64 * 4  # bytes of one im2col copy
    output = 8 * 32 * 32 * 64 * 4
    # The patches once, the padded input and the position-major output: well under two copies.
    assert memory.temp_size_in_bytes < 1.5 * patches + 2 * output


def test_argument_errors_name_the_argument():
    x = jnp.zeros((1, 6, 6, 2))
    with pytest.raises(ValueError, match=r"`w` must have rank 6 \(H', W', kh, kw, Cin, Cout\)"):
        ops.locally_connected2d(x, jnp.zeros((3, 3, 2, 4)), padding="VALID")
    with pytest.raises(ValueError, match=r"`w` must have shape \(4, 4, 3, 3, 2, 4\)"):
        ops.locally_connected2d(x, jnp.zeros((6, 6, 3, 3, 2, 4)), padding="VALID")
    with pytest.raises(ValueError, match="channel mismatch"):
        ops.locally_connected2d(x, jnp.zeros((4, 4, 3, 3, 3, 4)), padding="VALID")
    with pytest.raises(TypeError, match="must share a dtype"):
        ops.locally_connected2d(x, jnp.zeros((4, 4, 3, 3, 2, 4), jnp.bfloat16), padding="VALID")


@pytest.mark.parametrize(
    "bad",
    [
        dict(stride=0),
        dict(dilation=(1, 1, 1)),
        dict(padding="FULL"),
        dict(padding=-1),
        dict(padding_mode="mirror"),
        dict(x_dtype=jnp.int32),
        dict(w_dtype=jnp.bfloat16),
        dict(kernel=(9, 9), padding="VALID"),
    ],
    ids=str,
)
def test_bad_arguments_get_conv2d_s_own_message(bad):
    """The arguments the two ops share are checked by the same code: same error, same text."""
    bad = dict(bad)
    x = jnp.zeros((1, 6, 6, 2), bad.pop("x_dtype", jnp.float32))
    kh, kw = bad.pop("kernel", (3, 3))
    w_dtype = bad.pop("w_dtype", jnp.float32)
    with pytest.raises((ValueError, TypeError)) as conv_error:
        ops.conv2d(x, jnp.zeros((kh, kw, 2, 4), w_dtype), **bad)
    # Any position grid: every one of these is refused before the grid is compared.
    with pytest.raises(conv_error.type) as local_error:
        ops.locally_connected2d(x, jnp.zeros((6, 6, kh, kw, 2, 4), w_dtype), **bad)
    assert str(local_error.value) == str(conv_error.value)


def test_module_has_a_kernel_and_bias_per_position():
    layer = nn.LocallyConnected(5, 3, stride=2)
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
    variables = layer.init(jax.random.key(1), x)
    kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
    assert kernel.shape == (5, 5, 3, 3, 3, 5) and bias.shape == (5, 5, 5)
    assert not np.allclose(kernel[0, 0], kernel[1, 1])  # positions draw their own kernels
    y = layer.apply(variables, x)
    want = ops.locally_connected2d(x, kernel, stride=2, padding="SAME")
    np.testing.assert_allclose(y, want, atol=1e-6)
