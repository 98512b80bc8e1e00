"""Pooling against a float64 NumPy loop; 1x1 convolutions, dense-to-conv, global pooling."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import ops
from cnnjax.ops import args, pooling
from tests import reference

GRID = list(
    itertools.product(
        [(2, 2), (3, 3), (2, 3)],  # windows
        [None, 1, 2, (1, 2)],  # strides (None = window)
        ["VALID", "SAME", 1, ((0, 1), (1, 0))],  # paddings
    )
)


def _geometry(shape, window, stride, padding):
    strides = window if stride is None else args.as_tuple(stride, 2, "stride")
    return strides, args.normalize_padding(padding, shape[1:3], window, strides, (1, 1))


@pytest.mark.parametrize(("window", "stride", "padding"), GRID, ids=str)
@pytest.mark.parametrize("size", [(7, 9), (8, 8)], ids=["odd", "even"])
def test_pools_match_numpy_loop(window, stride, padding, size):
    x = np.random.default_rng(0).standard_normal((2, *size, 3)).astype(np.float32)
    strides, pads = _geometry(x.shape, window, stride, padding)
    got_max = ops.max_pool(x, window, stride, padding)
    np.testing.assert_allclose(
        got_max, reference.pool2d(x, window, strides, pads, "max"), rtol=1e-6
    )
    for include in (True, False):
        got = ops.avg_pool(x, window, stride, padding, count_include_pad=include)
        ref = reference.pool2d(x, window, strides, pads, "avg", count_include_pad=include)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_padded_positions_never_win_a_max():
    x = -np.ones((1, 4, 4, 1), np.float32) * 5.0  # all negative: a zero pad would win
    out = ops.max_pool(x, 3, 2, padding=1)
    np.testing.assert_array_equal(out, -5.0)


def test_count_include_pad_false_divides_by_real_pixels():
    x = np.ones((1, 4, 4, 1), np.float32)
    np.testing.assert_allclose(ops.avg_pool(x, 3, 1, "SAME", count_include_pad=False), 1.0)
    corner = ops.avg_pool(x, 3, 1, "SAME", count_include_pad=True)[0, 0, 0, 0]
    assert float(corner) == pytest.approx(4 / 9)


def test_max_pool_gradient_lands_on_first_argmax():
    # Overlapping 3x3 windows, stride 2, with ties: the gradient goes to the first maximum.
    x = np.random.default_rng(1).integers(0, 3, (1, 7, 7, 2)).astype(np.float32)
    gout = np.random.default_rng(2).standard_normal((1, 3, 3, 2)).astype(np.float32)
    g = jax.grad(lambda x: jnp.sum(ops.max_pool(x, 3, 2) * gout))(x)
    ref = np.zeros_like(x)
    for i, j, c in itertools.product(range(3), range(3), range(2)):
        win = x[0, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3, c]
        a, b = np.unravel_index(np.argmax(win), win.shape)  # numpy's argmax: first maximum
        ref[0, 2 * i + a, 2 * j + b, c] += gout[0, i, j, c]
    np.testing.assert_allclose(g, ref, atol=1e-6)


@pytest.mark.parametrize(
    "window, stride, padding, shape",
    [
        ((2, 2), None, "VALID", (2, 9, 8, 3)),  # tiles, ragged end dropped
        ((3, 2), None, "VALID", (1, 7, 7, 2)),
        (3, 1, "SAME", (2, 8, 7, 3)),  # Inception's pool branch: overlapping, padded
        (3, 2, 1, (1, 9, 8, 2)),  # All-CNN's 3x3 stride 2
    ],
)
def test_max_pool_matches_reduce_window_with_ties_and_nans(window, stride, padding, shape):
    # Values in {0, 1, 2} make ties common; the gradient must pick the same element as XLA's
    # select-and-scatter. Each window sends one float; where windows overlap, an input sums
    # up to prod(window) of them, in another order than XLA's.
    x = np.random.default_rng(4).integers(0, 3, shape).astype(np.float32)
    x[0, 0, 0, 0] = np.nan
    x[-1, -1, 0, -1] = -np.inf
    win, strides, pads = pooling._window_args(x, window, stride, padding)
    ref = lambda x: jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, win, strides, pads)
    pool = lambda x: ops.max_pool(x, window, stride, padding)
    np.testing.assert_array_equal(pool(x), ref(x))  # NaN where reduce_window has
    x[0, 0, 0, 0] = 1.0
    gout = np.random.default_rng(5).standard_normal(ref(x).shape).astype(np.float32)
    got = jax.grad(lambda x: jnp.sum(pool(x) * gout))(x)
    want = jax.grad(lambda x: jnp.sum(ref(x) * gout))(x)
    # A float32 sum of n terms is within (n - 1) * 2**-24 * sum|terms| of the exact one; two
    # orders, twice that. Zero where one window reaches an input, so tiles must match exactly.
    n = math.prod(win)  # elements per window
    scale = jax.grad(lambda x: jnp.sum(ref(x) * np.abs(gout)))(x)
    np.testing.assert_array_less(np.abs(got - want), 2 * (n - 1) * 2**-24 * scale + 1e-30)
    if stride is None:  # non-overlapping tiles: one term per input, no rounding at all
        np.testing.assert_array_equal(got, want)
    t = np.random.default_rng(6).standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(jax.jvp(pool, (x,), (t,))[1], jax.jvp(ref, (x,), (t,))[1])


def test_avg_pool_gradient_spreads_evenly():
    x = np.random.default_rng(3).standard_normal((1, 6, 6, 1)).astype(np.float32)
    g = jax.grad(lambda x: jnp.sum(ops.avg_pool(x, 2)))(x)
    np.testing.assert_allclose(g, 0.25)


def test_lp_pool_limits():
    x = np.abs(np.random.default_rng(4).standard_normal((1, 6, 6, 2))).astype(np.float32)
    # p = 1 is the window's sum, 4 x its mean. XLA raises to a power as exp(p · log x), which
    # costs about (1 + |log x|) 2^-24 relative for each of the two powers, and the sums of 4
    # terms 3 · 2^-24 each: the tolerance, with a factor 2 for the exp/log polynomials.
    u, logs = 2.0**-24, float(np.max(np.abs(np.log(x))))
    sums = ops.lp_pool(x, 1.0, 2)
    np.testing.assert_allclose(sums, 4 * ops.avg_pool(x, 2), rtol=2 * (2 * (1 + logs) + 6) * u)
    # p = 60 lies between the max and 4^(1/60) x the max (the mean of 4 powers is at most the
    # largest), the pow's rounding p-fold in x^p and divided by p again in the root.
    ratio = np.asarray(ops.lp_pool(x, 60.0, 2), np.float64) / np.asarray(ops.max_pool(x, 2))
    assert ratio.min() >= 1 - 1e-5 and ratio.max() <= 4 ** (1 / 60) + 1e-5


def test_global_pools():
    x = np.random.default_rng(5).standard_normal((2, 5, 7, 3)).astype(np.float32)
    np.testing.assert_allclose(ops.global_avg_pool(x), x.mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(ops.global_max_pool(x), x.max(axis=(1, 2)))


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda x: ops.max_pool(x, 9), "`window` is larger than the padded input"),
        (lambda x: ops.avg_pool(x, 0), "`window` must be positive"),
        (lambda x: ops.max_pool(x, 2, stride=-1), "`stride` must be positive"),
        (lambda x: ops.max_pool(x[0, 0], 2), "`x` must have rank >= 3"),
        (lambda x: ops.avg_pool(x, 2, padding="HALF"), "unknown string 'HALF'"),
        (lambda x: ops.lp_pool(x, 0.0, 2), "`p` must be positive"),
        (lambda x: ops.global_avg_pool(x[0, 0]), "`x` must have rank >= 3"),
    ],
)
def test_bad_pool_input(call, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        call(jnp.zeros((1, 6, 6, 2)))


def test_1x1_conv_is_a_dense_layer_at_every_pixel():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 5, 6, 8)).astype(np.float32)
    w = rng.standard_normal((8, 3)).astype(np.float32)
    np.testing.assert_allclose(ops.conv2d(x, w[None, None]), x @ w, rtol=1e-5, atol=1e-5)
    # ...and it compresses channels: 8 -> 3, spatial size unchanged.
    assert ops.conv2d(x, w[None, None]).shape == (2, 5, 6, 3)


def _features(x, w1):
    return jax.nn.relu(ops.max_pool(ops.conv2d(x, w1, padding="VALID"), 2))


def test_dense_head_converted_to_convolutions():
    rng = np.random.default_rng(7)
    w1 = rng.standard_normal((3, 3, 3, 6)).astype(np.float32) * 0.3
    d1 = rng.standard_normal((4 * 4 * 6, 16)).astype(np.float32) * 0.1
    b1 = rng.standard_normal(16).astype(np.float32)
    d2 = rng.standard_normal((16, 10)).astype(np.float32) * 0.3
    b2 = rng.standard_normal(10).astype(np.float32)

    def classifier(x):  # features -> Flatten -> Dense -> ReLU -> Dense
        f = _features(x, w1)
        h = jax.nn.relu(f.reshape(f.shape[0], -1) @ d1 + b1)
        return h @ d2 + b2

    c1, c2 = ops.dense_to_conv([d1, d2], (4, 4, 6))
    assert c1.shape == (4, 4, 6, 16) and c2.shape == (1, 1, 16, 10)

    def fully_convolutional(x):
        f = _features(x, w1)
        h = jax.nn.relu(ops.conv2d(f, c1, padding="VALID") + b1)
        return ops.conv2d(h, c2, padding="VALID") + b2

    x = rng.standard_normal((3, 10, 10, 3)).astype(np.float32)  # features: 4x4x6
    np.testing.assert_allclose(fully_convolutional(x)[:, 0, 0], classifier(x), rtol=1e-5, atol=1e-5)
    big = rng.standard_normal((1, 20, 14, 3)).astype(np.float32)
    scores = fully_convolutional(big)
    assert scores.shape == (1, 9 - 4 + 1, 6 - 4 + 1, 10)  # features of the big image: 9x6
    # Each score is the classifier applied to its 10x10 window (total stride 2).
    np.testing.assert_allclose(
        scores[0, 2, 1], classifier(big[:, 4:14, 2:12])[0], rtol=1e-4, atol=1e-5
    )
    with pytest.raises(ValueError, match=r"`kernels\[1\]` must have shape \(16, features\)"):
        ops.dense_to_conv([d1, d2.T], (4, 4, 6))


def test_global_average_pooling_head_accepts_any_size():
    rng = np.random.default_rng(8)
    ws = [
        rng.standard_normal(s).astype(np.float32) * 0.2
        for s in [(3, 3, 3, 8), (3, 3, 8, 8), (1, 1, 8, 10)]
    ]

    def net(x):
        x = jax.nn.relu(ops.conv2d(x, ws[0], stride=2))
        x = jax.nn.relu(ops.conv2d(x, ws[1]))
        return ops.global_avg_pool(ops.conv2d(x, ws[2]))

    outs = {s: net(rng.standard_normal((2, s, s, 3)).astype(np.float32)) for s in (32, 33, 48, 64)}
    assert all(o.shape == (2, 10) for o in outs.values())
    # The pooled logits are the mean of a per-pixel map: check one size by hand.
    x = rng.standard_normal((1, 33, 33, 3)).astype(np.float32)
    h = jax.nn.relu(ops.conv2d(jax.nn.relu(ops.conv2d(x, ws[0], stride=2)), ws[1]))
    np.testing.assert_allclose(net(x), (h @ ws[2][0, 0]).mean(axis=(1, 2)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "stride, size, mode",
    [(2, 3, "reflect"), (1, 3, "reflect"), (2, 4, "zeros"), ((2, 1), 5, "circular")],
)
def test_blur_pool_matches_a_direct_loop(stride, size, mode):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 9, 8, 3)).astype(np.float32)
    got = np.asarray(ops.blur_pool(x, stride, size, mode))
    taps = np.array([math.comb(size - 1, k) for k in range(size)], np.float64)
    taps /= taps.sum()
    assert ops.binomial_filter(size) == pytest.approx(taps)
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    # "SAME": output ceil(n / s), padding split with the extra pixel at the end.
    pads = []
    for n, s in ((9, sh), (8, sw)):
        out = -(-n // s)
        total = max((out - 1) * s + size - n, 0)
        pads.append((total // 2, total - total // 2))
    np_mode = {"reflect": "reflect", "zeros": "constant", "circular": "wrap"}[mode]
    xp = np.pad(x.astype(np.float64), ((0, 0), *pads, (0, 0)), mode=np_mode)
    want = np.zeros((2, -(-9 // sh), -(-8 // sw), 3))
    for i in range(want.shape[1]):
        for j in range(want.shape[2]):
            for a in range(size):
                for b in range(size):
                    want[:, i, j] += taps[a] * taps[b] * xp[:, i * sh + a, j * sw + b]
    # The op filters one axis, then the other, each a float32 sum of `size` products with
    # exact taps (binomial / 2**(size - 1)): at most 2 * size - 1 roundings of 2**-24 times
    # sum(t * |x|) <= max|x| (non-negative taps summing to 1), so two passes stay within
    # 2 * (2 * size - 1) * 2**-24 * max|x| of this float64 loop.
    bound = 2 * (2 * size - 1) * 2**-24 * np.abs(x).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=bound)


@pytest.mark.parametrize("mode", ["reflect", "zeros", "circular"])
def test_blur_pool_gradient_matches_the_depthwise_convolution(mode):
    # The op is written as strided slices; the same linear map as a depthwise convolution
    # through cnnjax.ops.conv is an independent path for values and input gradients.
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.standard_normal((2, 9, 8, 3)), jnp.float32)
    taps = ops.binomial_filter(3)
    w = jnp.asarray(np.multiply.outer(taps, taps)[:, :, None, None] * np.ones((1, 3)), jnp.float32)

    def depthwise(x):
        return ops.conv(x, w, stride=2, padding="SAME", groups=3, padding_mode=mode)

    got, vjp = jax.vjp(lambda x: ops.blur_pool(x, 2, 3, mode), x)
    want, vjp_want = jax.vjp(depthwise, x)
    # Both are float32 sums with non-negative weights summing to 1 and exact taps (k/16). An
    # n-product sum rounds at most 2n - 1 times, each by 2**-24 of sum(w * |x|) <= max|x|:
    # the separable op's two 3-term passes 2 * 5 times, the 9-term convolution 17 times.
    u = 2**-24
    np.testing.assert_allclose(got, want, rtol=0, atol=(2 * 5 + 17) * u * np.abs(x).max())
    g = jnp.asarray(rng.standard_normal(got.shape), jnp.float32)
    # Transposed, an input pixel gathers from at most 2 windows per axis, twice that where
    # the padding mirrors or wraps it back: <= 16 products of weights summing to <= 1, so
    # each path is within 2 * 16 * 2**-24 * max|g| of the exact gradient.
    grad_bound = 2 * (2 * 16) * u * np.abs(g).max()
    np.testing.assert_allclose(vjp(g)[0], vjp_want(g)[0], rtol=0, atol=grad_bound)
    assert ops.blur_pool(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_blur_pool_keeps_constants_and_checks_size():
    x = np.full((1, 6, 6, 2), 3.0, np.float32)
    np.testing.assert_allclose(ops.blur_pool(x), 3.0, rtol=1e-6)  # a low-pass filter sums to 1
    with pytest.raises(ValueError, match="`size` must be a positive int"):
        ops.blur_pool(x, size=0)
