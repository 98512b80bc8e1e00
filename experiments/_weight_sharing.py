"""The weight-sharing experiment's runs, table and plots (``experiments/weight_sharing.py``)."""

from __future__ import annotations

import json
import os
import statistics
import sys

from experiments import _runs


def _numbers(text: str, cast=float) -> list:
    return [cast(v) for v in str(text).split(",") if v.strip()]


def run_all(config) -> list[dict]:
    """Trains (or reuses) every run; one record per run, with its shifted accuracies."""
    from cnnjax.train import train_and_evaluate

    records = []
    for variant in _numbers(config.variants, str):
        for fraction in _numbers(config.fractions):
            for seed in range(config.seeds):
                train = config.train.copy_and_resolve_references()
                train.model, train.train_fraction, train.seed = variant, fraction, seed
                workdir = os.path.join(
                    config.out_dir, "runs", variant, f"data{fraction:g}_seed{seed}"
                )
                _runs.prepare_workdir(workdir, train)
                print(f"== {variant}  data={fraction:g}  seed={seed}  -> {workdir}", flush=True)
                results = train_and_evaluate(train, workdir)
                if "stopped_at_step" in results:
                    sys.exit("interrupted; run the same command again to resume.")
                shifted = _shifted(workdir, _numbers(config.shifts, int))
                records.append(
                    dict(variant=variant, fraction=fraction, seed=seed, results=results,
                         shifted=shifted)
                )  # fmt: skip
    return records


def _shifted(workdir: str, shifts: list[int]) -> dict[str, float]:
    """Held-out accuracy with every image moved by each shift, kept in ``shifted.json``."""
    path = os.path.join(workdir, "shifted.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    from cnnjax.train import load_run, shifted_accuracy

    _, engine, state, data = load_run(workdir)
    split = data.splits["validation" if "validation" in data.splits else "test"]
    out = {
        str(k): shifted_accuracy(engine.fns, state, split.images, split.labels, k) for k in shifts
    }
    with open(path, "w") as f:
        json.dump(out, f)
    return out


def _accuracy(results: dict) -> float:
    return 100 * results.get("test_accuracy", results["val_accuracy"])


def summarize(config, records: list[dict]) -> tuple[list[str], list[list[str]]]:
    fractions = _numbers(config.fractions)
    shifts = _numbers(config.shifts, int)
    header = ["layers", "parameters", "MFLOPs/image"]
    header += [f"accuracy, {f:g} of the data (%)" for f in fractions]
    header += [f"shifted {k} px (%)" for k in shifts]
    rows = []
    for variant in dict.fromkeys(r["variant"] for r in records):
        runs = [r for r in records if r["variant"] == variant]
        row = [variant, f"{int(runs[0]['results']['num_params']):,}",
               f"{runs[0]['results']['flops_per_image'] / 1e6:.1f}"]  # fmt: skip
        for f in fractions:
            accs = [_accuracy(r["results"]) for r in runs if r["fraction"] == f]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            row.append(f"{statistics.mean(accs):.1f} ± {sd:.1f}")
        full = [r for r in runs if r["fraction"] == max(fractions)]
        for k in shifts:
            row.append(f"{statistics.mean(100 * r['shifted'][str(k)] for r in full):.1f}")
        rows.append(row)
    return header, rows


def plot(config, records: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = _numbers(config.fractions)
    shifts = _numbers(config.shifts, int)
    paths = []
    for name, xs, ys, xlabel in (
        ("accuracy_vs_data.png", fractions, "fraction", "fraction of the training split"),
        ("accuracy_vs_shift.png", shifts, "shift", "shift of every held-out image (px)"),
    ):
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for variant in dict.fromkeys(r["variant"] for r in records):
            runs = [r for r in records if r["variant"] == variant]
            if ys == "fraction":
                means = [
                    statistics.mean(_accuracy(r["results"]) for r in runs if r["fraction"] == f)
                    for f in xs
                ]
            else:
                full = [r for r in runs if r["fraction"] == max(fractions)]
                means = [statistics.mean(100 * r["shifted"][str(k)] for r in full) for k in xs]
            ax.plot(xs, means, marker="o", label=variant)
        if ys == "fraction":
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out accuracy (%), mean over seeds")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        paths.append(os.path.join(config.out_dir, name))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths
