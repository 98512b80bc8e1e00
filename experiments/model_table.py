"""Prints the model zoo table: parameters, FLOPs per image and receptive field.

    python -m experiments.model_table [--image_size=32] [--num_classes=10]
    python -m experiments.model_table --image_size=224 --num_classes=1000 \
        --models=googlenet,resnet18,resnet34,resnet50 --downsample=pool,stride,blurpool

The receptive field is the one of the last spatial feature map before global pooling
(the units the classifier averages), from :func:`cnnjax.last_spatial_field`. GoogLeNet is
counted without its auxiliary classifiers (they exist only in training). ``--downsample``
adds a row per variant for every model that has it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import app, flags

from cnnjax import last_spatial_field, models
from cnnjax.receptive_field import ReceptiveFieldError
from experiments import _bench

FLAGS = flags.FLAGS
flags.DEFINE_integer("image_size", 32, "Input height and width.")
flags.DEFINE_integer("num_classes", 10, "Classes.")
flags.DEFINE_list("models", [], "Registry names (default: all).")
flags.DEFINE_list("downsample", [], "Also these `downsample` variants of each model.")


def model_row(name: str, image_size: int, num_classes: int, **overrides) -> list[object]:
    if "aux_logits" in models.model_fields(name):  # training-only heads
        overrides.setdefault("aux_logits", False)
    model = models.get_model(name, num_classes=num_classes, **overrides)
    shape = (1, image_size, image_size, 3)
    abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), jnp.zeros(shape))
    try:
        rf = last_spatial_field(model, shape)
        field = f"{rf.size[0]}x{rf.size[1]} (stride {rf.stride[0]})"
    except ReceptiveFieldError as err:  # e.g. blurpool's reflect padding (`rev`)
        field = f"not analysable ({str(err).split('`')[1]})"
    variant = f" ({overrides['downsample']})" if "downsample" in overrides else ""
    return [
        name + variant,
        f"{models.count_params(abstract['params']):,}",
        f"{models.count_flops(model, shape[1:]) / 1e6:,.0f}",
        field,
    ]


def main(argv):
    del argv
    rows = []
    for name in FLAGS.models or models.list_models():
        rows.append(model_row(name, FLAGS.image_size, FLAGS.num_classes))
        for variant in FLAGS.downsample:
            if variant in models.downsample_choices(name):
                rows.append(
                    model_row(name, FLAGS.image_size, FLAGS.num_classes, downsample=variant)
                )
    header = [
        "model",
        "parameters",
        f"MFLOPs / {FLAGS.image_size}x{FLAGS.image_size} image",
        "receptive field",
    ]
    print(_bench.markdown_table(header, rows))


if __name__ == "__main__":
    app.run(main)
