"""The weight-sharing experiment's runs, table and plots (``experiments/weight_sharing.py``)."""

from __future__ import annotations

import functools
import os
import statistics

from experiments import _runs


def _numbers(text: str, cast=float) -> list:
    return [cast(v) for v in str(text).split(",") if v.strip()]


def runs(config) -> list[_runs.Run]:
    """Every (variant, training fraction, seed) of the experiment."""
    out = []
    for variant in _numbers(config.variants, str):
        for fraction in _numbers(config.fractions):
            for seed in range(config.seeds):
                train = config.train.copy_and_resolve_references()
                train.model, train.train_fraction, train.seed = variant, fraction, seed
                out.append(
                    _runs.Run(
                        f"{variant}  data={fraction:g}  seed={seed}",
                        os.path.join(
                            config.out_dir, "runs", variant, f"data{fraction:g}_seed{seed}"
                        ),
                        train,
                        dict(variant=variant, fraction=fraction, seed=seed),
                    )
                )
    return out


def run_all(config) -> list[dict]:
    """Trains (or reuses) every run; one record per run, with its shifted accuracies."""
    shifts = _numbers(config.shifts, int)
    return _runs.train_runs(runs(config), {"shifted": functools.partial(_shifted, shifts=shifts)})


def _shifted(workdir: str, shifts: list[int]) -> dict[str, float]:
    """Held-out accuracy with every image moved by each shift (kept in ``shifted.json``)."""
    from cnnjax.train import shifted_accuracy

    _, engine, state, split = _runs.held_out(workdir)
    return {
        str(k): shifted_accuracy(engine.fns, state, split.images, split.labels, k) for k in shifts
    }


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
    """Held-out accuracy against the training fraction, and against the shift of every
    held-out image (the runs on all the data); means over seeds."""
    fractions = _numbers(config.fractions)
    shifts = _numbers(config.shifts, int)
    by_fraction, by_shift = {}, {}
    for variant in dict.fromkeys(r["variant"] for r in records):
        runs = [r for r in records if r["variant"] == variant]
        means = [
            statistics.mean(_accuracy(r["results"]) for r in runs if r["fraction"] == f)
            for f in fractions
        ]
        by_fraction[variant] = (fractions, means)
        full = [r for r in runs if r["fraction"] == max(fractions)]
        by_shift[variant] = (
            shifts, [statistics.mean(100 * r["shifted"][str(k)] for r in full) for k in shifts]
        )  # fmt: skip
    ylabel = "held-out accuracy (%), mean over seeds"
    return [
        _runs.line_plot(os.path.join(config.out_dir, "accuracy_vs_data.png"), by_fraction,
                        "fraction of the training split", ylabel, log_x=True, marker_size=6),
        _runs.line_plot(os.path.join(config.out_dir, "accuracy_vs_shift.png"), by_shift,
                        "shift of every held-out image (px)", ylabel, marker_size=6),
    ]  # fmt: skip
