"""The airbench94 network and the pieces of its recipe, each against an independent reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models, ops, parallel
from cnnjax.data import patch_whitening
from cnnjax.nn import initializers
from tests import reference


def _patch_rows(images, k):
    # Every k×k patch, one at a time (the slow, obvious way), flattened as (kh, kw, C), over
    # sqrt(number of patches): their Gram matrix is the patches' second moment.
    n, h, w, _ = images.shape
    rows = [
        images[b, i : i + k, j : j + k, :].reshape(-1)
        for b in range(n)
        for i in range(h - k + 1)
        for j in range(w - k + 1)
    ]
    return np.asarray(rows, np.float64) / np.sqrt(len(rows))


def _patch_covariance(images, k):
    p = _patch_rows(images, k)
    return p.T @ p


def test_patch_whitening_whitens_patches():
    rng = np.random.default_rng(0)
    # Correlated channels and neighbouring pixels, as in natural images.
    base = rng.standard_normal((6, 12, 12, 3))
    images = base + 0.8 * np.roll(base, 1, axis=2) + 0.5 * base[..., ::-1]
    kernel = patch_whitening(images, 2, eps=1e-9)
    assert kernel.shape == (2, 2, 3, 24) and kernel.dtype == np.float32
    np.testing.assert_array_equal(kernel[..., 12:], -kernel[..., :12])
    v = kernel[..., :12].reshape(12, 12).astype(np.float64)
    cov = _patch_covariance(images, 2)
    # The filters are the whitening transform: Vᵀ Σ V = diag(λ / (λ + eps)), I up to eps / λ,
    # computed in float64 and rounded to float32 (|δV| <= 2^-24 |V|, which moves Vᵀ Σ V by at
    # most 2 · 2^-24 |V|ᵀ |Σ| |V| to first order; a factor 2 covers the second).
    u, lam_min = 2.0**-24, np.linalg.eigvalsh(cov).min()
    bound = 4 * u * np.abs(v).T @ np.abs(cov) @ np.abs(v) + 1e-9 / lam_min
    assert (np.abs(v.T @ cov @ v - np.eye(12)) <= bound).all()
    # In order of decreasing variance: each filter's norm is 1/sqrt(λ), so norms increase.
    norms = np.linalg.norm(v, axis=0)
    assert np.all(np.diff(norms) > 0)
    # Each filter's largest entry is positive: the same kernel on every machine.
    assert np.all(v[np.argmax(np.abs(v), axis=0), np.arange(12)] > 0)
    # As a convolution: the first 12 output channels have identity second moment.
    out = np.asarray(ops.conv2d(images.astype(np.float32), kernel, padding="VALID"))
    n = 6 * 11 * 11
    second = out[..., :12].reshape(-1, 12).T @ out[..., :12].reshape(-1, 12) / n
    # In float32: the images rounded (2^-24 each), each output a sum of 12 products (γ_12),
    # the moment a float32 sum of n products of two outputs (γ_n): relative to the same moment
    # of |patches| |V|, on top of the bound above.
    patches = np.abs(np.sqrt(n) * _patch_rows(images, 2)) @ np.abs(v)
    budget = 2 * (u + reference.gamma(12)) + reference.gamma(n)
    assert (np.abs(second - np.eye(12)) <= bound + budget * patches.T @ patches / n).all()


def test_patch_whitening_eps_damps_small_eigenvalues_and_checks_input():
    rng = np.random.default_rng(1)
    images = rng.standard_normal((4, 8, 8, 3))
    lam = np.linalg.eigvalsh(_patch_covariance(images, 3))[::-1]
    kernel = patch_whitening(images, 3, eps=0.5)
    norms = np.linalg.norm(kernel[..., :27].reshape(27, 27), axis=0)
    np.testing.assert_allclose(norms, 1 / np.sqrt(lam + 0.5), rtol=1e-5)
    with pytest.raises(ValueError, match=r"`images` must be \(N, H, W, C\) with H >= 3"):
        patch_whitening(images[:, :2], 3)


def test_partial_identity_passes_input_channels_through():
    key = jax.random.key(0)
    init = initializers.partial_identity()
    kernel = init(key, (3, 3, 4, 6))
    x = jax.random.normal(jax.random.key(1), (2, 7, 7, 4))
    y = ops.conv2d(x, kernel, padding=1)
    np.testing.assert_allclose(y[..., :4], x, atol=1e-6)  # channels 0-3 copy the input
    assert float(jnp.std(kernel[..., 4:])) > 0  # the rest is the base initialiser
    # Fewer outputs than inputs: every output channel is an identity of its input channel.
    narrow = init(key, (3, 3, 5, 2))
    np.testing.assert_allclose(ops.conv2d(x[..., :2], narrow[:, :, :2], padding=1), x[..., :2])
    np.testing.assert_array_equal(narrow[:, :, 2:], 0.0)


def test_uniform_fan_in_matches_pytorch_bound():
    kernel = initializers.uniform_fan_in()(jax.random.key(0), (3, 3, 64, 256))
    bound = 1 / np.sqrt(3 * 3 * 64)
    assert float(jnp.max(jnp.abs(kernel))) <= bound
    assert float(jnp.max(jnp.abs(kernel))) > 0.99 * bound
    assert float(jnp.std(kernel)) == pytest.approx(bound / np.sqrt(3), rel=0.01)


AIRBENCH_PARAMS = {
    "pool": 1_971_640,
    "avgpool": 1_971_640,
    "stride": 1_971_640,
    "extra_stride": 3_188_152,
    "blurpool": 1_971_640,
}


@pytest.mark.parametrize("downsample", sorted(AIRBENCH_PARAMS))
def test_airbench94_shapes_and_parameter_count(downsample):
    model = models.get_model("airbench94", downsample=downsample)
    x = jnp.zeros((2, 32, 32, 3))
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    params = variables["params"]
    # whiten 2·2·3·24 + 24; blocks 3·3·(24·64 + 64·64 + 64·256 + 256·256 + 2·256·256) + BN
    # biases 2·(64 + 256 + 256); head 256·10 (and an extra 3×3 conv per block when asked).
    assert models.count_params(params) == AIRBENCH_PARAMS[downsample]
    assert "scale" not in params["block1_bn1"]  # BatchNorm's scale is frozen at 1: no param
    assert params["head"]["kernel"].shape == (256, 10) and "bias" not in params["head"]
    logits, feats = jax.eval_shape(
        lambda v, x: model.apply(v, x, return_features=True), variables, x
    )
    assert logits.shape == (2, 10)
    side = (15, 7, 3) if downsample in ("pool", "avgpool") else (16, 8, 4)
    assert [feats[f"block{i}"].shape[1] for i in (1, 2, 3)] == list(side)


def test_airbench94_forward_matches_a_hand_written_reference():
    model = models.get_model("airbench94", width=0.25)
    x = jax.random.normal(jax.random.key(2), (3, 20, 20, 3))
    init = jax.jit(model.init, compiler_options=parallel.init_compiler_options())
    variables = init(jax.random.key(0), x)
    gelu = lambda z: jax.nn.gelu(z, approximate=False)

    def bn(z):  # batch statistics (train mode), no scale
        return (z - z.mean((0, 1, 2))) / jnp.sqrt(z.var((0, 1, 2)) + 1e-12)

    def conv(z, w, pad):
        return jax.lax.conv_general_dilated(
            z, w, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    # Both in float64: the network runs in its input's dtype up to the classifier, which casts
    # its pooled features to float32 and multiplies in float32.
    with jax.enable_x64(True):
        p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
        x64 = np.asarray(x, np.float64)
        z = gelu(conv(x64, p["whiten"]["kernel"], "VALID") + p["whiten"]["bias"])
        for i in (1, 2, 3):
            z = conv(z, p[f"block{i}_conv1"]["kernel"], "SAME")
            z = jax.lax.reduce_window(z, -np.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
            z = gelu(bn(z) + p[f"block{i}_bn1"]["bias"])
            z = conv(z, p[f"block{i}_conv2"]["kernel"], "SAME")
            z = gelu(bn(z) + p[f"block{i}_bn2"]["bias"])
        pooled, head = np.asarray(z.max((1, 2))), p["head"]["kernel"]
        apply = jax.jit(model.apply, static_argnames=("train", "mutable"))  # one program
        with jax.numpy_dtype_promotion("standard"):  # Flax's BatchNorm mixes in float32
            logits, _ = apply(jax.tree.map(lambda a: np.asarray(a, np.float64), variables), x64,
                          train=True, mutable=("batch_stats",))  # fmt: skip
    # The float32 classifier: the features rounded (2^-24), C products summed (γ_C), the scale
    # applied (2^-24), each relative to |pooled| |W| / 9; the float64 bodies agree to ~1e-13.
    bound = (
        (2 * reference.U32 + reference.gamma(head.shape[0]) + 1e-12)
        * np.abs(pooled)
        @ np.abs(head)
        / 9
    )
    error = np.abs(np.asarray(logits, np.float64) - pooled @ head / 9)
    assert (error <= bound).all(), (error / bound).max()


def test_airbench94_rejects_unknown_downsampling():
    model = models.get_model("airbench94", downsample="avg")
    with pytest.raises(ValueError, match="`downsample` must be one of"):
        model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
