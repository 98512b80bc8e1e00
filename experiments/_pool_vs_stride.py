"""The pooling-versus-strided-convolution study's runs, table and plots
(``experiments/pool_vs_stride.py``, ``experiments/fast_study.py`` and ``make demo``).

Every (variant, learning rate, seed) is an ordinary training run in its own workdir under
``<out_dir>/runs/<variant>/lr<lr>_seed<seed>``; the variant sets the study config's
``variant_field`` of the training config (``model`` for All-CNN, ``downsample`` for the fast
network and ResNet).
"""

from __future__ import annotations

import os
import statistics

from experiments import _runs

# Springenberg et al. (2015), Table 3: CIFAR-10 test error (%) without data augmentation.
PAPER_ERROR = {
    "model_a": 12.47,
    "strided_cnn_a": 13.46,
    "convpool_cnn_a": 10.21,
    "all_cnn_a": 10.30,
    "model_b": 10.20,
    "strided_cnn_b": 10.98,
    "convpool_cnn_b": 9.33,
    "all_cnn_b": 9.10,
    "model_c": 9.74,
    "strided_cnn_c": 10.19,
    "convpool_cnn_c": 9.31,
    "all_cnn_c": 9.08,
}


def run_dir(out_dir: str, variant: str, lr: float, seed: int) -> str:
    return os.path.join(out_dir, "runs", variant, f"lr{lr:g}_seed{seed}")


def runs(config) -> list[_runs.Run]:
    """The study's runs: every variant at every learning rate (the train config's rate when
    ``learning_rates`` is empty) and seed."""
    lrs = [float(v) for v in _runs.split_list(config.learning_rates)]
    out = []
    for variant in _runs.split_list(config.variants):
        for lr in lrs or [config.train.learning_rate]:
            for seed in range(config.seeds):
                train = config.train.copy_and_resolve_references()
                train[config.variant_field] = variant
                train.learning_rate, train.seed = lr, seed
                out.append(
                    _runs.Run(
                        f"{variant}  lr={lr:g}  seed={seed}",
                        run_dir(config.out_dir, variant, lr, seed),
                        train,
                        dict(variant=variant, lr=lr, seed=seed),
                    )
                )
    return out


def _error_key(results: dict) -> str:
    return "test_error" if "test_error" in results else "val_error"


def summarize(records: list[dict]) -> list[dict]:
    """One row per variant at its best learning rate (highest mean validation accuracy)."""
    rows = []
    for variant in dict.fromkeys(r["variant"] for r in records):
        by_lr: dict[float, list[dict]] = {}
        for r in records:
            if r["variant"] == variant:
                by_lr.setdefault(r["lr"], []).append(r)
        best_lr = max(
            by_lr, key=lambda lr: statistics.mean(r["results"]["val_accuracy"] for r in by_lr[lr])
        )
        chosen = by_lr[best_lr]
        key = _error_key(chosen[0]["results"])
        errors = [100 * r["results"][key] for r in chosen]
        speeds = [
            statistics.mean(
                e["train_images_per_sec"] for e in r["epochs"] if "train_images_per_sec" in e
            )
            for r in chosen
        ]
        rows.append(
            dict(
                variant=variant,
                error_kind="test" if key == "test_error" else "validation",
                error_mean=statistics.mean(errors),
                error_std=statistics.stdev(errors) if len(errors) > 1 else 0.0,
                seeds=len(errors),
                params=int(chosen[0]["results"]["num_params"]),
                mflops=chosen[0]["results"]["flops_per_image"] / 1e6,
                train_seconds=statistics.mean(r["results"]["train_seconds"] for r in chosen),
                images_per_sec=statistics.mean(speeds),
                lr=best_lr,
                paper_error=PAPER_ERROR.get(variant),
            )
        )
    return rows


HEADER = [
    "model",
    "error (%)",
    "seeds",
    "parameters",
    "MFLOPs/image",
    "train time (s)",
    "img/s",
    "learning rate",
    "paper CIFAR-10 error (%)",
]


def table_rows(rows: list[dict]) -> list[list[str]]:
    return [
        [
            r["variant"],
            f"{r['error_mean']:.2f} ± {r['error_std']:.2f} ({r['error_kind']})",
            str(r["seeds"]),
            f"{r['params']:,}",
            f"{r['mflops']:.0f}",
            f"{r['train_seconds']:.0f}",
            f"{r['images_per_sec']:.0f}",
            f"{r['lr']:g}",
            "-" if r["paper_error"] is None else f"{r['paper_error']:.2f}",
        ]
        for r in rows
    ]


def plot(records: list[dict], rows: list[dict], out_dir: str) -> list[str]:
    """Validation error against epoch and against wall time (each variant at its chosen rate,
    mean over seeds), and the error against the parameter count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = {r["variant"]: r["lr"] for r in rows}
    error = lambda e: 100 * (1 - e["val_accuracy"])
    paths = []
    for name, x, xlabel in (
        ("error_vs_epoch.png", "epoch", "epoch"),
        ("error_vs_time.png", "elapsed_seconds", "wall-clock seconds"),
    ):
        curves = {
            v: _runs.mean_curve(
                [r for r in records if r["variant"] == v and r["lr"] == lr], x, error
            )
            for v, lr in chosen.items()
        }
        paths.append(
            _runs.line_plot(
                os.path.join(out_dir, name), curves, xlabel, "validation error (%)",
                title="pooling vs strided convolution",
            )
        )  # fmt: skip
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in rows:
        ax.errorbar(r["params"], r["error_mean"], yerr=r["error_std"], fmt="o", capsize=3)
        ax.annotate(
            r["variant"],
            (r["params"], r["error_mean"]),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
    ax.set_xlabel("parameters")
    ax.set_ylabel(f"{rows[0]['error_kind']} error (%)")
    ax.set_title("error against parameters")
    ax.grid(True, alpha=0.3)
    paths.append(_runs.save_figure(fig, os.path.join(out_dir, "error_vs_params.png")))
    return paths


def write_outputs(config, records: list[dict]) -> dict:
    """``table.md``, ``table.csv``, ``study.json`` and the plots in ``config.out_dir``."""
    rows = summarize(records)
    table = _runs.write_study(config, HEADER, table_rows(rows), rows)
    return {"table": table, "out_dir": config.out_dir, "plots": plot(records, rows, config.out_dir)}
