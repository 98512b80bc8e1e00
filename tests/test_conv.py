"""conv2d backends against independent float64 references (NumPy loops and scipy.signal)."""

import itertools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal

from cnnjax import ops
from cnnjax.ops import _fft, _gemm, args
from tests import reference

BACKENDS = ["xla", "fft", "gemm"]
PADDINGS = ["SAME", "VALID", 1, (2, 1), ((1, 2), (0, 3)), "same"]
MODES = ["zeros", "reflect", "circular"]
# (groups, cin, cout): plain, grouped, depthwise (groups == cin, channel multiplier 2).
GROUPINGS = [(1, 3, 5), (2, 4, 6), (4, 4, 8)]


def _cases():
    cases = []
    for i, (k, s, d) in enumerate(itertools.product([1, 2, 3, 5, 7], [1, 2, 3], [1, 2])):
        groups, cin, cout = GROUPINGS[i % 3]
        padding = PADDINGS[i % len(PADDINGS)]
        mode = MODES[(i // 2) % 3] if padding != "VALID" else "zeros"
        h, w = (15, 16) if i % 2 else (16, 13)  # odd and even sizes
        cases.append((k, s, d, groups, cin, cout, h, w, padding, mode))
    return cases


CASES = _cases()


def _rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)


def _data(case, seed=0):
    k, s, d, groups, cin, cout, h, w, padding, _ = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, h, w, cin)).astype(np.float32)
    kw = max(k - 1, 1)  # non-square kernels too
    wt = rng.standard_normal((k, kw, cin // groups, cout)).astype(np.float32)
    geom = ops.conv_geometry(
        x.shape, wt.shape, stride=s, padding=padding, dilation=d, groups=groups
    )
    return x, wt, geom


def _conv(case, x, w, backend):
    """``ops.conv2d`` with the case's stride, padding, dilation, groups and padding mode."""
    _, stride, dilation, groups, *_, padding, mode = case
    return ops.conv2d(
        x,
        w,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        padding_mode=mode,
        backend=backend,
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: "k{}s{}d{}g{}-{}-{}".format(*c[:4], c[8], c[9])
)
def test_forward_matches_numpy_reference(case, backend):
    x, w, geom = _data(case)
    mode = case[9]
    out = _conv(case, x, w, backend)
    ref = reference.conv2d(x, w, geom.pads, geom.stride, geom.dilation, geom.groups, mode)
    assert out.shape == ref.shape == geom.out_shape
    assert out.dtype == jnp.float32
    reference.assert_within(
        out,
        ref,
        reference.conv_bound(
            backend, x, w, geom.pads, geom.stride, geom.dilation, geom.groups, mode
        ),
    )


def _grad_bounds(backend, x, w, gout, geom, mode):
    """Bounds for (dx, dw) as :func:`tests.reference.conv_bound` derives them for the forward pass.

    Direct sums: γ_K times the gradients of |x|, |w|, |gout| (every term's magnitude), K the
    terms per entry: taps x output channels per group, up to 4 padded copies of a pixel (a
    mirror or wrapped copy per axis), for dx; N x output positions for dw. FFT: the documented
    factor times, for dx, Σ_o ‖gout_{n,o}‖₂ ‖w_{c,o}‖₁ (the backward pass is the forward one
    on gout with the kernel transposed) and, for dw, Σ_n ‖x_{n,c}‖₂ ‖gout_{n,o}‖₂ (each tap is an
    inner product of an image and the shifted gradient: Cauchy-Schwarz)."""
    pads, stride, dilation, groups = geom.pads, geom.stride, geom.dilation, geom.groups
    *k, cg, cout = w.shape
    taps, og, n = math.prod(k), cout // groups, x.shape[0]
    if backend in ("xla", "gemm"):
        abs_dx, abs_dw = reference.conv2d_grads(
            np.abs(x), np.abs(w), np.abs(gout), pads, stride, dilation, groups, mode
        )
        positions = math.prod(gout.shape[1:-1])
        return reference.gamma(4 * taps * og) * abs_dx, reference.gamma(n * positions) * abs_dw
    spatial = tuple(range(1, x.ndim - 1))
    if mode == "zeros":  # any number of spatial axes
        xp = np.pad(np.asarray(x, np.float64), [(0, 0), *pads, (0, 0)])
    else:
        xp = reference.pad(x, pads, mode)
    points = reference.fft_points(xp.shape[1:-1], k, dilation)
    g_norms = np.sqrt((np.asarray(gout, np.float64) ** 2).sum(axis=spatial))  # (N, Cout)
    transposed = np.zeros((*k, og, cg * groups))  # the kernel of the backward convolution
    for g in range(groups):
        transposed[..., g * cg : (g + 1) * cg] = np.swapaxes(w[..., g * og : (g + 1) * og], -1, -2)
    dx = reference.fft_factor(points, taps, cout) * reference.grouped_norms(
        g_norms, transposed, groups
    )
    x_norms = np.sqrt((xp**2).sum(axis=spatial))  # (N, Cin)
    per_pair = np.zeros((cg, cout))
    for g in range(groups):
        per_pair[:, g * og : (g + 1) * og] = (
            x_norms[:, g * cg : (g + 1) * cg].T @ g_norms[:, g * og : (g + 1) * og]
        )
    dw = reference.fft_factor(points, taps, max(n, x.shape[-1])) * per_pair
    return dx.reshape(n, *[1] * len(spatial), -1), dw


@pytest.mark.parametrize(
    "case", CASES[::2], ids=lambda c: "k{}s{}d{}g{}-{}-{}".format(*c[:4], c[8], c[9])
)
def test_gradients_match_numpy_adjoint(case):
    x, w, geom = _data(case, seed=1)
    mode = case[9]
    gout = np.random.default_rng(2).standard_normal(geom.out_shape).astype(np.float32)
    # One float64 reference, every backend against it.
    rdx, rdw = reference.conv2d_grads(
        x, w, gout, geom.pads, geom.stride, geom.dilation, geom.groups, mode
    )
    for backend in BACKENDS:

        def loss(x, w, backend=backend):
            return jnp.sum(_conv(case, x, w, backend) * gout)

        dx, dw = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)
        bound_dx, bound_dw = _grad_bounds(backend, x, w, gout, geom, mode)
        reference.assert_within(dx, rdx, bound_dx)
        reference.assert_within(dw, rdw, bound_dw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scipy_reference_multichannel(backend):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 12, 11, 3)).astype(np.float32)
    w = rng.standard_normal((5, 4, 3, 2)).astype(np.float32)
    out = ops.conv2d(x, w, padding="VALID", backend=backend)[0]
    ref = np.stack(
        [
            sum(
                signal.correlate2d(x[0, :, :, c].astype(np.float64), w[:, :, c, o], "valid")
                for c in range(3)
            )
            for o in range(2)
        ],
        axis=-1,
    )
    reference.assert_within(
        out, ref, reference.conv_bound(backend, x, w, ((0, 0), (0, 0)), (1, 1), (1, 1), 1)[0]
    )


