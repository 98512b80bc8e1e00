"""ImageNet-class networks (GoogLeNet, ResNet-18/34/50), their recipe, top-5 accuracy and the
CPU path for convolutions onto tiny maps."""

import json
import os

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models, ops, receptive_field
from cnnjax.data import Normalization, folders
from cnnjax.train import ConfigError, StepConfig, train_and_evaluate
from cnnjax.train import validate_config as validate
from cnnjax.train.step import TrainState, eval_means, eval_step, loss_and_grads
from experiments.configs import imagenet
from tests import reference


def _params(name, size=224, **overrides):
    model = models.get_model(name, num_classes=1000, **overrides)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)["params"]


@pytest.mark.parametrize(
    ("name", "torchvision"),
    [("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032)],
)
def test_resnet_parameter_counts_equal_torchvision(name, torchvision):
    assert models.count_params(_params(name)) == torchvision
    # Pooling and blurring add no parameters; "stride" replaces the stem's max-pool by a
    # 3x3 convolution 64 -> 64 without bias and its BatchNorm (scale and shift).
    assert models.count_params(_params(name, downsample="pool")) == torchvision
    assert models.count_params(_params(name, downsample="blurpool")) == torchvision
    stride = models.count_params(_params(name, downsample="stride"))
    assert stride == torchvision + 3 * 3 * 64 * 64 + 2 * 64


def _googlenet_count(batch_norm: bool, aux: bool, classes: int = 1000) -> int:
    """GoogLeNet's parameters from Table 1 of Szegedy et al., written out here."""

    def conv(k, cin, cout):  # a bias per channel, or BatchNorm's scale and shift instead
        return k * k * cin * cout + (2 * cout if batch_norm else cout)

    def dense(cin, cout):
        return cin * cout + cout

    def inception(cin, c1, r3, c3, r5, c5, pp):
        parts = conv(1, cin, c1) + conv(1, cin, r3) + conv(3, r3, c3)
        return parts + conv(1, cin, r5) + conv(5, r5, c5) + conv(1, cin, pp), c1 + c3 + c5 + pp

    total = conv(7, 3, 64) + conv(1, 64, 64) + conv(3, 64, 192)
    cin, outputs = 192, {}
    for name, widths in [
        ("3a", (64, 96, 128, 16, 32, 32)),
        ("3b", (128, 128, 192, 32, 96, 64)),
        ("4a", (192, 96, 208, 16, 48, 64)),
        ("4b", (160, 112, 224, 24, 64, 64)),
        ("4c", (128, 128, 256, 24, 64, 64)),
        ("4d", (112, 144, 288, 32, 64, 64)),
        ("4e", (256, 160, 320, 32, 128, 128)),
        ("5a", (256, 160, 320, 32, 128, 128)),
        ("5b", (384, 192, 384, 48, 128, 128)),
    ]:
        n, cin = inception(cin, *widths)
        total, outputs[name] = total + n, cin
    total += dense(1024, classes)
    if aux:  # on 4a (512 channels) and 4d (528): 1x1 conv 128, FC 4*4*128 -> 1024, FC
        for cin in (outputs["4a"], outputs["4d"]):
            total += conv(1, cin, 128) + dense(4 * 4 * 128, 1024) + dense(1024, classes)
    return total


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("aux", [False, True])
def test_googlenet_parameter_count_is_table_1(batch_norm, aux):
    params = _params("googlenet", batch_norm=batch_norm, aux_logits=aux)
    assert models.count_params(params) == _googlenet_count(batch_norm, aux)


def _field(layers):
    """Receptive field size and stride after ``layers`` [(kernel, stride), ...] in a chain."""
    size, jump = 1, 1
    for k, s in layers:
        size, jump = size + (k - 1) * jump, jump * s
    return size, jump


def test_receptive_fields_of_every_stage():
    # The widest path, written out: ResNet-50's bottlenecks grow the field only in their 3x3
    # convolution (stride 2 in the first block of stages 2-4); GoogLeNet's modules in their
    # 5x5 branch, and the 3x3/2 max-pools between stages.
    stem = [(7, 2), (3, 2)]
    stages = [
        [(3, 1)] * 3,
        [(3, 2)] + [(3, 1)] * 3,
        [(3, 2)] + [(3, 1)] * 5,
        [(3, 2)] + [(3, 1)] * 2,
    ]
    expected, chain = {"pool1": _field(stem)}, list(stem)
    for i, stage in enumerate(stages, start=1):
        chain += stage
        expected[f"stage{i}"] = _field(chain)
    assert expected["stage4"] == (427, 32)
    _check_fields("resnet50", expected)

    chain, expected = [(7, 2), (3, 2), (1, 1), (3, 1), (3, 2)], {}
    expected["pool2"] = _field(chain)
    for module in ("3a", "3b", "pool3", "4a", "4b", "4c", "4d", "4e", "pool4", "5a", "5b"):
        chain.append((3, 2) if module.startswith("pool") else (5, 1))
        expected[module if module.startswith("pool") else f"inception{module}"] = _field(chain)
    _check_fields("googlenet", expected, aux_logits=False)


def _check_fields(name, expected, **overrides):
    model = models.get_model(name, num_classes=10, **overrides)
    shape = (1, 224, 224, 3)
    abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), jnp.zeros(shape))
    variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract)
    fields = receptive_field(lambda x: model.apply(variables, x, return_features=True)[1], shape)
    for layer, (size, stride) in expected.items():
        assert (fields[layer].size, fields[layer].stride) == ((size,) * 2, (stride,) * 2), layer


