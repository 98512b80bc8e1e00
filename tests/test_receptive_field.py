"""Receptive-field analysis: published reference values and analytic == empirical."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import (
    empirical_receptive_field,
    last_spatial_field,
    ops,
    receptive_field,
    receptive_field_table,
)
from cnnjax.receptive_field import ReceptiveFieldError, format_table


def vgg16_features(x):
    """VGG-16 convolutional stack up to pool5 (weights do not matter for the analysis)."""
    for convs in (2, 2, 3, 3, 3):
        for _ in range(convs):
            x = jax.nn.relu(ops.conv2d(x, jnp.ones((3, 3, x.shape[-1], 8)), padding=1))
        x = ops.max_pool(x, 2)
    return x


def test_vgg16_pool5_matches_published_values():
    # google-research/receptive_field reports 212 / 32 / 90 for vgg_16 up to pool5.
    rf = receptive_field(vgg16_features, (1, 224, 224, 3))
    assert rf.size == (212, 212)
    assert rf.stride == (32, 32)
    assert rf.padding == (90, 90)
    assert not rf.is_global


# Each layer: ("conv", kernel, stride, dilation, padding) or (pool kind, window, stride, padding)
STACKS = {
    "convs": [("conv", 3, 1, 1, "VALID"), ("conv", 5, 1, 1, "SAME"), ("conv", 3, 1, 1, 1)],
    "strided": [("conv", 3, 2, 1, "SAME"), ("conv", 3, 2, 1, "VALID"), ("conv", 1, 1, 1, 0)],
    "dilated": [("conv", 3, 1, 2, "SAME"), ("conv", 3, 1, 4, "VALID"), ("conv", 2, 1, 3, 0)],
    "pools": [
        ("conv", 3, 1, 1, "SAME"),
        ("max", 3, 2, 1),
        ("conv", 3, 1, 1, "VALID"),
        ("avg", 2, 2, 0),
    ],
    "mixed": [
        ("conv", 5, 2, 1, 2),
        ("max", 2, 2, 0),
        ("conv", 3, 1, 2, "SAME"),
        ("conv", 3, 2, 1, 0),
    ],
}


def _build(layers, channels=3):
    params, cin = [], channels
    for i, layer in enumerate(layers):
        if layer[0] == "conv":
            k = layer[1]
            params.append(jax.random.normal(jax.random.key(i), (k, k, cin, 4)))
            cin = 4
        else:
            params.append(None)

    def fn(params, x):
        for layer, w in zip(layers, params, strict=True):
            if layer[0] == "conv":
                _, _, s, d, pad = layer
                x = jnp.tanh(ops.conv2d(x, w, stride=s, dilation=d, padding=pad))
            else:
                kind, win, s, pad = layer
                x = (ops.max_pool if kind == "max" else ops.avg_pool)(x, win, s, pad)
        return x

    return fn, params


@pytest.mark.parametrize("name", list(STACKS))
def test_analytic_equals_empirical(name):
    fn, params = _build(STACKS[name])
    shape = (1, 61, 57, 3)
    rf = receptive_field(lambda x: fn(params, x), shape)
    out_shape = jax.eval_shape(lambda x: fn(params, x), jnp.zeros(shape)).shape
    index = tuple(n // 2 for n in out_shape[1:3])
    emp = empirical_receptive_field(fn, params, shape, index=index, samples=6)
    analytic = rf.input_range(index)
    assert all(0 <= a and b < n for (a, b), n in zip(analytic, shape[1:3], strict=True))
    assert (emp.start, emp.stop) == tuple(zip(*analytic, strict=True))
    assert emp.size == rf.size


def test_inception_branches_take_the_union():
    def inception(x):
        c = x.shape[-1]
        one = ops.conv2d(x, jnp.ones((1, 1, c, 2)))
        three = ops.conv2d(ops.conv2d(x, jnp.ones((1, 1, c, 2))), jnp.ones((3, 3, 2, 2)))
        five = ops.conv2d(x, jnp.ones((5, 5, c, 2)))
        pool = ops.conv2d(ops.max_pool(x, 3, 1, "SAME"), jnp.ones((1, 1, c, 2)))
        return jnp.concatenate([one, three, five, pool], axis=-1)

    rf = receptive_field(inception, (1, 16, 16, 3))
    assert (rf.size, rf.stride, rf.padding) == ((5, 5), (1, 1), (2, 2))
    stacked = receptive_field(lambda x: inception(inception(x)), (1, 16, 16, 3))
    assert stacked.size == (9, 9)


def test_misaligned_branches_and_unknown_primitives_raise():
    def misaligned(x):
        a = ops.conv2d(x, jnp.ones((3, 3, 3, 2)), stride=2, padding="VALID")  # 7x7, stride 2
        b = ops.conv2d(x, jnp.ones((9, 9, 3, 2)), padding="VALID")  # 7x7, stride 1
        return jnp.concatenate([a, b], axis=-1)

    with pytest.raises(ReceptiveFieldError, match="misaligned branches: effective strides"):
        receptive_field(misaligned, (1, 15, 15, 3))
    with pytest.raises(ReceptiveFieldError, match="`sort`"):
        receptive_field(lambda x: jnp.sort(x, axis=1), (1, 8, 8, 3))


def test_global_pooling_and_table():
    def net(x):
        a = jax.nn.relu(ops.conv2d(x, jnp.ones((3, 3, 3, 4)), stride=2))
        b = ops.max_pool(a, 2)
        return {"conv1": a, "pool1": b, "logits": ops.global_avg_pool(b)}

    rows = receptive_field_table(net, (1, 32, 32, 3))
    assert [r.name for r in rows] == ["conv1", "pool1", "logits"]
    assert rows[0].field.size == (3, 3) and rows[1].field.size == (5, 5)
    assert rows[2].field.is_global and rows[2].shape == (1, 4)
    table = format_table(rows)
    assert "| pool1 | 1x8x8x4 | 5x5 | 4x4 | 0x0 |" in table  # SAME with stride 2 pads (0, 1)
    assert "(global)" in table


def test_flax_model_apply_is_analysable():
    import flax.linen as nn

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
            x = nn.max_pool(x, (2, 2), (2, 2))
            return nn.Conv(5, (3, 3), padding="VALID")(x)

    model = Tiny()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    rf = receptive_field(lambda x: model.apply(variables, x), (1, 32, 32, 3))
    assert rf.size == (13, 13) and rf.stride == (4, 4)  # 3 -> 3+1*2 -> 5+2*4


def test_last_spatial_field_of_a_zoo_network():
    from cnnjax import models

    # All-CNN-C: 3x3 convolutions at strides 1, 1, 2, 1, 1, 2, 1 (the 3x3 stride-2 ones in
    # place of pooling), then two 1x1: r = 1 + 2 (1 + 1 + 1 + 2 + 2 + 2 + 4) = 27, stride 4;
    # the class map after the 1x1 convolutions is the last spatial map.
    rf = last_spatial_field(models.get_model("all_cnn_c"), (1, 32, 32, 3))
    assert rf.size == (27, 27) and rf.stride == (4, 4)
    with pytest.raises(ReceptiveFieldError, match="every layer sees the whole image"):
        last_spatial_field(models.get_model("sharing_dense"), (1, 16, 16, 3))


def test_bad_input_shape():
    with pytest.raises(ValueError, match="`input_shape` must be"):
        receptive_field(lambda x: x, (4, 3))
    np.testing.assert_equal(receptive_field(lambda x: x, (1, 5, 3)).size, (1,))


def test_reshape_keeps_spatial_axes_of_size_one():
    # (N, 1, 1, K, C) -> (N, 1, 1, K·C), as an im2col product onto a 1x1 map flattens its
    # patches: the two spatial axes of size 1 must stay spatial (not read as merged).
    field = receptive_field(lambda x: x[..., None, :].reshape(1, 1, 1, -1) * 2.0, (1, 1, 1, 3))
    assert not field.is_global and field.size == (1, 1) and field.stride == (1, 1)