def test_gemm_gradient_equals_xla_autodiff():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 10, 9, 4)).astype(np.float32)
    w = rng.standard_normal((3, 3, 2, 6)).astype(np.float32)
    geom = ops.conv_geometry(x.shape, w.shape, stride=2, groups=2)
    g = rng.standard_normal(geom.out_shape).astype(np.float32)

    def grads(backend):
        f = lambda x, w: jnp.vdot(ops.conv2d(x, w, stride=2, groups=2, backend=backend), g)
        return jax.grad(f, argnums=(0, 1))(x, w)

    # Each backend within its derived bound of the float64 gradient: within twice of each other.
    bounds = _grad_bounds("gemm", x, w, g, geom, "zeros")
    for a, b, bound in zip(grads("gemm"), grads("xla"), bounds, strict=True):
        reference.assert_within(a, np.asarray(b, np.float64), 2 * bound)


def test_gemm_backward_is_the_custom_vjp():
    # The backward pass of the gemm backend must be the hand-written one (colsᵀ·E, col2im).
    x = jnp.ones((1, 5, 5, 2))
    w = jnp.ones((3, 3, 2, 4))
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda w: jnp.sum(ops.conv2d(x, w, backend="gemm"))))(w))
    assert jaxpr.count("dot_general") >= 2  # forward product and colsᵀ·E
    assert "conv_general_dilated" not in jaxpr


