"""Does a strided convolution replace max-pooling? (the ``cnnjax-study`` command) Two studies,
one program.

    python -m experiments.pool_vs_stride --config=experiments/configs/pool_vs_stride.py:quick
    python -m experiments.pool_vs_stride --config=experiments/configs/pool_vs_stride.py:cpu \
        --config.seeds=3 --config.variants=model_c,all_cnn_c
    python -m experiments.pool_vs_stride --config=experiments/configs/pool_vs_stride.py:fast
    python -m experiments.pool_vs_stride --config=experiments/configs/pool_vs_stride.py:imagenet

The All-CNN study (variants are models, as in the paper's Table 3) and the fast-network study
(variants are ``downsample`` settings of ``airbench94``, with paired differences, confidence
intervals and shift invariance; :mod:`experiments._fast_study`), and the same question for
ResNet-18 at ImageNet shape (``:imagenet``; variants are its ``downsample`` settings). Every
(variant, learning rate, seed) is an ordinary training run in its own workdir under
``<out_dir>/runs/``, so an interrupted study resumes where it stopped and finished runs are
not repeated; a run whose config changed since it ran is set aside and trained again. Writes
to ``out_dir``: ``table.md``, ``table.csv`` and PNG plots.
"""

from __future__ import annotations

import json
import os
import statistics
import sys

from absl import flags
from ml_collections import config_flags

from experiments import _bench, _fast_study, _runs
from experiments._cli import quiet_unless_verbose, run_program

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", "experiments/configs/pool_vs_stride.py:quick", "Study config file[:variant]."
)

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


def _split(value) -> list[str]:
    return [v.strip() for v in str(value).split(",") if v.strip()]


def run_dir(out_dir: str, variant: str, lr: float, seed: int) -> str:
    return os.path.join(out_dir, "runs", variant, f"lr{lr:g}_seed{seed}")


def run_config(config, variant: str, lr: float, seed: int):
    """The training config of one run of the study."""
    train = config.train.copy_and_resolve_references()
    train[config.variant_field] = variant
    train.learning_rate, train.seed = lr, seed
    return train


def run_study(config) -> list[dict]:
    """Runs (or reuses) every training run of the study; returns one record per run."""
    from cnnjax.train import read_metrics, train_and_evaluate

    lrs = [float(v) for v in _split(config.learning_rates)] or [config.train.learning_rate]
    records = []
    for variant in _split(config.variants):
        for lr in lrs:
            for seed in range(config.seeds):
                workdir = run_dir(config.out_dir, variant, lr, seed)
                train = run_config(config, variant, lr, seed)
                _runs.prepare_workdir(workdir, train)
                done = os.path.join(workdir, "results.json")
                if os.path.exists(done):
                    with open(done) as f:
                        results = json.load(f)
                else:
                    print(f"== {variant}  lr={lr:g}  seed={seed}  -> {workdir}", flush=True)
                    results = train_and_evaluate(train, workdir)
                    if "stopped_at_step" in results:
                        sys.exit("study interrupted; run the same command again to resume.")
                epochs = [r for r in read_metrics(workdir) if "epoch" in r]
                record = dict(
                    variant=variant,
                    lr=lr,
                    seed=seed,
                    workdir=workdir,
                    results=results,
                    epochs=epochs,
                )
                if config.translation:
                    record["translation"] = _fast_study.translation(workdir)
                records.append(record)
    return records


def _error_key(results: dict) -> str:
    return "test_error" if "test_error" in results else "val_error"


def summarize(records: list[dict]) -> list[dict]:
    """One row per variant at its best learning rate (highest mean validation accuracy)."""
    rows = []
    for variant in dict.fromkeys(r["variant"] for r in records):
        runs = [r for r in records if r["variant"] == variant]
        by_lr: dict[float, list[dict]] = {}
        for r in runs:
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    chosen = {r["variant"]: r["lr"] for r in rows}
    paths = []
    for name, xkey, xlabel in (
        ("error_vs_epoch.png", "epoch", "epoch"),
        ("error_vs_time.png", "elapsed_seconds", "wall-clock seconds"),
    ):
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for variant, lr in chosen.items():
            runs = [r for r in records if r["variant"] == variant and r["lr"] == lr]
            n = min(len(r["epochs"]) for r in runs)
            xs = np.mean([[e.get(xkey, np.nan) for e in r["epochs"][:n]] for r in runs], axis=0)
            ys = np.mean(
                [[100 * (1 - e["val_accuracy"]) for e in r["epochs"][:n]] for r in runs], axis=0
            )
            ax.plot(xs, ys, marker="o", markersize=3, label=variant)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation error (%)")
        ax.set_title("pooling vs strided convolution")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        paths.append(os.path.join(out_dir, name))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
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
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "error_vs_params.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def write_outputs(config, records: list[dict]) -> dict[str, str]:
    rows = summarize(records)
    out_dir = config.out_dir
    os.makedirs(out_dir, exist_ok=True)
    table = _bench.markdown_table(HEADER, table_rows(rows))
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(table + "\n")
    _bench.write_csv(os.path.join(out_dir, "table.csv"), HEADER, table_rows(rows))
    with open(os.path.join(out_dir, "study.json"), "w") as f:
        json.dump({"config": json.loads(config.to_json_best_effort()), "rows": rows}, f, indent=2)
    plots = plot(records, rows, out_dir)
    return {"table": table, "out_dir": out_dir, "plots": plots}


def main(argv):
    del argv
    quiet_unless_verbose()
    config = FLAGS.config
    records = run_study(config)
    # The fast-network study adds paired differences and shift invariance to the table.
    writer = _fast_study.write_outputs if config.translation else write_outputs
    out = writer(config, records)
    print("\n" + out["table"])
    print(
        f"\nresults in {os.path.abspath(out['out_dir'])}: table.md, table.csv, "
        + ", ".join(os.path.basename(p) for p in out["plots"])
    )


def run():
    """The ``cnnjax-study`` command."""
    run_program(main, __doc__)


if __name__ == "__main__":
    run()