def test_googlenet_auxiliary_heads_train_only():
    model = models.get_model("googlenet", num_classes=7, width=0.125, batch_norm=True)
    x = jax.random.normal(jax.random.key(1), (2, 65, 65, 3))
    # Values drawn in NumPy, so that only the evaluation below compiles: small weights, and
    # BatchNorm statistics in [0.5, 1.5] (valid variances).
    rng = np.random.default_rng(0)
    abstract = jax.eval_shape(model.init, jax.random.key(0), x)
    variables = {
        "params": jax.tree.map(
            lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), abstract["params"]
        ),
        "batch_stats": jax.tree.map(
            lambda s: rng.uniform(0.5, 1.5, s.shape).astype(s.dtype), abstract["batch_stats"]
        ),
    }
    assert {"aux1", "aux2"} <= set(variables["params"])
    # 65 px: the 1/16 map is 5x5, pooled 5x5/3 to 1x1 of 128 * 0.125 channels.
    assert variables["params"]["aux1"]["fc"]["kernel"].shape == (1 * 1 * 16, 128)
    logits, updates = jax.eval_shape(
        lambda v, x: model.apply(
            v,
            x,
            train=True,
            mutable=["batch_stats", "aux_logits"],
            rngs={"dropout": jax.random.key(2)},
        ),
        variables,
        x,
    )
    assert logits.shape == (2, 7)
    assert {k: v[0].shape for k, v in updates["aux_logits"].items()} == {
        "aux1_logits": (2, 7),
        "aux2_logits": (2, 7),
    }
    # At evaluation the heads are not computed: NaN in all their parameters changes nothing,
    # and without them the parameters are those of the network built with aux_logits=False.
    spoiled = jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.full_like(v, jnp.nan) if "aux" in jax.tree_util.keystr(path) else v,
        variables,
    )
    apply = jax.jit(model.apply)
    np.testing.assert_array_equal(apply(variables, x), apply(spoiled, x))
    assert np.all(np.isfinite(apply(spoiled, x)))
    plain = models.get_model(
        "googlenet", num_classes=7, width=0.125, batch_norm=True, aux_logits=False
    )
    shapes = lambda tree: jax.tree.map(lambda v: v.shape, tree)
    without = {
        col: {k: v for k, v in tree.items() if not k.startswith("aux")}
        for col, tree in variables.items()
    }
    assert shapes(without) == shapes(jax.eval_shape(plain.init, jax.random.key(0), x))


class _TwoHeads(linen.Module):
    """A linear classifier that records two auxiliary heads in training, as GoogLeNet does."""

    @linen.compact
    def __call__(self, x, train=False):
        x = x.reshape(x.shape[0], -1)
        if train:
            self.sow("aux_logits", "a_logits", linen.Dense(3, name="a")(x))
            self.sow("aux_logits", "b_logits", linen.Dense(3, name="b")(x))
        elif self.is_initializing():
            linen.Dense(3, name="a")(x), linen.Dense(3, name="b")(x)
        return linen.Dense(3, name="main")(x)


def test_auxiliary_losses_join_the_loss_with_their_weight():
    model = _TwoHeads()
    x = jax.random.normal(jax.random.key(0), (4, 2, 2, 1))
    y = jnp.array([0, 1, 2, 1])
    params = model.init(jax.random.key(1), x)["params"]
    norm = Normalization(1.0, (0.0,), (1.0,))
    cfg = StepConfig(num_classes=3, num_train=4, batch_size=4, norm=norm, aux_loss_weight=0.3)
    _, _, metrics = loss_and_grads(model, cfg, params, {}, x, y, jax.random.key(2))

    flat = np.asarray(x, np.float64).reshape(4, -1)
    logits = {
        k: flat @ np.asarray(params[k]["kernel"]) + np.asarray(params[k]["bias"]) for k in "ab"
    }
    logits["main"] = flat @ np.asarray(params["main"]["kernel"]) + np.asarray(
        params["main"]["bias"]
    )

    def cross_entropy(z):
        z = z - z.max(-1, keepdims=True)
        return np.mean(np.log(np.exp(z).sum(-1)) - z[np.arange(4), np.asarray(y)])

    expected = cross_entropy(logits["main"]) + 0.3 * (
        cross_entropy(logits["a"]) + cross_entropy(logits["b"])
    )
    # Against float64: the float32 logits are 4-term products (error <= 4u·Σ|x||w|, under 1e-6
    # for these values of order 1, u = 2^-24) and each cross-entropy is a 3-class log-sum-exp
    # (a few u); the weighted sum of three stays below 1e-5 relative, whatever the CPU's order.
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)