@pytest.mark.parametrize(
    "x_shape, w_shape, kwargs",
    [
        ((2, 21, 3), (4, 3, 4), dict(stride=2, dilation=2, padding=((3, 1),))),
        ((2, 11, 12, 4), (3, 4, 2, 6), dict(stride=(2, 1), dilation=(1, 2), groups=2)),
        ((1, 6, 7, 5, 4), (3, 2, 3, 2, 4), dict(groups=2, padding="SAME")),
    ],
    ids=["1d", "2d", "3d"],
)
def test_fft_backward_equals_xla_autodiff(x_shape, w_shape, kwargs):
    # The FFT backend's hand-written backward (custom_vjp) against autodiff of lax's conv.
    rng = np.random.default_rng(11)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    out = jax.eval_shape(lambda x, w: ops.conv(x, w, **kwargs), x, w).shape
    g = rng.standard_normal(out).astype(np.float32)

    def grads(backend):
        loss = lambda x, w: jnp.vdot(ops.conv(x, w, backend=backend, **kwargs), g)
        return jax.grad(loss, argnums=(0, 1))(x, w)

    # Both within the FFT's norm-wise bound of the exact gradient, hence within twice that of
    # each other. XLA's direct sums are within γ_K Σ|terms| with K at most 2 x 66 here (dw: N x
    # output positions), below the FFT factor's 32·log₂L >= 160 alone, and Σ|terms| is below
    # the norm products the FFT bound multiplies (Hölder, Cauchy-Schwarz).
    geom = ops.conv_geometry(x.shape, w.shape, **kwargs)
    bounds = _grad_bounds("fft", x, w, g, geom, "zeros")
    for a, b, bound in zip(grads("fft"), grads("xla"), bounds, strict=True):
        reference.assert_within(a, np.asarray(b, np.float64), 2 * bound)


