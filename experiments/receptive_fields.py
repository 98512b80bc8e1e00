"""Receptive fields of a model: the per-layer table and a drawing of one unit's field.

    python -m experiments.receptive_fields --model=all_cnn_c
    python -m experiments.receptive_fields --model=model_c --layer=down2 --image_size=64

Prints the table (layer, output size, receptive field, effective stride, effective padding)
from the jaxpr analysis, and writes ``receptive_field_<model>_<layer>.png``: a digit image with
the analytic field of the centre unit of ``--layer`` drawn as a box, over the empirical one
(where the unit's gradient with respect to the input is non-zero, randomly initialised weights).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from absl import app, flags

from experiments._cli import quiet_unless_verbose

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "all_cnn_c", "Registered model name.")
flags.DEFINE_string("layer", "class_map", "Named intermediate whose centre unit is drawn.")
flags.DEFINE_integer("image_size", 32, "Input height and width.")
flags.DEFINE_string("out_dir", "results/receptive_fields", "Where the PNG goes.")


def main(argv):
    del argv
    quiet_unless_verbose()
    from cnnjax import empirical_receptive_field, models, receptive_field_table
    from cnnjax.data import load_digits
    from cnnjax.receptive_field import format_table

    model = models.get_model(FLAGS.model)
    shape = (1, FLAGS.image_size, FLAGS.image_size, 3)
    variables = model.init(jax.random.key(0), jnp.zeros(shape))
    features = lambda x: model.apply(variables, x, return_features=True)[1]
    rows = receptive_field_table(features, shape)
    print(f"{FLAGS.model} on {FLAGS.image_size}x{FLAGS.image_size} inputs\n")
    print(format_table(rows))
    by_name = {r.name: r for r in rows}
    if FLAGS.layer not in by_name or by_name[FLAGS.layer].field is None:
        raise app.UsageError(f"--layer must be one of {[r.name for r in rows]}.")
    row = by_name[FLAGS.layer]
    if row.field.is_global:
        raise app.UsageError(f"--layer={FLAGS.layer} is globally pooled: it sees the whole image.")
    index = tuple(n // 2 for n in row.shape[1:3])
    (r0, r1), (c0, c1) = row.field.input_range(index)
    emp = empirical_receptive_field(
        lambda v, x: model.apply(v, x, return_features=True)[1][FLAGS.layer],
        variables,
        shape,
        index=index,
    )

    digit = load_digits(image_size=FLAGS.image_size).splits["test"].images[0, :, :, 0]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots(figsize=(4.8, 4.8))
    ax.imshow(
        digit, cmap="gray", extent=(-0.5, FLAGS.image_size - 0.5, FLAGS.image_size - 0.5, -0.5)
    )
    ax.add_patch(
        Rectangle(
            (emp.start[1] - 0.5, emp.start[0] - 0.5),
            emp.size[1],
            emp.size[0],
            fill=True,
            alpha=0.25,
            color="tab:orange",
            label="empirical (gradient)",
        )
    )
    ax.add_patch(
        Rectangle(
            (c0 - 0.5, r0 - 0.5),
            c1 - c0 + 1,
            r1 - r0 + 1,
            fill=False,
            lw=2,
            color="tab:red",
            label="analytic",
        )
    )
    margin = max(0, -min(r0, c0)) + 1
    ax.set_xlim(-margin - 0.5, FLAGS.image_size + margin)
    ax.set_ylim(FLAGS.image_size + margin, -margin - 0.5)
    ax.set_title(
        f"{FLAGS.model}: unit {index} of {FLAGS.layer}\n"
        f"field {row.field.size[0]}x{row.field.size[1]}, stride {row.field.stride[0]}, "
        f"padding {row.field.padding[0]}",
        fontsize=9,
    )
    ax.legend(loc="lower right", fontsize=7)
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    path = os.path.join(FLAGS.out_dir, f"receptive_field_{FLAGS.model}_{FLAGS.layer}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(
        f"\nanalytic rows {r0}..{r1}, cols {c0}..{c1}; empirical rows "
        f"{emp.start[0]}..{emp.stop[0]}, cols {emp.start[1]}..{emp.stop[1]} (clipped to the "
        f"image)\nwrote {path}"
    )


if __name__ == "__main__":
    app.run(main)
