"""Figures a run leaves in its workdir."""

from __future__ import annotations

import os

from cnnjax.train.metrics import read_metrics


def plot_curves(workdir: str) -> str:
    """``curves.png``: loss and accuracy per epoch (train and validation). Returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(workdir) if "epoch" in r]
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    for split in ("train", "val"):
        for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            key = f"{split}_{name}"
            points = [(e, r[key]) for e, r in zip(epochs, rows, strict=True) if key in r]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=split)
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(os.path.basename(os.path.abspath(workdir)))
    fig.tight_layout()
    path = os.path.join(workdir, "curves.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