def _primitives(jaxpr):
    """Every equation of a jaxpr and of the jaxprs nested in it (custom rules, control flow)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _primitives(inner)


def test_fft_backward_transforms_only_images():
    # Forward and backward transform the images (x, the output gradient) and nothing else:
    # the kernel's spectrum and its gradient are small products with DFT matrices, never a
    # transform of the padded image's size. Checked on the program's structure (which
    # primitives, on which shapes), as JAX defines it whatever XLA later makes of it.
    x, w = jnp.ones((1, 9, 9, 2)), jnp.ones((5, 5, 2, 3))
    grad = jax.grad(lambda x, w: jnp.sum(ops.conv2d(x, w, backend="fft")), argnums=(0, 1))
    ffts = [e for e in _primitives(jax.make_jaxpr(grad)(x, w).jaxpr) if e.primitive.name == "fft"]
    kinds = sorted(jax.lax.FftType(e.params["fft_type"]).name for e in ffts)
    assert kinds == ["IRFFT", "IRFFT", "RFFT", "RFFT"]
    for e in ffts:  # batch and channel axes of an image (N = 1; 2 or 3 channels), never 2 x 3
        leading = e.invars[0].aval.shape[:-2]
        assert math.prod(leading) in (2, 3), leading
    with pytest.raises(TypeError, match="custom_vjp"):  # reverse mode only, as documented
        jax.jvp(lambda x: ops.conv2d(x, w, backend="fft"), (x,), (x,))


def test_kernel_spectrum_and_taps_match_numpy_fft():
    rng = np.random.default_rng(12)
    w = rng.standard_normal((2, 3, 4, 5))  # (Cg, Cout, *K)
    lengths, dilation = (11, 12), (2, 1)
    placed = np.zeros((2, 3, *lengths))
    placed[:, :, ::2, :5][:, :, :4] = w  # tap k at position k·dilation
    expected = np.conj(np.fft.rfftn(placed, axes=(2, 3)))
    got = _fft.kernel_spectrum(jnp.asarray(w, jnp.float32), lengths, dilation)
    assert np.max(np.abs(got - expected)) <= 1e-5 * np.max(np.abs(expected))
    signal_ = rng.standard_normal((2, 3, *lengths))
    z = np.fft.rfftn(signal_, axes=(2, 3))
    taps = _fft.kernel_taps(jnp.asarray(z, jnp.complex64), lengths, dilation, (4, 5))
    assert _rel_err(taps, signal_[:, :, :8:2, :5]) <= 1e-5


def test_im2col_col2im_are_adjoint():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 9, 8, 3)).astype(np.float32)
    geometry = ((3, 2), (2, 1), (1, 2))
    cols = ops.im2col(x, *geometry)
    np.testing.assert_array_equal(cols, _gemm.im2col_slices(x, *geometry))
    pads = ((2, 1), (0, 3))  # padding inside the gather equals gathering from a padded copy
    np.testing.assert_array_equal(
        ops.im2col(x, *geometry, pads=pads),
        ops.im2col(np.pad(x, ((0, 0), *pads, (0, 0))), *geometry),
    )
    c = rng.standard_normal(cols.shape).astype(np.float32)
    lhs = float(jnp.vdot(cols, c))
    rhs = float(jnp.vdot(x, ops.col2im(c, x.shape[1:3], *geometry)))
    assert abs(lhs - rhs) <= 1e-4 * abs(lhs)


@pytest.mark.parametrize("padding", ["SAME", "VALID", ((2, 0), (1, 1))])
def test_winograd_backend_matches_reference(padding):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 11, 8, 5)).astype(np.float32)
    w = rng.standard_normal((3, 3, 5, 7)).astype(np.float32)
    geom = ops.conv_geometry(x.shape, w.shape, padding=padding)
    out = ops.conv2d(x, w, padding=padding, backend="winograd")
    ref = reference.conv2d(x, w, geom.pads, (1, 1), (1, 1), 1)
    # Winograd's error is a fixed multiple of the norms the FFT bound uses (see _bound).
    reference.assert_within(
        out, ref, reference.conv_bound("winograd", x, w, geom.pads, (1, 1), (1, 1), 1)
    )
    gout = rng.standard_normal(ref.shape).astype(np.float32)
    grads = jax.grad(
        lambda x, w: jnp.sum(ops.conv2d(x, w, padding=padding, backend="winograd") * gout), (0, 1)
    )(x, w)
    bounds = _grad_bounds("winograd", x, w, gout, geom, "zeros")
    for a, b, bound in zip(
        grads, reference.conv2d_grads(x, w, gout, geom.pads, (1, 1), (1, 1), 1), bounds, strict=True
    ):
        reference.assert_within(a, b, bound)


@pytest.mark.parametrize("backend", [*BACKENDS, "winograd", "auto"])
def test_jit_vmap_grad_and_bfloat16(backend):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 2, 10, 10, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    f = jax.jit(lambda x, w: ops.conv2d(x, w, backend=backend))
    batched = jax.vmap(f, in_axes=(0, None))(x, w)
    flat = x.reshape(8, 10, 10, 3)
    pads = ops.conv_geometry(flat.shape, w.shape).pads  # the default, "SAME"
    exact = reference.conv2d(flat, w, pads, (1, 1), (1, 1), 1)
    kind = "xla" if backend == "auto" else backend  # auto picks xla for 3x3
    bound = np.broadcast_to(
        reference.conv_bound(kind, flat, w, pads, (1, 1), (1, 1), 1), exact.shape
    )
    reference.assert_within(batched, exact.reshape(batched.shape), bound.reshape(batched.shape))
    exact = exact.reshape(batched.shape)
    # The gradient of a sum of squares, against the float64 one: 2 Σ y · dy/dw, so the bound
    # of the backward pass with gout = 2y (the float32 y's own error adds one forward bound).
    g = jax.grad(lambda w: jnp.sum(f(x[0], w) ** 2))(w)
    y = exact[0]
    _, want = reference.conv2d_grads(x[0], w, 2 * y, pads, (1, 1), (1, 1), 1)
    geom = ops.conv_geometry(x[0].shape, w.shape)
    _, bound_dw = _grad_bounds(kind, x[0], w, 2 * y, geom, "zeros")
    forward = reference.conv_bound(kind, x[0], w, pads, (1, 1), (1, 1), 1)
    _, via_error = reference.conv2d_grads(
        np.abs(x[0]), np.abs(w), 2 * forward, pads, (1, 1), (1, 1), 1
    )
    reference.assert_within(g, want, bound_dw + via_error)
    # bfloat16 in, bfloat16 out: against the exact convolution of the rounded inputs. Rounding
    # the output alone costs 2^-8 of |y|; a backend that also sums in bfloat16 (K = 27 terms)
    # stays within γ_28 at u = 2^-8 of Σ|x||w|; Winograd's transforms, run in bfloat16, grow
    # absolute values by at most 16 (|Aᵀ|, |B| row sums 3 and 2, |G| row sums 1.5) before it.
    xb, wb = x[0].astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    yb = ops.conv2d(xb, wb, backend=backend)
    assert yb.dtype == jnp.bfloat16
    xr, wr = np.asarray(xb, np.float64), np.asarray(wb, np.float64)
    exact_b = reference.conv2d(xr, wr, pads, (1, 1), (1, 1), 1)
    absolute = reference.conv2d(np.abs(xr), np.abs(wr), pads, (1, 1), (1, 1), 1)
    ub = 2.0**-8
    growth = 16 if backend == "winograd" else 1
    reference.assert_within(
        yb.astype(np.float32), exact_b, growth * 28 * ub / (1 - 28 * ub) * absolute
    )


def test_conv_1d_and_3d():
    rng = np.random.default_rng(8)
    x1 = rng.standard_normal((2, 20, 3)).astype(np.float32)
    w1 = rng.standard_normal((5, 3, 2)).astype(np.float32)
    for backend in BACKENDS:
        y = ops.conv(x1, w1, padding="VALID", stride=2, backend=backend)
        as_2d = (x1[:, :, None], w1[:, None], ((0, 0), (0, 0)), (2, 1), (1, 1), 1)
        ref = reference.conv2d(*as_2d)[:, :, 0]
        reference.assert_within(y, ref, reference.conv_bound(backend, *as_2d)[:, :, 0])
    x3 = rng.standard_normal((1, 6, 7, 5, 2)).astype(np.float32)
    w3 = rng.standard_normal((3, 2, 3, 2, 4)).astype(np.float32)
    ys = [ops.conv(x3, w3, padding="SAME", backend=b) for b in BACKENDS]
    padded = np.pad(x3[0].astype(np.float64), [(1, 1), (0, 1), (1, 1), (0, 0)])

    def correlate(x, w):
        return sum(
            signal.correlate(x[..., c], w[..., c, o], "valid")[..., None] * np.eye(4)[o]
            for c in range(2)
            for o in range(4)
        )

    ref = correlate(padded, w3)
    # The bounds of _bound in three dimensions: γ_K of |x| * |w| (K = 18 taps x 2 channels),
    # and the FFT's factor on the padded image's norms.
    direct = reference.gamma(18 * 2) * correlate(np.abs(padded), np.abs(w3))
    points = math.prod(
        _fft.fast_length(n + k - 1) for n, k in zip(padded.shape[:3], (3, 2, 3), strict=True)
    )
    norms = np.sqrt((padded**2).sum(axis=(0, 1, 2)))[None]  # (1, Cin)
    fft = reference.fft_factor(points, 18, 2) * reference.grouped_norms(norms, w3, 1)[0]
    for backend, y in zip(BACKENDS, ys, strict=True):
        reference.assert_within(y[0], ref, direct if backend != "fft" else fft)


@pytest.mark.parametrize("mode", ["full", "same", "valid"])
@pytest.mark.parametrize("kshape", [(3, 3), (2, 4), (5, 2)])
def test_correlate_and_convolve_match_scipy(mode, kshape):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((9, 11)).astype(np.float32)
    k = rng.standard_normal(kshape).astype(np.float32)
    corr = ops.correlate2d(x, k, mode)
    conv = ops.convolve2d(x, k, mode)
    assert _rel_err(corr, signal.correlate2d(x.astype(np.float64), k, mode)) <= 1e-5
    assert _rel_err(conv, signal.convolve2d(x.astype(np.float64), k, mode)) <= 1e-5
    if mode != "same":  # "same" centres even kernels differently for the two operations
        np.testing.assert_allclose(conv, ops.correlate2d(x, k[::-1, ::-1], mode), atol=1e-6)
    assert not np.allclose(conv, corr, atol=1e-3)  # the flip matters for these kernels


def test_correlate_batched_multichannel():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 8, 7, 3)).astype(np.float32)
    k2 = rng.standard_normal((3, 2)).astype(np.float32)
    per_channel = ops.convolve2d(x, k2, "valid")
    for n, c in itertools.product(range(2), range(3)):
        ref = signal.convolve2d(x[n, :, :, c].astype(np.float64), k2, "valid")
        assert _rel_err(per_channel[n, :, :, c], ref) <= 1e-5
    k4 = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    mixed = ops.correlate2d(x[0], k4, "same")
    assert mixed.shape == (8, 7, 4)
    ref = sum(
        signal.correlate2d(x[0, :, :, c].astype(np.float64), k4[:, :, c, 1], "same")
        for c in range(3)
    )
    assert _rel_err(mixed[..., 1], ref) <= 1e-5


def test_auto_backend_picks_the_cheaper_under_its_cost_model():
    # Where the crossover lies depends on the CPU the model was fitted to (FFT_PENALTY,
    # perf_notes.md); what holds anywhere is that "auto" takes the model's cheaper backend,
    # that the direct cost is the multiply-add count, and that there is one crossover: the
    # direct work grows with the kernel's area, the FFT's hardly at all.
    shape, picks = (8, 64, 64, 16), []
    for k in (1, 3, 5, 7, 9, 15, 21):
        costs = ops.conv_cost(ops.conv_geometry(shape, (k, k, 16, 16)))
        assert costs["xla"] == 8 * 64 * 64 * k * k * 16 * 16  # SAME: 64 x 64 outputs
        picks.append(ops.select_backend(shape, (k, k, 16, 16)))
        assert picks[-1] == min(costs, key=costs.get)
    assert picks[0] == "xla" and picks[-1] == "fft"
    assert picks == sorted(picks, key=["xla", "fft"].index)  # xla, ..., fft: one switch
    # "auto" computes the same numbers as the backend it names.
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 64, 64, 8)).astype(np.float32)
    w = rng.standard_normal((21, 21, 8, 8)).astype(np.float32)
    assert ops.select_backend(x.shape, w.shape) == "fft"
    np.testing.assert_array_equal(ops.conv2d(x, w, backend="auto"), ops.conv2d(x, w, backend="fft"))


BAD_INPUTS = [
    (dict(x=(1, 8, 8), w=(3, 3, 3, 4)), ValueError, "`x` must have rank 4"),
    (dict(x=(1, 8, 8, 3), w=(3, 3, 4)), ValueError, "`w` must have rank 4"),
    (dict(x=(1, 8, 8, 3), w=(3, 3, 2, 4)), ValueError, "channel mismatch"),
    (
        dict(x=(1, 8, 8, 4), w=(3, 3, 2, 6), groups=3),
        ValueError,
        "`groups`=3 must divide the input channels",
    ),
    (dict(x=(1, 8, 8, 4), w=(3, 3, 2, 5), groups=2), ValueError, "must divide the output channels"),
    (
        dict(x=(1, 4, 4, 3), w=(7, 7, 3, 4), padding="VALID"),
        ValueError,
        "`w` is larger than the padded input",
    ),
    (dict(x=(1, 8, 8, 3), w=(3, 3, 3, 4), stride=0), ValueError, "`stride` must be positive"),
    (
        dict(x=(1, 8, 8, 3), w=(3, 3, 3, 4), dilation=(1, -1)),
        ValueError,
        "`dilation` must be positive",
    ),
    (dict(x=(1, 8, 8, 3), w=(3, 3, 3, 4), padding="FULL"), ValueError, "unknown string 'FULL'"),
    (
        dict(x=(1, 8, 8, 3), w=(3, 3, 3, 4), padding_mode="edge"),
        ValueError,
        "`padding_mode` must be one of",
    ),
    (dict(x=(1, 8, 8, 3), w=(3, 3, 3, 4), backend="cudnn"), ValueError, "`backend` must be one of"),
    (dict(x=(1, 8, 8, 3), w=(3, 3, 3, 4), backend="winograd", stride=2), ValueError, "F(2x2, 3x3)"),
    (dict(x=(1, 8, 8, 3), w=(3, 3, 3, 4), padding=((1, 1),)), ValueError, "`padding` must be"),
    (
        dict(x=(1, 3, 3, 1), w=(3, 3, 1, 1), padding=3, padding_mode="reflect"),
        ValueError,
        "reflect",
    ),
]


@pytest.mark.parametrize(("kwargs", "error", "fragment"), BAD_INPUTS, ids=lambda v: str(v)[:40])
def test_bad_input_gets_a_clear_error(kwargs, error, fragment):
    kwargs = dict(kwargs)
    x = jnp.zeros(kwargs.pop("x"))
    w = jnp.zeros(kwargs.pop("w"))
    with pytest.raises(error, match=re.escape(fragment)):
        ops.conv2d(x, w, **kwargs)


def test_integer_and_mixed_dtypes_are_rejected():
    with pytest.raises(TypeError, match="`x` must have a floating-point dtype"):
        ops.conv2d(jnp.zeros((1, 4, 4, 1), jnp.int32), jnp.zeros((3, 3, 1, 1)))
    with pytest.raises(TypeError, match="`w` must have a floating-point dtype"):
        ops.conv2d(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1), jnp.int8))
    with pytest.raises(TypeError, match="must share a dtype"):
        ops.conv2d(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1), jnp.bfloat16))


def test_same_padding_rule():
    assert args.same_pads((7,), (4,), (2,), (1,)) == ((1, 2),)
    assert ops.conv_geometry((1, 7, 8, 1), (3, 3, 1, 1), stride=2).out_shape == (1, 4, 4, 1)


def test_add_bias_gradient_accumulates_in_float32():
    rng = np.random.default_rng(0)
    g = jnp.asarray(rng.uniform(0.5, 1.5, (64, 16, 16, 3)), jnp.bfloat16)
    y = jnp.zeros_like(g)
    b = jnp.zeros((3,), jnp.float32)
    dy, db = jax.vjp(ops.add_bias, y, b)[1](g)
    assert dy.dtype == jnp.bfloat16 and db.dtype == jnp.float32
    exact = np.asarray(g, np.float64).sum(axis=(0, 1, 2))
    np.testing.assert_allclose(np.asarray(db), exact, rtol=1e-6)
    # What autodiff of a plain bfloat16 add gives: a bfloat16 sum, off by far more.
    plain = jax.vjp(lambda b: y + b.astype(jnp.bfloat16), b)[1](g)[0]
    assert np.max(np.abs(np.asarray(plain, np.float64) - exact) / exact) > 1e-3
    np.testing.assert_array_equal(ops.add_bias(y, b), y + b.astype(jnp.bfloat16))


def test_strided_xla_input_gradient_is_a_matrix_product_on_cpu():
    # XLA:CPU computes this gradient as a convolution over the output gradient dilated with
    # zeros (stride² the work); on CPUs cnnjax takes col2im(E · Wᵀ) instead, through
    # lax.platform_dependent. Checked: both branches give the exact gradient, each platform's
    # program lowers, and the branches are what they claim (JAX's program, not XLA's text).
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 9, 8, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    geom = ops.conv_geometry(x.shape, w.shape, stride=2)
    g = rng.standard_normal(geom.out_shape).astype(np.float32)
    grad = jax.jit(jax.grad(lambda x, w: jnp.vdot(ops.conv2d(x, w, stride=2), g), (0, 1)))
    rdx, rdw = reference.conv2d_grads(x, w, g, geom.pads, (2, 2), (1, 1), 1)
    bound_dx, bound_dw = _grad_bounds("xla", x, w, g, geom, "zeros")
    dx, dw = grad(x, w)  # this CPU's branch
    reference.assert_within(dx, rdx, bound_dx)
    reference.assert_within(dw, rdw, bound_dw)
    plain = lambda x: jax.lax.conv_general_dilated(
        x, w, (2, 2), geom.pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    reference.assert_within(
        jax.grad(lambda x: jnp.vdot(plain(x), g))(x), rdx, bound_dx
    )  # XLA's own
    for platform in ("cpu", "cuda", "tpu"):
        grad.trace(x, w).lower(lowering_platforms=(platform,))
    names = lambda jaxpr: {e.primitive.name for e in _primitives(jaxpr)}
    conds = [e for e in _primitives(jax.make_jaxpr(grad)(x, w).jaxpr) if e.primitive.name == "cond"]
    (choice,) = [  # the platform choice of the input gradient (the others carry no arithmetic)
        e
        for e in conds
        if any(
            {"dot_general", "conv_general_dilated"} & names(b.jaxpr) for b in e.params["branches"]
        )
    ]
    cpu, other = sorted(
        choice.params["branches"], key=lambda b: "conv_general_dilated" in names(b.jaxpr)
    )
    assert "dot_general" in names(cpu.jaxpr) and "conv_general_dilated" not in names(cpu.jaxpr)
    dilations = [
        [e.params["lhs_dilation"] for e in _primitives(b.jaxpr) if "lhs_dilation" in e.params]
        for b in (cpu, other)
    ]
    assert dilations == [[], [(2, 2)]]  # products only; XLA's zero-dilated gradient


def test_forward_mode_through_strided_convolution_and_bias():
    rng = np.random.default_rng(7)
    x, dx = (rng.standard_normal((2, 9, 8, 3)).astype(np.float32) for _ in range(2))
    w, dw = (rng.standard_normal((3, 3, 3, 4)).astype(np.float32) for _ in range(2))
    b, db = (rng.standard_normal((4,)).astype(np.float32) for _ in range(2))
    f = lambda x, w, b: ops.add_bias(ops.conv2d(x, w, stride=2), b)
    ref = lambda x, w, b: reference.conv2d(x, w, ((1, 1), (0, 1)), (2, 2), (1, 1), 1) + b
    _, tangent = jax.jvp(f, (x, w, b), (dx, dw, db))
    # The conv is bilinear: its tangent is conv(dx, w) + conv(x, dw).
    expected = ref(dx, w, np.zeros_like(b)) + ref(x, dw, np.zeros_like(b)) + db
    assert _rel_err(tangent, expected) <= 1e-5


@pytest.mark.parametrize("outlier", [0.0, 1e6])
def test_fft_error_stays_within_the_documented_bound(outlier):
    """ops.conv's docstring: max |ŷ − y| ≤ (32·log₂L + 2K + Cin + 10)·u·Σ_c ‖x_c‖₂‖w_c,o‖₁,
    against a float64 loop; with an outlier pixel the bound (and the error) grow with it."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 20, 17, 3)).astype(np.float32)
    x[0, 3, 4, 1] += outlier
    w = rng.standard_normal((7, 7, 3, 4)).astype(np.float32)
    got = np.asarray(ops.conv2d(jnp.asarray(x), jnp.asarray(w), backend="fft"))
    want = reference.conv2d(x.astype(np.float64), w, ((3, 3), (3, 3)), (1, 1), (1, 1), 1)
    points = _fft.fast_length(26) * _fft.fast_length(23)  # the padded 26 x 23 image
    factor = reference.fft_factor(points, taps=49, channels=3)
    x_norms = np.sqrt((x.astype(np.float64) ** 2).sum(axis=(1, 2)))  # (N, Cin)
    w_norms = np.abs(w.astype(np.float64)).sum(axis=(0, 1))  # (Cin, Cout)
    bound = factor * x_norms @ w_norms  # (N, Cout)
    error = np.abs(got - want).max(axis=(1, 2))
    assert (error <= bound).all(), (error / bound).max()
    if outlier:  # the outlier's image: errors far from the pixel grow with it, the other's not
        far = np.abs(got[0, 15:, 12:] - want[0, 15:, 12:]).max()
        assert far > 1e-3 and np.abs(got[1] - want[1]).max() < 1e-3


def test_a_non_finite_pixel_spreads_over_its_image_only_under_fft():
    x = np.ones((2, 16, 16, 1), np.float32)
    x[0, 2, 2, 0] = np.nan
    w = np.ones((7, 7, 1, 1), np.float32)
    fft = np.asarray(ops.conv2d(jnp.asarray(x), jnp.asarray(w), backend="fft"))
    xla = np.asarray(ops.conv2d(jnp.asarray(x), jnp.asarray(w), backend="xla"))
    assert np.isnan(fft[0]).all() and np.isfinite(fft[1]).all()
    assert np.isnan(xla[0]).sum() == 6 * 6 and np.isfinite(xla[1]).all()  # windows reaching it
