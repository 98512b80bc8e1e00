"""Which Inception branch the next layer relies on, three ways (``inception_branches.py``).

For every :class:`cnnjax.nn.Inception` module of a trained ``googlenet_small`` and each of its
branches (1×1, 3×3, 5×5, pool):

* **weight share**: the share of the next layer's squared kernel norm on the branch's channels
  (the next layer: the following module's four input convolutions, a strided downsampling
  convolution, or the classifier);
* **ablation**: the accuracy when the branch's output is replaced by its mean over the
  evaluation images (the branch then carries no information about the image);
* **contribution**: the mean absolute contribution of the branch's channels to the next layer's
  pre-activations, as a share of the four.
"""

from __future__ import annotations

import flax.linen as flax_nn
import jax.numpy as jnp
import numpy as np

from cnnjax import models, ops
from cnnjax.nn import INCEPTION_BRANCHES as BRANCHES
from cnnjax.nn import Inception
from cnnjax.train import variables_of


def branch_slices(site: models.InceptionSite) -> dict[str, slice]:
    """The channels of each branch in the module's concatenated output."""
    return {b: site.module.branch_channels(b) for b in BRANCHES}


def check_branches(names: str) -> tuple[str, ...]:
    """The comma-separated branch names of the ``branches`` field, each one checked."""
    picked = tuple(b.strip() for b in names.split(",") if b.strip())
    for b in picked:
        if b not in BRANCHES:
            raise ValueError(
                f"`branches` names {b!r}, which is not a branch of an Inception module; "
                f"the branches are {', '.join(BRANCHES)}."
            )
    return picked or BRANCHES


def _get(params, path):
    for key in path:
        params = params[key]
    return np.asarray(params)


def weight_shares(model, params) -> dict[str, dict[str, float]]:
    """Per module, each branch's share of its readers' squared kernel norm."""
    out = {}
    for site in models.inception_sites(model):
        norms = dict.fromkeys(BRANCHES, 0.0)
        for reader in site.readers:
            kernel = _get(params, reader.kernel)
            for b, sl in branch_slices(site).items():
                norms[b] += float(np.sum(kernel[..., sl, :] ** 2))
        total = sum(norms.values())
        out[site.name] = {b: v / total for b, v in norms.items()}
    return out


def _recorder(records: dict, wanted: set[tuple[str, ...]]):
    """An interceptor that keeps the input of every module whose path is in ``wanted``."""

    def interceptor(next_fun, args, kwargs, context):
        path = tuple(context.module.scope.path)
        if context.method_name == "__call__" and path in wanted:
            records.setdefault(path, []).append(np.asarray(args[0]))
        return next_fun(*args, **kwargs)

    return interceptor


def _replacer(module: str, sl: slice, value):
    """An interceptor that replaces channels ``sl`` of ``module``'s output by ``value``."""

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        is_target = isinstance(context.module, Inception) and context.module.name == module
        if context.method_name == "__call__" and is_target:
            out = out.at[..., sl].set(jnp.broadcast_to(value, out[..., sl].shape))
        return out

    return interceptor


def analyse(
    model, state, images, labels, norm, branches: tuple[str, ...] = BRANCHES, batch_size=250
) -> dict:
    """The three measures on ``images`` (uint8 or float, normalised here with ``norm``) for
    ``branches``; the two shares stay shares of all four branches."""
    from cnnjax.data import normalize

    variables = variables_of(state.params, state.batch_stats)
    batches = [
        normalize(images[s : s + batch_size], norm) for s in range(0, len(images), batch_size)
    ]

    def accuracy(interceptor=None):
        correct = 0
        for s, x in zip(range(0, len(images), batch_size), batches, strict=True):
            if interceptor is None:
                logits = model.apply(variables, x)
            else:
                with flax_nn.intercept_methods(interceptor):
                    logits = model.apply(variables, x)
            correct += int(np.sum(np.argmax(logits, -1) == labels[s : s + batch_size]))
        return correct / len(images)

    # One pass records each module's output and each reader's input.
    sites = models.inception_sites(model)
    paths = {r.kernel[:-1] for site in sites for r in site.readers}
    inputs: dict = {}
    outputs: dict = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and isinstance(context.module, Inception):
            outputs.setdefault(context.module.name, []).append(np.asarray(out))
        return out

    for x in batches:
        with flax_nn.intercept_methods(_recorder(inputs, paths)), flax_nn.intercept_methods(record):
            model.apply(variables, x)
    inputs = {p: np.concatenate(v) for p, v in inputs.items()}
    means = {m: np.concatenate(v).mean(axis=0) for m, v in outputs.items()}
    base = accuracy()
    ablated, contribution = {}, {}
    for site in sites:
        module, slices = site.name, branch_slices(site)
        ablated[module] = {
            b: accuracy(_replacer(module, slices[b], means[module][..., slices[b]]))
            for b in branches
        }
        totals = dict.fromkeys(BRANCHES, 0.0)
        for path, stride, padding in site.readers:
            kernel = _get(state.params, path)
            x = inputs[path[:-1]]
            for b, sl in slices.items():
                if kernel.ndim == 2:  # the classifier: pooled features
                    part = x[:, sl] @ kernel[sl]
                else:
                    part = ops.conv2d(
                        x[..., sl], kernel[..., sl, :], stride=stride, padding=padding
                    )
                totals[b] += float(np.mean(np.abs(np.asarray(part))))
        total = sum(totals.values())
        contribution[module] = {b: totals[b] / total for b in branches}
    shares = weight_shares(model, state.params)
    return {
        "accuracy": base,
        "branches": list(branches),
        "weight_share": {m: {b: shares[m][b] for b in branches} for m in shares},
        "ablated_accuracy": ablated,
        "contribution_share": contribution,
    }


def plot(report: dict, path: str) -> None:
    """One heat map per measure: modules (rows) × branches (columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("weight_share", "share of next layer's |W|² (%)", 100.0),
        ("ablated_accuracy", "accuracy lost, mean-replaced (points)", None),
        ("contribution_share", "share of |contribution| (%)", 100.0),
    )
    branches, modules = report["branches"], list(report["weight_share"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (key, title, scale) in zip(axes, panels, strict=True):
        if scale is None:
            grid = [
                [100 * (report["accuracy"] - report[key][m][b]) for b in branches] for m in modules
            ]
        else:
            grid = [[scale * report[key][m][b] for b in branches] for m in modules]
        im = ax.imshow(grid, cmap="viridis")
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="w", fontsize=9)
        ax.set_xticks(range(len(branches)), branches)
        ax.set_yticks(range(len(modules)), modules)
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table_rows(report: dict) -> list[list[str]]:
    rows = []
    for m in report["weight_share"]:  # the modules, in the network's order
        for b in report["branches"]:
            rows.append(
                [
                    m,
                    b,
                    f"{100 * report['weight_share'][m][b]:.1f}",
                    f"{100 * (report['accuracy'] - report['ablated_accuracy'][m][b]):.1f}",
                    f"{100 * report['contribution_share'][m][b]:.1f}",
                ]
            )
    return rows


HEADER = [
    "module",
    "branch",
    "weight share (%)",
    "accuracy drop, mean-replaced (points)",
    "contribution share (%)",
]
