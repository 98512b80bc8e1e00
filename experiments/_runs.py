"""The study runner: train a list of runs, each in its own workdir, and keep what is measured on
them; the table and figure writers every study shares.

A study (``pool_vs_stride``, ``fast_study``, ``weight_sharing``, ``ablation``, ``demo``) is a
list of :class:`Run` handed to :func:`train_runs`, plus its own analysis of the records.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from experiments import _bench


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of a study.

    Attributes:
      title: how the run is announced when it trains (``"stride  lr=0.003  seed=0"``).
      workdir: where it trains (checkpoints, metrics, results and its measurements).
      config: its full training config (:func:`cnnjax.train.default_config` fields).
      labels: what the study's analysis reads off it (``variant``, ``seed``, ...), copied into
        its record.
    """

    title: str
    workdir: str
    config: Any
    labels: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def train_runs(
    runs: Iterable[Run], measures: Mapping[str, Callable[[str], Any]] | None = None
) -> list[dict]:
    """Trains every run that has not finished and returns one record per run.

    A run whose workdir holds another config is set aside (renamed, not deleted) and trained
    again; an interrupted one resumes; a finished one (``results.json``) is read, not trained.
    When a signal stops a run, the program exits saying how to resume.

    Returns:
      dicts of the run's ``labels`` and ``workdir``, ``results`` (its ``results.json``),
      ``epochs`` (the epoch rows of its ``metrics.jsonl``) and, for each named measure
      (``measure(workdir) -> JSON value``), its value, computed once per run and kept in
      ``<workdir>/<name>.json``.
    """
    from cnnjax.train import read_metrics, train_and_evaluate

    records = []
    for run in runs:
        prepare_workdir(run.workdir, run.config)
        done = os.path.join(run.workdir, "results.json")
        if os.path.exists(done):
            with open(done) as f:
                results = json.load(f)
        else:
            print(f"== {run.title}  -> {run.workdir}", flush=True)
            results = train_and_evaluate(run.config, run.workdir)
            if "stopped_at_step" in results:
                sys.exit("interrupted; run the same command again to resume.")
        record = dict(run.labels, workdir=run.workdir, results=results)
        record["epochs"] = [r for r in read_metrics(run.workdir) if "epoch" in r]
        for name, measure in (measures or {}).items():
            record[name] = kept(os.path.join(run.workdir, f"{name}.json"), measure, run.workdir)
        records.append(record)
    return records


def kept(path: str, measure: Callable[[str], Any], workdir: str) -> Any:
    """``measure(workdir)``, computed once: read from ``path`` when it exists, else computed
    and written there (the run's final checkpoint is what it describes)."""
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    value = measure(workdir)
    write_json(path, value)
    return value


def held_out(workdir: str):
    """(config, engine, state, split) of a finished run: its training config, its final state
    on the devices and its held-out split (validation, or test when it held none out)."""
    from cnnjax.train import load_run

    config, engine, state, data = load_run(workdir)
    split = data.splits["validation" if "validation" in data.splits else "test"]
    return config, engine, state, split


def same_config(workdir: str, train) -> bool:
    """Whether ``workdir`` holds a run of ``train`` (operational fields such as ``progress``
    aside: :data:`cnnjax.train.workdir.OPERATIONAL`)."""
    from cnnjax.train.workdir import config_differences

    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)
    return not config_differences(saved, json.loads(train.to_json_best_effort()))


def prepare_workdir(workdir: str, train) -> None:
    """A run whose config changed since it was started is set aside (renamed, not deleted)
    and trained again; a run of the same config is reused or resumed."""
    if os.path.exists(os.path.join(workdir, "config.json")) and not same_config(workdir, train):
        stale = f"{workdir}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        os.rename(workdir, stale)
        print(f"== {workdir}: its config changed since it ran; moved to {stale}", flush=True)


def subset(split, n: int, seed: int = 0):
    """(images, labels) of ``n`` images of ``split`` drawn without replacement with a fixed
    seed. Not the first ``n``: an image folder's held-out split is stored class by class, so
    its first 2,000 CIFAR-10 images hold four classes."""
    picked = np.sort(np.random.default_rng(seed).permutation(len(split.labels))[:n])
    return split.images[picked], split.labels[picked]


def split_list(value) -> list[str]:
    """``"a, b,c"`` as ``["a", "b", "c"]`` (a study's comma-separated config fields)."""
    return [v.strip() for v in str(value).split(",") if v.strip()]


def write_table(
    out_dir: str, header: Sequence[str], rows: Sequence[Sequence[str]], name: str = "table",
    preface: str = "",
) -> str:  # fmt: skip
    """Writes ``<name>.md`` (``preface``, then the markdown table) and ``<name>.csv`` to
    ``out_dir``; returns the markdown table."""
    os.makedirs(out_dir, exist_ok=True)
    table = _bench.markdown_table(list(header), [list(r) for r in rows])
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(preface + table + "\n")
    _bench.write_csv(os.path.join(out_dir, f"{name}.csv"), list(header), [list(r) for r in rows])
    return table


def write_json(path: str, value: Any) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=2)


def write_study(config, header: Sequence[str], table: Sequence[Sequence[str]], rows) -> str:
    """A study's ``table.md`` and ``table.csv`` (``header`` and ``table``) and ``study.json``
    (its config and the summary ``rows``) in ``config.out_dir``; returns the markdown table."""
    markdown = write_table(config.out_dir, header, table)
    write_json(
        os.path.join(config.out_dir, "study.json"),
        {"config": json.loads(config.to_json_best_effort()), "rows": rows},
    )
    return markdown


def save_figure(fig, path: str) -> str:
    """Lays out ``fig``, writes it to ``path`` as PNG and closes it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def mean_curve(runs: Sequence[dict], x: str, y: Callable[[dict], float]):
    """(xs, ys): the mean over ``runs`` of their epoch rows' ``x`` field and ``y(row)``, over
    the epochs every run has."""
    n = min(len(r["epochs"]) for r in runs)
    xs = np.mean([[e.get(x, np.nan) for e in r["epochs"][:n]] for r in runs], axis=0)
    ys = np.mean([[y(e) for e in r["epochs"][:n]] for r in runs], axis=0)
    return xs, ys


def line_plot(
    path: str, curves: Mapping[str, tuple], xlabel: str, ylabel: str, title: str = "",
    log_x: bool = False, marker_size: float = 3,
) -> str:  # fmt: skip
    """Draws ``{label: (xs, ys)}`` as lines with markers and writes the PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, (xs, ys) in curves.items():
        ax.plot(xs, ys, marker="o", markersize=marker_size, label=label)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def print_results(out: Mapping[str, Any]) -> None:
    """Prints a study's table and where its files are (``out``: ``table``, ``out_dir`` and
    ``plots``, as the studies' ``write_outputs`` return)."""
    files = ["table.md", "table.csv", *(os.path.basename(p) for p in out["plots"])]
    print("\n" + out["table"])
    print(f"\nresults in {os.path.abspath(out['out_dir'])}: " + ", ".join(files))
