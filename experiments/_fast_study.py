"""The fast-network study's runs, measurements, table and plots (``experiments/fast_study.py``).

Per variant: accuracy with and without test-time augmentation (mean ± std over seeds), the
paired difference to ``pool`` (same seed, hence same initialisation draws and data order) with
a 95 % Student-t confidence interval, parameters, FLOPs, receptive field of the last spatial
map, training speed and time, and shift invariance: consistency under two random translations
of up to 4 px, and accuracy when every image is moved by 1, 2 and 4 px.
"""

from __future__ import annotations

import math
import os
import statistics

from experiments import _pool_vs_stride, _runs


def t_quantile(dof: int) -> float:
    """The 0.975 quantile of Student's t with ``dof`` degrees of freedom (two-sided 95 %)."""
    from scipy import stats

    return float(stats.t.ppf(0.975, dof))


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % confidence interval (nan for one value)."""
    n = len(values)
    if n < 2:
        return values[0], math.nan
    return statistics.mean(values), t_quantile(n - 1) * statistics.stdev(values) / math.sqrt(n)


def translation(workdir: str) -> dict[str, float]:
    """The run's shift measurements on its held-out split (kept in ``translation.json`` by the
    runner)."""
    from cnnjax.train import translation_report

    _, engine, state, split = _runs.held_out(workdir)
    return translation_report(engine.fns, state, split.images, split.labels)


def train(config) -> list[dict]:
    """Trains (or reuses) the study's runs, each with its shift measurements."""
    return _runs.train_runs(_pool_vs_stride.runs(config), {"translation": translation})


def _model(variant: str, train, **extra):
    """The variant's model as its runs built it (the training config with the variant's
    ``downsample``), in float32, with ``extra`` model fields: for its geometry and FLOPs."""
    from cnnjax.train.config import build_model

    config = train.copy_and_resolve_references()
    config.downsample, config.compute_dtype = variant, "float32"
    config.model_kwargs.update(extra)
    return build_model(config, num_classes=10)


def _input_shape(train) -> tuple[int, int, int]:
    size = train.image_size or 32
    return (size, size, 3 if train.dataset != "digits" else 1)


def _field(variant: str, train) -> str:
    from cnnjax import last_spatial_field

    # The same geometry with the blur's reflect padding as zeros: the analysis follows pads,
    # not the reversals that mirror images.
    extra = {"blur_padding": "zeros"} if variant == "blurpool" else {}
    rf = last_spatial_field(_model(variant, train, **extra), (1, *_input_shape(train)))
    return f"{rf.size[0]}x{rf.size[1]} (stride {rf.stride[0]})"


def _mflops(variant: str, train) -> float:
    """Forward MFLOPs per image, counted from the variant's model rather than read from the
    runs: the same number whichever backend trained them (runs that a GPU recorded before
    ``count_flops`` moved to the CPU backend hold a count without the convolutions)."""
    from cnnjax import models

    return models.count_flops(_model(variant, train), _input_shape(train)) / 1e6


def _best(record: dict) -> float:
    """The run's TTA accuracy in % (its plain accuracy if it evaluated without TTA)."""
    results = record["results"]
    return 100 * results.get("val_tta_accuracy", results["val_accuracy"])


def _speed(record: dict) -> float:
    return statistics.mean(
        e["train_images_per_sec"] for e in record["epochs"] if "train_images_per_sec" in e
    )


def summarize(config, records: list[dict]) -> list[dict]:
    """One row per variant; differences are paired with ``pool`` by seed."""
    by_variant: dict[str, dict[int, dict]] = {}
    for r in records:
        by_variant.setdefault(r["variant"], {})[r["seed"]] = r
    base = by_variant.get("pool", {})
    rows = []
    for variant, runs in by_variant.items():
        res = [r["results"] for r in runs.values()]
        acc = [100 * x["val_accuracy"] for x in res]
        tta = [_best(r) for r in runs.values()]
        paired = [_best(runs[s]) - _best(base[s]) for s in runs if s in base]
        shift = [r["translation"] for r in runs.values()]
        speeds = [_speed(r) for r in runs.values()]
        row = dict(
            variant=variant,
            seeds=len(res),
            tta=tta,
            acc=acc,
            diff=mean_ci(paired) if paired and variant != "pool" else None,
            params=int(res[0]["num_params"]),
            mflops=_mflops(variant, config.train),
            field=_field(variant, config.train),
            images_per_sec=statistics.mean(speeds),
            train_seconds=statistics.mean(x["train_seconds"] for x in res),
            consistency=[100 * t["consistency"] for t in shift],
        )
        for k in (1, 2, 4):
            row[f"shift{k}"] = [100 * t[f"shift{k}_accuracy"] for t in shift]
        rows.append(row)
    return rows


HEADER = [
    "downsampling",
    "TTA accuracy (%)",
    "accuracy (%)",
    "Δ TTA vs pool (95 % CI)",
    "seeds",
    "parameters",
    "MFLOPs/image",
    "receptive field",
    "train img/s",
    "train time (s)",
    "consistency (%)",
    "acc. shifted 1 / 2 / 4 px (%)",
]


def _pm(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def table_rows(rows: list[dict]) -> list[list[str]]:
    out = []
    for r in rows:
        diff = "-" if r["diff"] is None else f"{r['diff'][0]:+.2f} ± {r['diff'][1]:.2f}"
        shifted = " / ".join(f"{statistics.mean(r[f'shift{k}']):.1f}" for k in (1, 2, 4))
        out.append(
            [
                r["variant"],
                _pm(r["tta"]),
                _pm(r["acc"]),
                diff,
                str(r["seeds"]),
                f"{r['params']:,}",
                f"{r['mflops']:.0f}",
                r["field"],
                f"{r['images_per_sec']:.0f}",
                f"{r['train_seconds']:.0f}",
                _pm(r["consistency"]),
                shifted,
            ]
        )
    return out


def plot(records: list[dict], out_dir: str) -> list[str]:
    """Validation accuracy against epoch and against training time (mean over seeds), and
    shift consistency against TTA accuracy, one point per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(r["variant"] for r in records))
    accuracy = lambda e: 100 * e["val_accuracy"]
    paths = []
    for name, x, xlabel in (
        ("accuracy_vs_epoch.png", "epoch", "epoch"),
        ("accuracy_vs_time.png", "elapsed_seconds", "training seconds"),
    ):
        curves = {
            v: _runs.mean_curve([r for r in records if r["variant"] == v], x, accuracy)
            for v in variants
        }
        paths.append(
            _runs.line_plot(os.path.join(out_dir, name), curves, xlabel,
                            "validation accuracy (%), mean over seeds")
        )  # fmt: skip
    colors = {v: f"C{i}" for i, v in enumerate(variants)}  # the line plots' colours
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in records:
        ax.scatter(_best(r), 100 * r["translation"]["consistency"], color=colors[r["variant"]])
    for v in variants:
        ax.scatter([], [], color=colors[v], label=v)
    ax.set_xlabel("TTA validation accuracy (%)")
    ax.set_ylabel("shift consistency (%)")
    ax.set_title("one point per run")
    ax.grid(True, alpha=0.3)
    ax.legend()
    paths.append(_runs.save_figure(fig, os.path.join(out_dir, "consistency_vs_accuracy.png")))
    return paths


def write_outputs(config, records: list[dict]) -> dict:
    """``table.md``, ``table.csv``, ``study.json`` and the plots in ``config.out_dir``."""
    rows = summarize(config, records)
    table = _runs.write_study(config, HEADER, table_rows(rows), rows)
    return {"table": table, "out_dir": config.out_dir, "plots": plot(records, config.out_dir)}