class _Logits(linen.Module):
    """The images are the logits (N, 1, 1, classes) -> (N, classes)."""

    @linen.compact
    def __call__(self, x, train=False):
        return x.reshape(x.shape[0], -1)


def test_top5_accuracy_counts_labels_ranked_in_the_first_five():
    rng = np.random.default_rng(0)
    classes, n = 12, 50
    logits = rng.standard_normal((n, classes)).astype(np.float32)
    labels = rng.integers(0, classes, n).astype(np.int32)
    labels[-3:] = -1  # padding rows are not counted
    norm = Normalization(1.0, (0.0,) * classes, (1.0,) * classes)
    cfg = StepConfig(num_classes=classes, num_train=n, batch_size=n, norm=norm)
    state = _state()
    sums = eval_step(state, logits[:, None, None, :], labels, model=_Logits(), cfg=cfg)
    valid = labels >= 0
    top5 = np.argsort(-logits, axis=-1)[:, :5]
    expected = sum(int(labels[i] in top5[i]) for i in range(n) if valid[i])
    assert int(sums["correct_top5"]) == expected
    means = eval_means(jax.device_get(sums))
    assert means["top5_accuracy"] == expected / valid.sum()
    assert means["accuracy"] == np.mean(np.argmax(logits, -1)[valid] == labels[valid])


def _state():
    return TrainState(
        step=jnp.zeros((), jnp.int32), params={}, batch_stats={}, opt_state=(), averages={}
    )


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pads"),
    [(2, 3, 1, 1), (4, 3, 2, 1), (1, 3, 1, 1), (7, 7, 3, 0), (3, 1, 2, 0)],
)
def test_convolutions_onto_tiny_maps_match_float64(size, kernel, stride, pads):
    # Outputs of at most 2x2 take the CPU's im2col product; values and both gradients against
    # the float64 loops. Bound: a float32 sum of K products is within K·u·Σ|x||w| of the exact
    # one (K terms, u = 2^-24), so each output is checked against |x| * |w| in float64.
    rng = np.random.default_rng(size + kernel)
    x = rng.standard_normal((3, size, size, 24)).astype(np.float32)
    w = rng.standard_normal((kernel, kernel, 24, 16)).astype(np.float32)
    gout_shape = jax.eval_shape(lambda: ops.conv2d(x, w, stride=stride, padding=pads)).shape
    assert max(gout_shape[1:3]) <= 2
    gout = rng.standard_normal(gout_shape).astype(np.float32)
    geometry = ([(pads, pads)] * 2, (stride, stride), (1, 1), 1)
    u = 2.0**-24

    y = ops.conv2d(x, w, stride=stride, padding=pads)
    exact = reference.conv2d(x, w, *geometry)
    bound = kernel * kernel * 24 * u * reference.conv2d(np.abs(x), np.abs(w), *geometry)
    assert np.all(np.abs(np.asarray(y, np.float64) - exact) <= bound)

    dx, dw = jax.jit(
        jax.grad(lambda x, w: jnp.sum(ops.conv2d(x, w, stride=stride, padding=pads) * gout), (0, 1))
    )(x, w)
    rdx, rdw = reference.conv2d_grads(x, w, gout, *geometry)
    bdx, bdw = reference.conv2d_grads(np.abs(x), np.abs(w), np.abs(gout), *geometry)
    # dx sums kernel·kernel·16 products per pixel at most; dw sums 3 images × outputs.
    assert np.all(np.abs(np.asarray(dx, np.float64) - rdx) <= kernel * kernel * 16 * u * bdx)
    assert np.all(np.abs(np.asarray(dw, np.float64) - rdw) <= 3 * 4 * u * bdw)


