"""Flax modules and the model zoo."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen

from cnnjax import models, nn, ops, parallel, receptive_field_table
from tests import reference

ALLCNN_PARAMS = {
    "a": (839_242, 1_254_250),
    "b": (885_610, 1_300_618),
    "c": (954_730, 1_369_738),
}


def _abstract_vars(model, shape=(2, 32, 32, 3)):
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), jnp.zeros(shape))


@pytest.mark.parametrize("base", "abc")
def test_allcnn_parameter_counts_are_exact(base):
    small, large = ALLCNN_PARAMS[base]
    for variant, expected in [
        ("model", small),
        ("strided_cnn", small),
        ("convpool_cnn", large),
        ("all_cnn", large),
    ]:
        params = _abstract_vars(models.get_model(f"{variant}_{base}"))["params"]
        assert models.count_params(params) == expected, f"{variant}_{base}"


def test_other_model_sizes():
    assert models.count_params(
        _abstract_vars(models.get_model("small_inception"))["params"]
    ) == pytest.approx(1.65e6, rel=0.01)
    assert 0.9e6 < models.count_params(_abstract_vars(models.get_model("nin"))["params"]) < 1.0e6


class _ConvThenDense(linen.Module):
    @linen.compact
    def __call__(self, x):
        x = linen.Conv(4, (3, 3), padding="VALID", use_bias=False)(x)
        return linen.Dense(5, use_bias=False)(x.reshape(x.shape[0], -1))


def test_count_flops_is_two_per_multiply_add():
    # 3x3x3 -> 4 VALID on 8x8 gives 6x6x4 outputs of 27 multiply-adds, then 144 -> 5 dense.
    expected = 2 * (6 * 6 * 4 * 27) + 2 * (6 * 6 * 4 * 5)
    assert models.count_flops(_ConvThenDense(), (8, 8, 3)) == expected


@pytest.mark.parametrize("name", models.list_models())
@pytest.mark.parametrize("size", [32, 33, 48])
def test_output_shapes_for_several_sizes(name, size):
    # GoogLeNet's auxiliary heads need 65 px (tests/test_imagenet.py); its network does not.
    heads = {"aux_logits": False} if "aux_logits" in models.model_fields(name) else {}
    model = models.get_model(name, num_classes=7, **heads)
    variables = _abstract_vars(model)
    x = jnp.zeros((2, size, size, 3))
    if size != 32 and not models.accepts_any_size(name):
        with pytest.raises(ValueError, match="only the image size it was initialised with"):
            jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
        return
    out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
    assert out.shape == (2, 7) and out.dtype == jnp.float32


def _init(model, shape=(2, 32, 32, 3), seed=0):
    x = jax.random.normal(jax.random.key(seed + 1), shape)
    init = jax.jit(model.init, compiler_options=parallel.init_compiler_options())  # as runs do
    return init(jax.random.key(seed), x), x


def test_all_cnn_c_intermediates_have_documented_names_and_shapes():
    model = models.get_model("all_cnn_c", width=0.25)
    variables, x = _init(model)
    logits, feats = model.apply(variables, x, return_features=True)
    shapes = {k: v.shape for k, v in feats.items()}
    assert list(shapes) == [
        "conv1",
        "conv2",
        "conv3",
        "down1",
        "conv4",
        "conv5",
        "conv6",
        "down2",
        "conv7",
        "conv8",
        "class_map",
        "logits",
    ]
    assert shapes["conv2"] == (2, 32, 32, 24)
    assert shapes["down1"] == (2, 16, 16, 24)
    assert shapes["down2"] == (2, 8, 8, 48)
    assert shapes["conv7"] == (2, 6, 6, 48)  # the VALID seventh convolution: 6x6 before pooling
    assert shapes["class_map"] == (2, 6, 6, 10)
    np.testing.assert_allclose(feats["logits"], logits)
    np.testing.assert_allclose(logits, feats["class_map"].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)


def _convolutions(model, variables, x, monkeypatch):
    """The model's output and every ``ops.conv2d`` call inside it, under one jit: a list of
    (input, kernel, output, keyword arguments), the arrays as float64 NumPy, and the dtype
    each call computed in."""
    calls, static = [], []
    inner = ops.conv2d

    def recording(x, w, **kwargs):
        y = inner(x, w, **kwargs)
        calls.append((x, w, y))
        static.append(kwargs)
        return y

    monkeypatch.setattr(ops, "conv2d", recording)

    def run(variables, x):
        calls.clear()
        static.clear()
        return model.apply(variables, x), list(calls)

    out, arrays = jax.jit(run)(variables, x)
    monkeypatch.undo()
    recorded = [
        (*(np.asarray(a, np.float64) for a in c), kw) for c, kw in zip(arrays, static, strict=True)
    ]
    return out, recorded, [c[0].dtype for c in arrays]


def _exact(x, w, kwargs):
    """The float64 convolution of a recorded call, and its geometry."""
    geom = ops.conv_geometry(
        x.shape,
        w.shape,
        stride=kwargs.get("stride", 1),
        padding=kwargs.get("padding", "SAME"),
        dilation=kwargs.get("dilation", 1),
        groups=kwargs.get("groups", 1),
    )
    mode = kwargs.get("padding_mode", "zeros")
    args = (geom.pads, geom.stride, geom.dilation, geom.groups, mode)
    return reference.conv2d(x, w, *args), args


@pytest.mark.parametrize("name", ["all_cnn_c", "nin", "small_inception"])
def test_every_convolution_of_a_model_is_within_its_backends_bound(name, monkeypatch):
    # Layer by layer: each convolution the model runs, fed the float32 activations its own
    # backend produced, against the float64 convolution of those activations, within the
    # bound tests/reference.py derives for that backend (γ_K Σ|x||w| for direct sums, the
    # documented FFT bound). The layers between are the same code whatever the backend.
    for backend in ["xla", "gemm", "fft"]:
        model = models.get_model(name, width=0.25, backend=backend)
        variables, x = _init(model, (2, 16, 16, 3))
        _, calls, _ = _convolutions(model, variables, x, monkeypatch)
        kernels = [k for k in jax.tree.leaves(variables["params"]) if k.ndim == 4]
        assert len(calls) == len(kernels)  # every convolution was seen
        for xi, w, y, kwargs in calls:
            assert kwargs["backend"] == backend
            exact, args = _exact(xi, w, kwargs)
            reference.assert_within(y, exact, reference.conv_bound(backend, xi, w, *args))


def test_bfloat16_convolutions_are_exact_but_for_rounding(monkeypatch):
    m32 = models.get_model("all_cnn_c", width=0.25, head_relu=False)
    mbf = models.get_model("all_cnn_c", width=0.25, head_relu=False, dtype=jnp.bfloat16)
    variables, x = _init(m32)
    ybf, calls, dtypes = _convolutions(mbf, variables, x, monkeypatch)
    assert ybf.dtype == jnp.float32  # logits come back in float32
    assert jax.tree.leaves(variables)[0].dtype == jnp.float32  # parameters stay float32
    assert dtypes == [jnp.bfloat16] * len(calls)  # every convolution in bfloat16
    # Each one against the exact convolution of its bfloat16 operands: XLA sums bfloat16
    # products in float32 (γ_K at u = 2^-24 of Σ|x||w|), then rounds the sum to bfloat16
    # (2^-8 of its magnitude, bounded by Σ|x||w| too). Summing in bfloat16 itself would
    # not be held by this: with K = 216 terms, γ_K at u = 2^-8 exceeds 5.
    for xi, w, y, kwargs in calls:
        exact, args = _exact(xi, w, kwargs)
        absolute = reference.conv2d(np.abs(xi), np.abs(w), *args)
        terms = w.shape[0] * w.shape[1] * w.shape[2]
        reference.assert_within(y, exact, (reference.gamma(terms) + 2.0**-8) * absolute)


@pytest.mark.parametrize("downsample", ["pool", "stride"])
def test_inception_sites_name_the_layers_that_read_each_module(downsample):
    model = models.get_model("googlenet_small", width=0.25, downsample=downsample)
    shape = (1, 16, 16, 3)
    variables = _abstract_vars(model, shape)
    params = variables["params"]
    _, feats = jax.eval_shape(
        lambda v, x: model.apply(v, x, return_features=True), variables, jnp.zeros(shape)
    )
    sites = models.inception_sites(model)
    assert [s.name for s in sites] == ["inception3a", "inception3b", "inception4a"]
    for site in sites:
        channels = feats[site.name].shape[-1]
        assert site.module.features == channels
        assert [site.module.branch_channels(b).stop for b in nn.INCEPTION_BRANCHES][-1] == channels
        for reader in site.readers:  # a kernel of the network that takes those channels
            kernel = params
            for key in reader.kernel:
                kernel = kernel[key]
            assert kernel.shape[-2 if kernel.ndim == 4 else 0] == channels
    # What reads each module: the next module's four input convolutions, or the strided
    # convolution that ends a stage, or the classifier.
    assert [r.kernel[1] for r in sites[0].readers] == list(nn.INCEPTION_INPUT_CONVS)
    ends = [sites[1].readers[0], sites[2].readers[0]]
    if downsample == "stride":
        assert [(r.kernel[0], r.stride) for r in ends] == [("down1", 2), ("down2", 2)]
    else:
        assert [r.kernel[0] for r in ends] == ["inception4a", "head"]
    with pytest.raises(ValueError, match=r"`model` \(AllCNN\) does not list its Inception"):
        models.inception_sites(models.get_model("all_cnn_c"))


def test_initialisation_is_deterministic():
    model = models.get_model("model_c", width=0.25)
    a, _ = _init(model, seed=3)
    b, _ = _init(model, seed=3)
    c, _ = _init(model, seed=4)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.allclose(
        a["params"]["conv1"]["conv"]["kernel"], c["params"]["conv1"]["conv"]["kernel"]
    )


def test_inception_branch_widths_add_up_and_5x5_is_real():
    module = nn.Inception(64, 96, 128, 16, 32, 32)
    x = jnp.ones((1, 8, 8, 192))
    variables = jax.jit(module.init, compiler_options=parallel.init_compiler_options())(
        jax.random.key(0), x
    )
    y = jax.jit(module.apply)(variables, x)
    assert y.shape == (1, 8, 8, 256) == (1, 8, 8, module.features)
    assert variables["params"]["branch5x5"]["conv"]["kernel"].shape == (5, 5, 16, 32)
    model = models.get_model("googlenet_small", width=0.25)
    variables, xs = _init(model, (1, 16, 16, 3))
    _, feats = jax.jit(model.apply, static_argnames="return_features")(
        variables, xs, return_features=True
    )
    assert feats["inception3a"].shape[-1] == 16 + 32 + 8 + 8  # 256 x 0.25
    assert feats["inception3b"].shape[-1] == 32 + 48 + 24 + 16  # 480 x 0.25


def test_batch_norm_training_updates_statistics():
    model = models.get_model("small_inception", width=0.25)
    variables, x = _init(model)
    apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
    y, updates = apply(variables, x, train=True, mutable=("batch_stats",))
    assert y.shape == (2, 10)
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(updates["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))


def test_dropout_is_active_only_in_training():
    model = models.get_model("model_c", width=0.25)
    variables, x = _init(model)
    eval1, eval2 = model.apply(variables, x), model.apply(variables, x)
    np.testing.assert_array_equal(eval1, eval2)
    t1 = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    t2 = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(t1, t2)


def test_downsample_override_walks_the_variant_grid():
    strided = models.get_model("model_c", downsample="stride")
    assert strided == models.get_model("strided_cnn_c")
    with pytest.raises(ValueError, match="`downsample` must be one of"):
        jax.eval_shape(
            lambda x: models.get_model("nin", downsample="avg").init(jax.random.key(0), x),
            jnp.zeros((1, 32, 32, 3)),
        )


def test_registry_errors_list_the_options():
    with pytest.raises(
        ValueError, match="unknown model 'resnet152'; available: airbench94, all_cnn_a"
    ):
        models.get_model("resnet152")
    with pytest.raises(ValueError, match=r"unknown override\(s\) \['depth'\] .* valid: base"):
        models.get_model("all_cnn_c", depth=3)


def test_model_receptive_field_table():
    model = models.get_model("all_cnn_c")
    variables = jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype), _abstract_vars(model, (1, 32, 32, 3))
    )
    rows = receptive_field_table(
        lambda x: model.apply(variables, x, return_features=True)[1], (1, 32, 32, 3)
    )
    by_name = {r.name: r.field for r in rows}
    assert by_name["conv3"].size == (7, 7) and by_name["conv3"].stride == (2, 2)
    assert by_name["class_map"].size == (27, 27) and by_name["class_map"].stride == (4, 4)
    assert by_name["logits"].is_global


def test_model_rejects_bad_input():
    model = models.get_model("all_cnn_c", width=0.25)
    with pytest.raises(
        ValueError, match=r"`x` for AllCNN must be a batch of images \(N, H, W, C\)"
    ):
        model.init(jax.random.key(0), jnp.zeros((32, 32, 3)))
    with pytest.raises(TypeError, match="floating-point"):
        model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.uint8))


@pytest.mark.parametrize("name", ["all_cnn_c", "nin", "small_inception", "googlenet_small"])
def test_every_convolution_gets_the_model_settings(name):
    # Including the 3x3 stride-2 convolutions that replace pooling.
    model = models.get_model(name, width=0.25, downsample="stride", param_dtype=jnp.bfloat16)
    # Flax's BatchNorm multiplies float32 activations by bfloat16 scales, which strict
    # promotion (conftest) rejects; the library itself is fine under standard promotion.
    with jax.numpy_dtype_promotion("standard"):
        variables = _abstract_vars(model)
    dtypes = {leaf.dtype for leaf in jax.tree.leaves(variables["params"])}
    assert dtypes == {jnp.dtype(jnp.bfloat16)}


def test_allcnn_activation_override_changes_every_hidden_layer():
    relu = models.get_model("all_cnn_c", width=0.25, dropout=0.0, input_dropout=0.0)
    gelu = relu.clone(activation="gelu")
    variables, x = _init(relu)
    _, f_relu = relu.apply(variables, x, return_features=True)
    _, f_gelu = gelu.apply(variables, x, return_features=True)
    assert float(jnp.min(f_relu["conv1"])) == 0.0  # ReLU never goes below zero
    assert float(jnp.min(f_gelu["conv1"])) < 0.0  # GELU does, down to about -0.17
    assert float(jnp.min(f_gelu["conv1"])) > -0.2
    # Same parameters, same first convolution: GELU(z) = z·Φ(z) on the same pre-activations.
    z = nn.Conv(24, 3, padding=1).apply({"params": variables["params"]["conv1"]["conv"]}, x)
    np.testing.assert_allclose(f_gelu["conv1"], jax.nn.gelu(z), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="`activation` must be one of"):
        models.get_model("all_cnn_c", activation="tanh").init(jax.random.key(0), x)


def test_conv_backend_keyword_still_works_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="now spelled `backend`"):
        model = models.get_model("all_cnn_c", conv_backend="fft")
    assert model.backend == "fft"


def test_inception_returns_its_branches_in_concatenation_order():
    block = nn.Inception(4, 3, 5, 2, 3, 6)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 7))
    variables = jax.jit(block.init)(jax.random.key(1), x)
    apply = jax.jit(block.apply, static_argnames="return_branches")  # one program each
    out, branches = apply(variables, x, return_branches=True)
    assert list(branches) == ["1x1", "3x3", "5x5", "pool"]
    assert [b.shape[-1] for b in branches.values()] == [4, 5, 3, 6]
    np.testing.assert_array_equal(out, jnp.concatenate(list(branches.values()), axis=-1))
    np.testing.assert_array_equal(out, apply(variables, x))
    for name, branch in branches.items():
        np.testing.assert_array_equal(out[..., block.branch_channels(name)], branch)
    with pytest.raises(ValueError, match=r"must be one of 1x1, 3x3, 5x5, pool .*got '7x7'"):
        block.branch_channels("7x7")
