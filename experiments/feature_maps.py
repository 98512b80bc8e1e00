"""First-layer filters and feature maps at each downsampling stage of trained runs.

    python -m experiments.feature_maps --workdir=runs/model_c
    python -m experiments.feature_maps --workdir=runs/model_c --workdir2=runs/all_cnn_c

With two workdirs (say a pooling and a strided run) the figures are side by side. Writes
``feature_maps.png`` (to ``--out``, default: the first workdir) and prints its path.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import app, flags

from experiments import _runs
from experiments._cli import quiet_unless_verbose

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Workdir of a trained run.")
flags.DEFINE_string("workdir2", None, "Optional second run, shown beside the first.")
flags.DEFINE_integer("num_images", 3, "Validation images to show.")
flags.DEFINE_integer("channels", 6, "Feature maps shown per stage.")
flags.DEFINE_string("out", None, "Output PNG (default: <workdir>/feature_maps.png).")


def _unit(a):
    a = np.asarray(a, np.float64)
    lo, hi = a.min(), a.max()
    return (a - lo) / (hi - lo + 1e-12)


def run_features(workdir: str, num_images: int):
    """(name, filters (kh, kw, cin, cout), images, {stage: (N, h, w, C)}) of one run."""
    from cnnjax.data import normalize
    from cnnjax.train import load_run, variables_of

    config, engine, state, data = load_run(workdir)
    val = data.splits["validation"]
    images, _ = _runs.subset(val, num_images)
    x = normalize(images, engine.fns.cfg.norm)
    variables = variables_of(state.params, state.batch_stats)
    _, feats = engine.fns.model.apply(variables, x, return_features=True)
    stages = {k: np.asarray(v) for k, v in feats.items() if k.startswith("down") or k == "conv1"}
    kernel = jax.device_get(state.params["conv1"]["conv"]["kernel"])
    return config.model, kernel, images, stages


def draw(runs, path: str, channels: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_img = len(runs[0][2])
    n_stage = len(runs[0][3])
    cols = 1 + n_stage * channels
    rows_per_run = 1 + n_img
    fig, axes = plt.subplots(
        rows_per_run * len(runs), cols, figsize=(cols * 0.9, rows_per_run * len(runs) * 0.95)
    )
    axes = np.atleast_2d(axes)
    for ax in axes.flat:
        ax.axis("off")
    for r, (name, kernel, images, stages) in enumerate(runs):
        top = r * rows_per_run
        axes[top, 0].set_title(name, fontsize=8, loc="left")
        for f in range(min(cols, kernel.shape[-1])):
            k = kernel[..., f]
            axes[top, f].imshow(_unit(k) if k.shape[-1] == 3 else _unit(k.mean(-1)), cmap="gray")
        for i in range(n_img):
            img = images[i]
            axes[top + 1 + i, 0].imshow(img if img.shape[-1] == 3 else img[..., 0], cmap="gray")
            for s, (stage, fmap) in enumerate(stages.items()):
                for c in range(min(channels, fmap.shape[-1])):
                    ax = axes[top + 1 + i, 1 + s * channels + c]
                    ax.imshow(fmap[i, :, :, c], cmap="viridis")
                    if i == 0 and c == 0:
                        ax.set_title(
                            f"{stage} {fmap.shape[1]}x{fmap.shape[2]}", fontsize=7, loc="left"
                        )
    fig.suptitle("first-layer filters (top row of each run) and feature maps", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv):
    del argv
    quiet_unless_verbose()
    runs = [run_features(FLAGS.workdir, FLAGS.num_images)]
    if FLAGS.workdir2:
        runs.append(run_features(FLAGS.workdir2, FLAGS.num_images))
    path = FLAGS.out or os.path.join(FLAGS.workdir, "feature_maps.png")
    draw(runs, path, FLAGS.channels)
    print(f"wrote {path}")


if __name__ == "__main__":
    flags.mark_flag_as_required("workdir")
    app.run(main)