def test_bad_input_names_the_setting_and_the_fix():
    small = jnp.zeros((1, 32, 32, 3))
    with pytest.raises(ValueError, match=r"at least 65x65 pixels .*aux_logits=False"):
        models.get_model("googlenet").init(jax.random.key(0), small)
    with pytest.raises(
        ValueError, match=r"ResNet-18 takes images of at least 32x32 pixels .* got 16x16"
    ):
        models.get_model("resnet18").init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(
        ValueError, match=r"unknown override\(s\) \['aux_logits'\] for model 'resnet50'"
    ):
        models.get_model("resnet50", aux_logits=True)
    with pytest.raises(
        ValueError,
        match=r"`downsample` for ResNet-18 must be one of \('standard', 'pool', 'stride', 'blurpool'\)",
    ):
        models.get_model("resnet18", downsample="avgpool").init(jax.random.key(0), small)
    c = imagenet.get_config("quick")
    c.aux_logits = True
    with pytest.raises(
        ConfigError, match=r"`config.aux_logits` does not apply to model .resnet18."
    ):
        validate(c)
    c = imagenet.get_config("quick")
    c.model, c.image_size = "googlenet", 32
    with pytest.raises(ConfigError, match="at least 65x65"):
        validate(c)


@pytest.mark.parametrize("variant", imagenet.VARIANTS)
def test_imagenet_configs_are_valid(variant):
    c = imagenet.get_config(variant)
    validate(c)
    assert c.learning_rate == 0.1 * c.batch_size / 256  # the same float64 expression: exact
    assert c.input == "stream" and c.augment == "inception" and c.nesterov


def test_image_folder_writer_makes_images_of_many_sizes(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (12, 8, 8, 1), dtype=np.uint8)
    labels = np.arange(12) % 3
    written = folders.write_image_folder(
        str(tmp_path), {"train": (images, labels)}, ["a", "b", "c"], shorter_side=(20, 30)
    )
    assert written == {"train": 12}
    index = folders.index_folder(str(tmp_path))
    assert index.classes == ("a", "b", "c")
    assert sorted(label for _, label in index.files["train"]) == sorted(labels.tolist())
    sizes = {
        folders.open_image(os.path.join(str(tmp_path), rel)).size for rel, _ in index.files["train"]
    }
    assert len(sizes) > 3
    for w, h in sizes:
        assert 20 <= min(w, h) <= 30 and 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02


def test_quick_recipe_streams_and_reports_top5(tmp_path):
    # The :quick recipe end to end on a folder written here: streamed input, the Inception crop,
    # top-1 and top-5 in the results (ResNet-18 at a tenth of the width keeps it short).
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (96, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(96) % 8
    root = str(tmp_path / "data")
    folders.write_image_folder(
        root,
        {"train": (images[:80], labels[:80]), "val": (images[80:], labels[80:])},
        [f"n{i:08d}" for i in range(8)],
        shorter_side=(36, 48),
    )
    c = imagenet.get_config("quick")
    c.data_dir, c.image_size, c.width = root, 32, 0.125
    c.batch_size, c.num_epochs, c.warmup_epochs, c.input_workers = 16, 1, 0.0, 0
    c.num_devices = 1  # one compilation: the multi-device paths are tested elsewhere
    results = train_and_evaluate(c, str(tmp_path / "run"))
    assert 0 <= results["val_accuracy"] <= results["val_top5_accuracy"] <= 1
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert any("val_top5_accuracy" in row for row in rows)
    with open(tmp_path / "run" / "data.json") as f:
        assert json.load(f)["input"] == "stream"


def test_model_table_rows_of_the_downsampling_variants():
    from experiments import model_table

    assert models.downsample_choices("resnet18") == ("standard", "pool", "stride", "blurpool")
    assert models.downsample_choices("googlenet") == ("pool", "stride", "blurpool")
    assert models.downsample_choices("sharing_dense") == ()
    # ResNet-18's chain gives 435 at any size; with "pool" each stage's first block pools at
    # the old stride and its first 3x3 convolution then runs at the new one (8, 16, 32)
    # instead of striding: 435 + 2 * (8 + 16 + 32) = 547.
    standard = model_table.model_row("resnet18", 64, 10)
    pooled = model_table.model_row("resnet18", 64, 10, downsample="pool")
    assert standard[0] == "resnet18" and standard[3] == "435x435 (stride 32)"
    # At 32 px the last stage maps 1x1 and takes the CPU's im2col product: the same chain.
    assert model_table.model_row("resnet18", 32, 10)[3] == "435x435 (stride 32)"
    assert pooled[0] == "resnet18 (pool)" and pooled[3] == "547x547 (stride 32)"
    assert standard[1] == pooled[1] == f"{11_181_642:,}"  # 10 classes: 11,689,512 - 990 * 513
    blurred = model_table.model_row("googlenet", 64, 10, downsample="blurpool")
    assert blurred[3] == "not analysable (rev)"
