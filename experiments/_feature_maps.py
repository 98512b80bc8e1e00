"""First-layer filters and feature maps at each downsampling stage of a trained run, drawn
(``experiments/feature_maps.py`` and ``make demo``)."""

from __future__ import annotations

import jax
import numpy as np

from experiments import _runs


def _unit(a):
    a = np.asarray(a, np.float64)
    lo, hi = a.min(), a.max()
    return (a - lo) / (hi - lo + 1e-12)


def run_features(workdir: str, num_images: int):
    """(name, filters (kh, kw, cin, cout), images, {stage: (N, h, w, C)}) of one run."""
    from cnnjax.data import normalize
    from cnnjax.train import variables_of

    config, engine, state, split = _runs.held_out(workdir)
    images, _ = _runs.subset(split, num_images)
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
