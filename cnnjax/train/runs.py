"""Reading finished (or interrupted) runs back: their config, state and accuracy."""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from cnnjax.errors import ConfigError
from cnnjax.train.build import build_engine, load_data
from cnnjax.train.checkpoint import Checkpoints
from cnnjax.train.config import default_config
from cnnjax.train.engine import evaluate


def load_run(
    workdir: str,
    *,
    step: int | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
):
    """A run rebuilt from its ``config.json`` and checkpoint (latest, or ``step``).

    Returns ``(config, engine, state, data)`` with ``state`` as checkpoints hold it (one copy,
    whatever the run's parallel layout); ``dataset``/``data_dir`` swap the data (same image
    shape and number of classes).
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ConfigError(f"{path} not found: is {workdir!r} the workdir of a run?")
    with open(path) as f:
        saved = json.load(f)
    config = default_config()
    config.update(ml_collections.ConfigDict(_tuples(saved)))
    if dataset is not None:
        config.dataset = dataset
    if data_dir is not None:
        config.data_dir = data_dir
    data, norm = load_data(config)
    engine = build_engine(config, data, norm)
    with Checkpoints(os.path.join(workdir, "checkpoints"), config.keep_checkpoints) as ckpts:
        state = ckpts.restore(engine.saved(engine.init()), step)
    return config, engine, state, data


def evaluate_checkpoint(
    workdir: str,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    split: str | None = None,
    step: int | None = None,
) -> dict[str, Any]:
    """Accuracy of a run's checkpoint (latest, or ``step``) on any dataset split.

    ``split`` defaults to ``test`` when the dataset has one, else ``validation``.
    """
    config, engine, state, data = load_run(workdir, step=step, dataset=dataset, data_dir=data_dir)
    split = split or ("test" if "test" in data.splits else "validation")
    if split not in data.splits:
        raise ConfigError(f"`split` must be one of {sorted(data.splits)}, got {split!r}.")
    s = data.splits[split]
    m = evaluate(engine, engine.restored(state), s.images, s.labels, config.eval_batch_size)
    return {
        "workdir": workdir,
        "dataset": config.dataset,
        "split": split,
        "step": int(state.step),
        "examples": len(s),
        **m,
    }


def _tuples(d):
    """JSON turns tuples into lists; the config's tuple fields want tuples back."""
    if isinstance(d, dict):
        return {k: _tuples(v) for k, v in d.items()}
    if isinstance(d, list):
        return tuple(d)
    return d
