"""The ablation runs and their table (``experiments/ablation.py``)."""

from __future__ import annotations

import os
import statistics

from experiments import _runs
from experiments.configs.ablation import ABLATIONS


def runs(config) -> list[_runs.Run]:
    """Every (ablation, seed): the train config with that one piece removed."""
    from cnnjax.errors import ConfigError

    out = []
    for name in _runs.split_list(config.ablations):
        if name not in ABLATIONS:
            raise ConfigError(f"unknown ablation {name!r}; choose from {', '.join(ABLATIONS)}.")
        for seed in range(config.seeds):
            train = config.train.copy_and_resolve_references()
            train.update(ABLATIONS[name][1])
            train.seed = seed
            workdir = os.path.join(config.out_dir, "runs", f"{name}_seed{seed}")
            out.append(_runs.Run(f"{name}  seed={seed}", workdir, train, dict(ablation=name)))
    return out


def run_ablations(config) -> dict[str, list[dict]]:
    """Trains (or reuses) every run; returns each ablation's results, one per seed."""
    out: dict[str, list[dict]] = {}
    for record in _runs.train_runs(runs(config)):
        out.setdefault(record["ablation"], []).append(record["results"])
    return out


HEADER = ["removed", "TTA accuracy (%)", "Δ vs full", "accuracy (%)", "seeds", "train time (s)"]


def table_rows(results: dict[str, list[dict]]) -> list[list[str]]:
    tta = lambda r: 100 * r.get("val_tta_accuracy", r["val_accuracy"])
    full = statistics.mean(tta(r) for r in results["full"]) if "full" in results else None
    rows = []
    for name, runs in results.items():
        mean_tta = statistics.mean(tta(r) for r in runs)
        rows.append(
            [
                ABLATIONS[name][0],
                f"{mean_tta:.2f}",
                "-" if full is None or name == "full" else f"{mean_tta - full:+.2f}",
                f"{statistics.mean(100 * r['val_accuracy'] for r in runs):.2f}",
                str(len(runs)),
                f"{statistics.mean(r['train_seconds'] for r in runs):.0f}",
            ]
        )
    return rows
